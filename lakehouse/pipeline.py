r"""The pipeline as a value: every flow the configuration declares, and what each reads.

    source --> bronze.<source> --> silver.<entity> --> gold.<table> --> train --> score
                                                   \--> gold.<table> (gold may read gold) ...

A :class:`Flow` is one node: a source's bronze ingest, an entity's silver refine, a gold table's
build, training (on ``training.table``) and scoring (into gold.predictions). Its id is the table
it writes (``bronze.telemetry``, ``silver.telemetry``, ``gold.telemetry_minute``) or ``train``
and ``score``. The graph owns each streaming flow's query name (its name in ops.stream_progress)
and checkpoint, and answers: inputs first (:meth:`Pipeline.inputs_first`), what is downstream of
a flow, what a flow reads. The code that runs a flow is lakehouse/runner.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from lakehouse.config import ConfigError, LakehouseConfig
from lakehouse.graph import inputs_first

Kind = Literal["bronze", "silver", "gold", "train", "score"]
TRAIN, SCORE = "train", "score"
PREDICTIONS_TABLE = "gold.predictions"


def query_name(kind: str, name: str) -> str:
    """The streaming query of a flow: its name in ops.stream_progress and its checkpoint's."""
    return f"{kind}_{name}"


@dataclass(frozen=True)
class Flow:
    id: str  # the table it writes (bronze.<source>, silver.<entity>, gold.<table>), or train / score
    kind: Kind
    name: str  # the source, entity or gold table of the configuration (the model for train)
    reads: tuple[str, ...]  # ids of the flows whose output it reads
    inputs: tuple[str, ...]  # the tables it reads (a bronze flow: none, it reads its source)
    writes: tuple[str, ...]  # the tables it writes
    streaming: bool  # a streaming query with a checkpoint (else a batch job run once)
    query_name: str | None = None
    checkpoint: str | None = None

    def __str__(self) -> str:
        return self.id


class Pipeline:
    """The flows of one configuration and the edges between them."""

    def __init__(self, config: LakehouseConfig):
        self.config = config
        declared: list[tuple[Flow, tuple[str, ...]]] = []  # each flow, and flows it reads besides tables

        def add(kind: Kind, name: str, inputs, writes, streaming: bool, flow_id: str | None = None, after=()):
            query = query_name(kind, name) if streaming else None
            flow = Flow(id=flow_id or writes[0], kind=kind, name=name, reads=(), inputs=tuple(inputs),
                        writes=tuple(writes), streaming=streaming, query_name=query,
                        checkpoint=config.checkpoint_path(query) if query else None)
            declared.append((flow, after))

        for name in config.sources:
            add("bronze", name, (), [f"bronze.{name}"], streaming=True)
        for name, entity in config.entities.items():
            add("silver", name, [f"bronze.{s}" for s in entity.sources],
                [f"silver.{name}", f"silver.{name}_quarantine"], streaming=True)
        for name, gold in config.gold.items():
            add("gold", name, gold.inputs, [f"gold.{name}"], streaming=gold.mode == "streaming")
        if config.training is not None:
            model, table = config.training.model_name, config.training.table
            add(TRAIN, model, [table], [], streaming=False, flow_id=TRAIN)
            add(SCORE, model, [table], [PREDICTIONS_TABLE], streaming=False, flow_id=SCORE, after=(TRAIN,))
        # A flow reads the flows that write its input tables (ops tables: no edge, every flow appends to them).
        producers = {table: flow.id for flow, _ in declared for table in flow.writes}
        self.flows: dict[str, Flow] = {}
        for flow, after in declared:
            reads = [producers[table] for table in flow.inputs if table in producers] + list(after)
            self.flows[flow.id] = replace(flow, reads=tuple(dict.fromkeys(reads)))

    # -- finding flows ------------------------------------------------------------------------
    def flow(self, flow_id: str | Flow) -> Flow:
        """The flow with this id (a Flow is returned as it is)."""
        if isinstance(flow_id, Flow):
            return flow_id
        if flow_id not in self.flows:
            raise ConfigError(str(self.config.conf_dir), flow_id,
                              f"no such flow (configured: {', '.join(self.flows) or 'none'})")
        return self.flows[flow_id]

    def bronze(self, source: str) -> Flow:
        self.config.source(source)  # an unknown name is a configuration error naming what exists
        return self.flows[f"bronze.{source}"]

    def silver(self, entity: str) -> Flow:
        self.config.entity(entity)
        return self.flows[f"silver.{entity}"]

    def gold(self, table: str) -> Flow:
        self.config.gold_table(table)
        return self.flows[f"gold.{table}"]

    def of_kind(self, kind: Kind) -> list[Flow]:
        return [flow for flow in self.flows.values() if flow.kind == kind]

    def producer(self, table: str) -> Flow | None:
        """The flow that writes ``table`` (None for ops tables, which every flow appends to)."""
        return next((flow for flow in self.flows.values() if table in flow.writes), None)

    # -- the graph ----------------------------------------------------------------------------
    def inputs_first(self, flows: Iterable[str | Flow] | None = None) -> list[Flow]:
        """``flows`` (default: all) in an order where each comes after the flows among them it
        reads, directly or through others."""
        wanted = None if flows is None else [self.flow(f).id for f in flows]
        reads = {flow_id: flow.reads for flow_id, flow in self.flows.items()}
        return [self.flows[flow_id] for flow_id in inputs_first(reads, wanted)]

    def reads(self, flow: str | Flow) -> list[Flow]:
        """The flows whose output ``flow`` reads directly."""
        return [self.flows[r] for r in self.flow(flow).reads]

    def upstream(self, flow: str | Flow) -> list[Flow]:
        """Every flow ``flow`` depends on, directly or not, inputs first."""
        return self.inputs_first(self._reach(self.flow(flow).id, lambda f: f.reads))

    def downstream(self, flow: str | Flow) -> list[Flow]:
        """Every flow that depends on ``flow``, directly or not, inputs first."""
        readers: dict[str, list[str]] = {flow_id: [] for flow_id in self.flows}
        for other in self.flows.values():
            for read in other.reads:
                readers[read].append(other.id)
        return self.inputs_first(self._reach(self.flow(flow).id, lambda f: readers[f.id]))

    def _reach(self, start: str, step) -> list[str]:
        """The flows reachable from ``start`` by ``step``, in the configuration's order (so flows
        the graph does not order stay as configured)."""
        seen: set[str] = set()
        todo = list(step(self.flows[start]))
        while todo:
            flow_id = todo.pop()
            if flow_id not in seen:
                seen.add(flow_id)
                todo.extend(step(self.flows[flow_id]))
        return [flow_id for flow_id in self.flows if flow_id in seen]

