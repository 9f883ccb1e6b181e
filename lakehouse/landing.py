"""Landing files: what became of each file a file source's query planned, and files changed since.

The bronze query of a file source (lakehouse.bronze) plans each micro-batch with Spark's file
source, then reads the planned files itself, one micro-batch at a time (:func:`ingest_files`):

- every planned file is looked at first: one that is gone, or larger than the source's
  ``max_file_bytes`` (a file is read whole, so its size bounds the memory it needs), is not read;
- the others are read whole (compressed files decompressed by their suffix: .gz, .bz2, ...);
  a file that cannot be read (a corrupt archive, deleted or made unreadable meanwhile) is
  skipped by the read, not allowed to fail it, and then named with the error it gives;
- their lines are appended to ``bronze.<source>``; every file read is recorded in
  ``ops.ingested_files`` (size and modification time as read, lines) and every file not read
  in ``ops.bad_files`` (with the reason). Nothing stops the stream on a bad file, and each
  landed file is in exactly one of the two tables.

Landing files must be immutable: a file is taken in once, by its path. :func:`changed_files`
finds files whose size or modification time differs from what was read (lines appended after
ingest would otherwise be lost without a trace); ``status`` and ``reconcile`` report them.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from lakehouse import fs
from lakehouse.checkpoints import landed_files
from lakehouse.config import LakehouseConfig
from lakehouse.failpoints import failpoint
from lakehouse.tables import (
    TableRef,
    append_once,
    batch_marker,
    committed,
    create_table_if_missing,
    read_table,
    resolve_table,
    table_exists,
)

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

INGESTED_FILES_TABLE = "ops.ingested_files"
INGESTED_FILES_SCHEMA = StructType(
    [
        StructField("source", StringType()),
        StructField("path", StringType()),  # as bronze names files (_source_file)
        StructField("size", LongType()),  # bytes on disk when read (compressed size for .gz etc.)
        StructField("modification_time", TimestampType()),
        StructField("lines", LongType()),  # rows it gave bronze
        StructField("batch_id", LongType()),
        StructField("ingested_at", TimestampType()),
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

    @property
    def path(self) -> str:
        """The file as Spark's readers name it (``_metadata.file_path``, bronze's ``_source_file``)."""
        return spark_file_path(self.uri)


def spark_file_path(uri: str) -> str:
    """``file:///a%20b`` (the source log's URI) -> ``file:/a%20b`` (``_metadata.file_path``)."""
    return re.sub(r"^file:///", "file:/", uri)


_GLOB = re.compile(r"([\\\[\]{}*?])")


def _load_path(uri: str) -> str:
    """A path for ``DataFrameReader.load``: the URI's path unquoted, glob characters escaped
    (``load`` expands globs, so a file named ``x[1].jsonl`` would otherwise not be found)."""
    readable = fs.canonical(uri)
    if fs.local_path(uri) is not None:
        readable = "file:" + readable
    return _GLOB.sub(r"\\\1", readable)


def ensure_landing_tables(spark: SparkSession, config: LakehouseConfig) -> None:
    create_table_if_missing(spark, resolve_table(config, BAD_FILES_TABLE), BAD_FILES_SCHEMA,
                            comment="Landing files a bronze query planned but could not read; see lakehouse/landing.py")
    create_table_if_missing(spark, resolve_table(config, INGESTED_FILES_TABLE), INGESTED_FILES_SCHEMA,
                            comment="Landing files read into bronze, with size and mtime as read; see lakehouse/landing.py")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def look_at(spark: SparkSession, uris: list[str], max_file_bytes: int) -> list[LandedFile]:
    """Size and modification time of each planned file; gone or too large ones marked bad."""
    local = all(fs.local_path(uri) is not None for uri in uris)
    with ThreadPoolExecutor(max_workers=1 if local else 16) as pool:  # object stores: one request each
        stats = list(pool.map(lambda uri: fs.stat(spark, uri), uris))
    files = []
    for uri, stat in zip(uris, stats):
        landed = LandedFile(uri)
        if stat is None:
            landed.reason, landed.detail = "missing", "deleted after it was listed, before it was read"
        else:
            landed.size, landed.mtime_ms = stat.size, stat.mtime_ms
            if stat.size > max_file_bytes:
                landed.reason = "too_large"
                landed.detail = (f"{stat.size:,} bytes, over the source's max_file_bytes {max_file_bytes:,} "
                                 "(a file is read whole): split it, or raise max_file_bytes")
        files.append(landed)
    return files


def read_whole_files(spark: SparkSession, files: list[LandedFile]) -> DataFrame:
    """One row per readable file: ``value`` (its bytes, decompressed) and ``_metadata``.

    A file that cannot be read is left out rather than failing the read (Spark's
    ignoreCorruptFiles / ignoreMissingFiles); :func:`diagnose` tells why afterwards.
    """
    return (
        spark.read.format("text").option("wholetext", True)
        .option("ignoreCorruptFiles", True).option("ignoreMissingFiles", True)
        .load([_load_path(f.uri) for f in files])
    )


_CAUSE = re.compile(r"^(?:Caused by: )?((?:[a-z]\w*\.)+\w*(?:Exception|Error)): ?(.*)$")


def diagnose(spark: SparkSession, landed: LandedFile) -> tuple[str, str] | None:
    """(reason, one-line detail) for a file the batch's read skipped, from reading it alone;
    None when it reads without error now."""
    try:
        spark.read.format("text").option("wholetext", True).load(_load_path(landed.uri)).count()
    except Exception as exc:  # the error is the diagnosis
        causes = [m for m in map(_CAUSE.match, (line.strip() for line in str(exc).splitlines())) if m]
        name, message = (causes[-1].group(1), causes[-1].group(2)) if causes else ("", str(exc).splitlines()[0])
        detail = f"{name.rsplit('.', 1)[-1]}: {message}".strip(": ")
        if "Permission denied" in message or "AccessDenied" in name:
            return "unreadable", detail
        if "FileNotFound" in name or "PATH_NOT_FOUND" in message:
            return "missing", detail
        return "corrupt", detail
    return None


def lines_in_bronze(spark: SparkSession, ref: TableRef, paths: list[str]) -> dict[str, int]:
    """Rows per file already in bronze (a batch redone after its bronze commit)."""
    rows = (read_table(spark, ref).where(F.col("_source_file").isin(paths))
            .groupBy("_source_file").count().collect())
    return {fs.canonical(r["_source_file"]): r["count"] for r in rows}


def ingest_files(
    spark: SparkSession,
    config: LakehouseConfig,
    source_name: str,
    uris: list[str],
    app_id: str,
    batch_id: int,
    replay_since_ms: int | None,
) -> list[LandedFile]:
    """Read the batch's planned files into bronze; record each in ops.ingested_files or ops.bad_files.

    Each write happens once per batch (tables.append_once, marked ``app_id:batch_id``). A batch
    redone after its bronze commit (possible only for the first batch after a start, for which
    ``replay_since_ms`` says when it was planned) counts each file's lines from bronze instead of
    reading the files again.
    """
    from lakehouse.bronze import bronze_table, with_lines

    source = config.source(source_name)
    bronze = bronze_table(config, source_name)
    files = look_at(spark, uris, source.max_file_bytes)
    readable = [f for f in files if f.reason is None and f.size]
    for empty in (f for f in files if f.reason is None and not f.size):
        empty.lines = 0  # Spark's readers skip empty files; they hold no lines
    failpoint("bronze.read", batch_id)
    marker = batch_marker(app_id, batch_id)
    replayed = (bool(readable) and replay_since_ms is not None
                and committed(spark, bronze, marker, replay_since_ms) is not None)
    if replayed:
        counted = lines_in_bronze(spark, bronze, [f.path for f in readable])
    elif readable:
        whole = read_whole_files(spark, readable)
        observed = Observation(f"files-{batch_id}")
        lines = with_lines(whole, F.col("_metadata.file_path"), observed)
        append_once(lines, bronze, marker)  # not committed yet: checked above
        counted = {fs.canonical(row["file"]): row["lines"] for row in observed.get["files"]}
    else:
        counted = {}
    for landed in readable:
        key = fs.canonical(landed.path)
        if key in counted:
            landed.lines = counted[key]
            continue
        problem = diagnose(spark, landed)
        if problem is None and replayed:
            landed.lines = 0  # read before the crash: it holds no lines (an empty archive, say)
        else:
            landed.reason, landed.detail = problem or (
                "unreadable", "could not be read when its batch ran (it can be now): land it again under a new name")
    _record(spark, config, source_name, files, app_id, batch_id, replay_since_ms)
    return files


def _record(spark: SparkSession, config: LakehouseConfig, source_name: str, files: list[LandedFile],
            app_id: str, batch_id: int, replay_since_ms: int | None) -> None:
    now = _now()
    bad = [(source_name, f.path, f.size, f.reason, f.detail, batch_id, now) for f in files if f.reason]
    good = [(source_name, f.path, f.size, _timestamp(f.mtime_ms), f.lines, batch_id, now)
            for f in files if not f.reason]
    writer = _writer_session(spark)
    failpoint("bronze.bad_files", batch_id)
    if bad:
        append_once(writer.createDataFrame(bad, BAD_FILES_SCHEMA), resolve_table(config, BAD_FILES_TABLE),
                    batch_marker(app_id, batch_id), replay_since_ms)
    failpoint("bronze.ingested_files", batch_id)
    if good:
        append_once(writer.createDataFrame(good, INGESTED_FILES_SCHEMA), resolve_table(config, INGESTED_FILES_TABLE),
                    batch_marker(app_id, batch_id), replay_since_ms)
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


def changed_files(spark: SparkSession, config: LakehouseConfig, source_name: str) -> list[ChangedFile]:
    """Ingested files of a local landing directory whose size or modification time changed since."""
    ref = resolve_table(config, INGESTED_FILES_TABLE)
    if not table_exists(spark, ref):
        return []
    present = {fs.canonical(path) for path in landed_files(config.landing_path(source_name))}
    if not present:
        return []
    changed = []
    rows = read_table(spark, ref).where(F.col("source") == source_name).select("path", "size", "modification_time")
    for row in rows.collect():
        local = fs.canonical(row["path"])
        if local not in present:
            continue  # moved away or deleted after ingest
        stat = fs.stat(spark, local)
        if stat is None:
            continue
        read_at = row["modification_time"]  # a naive local time, as pyspark returns timestamps
        mtime_read = None if read_at is None else round(read_at.timestamp() * 1000)
        if stat.size != row["size"] or stat.mtime_ms != mtime_read:
            changed.append(ChangedFile(row["path"], row["size"], stat.size, _timestamp(mtime_read),
                                       _timestamp(stat.mtime_ms)))
    return sorted(changed, key=lambda c: c.path)
