"""Stream observability: every micro-batch's progress in ``ops.stream_progress``, and the status view.

``ProgressRecorder`` is a StreamingQueryListener. Listener callbacks run on Spark's listener
thread, so they only queue rows; the job's main loop calls :meth:`ProgressRecorder.flush`
between waits, which appends the queued rows to the Delta table.

Status figures follow the design's terms: R = records/s of the last batch (rows / batch time),
S = channels (input files in the batch for a file source), B = R / S per channel.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import asdict, dataclass
from datetime import datetime

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQueryListener
from pyspark.sql.types import (
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.checkpoints import (
    bronze_query_name,
    files_in_batch,
    landed_files,
    logged_batches,
    processed_files,
)
from lakehouse.config import LakehouseConfig
from lakehouse.tables import append_to_table, read_table, resolve_table, table_exists

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
# Spark reports that batch's progress: (query name, batch id) -> {"records": n, "notes": [...]}.
# A batch that reads its input itself (bronze from files) has no observed metric to count by.
_reported: dict[tuple[str, int], dict] = {}


def report_batch(query_name: str, batch_id: int, records: int, bad_files: list[str] = ()) -> None:
    """Called from a micro-batch: its record count, and the bad files it skipped (printed)."""
    _reported[(query_name, batch_id)] = {"records": records, "notes": [f"skipped bad file {b}" for b in bad_files]}


def count_records(df: DataFrame) -> DataFrame:
    """Attach the observed metric the recorder reads as the batch's record count."""
    return df.observe(RECORDS_METRIC, F.count(F.lit(1)).alias(RECORDS_METRIC))


class ProgressRecorder(StreamingQueryListener):
    """Queues one ``ops.stream_progress`` row per micro-batch; :meth:`flush` writes them."""

    def __init__(self, spark: SparkSession, config: LakehouseConfig):
        # A session of its own (same SparkContext): the silver job sets a session-wide Delta setting
        # for its MERGE (the commit's userMetadata, which names the batch's commits), which an
        # append made meanwhile from this session would otherwise pick up.
        self.spark = spark.newSession()
        self.table = resolve_table(config, STREAM_PROGRESS_TABLE)
        self.checkpoints: dict[str, str] = {}  # query name -> checkpoint, to count files per batch
        self._rows: queue.Queue = queue.Queue()  # filled by the listener thread
        self._buffer: list[dict] = []  # drained, not yet written
        self._terminated: set[str] = set()
        self._changed = threading.Condition()

    def watch(self, query_name: str, checkpoint: str) -> None:
        self.checkpoints[query_name] = checkpoint

    # -- listener callbacks (Spark's listener thread) --------------------------------------
    def onQueryStarted(self, event) -> None:
        pass

    def onQueryProgress(self, event) -> None:
        p = event.progress
        observed = (p.observedMetrics or {}).get(RECORDS_METRIC)
        reported = _reported.pop((p.name, p.batchId), None)
        if reported is not None:
            records = reported["records"]
        else:
            records = observed[RECORDS_METRIC] if observed is not None else p.numInputRows
        seconds = (p.batchDuration or 0) / 1000.0
        checkpoint = self.checkpoints.get(p.name or "")
        files = None
        if checkpoint and any(s.description.startswith("FileStreamSource") for s in p.sources):
            files = files_in_batch(checkpoint, p.batchId)
        self._rows.put(
            {
                "query_name": p.name,
                "query_id": str(p.id),
                "run_id": str(p.runId),
                "batch_id": p.batchId,
                "batch_time": datetime.fromisoformat(p.timestamp.replace("Z", "+00:00")).replace(tzinfo=None),
                "batch_duration_ms": p.batchDuration,
                "num_input_rows": records,
                "records_per_second": records / seconds if seconds > 0 else None,
                "num_input_files": files,
                "sources": ";".join(s.description for s in p.sources),
                "progress_json": p.json,
                "notes": reported["notes"] if reported else [],  # printed, not stored
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
        return new

    def flush(self) -> int:
        """Append the buffered progress rows to ``ops.stream_progress``; returns how many."""
        self.drain()
        rows, self._buffer = self._buffer, []
        if rows:
            names = STREAM_PROGRESS_SCHEMA.fieldNames()
            data = [tuple(row[name] for name in names) for row in rows]
            append_to_table(self.spark.createDataFrame(data, STREAM_PROGRESS_SCHEMA), self.table)
        return len(rows)


# -- status ---------------------------------------------------------------------------------


@dataclass
class QueryStatus:
    query_name: str
    last_batch_id: int | None
    last_batch_time: str | None
    input_rows: int | None
    records_per_second: float | None  # R
    channels: int | None  # S
    per_channel: float | None  # B = R / S
    backlog_files: int | None  # landed but not yet taken in by the query
    consumer_lag: int | None = None  # Kafka: latest offsets minus those the query processed, summed
    lag_by_partition: dict[str, int] | None = None  # "<topic>/<partition>" -> lag
    note: str | None = None  # why a figure is missing (e.g. the broker is unreachable)
    bad_files: int | None = None  # file source: planned files not read (ops.bad_files)
    changed_files: list[str] | None = None  # file source: files changed since they were read

    def as_dict(self) -> dict:
        return asdict(self)


def collect_status(spark: SparkSession, config: LakehouseConfig) -> list[QueryStatus]:
    """The last micro-batch of every query in ``ops.stream_progress``, plus each file source's backlog."""
    latest = {}
    table = resolve_table(config, STREAM_PROGRESS_TABLE)
    if table_exists(spark, table):
        newest_first = Window.partitionBy("query_name").orderBy(F.col("batch_time").desc())
        rows = (
            read_table(spark, table)
            .withColumn("_rank", F.row_number().over(newest_first))
            .where("_rank = 1")
            .collect()
        )
        latest = {row["query_name"]: row for row in rows}

    from lakehouse.landing import bad_files, changed_files

    backlog, lags, bad, changed = {}, {}, {}, {}
    for name, source in config.sources.items():
        query = bronze_query_name(name)
        if source.kind == "files":
            done = processed_files(config.checkpoint_path(query))
            backlog[query] = sum(1 for f in landed_files(config.landing_path(name)) if f not in done)
            bad[query] = len(bad_files(spark, config, name))
            changed[query] = [c.path for c in changed_files(spark, config, name)]
        elif source.kind == "kafka" and logged_batches(config.checkpoint_path(query), "offsets"):
            lags[query] = _kafka_lag(source, config.checkpoint_path(query))  # once its query has run

    statuses = []
    for query in sorted(set(latest) | set(backlog) | set(lags)):
        row = latest.get(query)
        rate = row["records_per_second"] if row else None
        channels = row["num_input_files"] if row else None
        lag, note = lags.get(query, (None, None))
        if query in lags:  # a Kafka source's channels are the partitions its last batch read
            channels = kafka_partitions(row["progress_json"]) if row else None
        statuses.append(
            QueryStatus(
                query_name=query,
                last_batch_id=row["batch_id"] if row else None,
                last_batch_time=row["batch_time"].isoformat(sep=" ") if row else None,
                input_rows=row["num_input_rows"] if row else None,
                records_per_second=rate,
                channels=channels,
                per_channel=(rate / channels) if rate is not None and channels else None,
                backlog_files=backlog.get(query),
                consumer_lag=sum(lag.values()) if lag is not None else None,
                lag_by_partition=lag,
                note=note,
                bad_files=bad.get(query),
                changed_files=changed.get(query),
            )
        )
    return statuses


def _kafka_lag(source, checkpoint: str) -> tuple[dict[str, int] | None, str | None]:
    """({"topic/partition": lag}, None), or (None, why not) when Kafka cannot be asked."""
    from lakehouse.kafka import KafkaSetupError, consumer_lag

    try:
        return {f"{p.topic}/{p.partition}": p.lag for p in consumer_lag(source.kafka, checkpoint)}, None
    except KafkaSetupError as exc:
        return None, str(exc)
    except Exception as exc:  # the broker is down or unreachable: status still reports the rest
        return None, f"Kafka lag unavailable: {str(exc).splitlines()[0]}"


def kafka_partitions(progress_json: str | None) -> int | None:
    """Partitions in the end offsets of a micro-batch's Kafka sources (from its progress JSON)."""
    if not progress_json:
        return None
    count = 0
    for source in json.loads(progress_json).get("sources", []):
        if not str(source.get("description", "")).startswith("Kafka"):
            continue
        end = source.get("endOffset")
        end = json.loads(end) if isinstance(end, str) else end
        count += sum(len(partitions) for partitions in (end or {}).values() if isinstance(partitions, dict))
    return count or None


def format_status(statuses: list[QueryStatus]) -> str:
    headers = ["query", "last batch", "batch time (UTC)", "records", "R rec/s", "S", "B rec/s/ch", "backlog",
               "bad files"]

    def fmt(value, digits=1):
        if value is None:
            return "-"
        return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)

    table = [headers] + [
        [s.query_name, fmt(s.last_batch_id), fmt(s.last_batch_time), fmt(s.input_rows),
         fmt(s.records_per_second), fmt(s.channels), fmt(s.per_channel), _backlog(s), fmt(s.bad_files)]
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not statuses:
        lines.append("(no streaming queries have run yet)")
    for s in statuses:
        if s.lag_by_partition:
            spread = ", ".join(f"{p} {lag:,}" for p, lag in s.lag_by_partition.items())
            lines.append(f"{s.query_name}: consumer lag by partition: {spread}")
        if s.note:
            lines.append(f"{s.query_name}: {s.note}")
        if s.bad_files:
            lines.append(f"{s.query_name}: {s.bad_files:,} bad file(s) not read (ops.bad_files; "
                         "`lakehouse reconcile` names them)")
        if s.changed_files:
            lines.append(f"{s.query_name}: WARNING: {len(s.changed_files):,} landing file(s) changed after they were "
                         f"read, their new content is not in bronze: {', '.join(s.changed_files)}")
    return "\n".join(lines)


def _backlog(s: QueryStatus) -> str:
    """Files landed but not taken in, or Kafka messages not yet processed (consumer lag)."""
    if s.consumer_lag is not None:
        return f"{s.consumer_lag:,} msgs"
    return f"{s.backlog_files:,} files" if s.backlog_files is not None else "-"
