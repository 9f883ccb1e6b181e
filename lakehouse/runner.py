"""Running flows of the pipeline: one way for every layer.

A flow (lakehouse/pipeline.py) belongs to a layer module that provides its steps:

- ``start(spark, config, flow, trigger, **options)``: start the flow's streaming query;
- ``describe(config, flow, **options)``: what it reads and writes, printed first;
- a batch flow (a batch gold table) has ``build(spark, config, flow)`` instead of ``start``;
- ``restart_reason(config, flow, error)``, optional: why a failure is safe to restart once from.

:func:`run_flow` prints the description, runs the query until it is done (``--once``) or stopped
(lakehouse/streaming.py: progress, Ctrl-C, failures) and returns the exit code;
:func:`run_flows` runs several, inputs first; :func:`pipeline_flows` picks the flows of
`lakehouse run`. The CLI, the demo and the tests all run flows here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pyspark.sql import SparkSession

from lakehouse import bronze, gold, silver
from lakehouse.config import LakehouseConfig
from lakehouse.errors import EXIT_OK, UsageError
from lakehouse.pipeline import Flow, Pipeline
from lakehouse.streaming import run_streaming_job
from lakehouse.threads import Behind


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


def run_flow(spark: SparkSession, config: LakehouseConfig, flow: str | Flow, trigger: dict,
             last_flush: Behind | None = None, **options) -> int:
    """Run one flow (a Flow, or its id such as ``silver.telemetry``) until done or stopped. Exit code.

    ``options`` go to the layer's steps (silver: ``backfill``). ``last_flush``: a streaming flow's
    last progress rows are handed to it, to be written in the background; the caller waits for
    it (lakehouse.streaming.run_streaming_job)."""
    flow = Pipeline(config).flow(flow)
    if flow.kind not in RUNNERS:
        raise ValueError(f"{flow.id} is not run here (training and scoring: ml/)")
    layer = RUNNERS[flow.kind]
    label = announce(config, flow, **options)
    if not flow.streaming:
        print(f"{label}: {layer.build(spark, config, flow, **options).describe()}", flush=True)
        return EXIT_OK
    restart = layer.restart_reason
    return run_streaming_job(
        spark, config, flow.query_name, flow.checkpoint,
        lambda: layer.start(spark, config, flow, trigger, **options),
        restart_once_if=(lambda error: restart(config, flow, error)) if restart else None,
        last_flush=last_flush,
    )


def announce(config: LakehouseConfig, flow: Flow, **options) -> str:
    """Print what the flow reads and writes (its first lines); returns the label it printed under."""
    label = flow.query_name or flow.id
    for line in RUNNERS[flow.kind].describe(config, flow, **options):
        print(f"{label}: {line}", flush=True)
    return label


def run_flows(spark: SparkSession, config: LakehouseConfig, flows: Iterable[str | Flow], trigger: dict) -> int:
    """Run several flows, inputs first; stop at the first that fails.

    A flow's last progress rows (ops.stream_progress, ops.freshness, ops.ingested_files: about a
    second of small commits, bench/RESULTS.md, issue 16) are written while the next flow runs,
    and all of them before this returns; an error writing them is raised then, once every flow
    has run (printed instead when a flow failed). No flow depends on another's rows there."""
    last_flush, failed = Behind("last-flush"), True
    try:
        for flow in Pipeline(config).inputs_first(flows):
            code = run_flow(spark, config, flow, trigger, last_flush=last_flush)
            if code != EXIT_OK:
                print(f"lakehouse: {flow.id} failed (exit {code}); tables after it were not built", file=sys.stderr)
                return code
        failed = False
    finally:  # after a failure, an error of these writes is printed, not raised in its place
        last_flush.wait(raising=not failed)
    return EXIT_OK


def pipeline_flows(config: LakehouseConfig, only: Iterable[str] | None = None) -> tuple[list[Flow], list[str]]:
    """The flows `lakehouse run` runs, inputs first, and a line on each flow it leaves out.

    ``only``: flow ids (``bronze.telemetry``, ``silver.telemetry``, ``gold.telemetry_minute``);
    just those run. Without it every bronze, silver and gold flow runs, but a Kafka source with no
    bootstrap servers configured or in its environment variable is left out (a named one is an
    error): the files feed runs on a machine without a broker. Training and scoring run with
    `lakehouse train` / `lakehouse score`."""
    from lakehouse.kafka import KafkaSetupError, bootstrap_servers

    pipeline = Pipeline(config)
    named = list(dict.fromkeys(only or ()))
    chosen = [pipeline.flow(flow_id) for flow_id in named] or [f for f in pipeline.flows.values() if f.kind in RUNNERS]
    for flow in chosen:
        if flow.kind not in RUNNERS:
            raise UsageError(f"{flow.id} is not run by `lakehouse run` (use `lakehouse {flow.kind}`)")
    flows, skipped = [], []
    for flow in pipeline.inputs_first(chosen):
        source = config.source(flow.name) if flow.kind == "bronze" else None
        if source is not None and source.kind == "kafka":
            try:
                bootstrap_servers(source.kafka)
            except KafkaSetupError as exc:
                if named:
                    raise UsageError(f"{flow.id}: {exc}") from exc
                skipped.append(f"{flow.id}: left out, no Kafka broker configured "
                               f"(${source.kafka.bootstrap_servers_env} is not set)")
                continue
        flows.append(flow)
    return flows, skipped
