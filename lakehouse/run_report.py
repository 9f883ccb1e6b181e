"""What `lakehouse run` prints while it runs.

Not on a terminal (a log file, a pipe, a job's output): one plain line per finished micro-batch
(lakehouse/streaming.py's ``print_batches``), as every other job prints. On a terminal: one line
per flow every ``run.report_every``, with what a person watching wants to know:

    12:00:10 silver.telemetry          1,980 rows/s   5 batches of 1.9s   backlog 0 versions   p95 freshness 6.2s

rows/s over the interval, the mean batch time, the backlog (files landed but not taken in,
Kafka messages not read, Delta versions of the input not read) and the worst p95 freshness of
the interval's batches (ops.freshness: event time to commit, else window end, else ingest).
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime

from lakehouse.config import LakehouseConfig
from lakehouse.formatting import duration_text
from lakehouse.freshness import p95_seconds
from lakehouse.pipeline import Flow
from lakehouse.status import file_backlog, source_backlog


class IntervalReport:
    """Collects the interval's finished batches per flow; :meth:`lines` prints and starts the next."""

    def __init__(self, config: LakehouseConfig, flows: list[Flow], every_seconds: float):
        self.config, self.every = config, every_seconds
        self.flows = {flow.query_name: flow for flow in flows if flow.streaming}
        self.started = time.monotonic()
        self._batches: dict[str, list[dict]] = defaultdict(list)
        self._last: dict[str, dict] = {}  # each query's newest progress row: its backlog when it was idle since

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            self._batches[row["query_name"]].append(row)
            self._last[row["query_name"]] = row
            for note in row.get("notes", ()):  # a bad file is worth a line of its own at once
                print(f"{row['query_name']}: batch {row['batch_id']}: {note}", flush=True)

    def due(self) -> bool:
        return time.monotonic() - self.started >= self.every

    def lines(self, freshness_rows: list[tuple]) -> list[str]:
        """One line per flow for the interval that ends now (``freshness_rows``: the ops.freshness
        rows resolved in it)."""
        now = time.monotonic()
        elapsed, self.started = max(now - self.started, 1e-3), now
        worst: dict[str, float] = {}
        for row in freshness_rows:
            p95 = p95_seconds(row)
            if p95 is not None:
                worst[row[0]] = max(worst.get(row[0], p95), p95)
        stamp = datetime.now().strftime("%H:%M:%S")
        width = max(len(flow.id) for flow in self.flows.values()) if self.flows else 0
        lines = []
        for query, flow in self.flows.items():
            batches = self._batches.pop(query, [])
            rate = sum(b["num_input_rows"] for b in batches) / elapsed
            took = (f"{len(batches)} batches of {sum(b['batch_duration_ms'] for b in batches) / len(batches) / 1000:.1f}s"
                    if batches else "no batch")
            lines.append(f"{stamp} {flow.id:<{width}}  {rate:>9,.0f} rows/s  {took:<20}  backlog {self._backlog(flow):<12}"
                         f"  p95 freshness {duration_text(worst.get(flow.id))}")
        return lines

    def _backlog(self, flow: Flow) -> str:
        if flow.kind == "bronze" and self.config.source(flow.name).kind == "files":
            return f"{file_backlog(self.config, flow):,} files"
        last = self._last.get(flow.query_name)
        found = source_backlog(last["progress_json"]) if last else None
        return "-" if found is None else f"{found[0]:,} {found[1]}"
