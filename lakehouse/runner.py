"""Running flows of the pipeline: one way for every layer.

A flow (lakehouse/pipeline.py) belongs to a layer module that provides its steps:

- ``start(spark, config, flow, trigger, **options)``: start the flow's streaming query;
- ``describe(config, flow, **options)``: what it reads and writes, printed first;
- a batch flow (a batch gold table) has ``build(spark, config, flow)`` instead of ``start``;
- ``restart_reason(config, flow, error)``, optional: why a failure is safe to restart once from.

:func:`run_flow` prints the description, runs the query until it is done (``--once``) or stopped
(lakehouse/streaming.py: progress, Ctrl-C, failures) and returns the exit code;
:func:`run_flows` runs several, inputs first. The CLI, the demo and the tests all run flows here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pyspark.sql import SparkSession

from lakehouse import bronze, gold, silver
from lakehouse.config import LakehouseConfig
from lakehouse.errors import EXIT_OK
from lakehouse.pipeline import Flow, Pipeline
from lakehouse.streaming import run_streaming_job


@dataclass(frozen=True)
class Layer:
    describe: Callable[..., list[str]]
    start: Callable | None = None  # streaming flows
    build: Callable | None = None  # batch flows: returns a result with describe()
    restart_reason: Callable[[LakehouseConfig, Flow, Exception], str | None] | None = None


RUNNERS = {
    "bronze": Layer(bronze.describe, start=bronze.start, restart_reason=bronze.restart_reason),
    "silver": Layer(silver.describe, start=silver.start),
    "gold": Layer(gold.describe, start=gold.start, build=gold.build),
}


def run_flow(spark: SparkSession, config: LakehouseConfig, flow: str | Flow, trigger: dict, **options) -> int:
    """Run one flow (a Flow, or its id such as ``silver.telemetry``) until done or stopped. Exit code.

    ``options`` go to the layer's steps (silver: ``backfill``)."""
    flow = Pipeline(config).flow(flow)
    if flow.kind not in RUNNERS:
        raise ValueError(f"{flow.id} is not run here (training and scoring: ml/)")
    layer = RUNNERS[flow.kind]
    label = flow.query_name or flow.id
    for line in layer.describe(config, flow, **options):
        print(f"{label}: {line}", flush=True)
    if not flow.streaming:
        print(f"{label}: {layer.build(spark, config, flow, **options).describe()}", flush=True)
        return EXIT_OK
    restart = layer.restart_reason
    return run_streaming_job(
        spark, config, flow.query_name, flow.checkpoint,
        lambda: layer.start(spark, config, flow, trigger, **options),
        restart_once_if=(lambda error: restart(config, flow, error)) if restart else None,
    )


def run_flows(spark: SparkSession, config: LakehouseConfig, flows: Iterable[str | Flow], trigger: dict) -> int:
    """Run several flows, inputs first; stop at the first that fails."""
    for flow in Pipeline(config).inputs_first(flows):
        code = run_flow(spark, config, flow, trigger)
        if code != EXIT_OK:
            print(f"lakehouse: {flow.id} failed (exit {code}); tables after it were not built", file=sys.stderr)
            return code
    return EXIT_OK
