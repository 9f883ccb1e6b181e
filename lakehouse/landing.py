"""Landing files: what became of each file a file source's query planned, and files changed since.

The bronze query of a file source (lakehouse.bronze) plans each micro-batch with Spark's file
source, then reads the planned files itself, one micro-batch at a time (:func:`ingest_files`):

- every planned file is looked at first: one that is gone, or larger than the source's
  ``max_file_bytes`` (a compressed file is read whole, so this bounds the memory it needs; a
  .gz or .bz2 file counts by what it decompresses to), is not read;
- the others are read in one pass (lakehouse/landing_lines.py: plain files by Spark's line
  reader; compressed files, by their suffix, and files that start with a byte-order mark,
  whole; on one machine, lakehouse/landing_arrow.py on the driver); a file that cannot be
  read (a corrupt archive, deleted or made unreadable meanwhile) does not stop the stream: it
  is found by reading files alone, and the error it gives names it (or, read now, its lines
  are taken); a failure that no file gives alone fails the batch
  (redone on restart);
- their lines are appended to ``bronze.<source>``; every file read is recorded in
  ``ops.ingested_files`` (size and modification time as read, lines: kept in the checkpoint
  and appended with other batches' off the batch's path, lakehouse/landing_journal.py) and
  every file not read in ``ops.bad_files`` (with the reason). Nothing stops the stream on a bad
  file, and each landed file ends up in exactly one of the two tables.

Landing files must be immutable: a file is taken in once, by its path. :func:`changed_files`
finds files whose size or modification time differs from what was read (lines appended after
ingest would otherwise be lost without a trace); ``status`` and ``reconcile`` report them.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse import fs
from lakehouse.config import LakehouseConfig
from lakehouse.failpoints import failpoint
from lakehouse.freshness import bronze_sample_every, constant_time, sampled_time_aggregates
from lakehouse.landing_arrow import DriverRead, LandingReadError, append_on_driver, driver_source, reads_on_driver
from lakehouse.landing_journal import INGESTED_FILES_SCHEMA, INGESTED_FILES_TABLE, journal
from lakehouse.landing_lines import LineRead, inflated_size, must_read_whole, one_file_per_partition, read_error
from lakehouse.row_appends import append_rows
from lakehouse.table_create import APPEND_ONLY_CHECKPOINTS, create_table_if_missing
from lakehouse.tables import TableRef, append_once, batch_marker, bronze_table, committed, read_table, resolve_table, table_exists
from lakehouse.threads import at_once

BAD_FILES_TABLE = "ops.bad_files"
BAD_FILES_SCHEMA = StructType(
    [
        StructField("source", StringType()),
        StructField("path", StringType()),  # as bronze names files (_source_file)
        StructField("size", LongType()),  # bytes when planned; null when the file was gone
        StructField("reason", StringType()),  # missing | unreadable | corrupt | too_large
        StructField("detail", StringType()),  # one line: the error, or the size limit
        StructField("batch_id", LongType()),
        StructField("recorded_at", TimestampType()),
    ]
)

BAD_REASONS = ("missing", "unreadable", "corrupt", "too_large")


@dataclass
class LandedFile:
    """One planned file and what became of it."""

    uri: str  # as the file source's log names it
    size: int | None = None
    mtime_ms: int | None = None
    lines: int | None = None  # set once read
    reason: str | None = None  # set when it is a bad file
    detail: str | None = None
    read_whole: bool = False  # compressed, or starts with a byte-order mark (landing_lines)

    @property
    def path(self) -> str:
        """The file as Spark's readers name it (``_metadata.file_path``, bronze's ``_source_file``)."""
        return spark_file_path(self.uri)


def spark_file_path(uri: str) -> str:
    """``file:///a%20b`` (the source log's URI) -> ``file:/a%20b`` (``_metadata.file_path``)."""
    return re.sub(r"^file:///", "file:/", uri)


def ensure_landing_tables(spark: SparkSession, config: LakehouseConfig) -> None:
    at_once(
        lambda: create_table_if_missing(
            spark, resolve_table(config, BAD_FILES_TABLE), BAD_FILES_SCHEMA, properties=APPEND_ONLY_CHECKPOINTS,
            comment="Landing files a bronze query planned but could not read; see lakehouse/landing.py"),
        lambda: create_table_if_missing(
            spark, resolve_table(config, INGESTED_FILES_TABLE), INGESTED_FILES_SCHEMA,
            properties=APPEND_ONLY_CHECKPOINTS,
            comment="Landing files read into bronze, with size and mtime as read; see lakehouse/landing.py"),
    )


def _now() -> datetime:
    """Now, in whole milliseconds (a Delta statistic's precision, so bronze's file statistics are exact)."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def look_at(spark: SparkSession, uris: list[str], max_file_bytes: int) -> list[LandedFile]:
    """Size and modification time of each planned file, and whether it is read whole
    (landing_lines.must_read_whole); gone or too large ones marked bad."""
    local = all(fs.local_path(uri) is not None for uri in uris)
    with ThreadPoolExecutor(max_workers=1 if local else 16) as pool:  # object stores: requests in parallel
        stats = list(pool.map(lambda uri: (fs.stat(spark, uri), must_read_whole(spark, uri)), uris))
    files = []
    for uri, (stat, whole) in zip(uris, stats, strict=True):
        landed = LandedFile(uri, read_whole=whole)
        if stat is None:
            landed.reason, landed.detail = "missing", "deleted after it was listed, before it was read"
        else:
            landed.size, landed.mtime_ms = stat.size, stat.mtime_ms
            if stat.size > max_file_bytes:
                landed.reason = "too_large"
                landed.detail = (f"{stat.size:,} bytes, over the source's max_file_bytes {max_file_bytes:,}: "
                                 "split it, or raise max_file_bytes")
            elif (inflated := inflated_size(uri, max_file_bytes)) is not None and inflated > max_file_bytes:
                landed.reason = "too_large"
                landed.detail = (f"{stat.size:,} bytes that decompress to over the source's max_file_bytes "
                                 f"{max_file_bytes:,} (it is read whole): split it, or raise max_file_bytes")
        files.append(landed)
    return files


_CAUSE = re.compile(r"^(?:Caused by: )?((?:[a-z]\w*\.)+\w*(?:Exception|Error)): ?(.*)$")


def diagnosis(exc: Exception) -> tuple[str, str]:
    """(reason, one-line detail) for the error reading one file alone gave.

    Read from the error's text, Java's "Caused by:" chain included: the Java exception objects are
    not reachable from Python under Spark Connect, and their class names are stable API of Hadoop.
    A file read on the driver fails with a LandingReadError, which names its Python error."""
    if isinstance(exc, LandingReadError):
        return exc.diagnosis()
    causes = [m for m in map(_CAUSE.match, (line.strip() for line in str(exc).splitlines())) if m]
    lines = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    name, message = (causes[-1].group(1), causes[-1].group(2)) if causes else ("", lines[0])
    detail = f"{name.rsplit('.', 1)[-1]}: {message}".strip(": ")
    if "Permission denied" in message or "AccessDenied" in name:
        return "unreadable", detail
    if "FileNotFound" in name or "PATH_NOT_FOUND" in message:
        return "missing", detail
    return "corrupt", detail


def lines_in_bronze(spark: SparkSession, ref: TableRef, paths: list[str]) -> dict[str, int]:
    """Rows per file already in bronze (a batch redone after a bronze commit)."""
    rows = (read_table(spark, ref).where(F.col("_source_file").isin(paths))
            .groupBy("_source_file").count().collect())
    return {fs.canonical(r["_source_file"]): r["count"] for r in rows}


def _append_lines(spark: SparkSession, files: list[LandedFile], bronze: TableRef, marker: str, batch_id: int,
                  name: str, strict: bool = False, times: dict[str, Column] | None = None,
                  on_driver: bool = False) -> tuple[dict[str, int], dict | None]:
    """Append the lines of ``files`` to bronze in one commit (lakehouse/landing_lines.py reads
    them; with ``on_driver``, lakehouse/landing_arrow.py, where it can): (lines per file read, by
    canonical path; with ``times``, the commit's freshness measurements, lakehouse/freshness.py:
    the rows, the ingest time every row shares, and each of ``times``, read on sampled lines only:
    more sparsely in a larger batch, freshness.bronze_sample_every)."""
    ingested_at = _now()
    every = bronze_sample_every(sum(f.size or 0 for f in files), len(files))
    uris = [f.uri for f in files]
    if on_driver and reads_on_driver(spark, bronze, uris):
        read = DriverRead(spark, [(f.uri, f.path) for f in files], ingested_at, every, times, strict)
        failpoint("bronze.append", batch_id)
        if append_on_driver(spark, read, bronze, marker, batch_id):
            return _measured(read.counts, read.observed() if times is not None else None, ingested_at)
    aggregates = [a for m, t in (times or {}).items() for a in sampled_time_aggregates(m, t, every)]
    read = LineRead(spark, uris, name, strict, whole={f.uri for f in files if f.read_whole},
                    ingested_at=ingested_at, also=aggregates)
    with one_file_per_partition(spark):
        read.check_partitions()
        failpoint("bronze.append", batch_id)
        append_once(read.rows, bronze, marker)
    return _measured(read.counts(), read.observed() if times is not None else None, ingested_at)


def _measured(counts: dict[str, int], observed: dict | None, ingested_at: datetime) -> tuple[dict[str, int], dict | None]:
    if observed is None:
        return counts, None
    return counts, {**observed, "fresh_rows": sum(counts.values()), **constant_time("ingest", ingested_at)}


def _append_batch(spark: SparkSession, todo: list[LandedFile], bronze: TableRef, marker: str, batch_id: int,
                  times: dict[str, Column] | None, on_driver: bool = False) -> tuple[dict[str, int], dict | None]:
    """:func:`_append_lines` for the batch's files. The line reader fails the whole read on a
    plain file it cannot read (rather than keep part of it), and a file gone before the read is
    planned fails any read: then each file is read alone, without writing; one that fails twice
    is a bad file, named by its error, and the others are appended. If every file reads alone,
    the failure was not a file's: it is raised (so is a cancelled job: the query is stopping)."""
    started_ms = int(time.time() * 1000)
    try:
        return _append_lines(spark, todo, bronze, marker, batch_id, f"files-{batch_id}", times=times,
                             on_driver=on_driver)
    except Exception as exc:
        if _cancelled(exc) or committed(spark, bronze, marker, since_ms=started_ms) is not None:
            raise  # stopping; or the commit was made, and a restart redoes the batch from bronze
        failed = {}
        for landed in todo:
            error = read_error(spark, landed.uri, landed.read_whole)
            if error is not None and _cancelled(error):
                raise
            if error is not None and read_error(spark, landed.uri, landed.read_whole) is not None:
                failed[id(landed)] = error  # twice: not an object store's passing error
        if not failed:
            raise
    for landed in todo:
        if id(landed) in failed:
            landed.reason, landed.detail = diagnosis(failed[id(landed)])
    rest = [f for f in todo if f.reason is None]
    if not rest:
        return {}, None
    return _append_lines(spark, rest, bronze, marker, batch_id, f"files-{batch_id}-again", times=times,
                         on_driver=on_driver)


def _cancelled(exc: BaseException) -> bool:
    """A Spark job cancelled or a thread interrupted (a query stopping), not a file's fault."""
    text = str(exc)
    return "InterruptedException" in text or " cancelled" in text or "JOB_CANCELLED" in text


def ingest_files(
    spark: SparkSession,
    config: LakehouseConfig,
    source_name: str,
    uris: list[str],
    app_id: str,
    batch_id: int,
    replay_since_ms: int | None,
    checkpoint: str,
    times: dict[str, Column] | None = None,
) -> tuple[list[LandedFile], dict | None]:
    """Read the batch's planned files into bronze, record each in ops.ingested_files (journaled in
    the query's ``checkpoint``, landing_journal) or ops.bad_files;
    returns the files and the freshness measurements (``times``) of the lines appended.
    The files are read together (lakehouse/landing_lines.py); a compressed file the read cannot
    take is skipped, then read again alone, strictly: the error it gives then is why it is bad,
    and if it reads now (an object store's passing error) its lines go to bronze in a commit of
    their own; a plain file the read cannot take is found by :func:`_append_batch`. For a
    batch that may be redone after a crash (checkpoints.redone_batch; ``replay_since_ms`` says
    when it was planned), the lines each planned file already gave bronze are counted first,
    and only the files without any are read: a file read before the crash is counted from
    bronze even if it has gone since, and none is appended twice. ops.bad_files is appended
    once per batch (row_appends.append_rows, marked ``app_id:batch_id``); the ops.ingested_files rows
    are journaled in the checkpoint.
    """
    source = config.source(source_name)
    bronze = bronze_table(config, source_name)
    files = look_at(spark, uris, source.max_file_bytes)
    marker = batch_marker(app_id, batch_id)
    done = lines_in_bronze(spark, bronze, [f.path for f in files]) if replay_since_ms is not None else {}
    for landed in files:
        if fs.canonical(landed.path) in done:
            landed.lines, landed.reason, landed.detail = done[fs.canonical(landed.path)], None, None
    for empty in (f for f in files if f.reason is None and f.lines is None and not f.size):
        empty.lines = 0  # Spark's readers skip empty files; they hold no lines
    failpoint("bronze.read", batch_id)
    todo = [f for f in files if f.reason is None and f.lines is None]
    on_driver = driver_source(source)
    counted, measured = _append_batch(spark, todo, bronze, marker, batch_id, times, on_driver) if todo else ({}, None)
    for landed in (f for f in todo if f.reason is None):
        if fs.canonical(landed.path) in counted:
            landed.lines = counted[fs.canonical(landed.path)]
            continue
        failpoint("bronze.reread", batch_id)
        try:  # alone, without skipping: it fails with its own error, or gives its lines
            again, _ = _append_lines(spark, [landed], bronze, marker, batch_id, f"file-{batch_id}", strict=True,
                                     on_driver=on_driver)
            landed.lines = again.get(fs.canonical(landed.path), 0)  # 0: no lines (an empty archive, say)
        except (LandingReadError, PySparkException, Py4JError) as exc:  # a read's error is the diagnosis
            landed.reason, landed.detail = diagnosis(exc)
    _record(spark, config, source_name, files, app_id, batch_id, replay_since_ms, checkpoint)
    return files, measured


def _record(spark: SparkSession, config: LakehouseConfig, source_name: str, files: list[LandedFile],
            app_id: str, batch_id: int, replay_since_ms: int | None, checkpoint: str) -> None:
    now = _now()
    bad = [(source_name, f.path, f.size, f.reason, f.detail, batch_id, now) for f in files if f.reason]
    good = [(source_name, f.path, f.size, _timestamp(f.mtime_ms), f.lines, batch_id, now)
            for f in files if not f.reason]
    writer = _writer_session(spark)
    failpoint("bronze.bad_files", batch_id)
    if bad:
        append_rows(writer, bad, BAD_FILES_SCHEMA, resolve_table(config, BAD_FILES_TABLE),
                    batch_marker(app_id, batch_id), replay_since_ms)
    failpoint("bronze.ingested_files", batch_id)
    # A redone batch whose rows a release before the journal appended to the table itself (in a
    # commit marked as the bad files' are) is not journaled again.
    if replay_since_ms is None or committed(writer, resolve_table(config, INGESTED_FILES_TABLE),
                                            batch_marker(app_id, batch_id), replay_since_ms) is None:
        journal(spark, checkpoint, batch_id, good)
    failpoint("bronze.done", batch_id)


_writer_sessions: dict[int, SparkSession] = {}


def _writer_session(spark: SparkSession) -> SparkSession:
    """A session of its own for the ops appends (see ProgressRecorder: a MERGE's session-wide
    settings must not reach them), made once per Spark application: a new session's first query
    costs about a second."""
    key = id(spark.sparkContext)
    if key not in _writer_sessions:
        _writer_sessions[key] = spark.newSession()
    return _writer_sessions[key]


def _timestamp(mtime_ms: int | None) -> datetime | None:
    if mtime_ms is None:
        return None
    return datetime.fromtimestamp(mtime_ms / 1000, tz=timezone.utc)


# -- reading the records back -----------------------------------------------------------------


def bad_files(spark: SparkSession, config: LakehouseConfig, source_name: str | None = None) -> list:
    """Rows of ops.bad_files (for one source, or all), oldest first."""
    ref = resolve_table(config, BAD_FILES_TABLE)
    if not table_exists(spark, ref):
        return []
    rows = read_table(spark, ref)
    if source_name is not None:
        rows = rows.where(F.col("source") == source_name)
    return rows.orderBy("recorded_at", "path").collect()


@dataclass
class ChangedFile:
    path: str
    size_read: int
    size_now: int
    mtime_read: datetime | None  # UTC
    mtime_now: datetime | None


def changed_files(reader, source_name: str) -> list[ChangedFile]:
    """Ingested files whose size or modification time differs now from when they were read
    (files deleted or moved away since are not reported). ``reader``: a lakehouse.table_reader
    reader (Spark's, or the direct one)."""
    if not reader.exists(INGESTED_FILES_TABLE):
        return []
    rows = [row for row in reader.rows("SELECT source, path, size, modification_time FROM {t}", INGESTED_FILES_TABLE)
            if row["source"] == source_name]
    local = all(fs.local_path(row["path"]) is not None for row in rows)
    with ThreadPoolExecutor(max_workers=1 if local else 16) as pool:  # object stores: one request each
        stats = list(pool.map(lambda row: reader.stat(fs.canonical(row["path"])), rows))
    changed = []
    for row, stat in zip(rows, stats, strict=True):
        if stat is None:
            continue  # moved away or deleted after ingest
        read_at = row["modification_time"]  # aware UTC (the readers' rows)
        mtime_read = None if read_at is None else round(read_at.timestamp() * 1000)
        if stat.size != row["size"] or stat.mtime_ms != mtime_read:
            changed.append(ChangedFile(row["path"], row["size"], stat.size, _timestamp(mtime_read),
                                       _timestamp(stat.mtime_ms)))
    return sorted(changed, key=lambda c: c.path)
