"""Freshness: how old the data of each commit is, measured where the commit happens.

Every micro-batch that commits rows to a bronze, silver or gold table measures the times of the
rows it writes, in the same pass that writes or counts them (no extra scan):

- ``ingest``: ``_ingested_at`` (when bronze took the record in; bronze and silver);
- ``event``: the entity's event time (silver; bronze reads just that field of raw records, from
  the first entity that reads the source: a file source's from a sample of lines, every
  :data:`ROW_SAMPLE`-th, more sparsely in a batch of 32 MiB or more, :func:`bronze_sample_every`;
  silver's percentiles come from every :data:`ROW_SAMPLE`-th line, its oldest from every row);
- ``window``: a windowed gold table's window end (``gold.<table>.window_end``).

A :class:`Measured` holds, per measure, the oldest time, the 5th percentile and the median
(epoch seconds). Once the commit is known (its Delta version and commit timestamp, found in the
table's history by the batch's marker or, for a streaming Delta sink, by query id and batch id),
the latencies follow without touching the rows again: for one commit time C, the p-th percentile
of ``C - t`` is ``C`` minus the (100-p)-th percentile of ``t``. One ``ops.freshness`` row per flow
and committed batch (:func:`resolve`); the progress recorder (lakehouse/progress.py)
resolves and appends them with its progress rows, a batch gold build appends its own.
``lakehouse status`` shows each table's last figures and its age (lakehouse/status.py).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType, TimestampType

from lakehouse.config import LakehouseConfig
from lakehouse.row_appends import append_rows
from lakehouse.tables import TableRef, commit_ms, commits, resolve_table

FRESHNESS_TABLE = "ops.freshness"
MEASURES = ("ingest", "event", "window")
FRESHNESS_SCHEMA = StructType(
    [
        StructField("flow", StringType()),  # the flow's id: bronze.telemetry, silver.telemetry, gold.<table>
        StructField("table_name", StringType()),  # the table the commit went to
        StructField("batch_id", LongType()),  # the micro-batch (a batch gold table: its build's version)
        StructField("version", LongType()),  # the commit's Delta version
        StructField("commit_time", TimestampType()),  # the commit's Delta timestamp (UTC)
        StructField("rows", LongType()),  # rows the commit wrote (silver: rows kept, before the MERGE)
    ]
    + [StructField(f"{measure}_{figure}_s", DoubleType())  # seconds from the row's time to the commit
       for measure in MEASURES for figure in ("p50", "p95", "max")]
)
FRESHNESS_METRIC = "freshness"  # the observed metric of a streaming Delta sink's measurements
_ACCURACY = 1000  # percentile_approx: rank error about 1/1000 of the rows
# Commit timestamps come from the storage's clock: a commit is looked for this far before the
# driver measured its batch (a clock further off loses that batch's row, nothing else).
COMMIT_CLOCK_MARGIN_MS = 60_000
LOOK_BACK_COMMITS = 50  # the fewest commits a resolve reads (freshness._commits)
# Percentiles of a batch of records are those of a sample: every ROW_SAMPLE-th line of each file
# (or offset of each Kafka partition), its first line included. percentile_approx over every row
# cost about 1 s per measure per million rows on two cores, a third of silver's overhead over a
# plain parse (bench/RESULTS.md, issue 16); the oldest time and the row count stay exact. A
# file source's bronze also reads the event time from the sampled lines only, more sparsely in
# a large batch (:func:`bronze_sample_every`).
ROW_SAMPLE = 16
# A file bronze batch of 32 MiB or more samples between about this many lines and twice as many
# (lines of 256 bytes assumed), unless its files are short (below): reading the event time of a
# raw line (a JSON or CSV parse) is what the sample costs, about 0.4 s per million lines at every
# 16th on two cores against 0.1 s at every 256th (bench/RESULTS.md, issue 16, ninth round). Its
# 5th percentile's rank then has a standard error of about 0.35% of the batch.
BRONZE_SAMPLE_LINES = 4096
# ... while a file of average size keeps at least this many sampled lines at a stride above
# ROW_SAMPLE: a batch of many short files samples every ROW_SAMPLE-th line, as a small batch
# does, not just their first lines.
_SAMPLED_LINES_PER_FILE = 8
# Lines a batch is assumed to hold per byte planned (short lines: the sample errs on the large side).
_BYTES_PER_LINE = 256


def sampled_rows(every: int = ROW_SAMPLE) -> Column:
    """True for the rows of a batch of records whose times the percentiles take: every
    ``every``-th line of each file, its first included; a row without a position counts."""
    return F.coalesce(F.col("_source_line") % every == 1, F.lit(True))


def bronze_sample_every(planned_bytes: int, files: int = 1) -> int:
    """How sparsely a file bronze batch of ``files`` files and ``planned_bytes`` samples its lines
    for the event time: every :data:`ROW_SAMPLE`-th line, or a larger power of two, so that the
    sample stays about :data:`BRONZE_SAMPLE_LINES` lines, as long as a file of the batch's average
    size keeps :data:`_SAMPLED_LINES_PER_FILE` of them (each file's first line is always in it)."""
    lines = planned_bytes // _BYTES_PER_LINE
    per_file = lines // max(files, 1)
    every = ROW_SAMPLE
    while lines // (every * 2) >= BRONZE_SAMPLE_LINES and per_file // (every * 2) >= _SAMPLED_LINES_PER_FILE:
        every *= 2
    return every


def time_aggregates(measure: str, time: Column, sample: Column | None = None) -> list[Column]:
    """Aggregates giving one measure's oldest time (epoch seconds; rows where ``time`` is null do
    not count) and its percentiles: over every row by ``percentile_approx``, or, with ``sample``,
    exactly over the rows where it holds, whose times are collected (``<measure>_sample``;
    :meth:`Measured.from_row` takes the percentiles). Collecting a sample of a sixteenth of the
    rows cost a fifth of ``percentile_approx`` over that sample (bench/RESULTS.md, issue 16)."""
    seconds = F.unix_micros(time.cast("timestamp")) / 1e6
    if sample is None:
        return [F.min(seconds).alias(f"{measure}_oldest"),
                F.percentile_approx(seconds, F.array(F.lit(0.05), F.lit(0.5)), F.lit(_ACCURACY)).alias(f"{measure}_q")]
    return [F.min(seconds).alias(f"{measure}_oldest"), F.collect_list(F.when(sample, seconds)).alias(f"{measure}_sample")]


def sampled_time_aggregates(measure: str, time: Column, every: int = ROW_SAMPLE) -> list[Column]:
    """The aggregates of a measure whose ``time`` is read on the sampled rows only
    (:func:`sampled_rows`; bronze reads the event time from a sample of raw lines): their times,
    collected; its oldest is then the sample's. ``time`` is evaluated on those rows alone."""
    return [F.collect_list(sampled_seconds(time, every)).alias(f"{measure}_sample")]


def sampled_seconds(time: Column, every: int = ROW_SAMPLE) -> Column:
    """A row's ``time`` in epoch seconds where it is a sampled row (:func:`sampled_rows`), else
    null: what :func:`sampled_time_aggregates` collects."""
    return F.unix_micros(F.when(sampled_rows(every), time).cast("timestamp")) / 1e6


def constant_time(measure: str, at: datetime) -> dict[str, object]:
    """The measurements of a time every row shares (a file bronze batch's ``_ingested_at``): exact,
    without reading the rows."""
    seconds = at.timestamp()
    return {f"{measure}_oldest": seconds, f"{measure}_q": [seconds, seconds]}


def sample_quantiles(times: list[float]) -> tuple[float, float, float] | None:
    """(oldest, 5th percentile, median) of collected times: the smallest time with at least that
    share of the times at or below it, as ``percentile_approx`` answers; None when empty."""
    if not times:
        return None
    ordered = sorted(times)
    at = [ordered[max(0, math.ceil(share * len(ordered)) - 1)] for share in (0.05, 0.5)]
    return ordered[0], at[0], at[1]


def measure_aggregates(times: dict[str, Column], rows: Column | None = None, sample: Column | None = None) \
        -> list[Column]:
    """Aggregates for :meth:`Measured.from_row`: the rows written (count of ``rows``, a condition,
    else every row) and each measure's times (``times``: measure -> time column; percentiles over
    the rows where ``sample`` holds, default all: :func:`time_aggregates`)."""
    counted = F.count(F.lit(1)) if rows is None else F.count(F.when(rows, 1))
    return [counted.alias("fresh_rows"), *[a for m, t in times.items() for a in time_aggregates(m, t, sample)]]


def observe_freshness(df: DataFrame, times: dict[str, Column]) -> DataFrame:
    """``df`` with the measurements as an observed metric (a streaming Delta sink's batches; the
    progress recorder reads it from each batch's progress)."""
    return df.observe(FRESHNESS_METRIC, *measure_aggregates(times))


@dataclass
class Measured:
    """One batch's measurements of the rows it committed to one table, before the commit is known."""

    flow: str
    table: str  # logical name
    batch_id: int
    rows: int
    times: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # measure -> (oldest, q05, q50)
    marker: str | None = None  # the commit's userMetadata (tables.batch_marker) ...
    query_id: str | None = None  # ... or, for a streaming Delta sink, the query whose batch committed
    measured_at_ms: float = field(default_factory=lambda: time.time() * 1000)  # after its commit

    @classmethod
    def from_row(cls, row: Row | dict, flow: str, table: str, batch_id: int, **commit) -> Measured:
        """From the aggregates of :func:`measure_aggregates` (a collected row, or observed metrics)."""
        values = row.asDict() if isinstance(row, Row) else dict(row)
        times = {}
        for measure in MEASURES:
            oldest, quantiles = values.get(f"{measure}_oldest"), values.get(f"{measure}_q")
            sampled = sample_quantiles(values.get(f"{measure}_sample") or [])
            if oldest is not None and quantiles:
                times[measure] = (float(oldest), float(quantiles[0]), float(quantiles[1]))
            elif sampled is not None:  # the oldest of every row where it was taken, else the sample's
                times[measure] = (sampled[0] if oldest is None else min(float(oldest), sampled[0]), *sampled[1:])
        return cls(flow, table, batch_id, int(values.get("fresh_rows") or 0), times, **commit)

    def row(self, version: int, commit_time: datetime) -> tuple:
        """The ops.freshness row once the commit is known (``commit_time`` aware, UTC)."""
        at = commit_time.timestamp()
        figures = []
        for measure in MEASURES:
            oldest, q05, q50 = self.times.get(measure, (None, None, None))
            figures += [None, None, None] if oldest is None else [
                round(at - q50, 3), round(at - q05, 3), round(at - oldest, 3)]
        return (self.flow, self.table, self.batch_id, version, commit_time, self.rows, *figures)


def resolve(spark: SparkSession, config: LakehouseConfig, pending: list[Measured]) -> list[tuple]:
    """The ops.freshness rows of the measurements whose commit is in their table's history, read
    once per table. A batch whose commit is not there (nothing committed: a MERGE that changed
    nothing) gives no row; so does one without rows."""
    by_table: dict[str, list[Measured]] = defaultdict(list)
    for measured in pending:
        if measured.rows:
            by_table[measured.table].append(measured)
    rows = []
    for table, measured in by_table.items():
        found = _commits(spark, resolve_table(config, table), min(m.measured_at_ms for m in measured))
        for m in measured:
            key = m.marker if m.marker is not None else (m.query_id, str(m.batch_id))
            if key in found:
                rows.append(m.row(*found[key]))
    return rows


def _commits(spark: SparkSession, ref: TableRef, since_ms: float) -> dict:
    """The table's commits back to ``since_ms`` (less a margin for the storage's clock against the
    driver's; the measurements were made after their commits): marker (userMetadata) or (query id,
    batch id) of a streaming sink's commit -> (version, commit time, UTC). History is read newest
    first as far as that, and at least :data:`LOOK_BACK_COMMITS` commits (a measurement reported
    late, by a listener event that waited, still finds its commit): a table whose query commits
    empty batches (a streaming gold table's) may have many commits since. A marker committed
    twice (a batch's file read again alone) keeps its first commit, the one its measurement
    describes. Commit times are made increasing as Delta's history makes them (a storage clock
    that went back), over the commits read."""
    read = []
    for commit in commits(spark, ref):
        read.append(commit)
        if len(read) >= LOOK_BACK_COMMITS and commit_ms(commit) < since_ms - COMMIT_CLOCK_MARGIN_MS:
            break
    found, last = {}, None
    for commit in reversed(read):  # oldest first: a newer commit of the same key does not replace it
        when = commit["timestamp"].astimezone(timezone.utc)  # a naive local time
        if last is not None and when <= last:
            when = last + timedelta(milliseconds=1)
        last = when
        parameters = commit["operationParameters"] or {}
        keys = [commit["userMetadata"]] if commit["userMetadata"] else []
        if "epochId" in parameters and "queryId" in parameters:
            keys.append((parameters["queryId"], parameters["epochId"]))
        for key in keys:
            found.setdefault(key, (commit["version"], when))
    return found


def append_freshness(spark: SparkSession, config: LakehouseConfig, rows: list[tuple]) -> None:
    """Append ops.freshness rows (like progress rows: a crash may lose or repeat some)."""
    if rows:
        append_rows(spark, rows, FRESHNESS_SCHEMA, resolve_table(config, FRESHNESS_TABLE))


def p95_seconds(row: tuple | Row) -> float | None:
    """The p95 freshness a line prints for a batch: event time's, else the window end's, else ingest's."""
    values = dict(zip(FRESHNESS_SCHEMA.fieldNames(), row, strict=True)) if isinstance(row, tuple) else row.asDict()
    return next((values[f"{m}_p95_s"] for m in ("event", "window", "ingest") if values[f"{m}_p95_s"] is not None),
                None)
