"""Progress recording: every micro-batch's progress in ``ops.stream_progress``.

``ProgressRecorder`` is a StreamingQueryListener. Listener callbacks run on Spark's listener
thread, so they only queue rows; the job's main loop (lakehouse/streaming.py) calls
:meth:`ProgressRecorder.flush` between waits, which appends the queued rows to the Delta table.
A query counts its records with :func:`count_records`, or its micro-batch reports them
(:func:`report_batch`). The ``status`` report reads the table back (lakehouse/status.py).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from functools import partial

from pyspark import SparkContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQueryListener
from pyspark.sql.streaming.listener import JStreamingQueryListener, QueryProgressEvent, StreamingQueryProgress
from pyspark.sql.types import (
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.checkpoints import files_in_batch
from lakehouse.config import LakehouseConfig
from lakehouse.freshness import FRESHNESS_METRIC, FRESHNESS_SCHEMA, FRESHNESS_TABLE, Measured, append_freshness, resolve
from lakehouse.pipeline import Pipeline
from lakehouse.redaction import error_summary, redact_text
from lakehouse.row_appends import append_rows
from lakehouse.table_create import APPEND_ONLY_CHECKPOINTS, create_table_if_missing
from lakehouse.tables import resolve_table, table_exists
from lakehouse.threads import at_once, in_background

STREAM_PROGRESS_TABLE = "ops.stream_progress"
# Queries attach ``count_records`` to their output, so a batch's records are counted as written
# (a whole-file source reports files as its input rows).
RECORDS_METRIC = "records"
STREAM_PROGRESS_SCHEMA = StructType(
    [
        StructField("query_name", StringType()),
        StructField("query_id", StringType()),
        StructField("run_id", StringType()),
        StructField("batch_id", LongType()),
        StructField("batch_time", TimestampType()),
        StructField("batch_duration_ms", LongType()),
        StructField("num_input_rows", LongType()),  # records in the batch (see RECORDS_METRIC)
        StructField("records_per_second", DoubleType()),  # R = records / batch duration
        StructField("num_input_files", LongType()),  # S for a file source; null otherwise
        StructField("sources", StringType()),  # source descriptions, ";"-separated
        StructField("progress_json", StringType()),  # the whole progress event, for anything else
    ]
)


# What a foreachBatch function reported about its micro-batch, for the recorder to pick up when
# Spark reports that batch's progress: (query name, batch id) -> {"records": n or None, "notes":
# [...], "freshness": [Measured, ...]}. A batch that reads its input itself (bronze from files)
# has no observed metric to count by.
_reported: dict[tuple[str, int], dict] = {}


def report_batch(query_name: str, batch_id: int, records: int | None = None, bad_files: list[str] = (),
                 freshness: list[Measured] = ()) -> None:
    """Called from a micro-batch: its record count (None: the observed count stands), the bad
    files it skipped (printed), and what it measured of its commits for ops.freshness. Each
    call replaces what an earlier attempt at the same batch (failed, then redone by a restart in
    this process) reported."""
    entry = {"records": records, "notes": [f"skipped bad file {b}" for b in bad_files], "freshness": list(freshness)}
    _reported[(query_name, batch_id)] = entry


# What a query leaves to the recorder's flushes (query name -> action(session)), run at once with
# the progress and freshness appends: a file source's bronze query appends the ops.ingested_files
# rows its batches journaled (lakehouse/landing_journal.py). Set when the query starts; an action
# prints its own failures (the streams go on).
_flush_actions: dict[str, Callable[[SparkSession], object]] = {}


def on_flush(query_name: str, action: Callable[[SparkSession], object]) -> None:
    """Run ``action`` with each flush of the recorder watching ``query_name`` (and its last)."""
    _flush_actions[query_name] = action


def count_records(df: DataFrame) -> DataFrame:
    """Attach the observed metric the recorder reads as the batch's record count."""
    return df.observe(RECORDS_METRIC, F.count(F.lit(1)).alias(RECORDS_METRIC))


class _ProgressFromJson(JStreamingQueryListener):
    """What Spark calls with each event (py4j). PySpark builds a progress event from the JVM
    object, a py4j call per field: about 0.1 s an event here, which the end of every query waited
    for. Built from the progress' JSON instead, it is one call (pyspark 4.1's own ``fromJson``,
    as Spark Connect uses; observed metrics come as rows of JSON values)."""

    def onQueryProgress(self, jevent) -> None:
        progress = StreamingQueryProgress.fromJson(json.loads(jevent.progress().json()))
        self.pylistener.onQueryProgress(QueryProgressEvent(progress=progress))


class ProgressRecorder(StreamingQueryListener):
    """Queues one ``ops.stream_progress`` row per micro-batch; :meth:`flush` writes them."""

    def __init__(self, spark: SparkSession, config: LakehouseConfig):
        # A session of its own (same SparkContext): the silver job sets a session-wide Delta setting
        # for its MERGE (the commit's userMetadata, which names the batch's commits), which an
        # append made meanwhile from this session would otherwise pick up.
        self.spark = spark.newSession()
        self.config = config
        self.table = resolve_table(config, STREAM_PROGRESS_TABLE)
        # query name -> its flow: a streaming Delta sink's freshness is measured by an observed
        # metric, recorded for the flow and the table it writes
        self.flows = {flow.query_name: flow for flow in Pipeline(config).flows.values() if flow.query_name}
        self._fresh_pending: list[Measured] = []  # measured, commit not looked up yet
        self._fresh_rows: list[tuple] = []  # ops.freshness rows not yet written
        self._fresh_unreported: list[tuple] = []  # ... and not yet handed to resolve_freshness's caller
        # The queries it records (query name -> checkpoint, to count files per batch): several
        # queries may run in one application, each recorded once, by the recorder watching it.
        self.checkpoints: dict[str, str] = {}
        self._rows: queue.Queue = queue.Queue()  # filled by the listener thread
        self._buffer: list[dict] = []  # drained, not yet written
        self._terminated: set[str] = set()
        self._changed = threading.Condition()
        self._tables = None  # the making of its tables (make_tables_beside)

    @property
    def _jlistener(self):
        """The JVM side of this listener (classic PySpark; ``addListener`` reads it once it has
        started py4j's callback server): the events' progress read from JSON (:class:`_ProgressFromJson`)."""
        if not hasattr(self, "_jlistenerobj"):
            self._jlistenerobj = SparkContext._jvm.PythonStreamingQueryListenerWrapper(_ProgressFromJson(self))
        return self._jlistenerobj

    def make_tables_beside(self) -> None:
        """Make ops.stream_progress and ops.freshness in the background where they are stored by
        path and missing, beside the queries' start (lakehouse/table_create.py): the flushes then
        append by delta-rs (lakehouse/row_appends.py), which appends to a missing table through
        Spark. A flush waits for them."""
        wanted = ((self.table, STREAM_PROGRESS_SCHEMA), (resolve_table(self.config, FRESHNESS_TABLE), FRESHNESS_SCHEMA))
        steps = [partial(create_table_if_missing, self.spark, ref, schema, APPEND_ONLY_CHECKPOINTS)
                 for ref, schema in wanted if ref.is_path and not table_exists(self.spark, ref)]
        if steps:
            self._tables = in_background(lambda: at_once(*steps), "ops-progress-tables")

    def watch(self, query_name: str, checkpoint: str) -> None:
        self.checkpoints[query_name] = checkpoint

    # -- listener callbacks (Spark's listener thread) --------------------------------------
    def onQueryStarted(self, event) -> None:
        pass

    def onQueryProgress(self, event) -> None:
        p = event.progress
        if p.name not in self.checkpoints:
            return  # another recorder's query
        metrics = p.observedMetrics or {}
        observed = metrics.get(RECORDS_METRIC)
        reported = _reported.pop((p.name, p.batchId), None) or {"records": None, "notes": [], "freshness": []}
        if reported["records"] is not None:
            records = reported["records"]
        else:
            records = observed[RECORDS_METRIC] if observed is not None else p.numInputRows
        freshness = list(reported["freshness"])
        if metrics.get(FRESHNESS_METRIC) is not None and p.name in self.flows:
            flow = self.flows[p.name]
            freshness.append(Measured.from_row(metrics[FRESHNESS_METRIC], flow.id, flow.writes[0], p.batchId,
                                               query_id=str(p.id)))
        seconds = (p.batchDuration or 0) / 1000.0
        checkpoint = self.checkpoints[p.name]
        files = None
        if checkpoint and any(s.description.startswith("FileStreamSource") for s in p.sources):
            files = files_in_batch(checkpoint, p.batchId)
        self._rows.put(
            {
                "query_name": p.name,
                "query_id": str(p.id),
                "run_id": str(p.runId),
                "batch_id": p.batchId,
                "batch_time": datetime.fromisoformat(p.timestamp.replace("Z", "+00:00")),  # aware: stored as UTC
                "batch_duration_ms": p.batchDuration,
                "num_input_rows": records,
                "records_per_second": records / seconds if seconds > 0 else None,
                "num_input_files": files,
                "sources": ";".join(s.description for s in p.sources),
                "progress_json": p.json,
                "notes": reported["notes"],  # printed, not stored
                "freshness": freshness,  # ops.freshness, once the commits are looked up
            }
        )
        with self._changed:
            self._changed.notify_all()

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        with self._changed:
            self._terminated.add(str(event.id))
            self._changed.notify_all()

    # -- main thread ----------------------------------------------------------------------
    def wait_terminated(self, query_id: str, timeout: float = 30.0) -> bool:
        """Wait until the listener has seen the query end, so all its progress is queued."""
        with self._changed:
            return self._changed.wait_for(lambda: query_id in self._terminated, timeout)

    def drain(self) -> list[dict]:
        """Rows queued since the last call; they stay buffered until :meth:`flush` writes them."""
        new = []
        while True:
            try:
                new.append(self._rows.get_nowait())
            except queue.Empty:
                break
        self._buffer.extend(new)
        for row in new:
            self._fresh_pending.extend(row["freshness"])
        return new

    def resolve_freshness(self) -> list[tuple]:
        """The ops.freshness rows resolved since the last call (a report's interval), resolving the
        batches drained meanwhile; :meth:`flush` writes them all, whoever asked first."""
        self._resolve()
        unreported, self._fresh_unreported = self._fresh_unreported, []
        return unreported

    def _resolve(self) -> None:
        """Look the drained batches' commits up (each table's history, once per table)."""
        pending, self._fresh_pending = self._fresh_pending, []
        if not pending:
            return
        try:
            rows = resolve(self.spark, self.config, pending)
        except Exception as exc:  # noqa: BLE001 - observability: the streams go on without these rows
            print(f"lakehouse: {len(pending)} freshness measurement(s) not recorded: {type(exc).__name__}: "
                  f"{redact_text(str(exc).splitlines()[0] if str(exc) else '')}", file=sys.stderr, flush=True)
            return
        self._fresh_rows.extend(rows)
        self._fresh_unreported.extend(rows)

    def flush(self) -> int:
        """Append the progress rows drained so far to ``ops.stream_progress`` and the freshness rows
        to ``ops.freshness`` (rows queued since the last drain wait for the next: whoever prints
        them drains them first), and run the watched queries' flush actions; returns how many
        progress rows. The appends go to different tables and run at once: each is mostly a
        commit's round trips, which a query's last flush would otherwise pay one after another."""
        failed = self._tables.exception() if self._tables is not None else None
        if failed is not None:  # the appends make them
            self._tables = None
            print(f"lakehouse: ops tables not made ahead: {type(failed).__name__}: "
                  f"{error_summary(failed)}", file=sys.stderr, flush=True)
        rows, self._buffer = self._buffer, []
        steps = [self._append_freshness, *[partial(_flush_actions[name], self.spark)
                                           for name in self.checkpoints if name in _flush_actions]]
        if rows:
            names = STREAM_PROGRESS_SCHEMA.fieldNames()
            data = [tuple(row[name] for name in names) for row in rows]
            steps.append(lambda: append_rows(self.spark, data, STREAM_PROGRESS_SCHEMA, self.table))
        at_once(*steps)
        return len(rows)

    def _append_freshness(self) -> None:
        self._resolve()
        fresh, self._fresh_rows = self._fresh_rows, []
        append_freshness(self.spark, self.config, fresh)
