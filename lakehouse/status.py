"""The ``status`` report: per streaming query, its last micro-batch and its backlog; per table, the
freshness of its last batch and its age, and its files, bytes and time since its last maintenance.

Each figure is read through a lakehouse.table_reader reader: the direct one (delta-rs and
DuckDB, no JVM: `lakehouse status` answers in about a second) or Spark's, with the same result.

Figures follow the design's terms: R = records/s of the last batch (rows / batch time),
S = channels (input files in the batch for a file source, partitions for Kafka), B = R / S per
channel. The last batch comes from ``ops.stream_progress`` (lakehouse/progress.py); the backlog
from each bronze flow's checkpoint against its landing directory, or Kafka's latest offsets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse.checkpoints import landed_files, logged_batches, processed_files
from lakehouse.config import LakehouseConfig
from lakehouse.formatting import duration_text, size_text
from lakehouse.freshness import FRESHNESS_TABLE
from lakehouse.landing import BAD_FILES_TABLE, changed_files
from lakehouse.maintained_tables import maintained_tables
from lakehouse.maintenance_steps import MAINTENANCE_TABLE
from lakehouse.pipeline import Pipeline
from lakehouse.progress import STREAM_PROGRESS_TABLE
from lakehouse.tables import read_table, resolve_table, table_exists


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


def collect_status(reader, config: LakehouseConfig) -> list[QueryStatus]:
    """The last micro-batch of every query in ``ops.stream_progress``, plus each file source's backlog."""
    latest = {}
    if reader.exists(STREAM_PROGRESS_TABLE):
        latest = {row["query_name"]: row for row in _newest_per(reader, STREAM_PROGRESS_TABLE, "query_name", "batch_time")}
    bad_by_source = {}
    if reader.exists(BAD_FILES_TABLE):
        bad_by_source = {row["source"]: row["n"] for row in reader.rows(
            "SELECT source, count(*) AS n FROM {t} GROUP BY source", BAD_FILES_TABLE)}

    backlog, lags, bad, changed = {}, {}, {}, {}
    for flow in Pipeline(config).of_kind("bronze"):
        source, query = config.source(flow.name), flow.query_name
        if source.kind == "files":
            backlog[query] = file_backlog(config, flow)
            bad[query] = bad_by_source.get(flow.name, 0)
            changed[query] = [c.path for c in changed_files(reader, flow.name)]
        elif source.kind == "kafka" and logged_batches(flow.checkpoint, "offsets"):
            lags[query] = _kafka_lag(source, flow.checkpoint)  # once its query has run

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
                last_batch_time=_utc_text(row["batch_time"], "auto") if row else None,
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


@dataclass
class TableFreshness:
    """A table's last committed batch in ``ops.freshness`` (lakehouse/freshness.py), and its age."""

    table_name: str
    flow: str
    last_commit: str  # UTC
    age_s: float  # now minus the last commit: how long the table has been idle
    rows: int
    ingest_p95_s: float | None  # of the last batch: commit time minus _ingested_at
    event_p95_s: float | None  # commit time minus event time
    window_p95_s: float | None  # commit time minus window end (windowed gold tables)

    def as_dict(self) -> dict:
        return asdict(self)


def collect_freshness(reader, config: LakehouseConfig) -> list[TableFreshness]:
    """Each table's newest ops.freshness row, in the pipeline's order (inputs first)."""
    if not reader.exists(FRESHNESS_TABLE):
        return []
    rows = _newest_per(reader, FRESHNESS_TABLE, "table_name", "commit_time")
    now = datetime.now(timezone.utc)
    found = []
    for row in _inputs_first(config, rows):
        committed_at = row["commit_time"]  # aware UTC (the readers' rows)
        found.append(TableFreshness(
            row["table_name"], row["flow"], _utc_text(committed_at),
            round((now - committed_at).total_seconds(), 1), row["rows"],
            row["ingest_p95_s"], row["event_p95_s"], row["window_p95_s"]))
    return found


def format_freshness(tables: list[TableFreshness]) -> str:
    """The freshness table of `lakehouse status`: p95 seconds of the last batch, and the age."""
    if not tables:
        return "freshness: no commit measured yet (ops.freshness is written by ingest, refine, gold and run)"
    headers = ["table", "last commit (UTC)", "age", "rows", "p95 ingest->commit", "p95 event->commit",
               "p95 window end->commit"]
    table = [headers] + [[t.table_name, t.last_commit, duration_text(t.age_s), f"{t.rows:,}",
                          duration_text(t.ingest_p95_s), duration_text(t.event_p95_s),
                          duration_text(t.window_p95_s)] for t in tables]
    return "freshness of each table's last batch:\n" + _columns(table)


def freshness_summary(spark: SparkSession, config: LakehouseConfig, since: datetime) -> list[dict]:
    """Per table, the batches committed since ``since``: how many, rows, the median batch's p50
    and the worst batch's p95 of each measure (ops.freshness), inputs first."""
    table = resolve_table(config, FRESHNESS_TABLE)
    if not table_exists(spark, table):
        return []
    figures = [F.count(F.lit(1)).alias("batches"), F.sum("rows").alias("rows")]
    for measure in ("ingest", "event", "window"):
        figures += [F.percentile_approx(f"{measure}_p50_s", 0.5).alias(f"{measure}_p50_s"),
                    F.max(f"{measure}_p95_s").alias(f"{measure}_p95_s")]
    rows = (read_table(spark, table).where(F.col("commit_time") >= F.lit(since))
            .groupBy("table_name").agg(*figures).collect())
    return [row.asDict() for row in _inputs_first(config, rows)]


def _newest_per(reader, table: str, key: str, time: str) -> list[dict]:
    """The newest row (by ``time``) of each ``key`` of an ops table."""
    rows = reader.rows(f"SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY {time} DESC) "
                       "AS _rank FROM {t}) AS ranked WHERE _rank = 1", table)
    return [{k: v for k, v in row.items() if k != "_rank"} for row in rows]


def _utc_text(at: datetime, timespec: str = "seconds") -> str:
    """An aware time as the report writes it: UTC, without the offset."""
    return at.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec=timespec)


def _inputs_first(config: LakehouseConfig, rows: list) -> list:
    """Rows with a ``table_name``, in the pipeline's order (inputs first; tables no flow writes last)."""
    order = {t: i for i, flow in enumerate(Pipeline(config).inputs_first()) for t in flow.writes}
    return sorted(rows, key=lambda r: (order.get(r["table_name"], len(order)), r["table_name"]))


@dataclass
class TableGrowth:
    """How big a table is (its current version's data files) and when maintenance last saw it."""

    table_name: str
    version: int
    rows: int
    files: int
    bytes: int
    last_maintenance: str | None  # UTC, from ops.maintenance
    since_maintenance_s: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def collect_growth(reader, config: LakehouseConfig) -> list[TableGrowth]:
    """Every existing table's rows, files and bytes, and the time since its last maintenance step."""
    maintained = last_maintenance(reader)
    now = datetime.now(timezone.utc)
    found = []
    for name in maintained_tables(config):
        if not reader.exists(name):
            continue
        size = reader.size(name)
        at = maintained.get(name)
        found.append(TableGrowth(name, size.version, reader.count(name), size.files, size.bytes,
                                 None if at is None else _utc_text(at),
                                 None if at is None else round((now - at).total_seconds(), 1)))
    return found


def last_maintenance(reader) -> dict[str, datetime]:
    """Each table's newest maintenance step (aware UTC), from ops.maintenance."""
    if not reader.exists(MAINTENANCE_TABLE):
        return {}
    rows = reader.rows("SELECT table_name, max(started_at) AS at FROM {t} WHERE outcome <> 'failed' "
                       "GROUP BY table_name", MAINTENANCE_TABLE)
    return {row["table_name"]: row["at"] for row in rows}


def format_growth(tables: list[TableGrowth]) -> str:
    if not tables:
        return "tables: none yet"
    headers = ["table", "version", "rows", "files", "size", "last maintenance (UTC)", "since"]
    table = [headers] + [[t.table_name, str(t.version), f"{t.rows:,}", f"{t.files:,}", size_text(t.bytes),
                          t.last_maintenance or "never", duration_text(t.since_maintenance_s)] for t in tables]
    return ("tables (data files of the current version; `lakehouse maintain` compacts, trims and vacuums):\n"
            + _columns(table))


def format_freshness_summary(rows: list[dict]) -> str:
    if not rows:
        return "freshness: no batch committed rows in that time"
    headers = ["table", "batches", "rows", "event->commit p50 / p95", "window end->commit p50 / p95",
               "ingest->commit p50 / p95"]

    def pair(row, measure):
        p50, p95 = row[f"{measure}_p50_s"], row[f"{measure}_p95_s"]
        return "-" if p95 is None else f"{duration_text(p50)} / {duration_text(p95)}"

    table = [headers] + [[r["table_name"], f"{r['batches']:,}", f"{r['rows']:,}", pair(r, "event"),
                          pair(r, "window"), pair(r, "ingest")] for r in rows]
    return ("freshness measured at each commit (ops.freshness; p50: the median batch's, p95: the worst batch's):\n"
            + _columns(table))


def _columns(table: list[list[str]]) -> str:
    """Rows of cells, left-aligned in columns, a rule under the header row."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def file_backlog(config: LakehouseConfig, flow) -> int:
    """Files landed for a file source's bronze flow that its query has not taken in yet."""
    done = processed_files(flow.checkpoint)
    return sum(1 for f in landed_files(config.landing_path(flow.name)) if f not in done)


def source_backlog(progress_json: str | None) -> tuple[int, str] | None:
    """What a micro-batch's sources had not read yet when it ran, from its progress: Kafka
    messages (latest minus end offsets), a Delta source's versions behind the table's newest, or
    the files a source reports outstanding. None when the progress does not say."""
    if not progress_json:
        return None
    total, unit = 0, None
    for source in json.loads(progress_json).get("sources", []):
        end, latest = (_offset(source.get(k)) for k in ("endOffset", "latestOffset"))
        outstanding = (source.get("metrics") or {}).get("numFilesOutstanding")
        if str(source.get("description", "")).startswith("Kafka") and end and latest:
            total += sum(max(0, int(offset) - int(end.get(topic, {}).get(partition, 0)))
                         for topic, partitions in latest.items() for partition, offset in partitions.items())
            unit = unit or "msgs"
        elif outstanding is not None:
            total, unit = total + int(outstanding), unit or "files"
        elif end and latest and "reservoirVersion" in latest:
            total, unit = total + max(0, latest["reservoirVersion"] - end.get("reservoirVersion", 0)), unit or "versions"
    return (total, unit) if unit else None


def _offset(value):
    return json.loads(value) if isinstance(value, str) else value


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
    lines = _columns(table).splitlines()
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
