"""Landing files -> bronze rows on the driver, with Arrow: one Delta commit per batch.

When Spark runs in this process (``local[...]``), a file bronze batch's planned files are local
and its bronze table is stored by path, lakehouse.landing reads the batch here instead of in a
Spark job (lakehouse.landing_lines): each file is read whole and split on "\\n" by Arrow, and
its rows are written as Parquet into the table's folder, by a thread per core Spark has (four at most);
then one commit adds those files (lakehouse.row_appends.commit_files, by delta-rs), marked
with the batch as Spark's would be. The rows are the same: ``value`` (the line's bytes without
its "\\n"; a "\\r" before it stays; a final "\\n" ends the last line; an empty file has none;
bytes that are not UTF-8, a byte-order mark included, kept as they are), ``_source_file`` (as
Spark's ``_metadata.file_path`` names the file), ``_source_line`` (1-based) and
``_ingested_at``; each file's statistics cover the provenance columns, as bronze's
``delta.dataSkippingStatsColumns`` asks of Spark.

Why: a Spark job on two cores read and wrote 1M lines in 1.9 s, about twice Spark's own plain
text -> Delta stream (bench/RESULTS.md, issue 16). On a cluster the files are read by the
executors, where they are: this path is for one machine only.

A file is read whole (a .gz or .bz2 file decompressed whole, as Spark's whole-file read does), so
a file that fails part-way gives no line: it is left out of the commit (or, ``strict``, fails
the batch) and lakehouse.landing reads it again alone to name it. Each of at most
:data:`MAX_WRITERS` threads holds a file, its lines and a row group; the source's
``max_file_bytes`` bounds a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
import zlib
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import Column, SparkSession

from lakehouse import fs
from lakehouse.config import SourceConfig
from lakehouse.failpoints import failpoint
from lakehouse.freshness import sampled_seconds
from lakehouse.landing_lines import COMPRESSED_SUFFIXES, PYTHON_CODECS
from lakehouse.row_appends import DataFile, commit_files, plain_table
from lakehouse.tables import TableRef
from lakehouse.threads import in_background

# Sources whose largest file may be bigger are read by Spark (a file is held whole here, and its lines).
DRIVER_MAX_FILE_BYTES = 64 * 1024 * 1024
_READ_ERRORS = (OSError, EOFError, zlib.error)  # what reading a gone, unreadable or corrupt file raises
_ROW_GROUP_BYTES = 64 * 1024 * 1024  # rows' bytes a thread buffers before writing them as a row group
MAX_WRITERS = 4  # threads at most (each holds a file read, its lines and a row group: bounded memory)
_STATS_COLUMNS = ("_source_file", "_source_line", "_ingested_at")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

ROWS_SCHEMA = pa.schema([
    pa.field("value", pa.large_binary()),
    pa.field("_source_file", pa.dictionary(pa.int32(), pa.large_string()), nullable=False),  # one name a file
    pa.field("_source_line", pa.int64(), nullable=False),
    pa.field("_ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
])


def driver_source(source: SourceConfig) -> bool:
    """Whether the source's batches may be read here (:func:`reads_on_driver` decides per batch):
    its ``read_on_driver`` setting, and no file larger than :data:`DRIVER_MAX_FILE_BYTES` taken."""
    return source.read_on_driver and source.max_file_bytes <= DRIVER_MAX_FILE_BYTES


def reads_on_driver(spark: SparkSession, bronze: TableRef, uris: Sequence[str]) -> bool:
    """Whether a batch of ``uris`` is read here: Spark in this process, bronze stored by path and
    plain (lakehouse.row_appends.plain_table), and every file local and plain or .gz/.bz2."""
    if getattr(spark, "_jvm", None) is None or not bronze.is_path:  # a Spark Connect client: not this machine
        return False
    if not spark.conf.get("spark.master", "").startswith("local"):
        return False
    if spark.conf.get("spark.databricks.clusterUsageTags.clusterId", None):
        return False  # a Databricks single-node cluster: its storage is not this machine's disk
    if not all(fs.local_path(uri) is not None and _suffix(uri) in (None, *PYTHON_CODECS) for uri in uris):
        return False
    return plain_table(bronze.path, ROWS_SCHEMA)


def _suffix(uri: str) -> str | None:
    return next((s for s in COMPRESSED_SUFFIXES if uri.lower().endswith(s)), None)


def file_lines(data: bytes) -> pa.Array:
    """The lines of a file's bytes (large_binary), split on "\\n" in one pass."""
    if not data:
        return pa.array([], pa.large_binary())
    whole = pa.Array.from_buffers(pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, len(data)], np.int64)),
                                                          pa.py_buffer(data)])
    lines = pc.split_pattern(whole, b"\n").flatten()
    return lines.slice(0, len(lines) - 1) if data.endswith(b"\n") else lines


class LandingReadError(Exception):
    """A landing file that could not be read here (gone, unreadable, a corrupt archive): its
    Python error is the cause."""

    def __init__(self, uri: str, cause: BaseException):
        super().__init__(f"{uri}: {type(cause).__name__}: {cause}")
        self.uri, self.cause = uri, cause

    def diagnosis(self) -> tuple[str, str]:
        """(reason, detail) as lakehouse.landing.diagnosis gives them for Spark's errors."""
        cause = self.cause
        text = (cause.strerror if isinstance(cause, OSError) else None) or str(cause)
        reason = ("missing" if isinstance(cause, FileNotFoundError) else
                  "unreadable" if isinstance(cause, PermissionError) else "corrupt")
        return reason, f"{type(cause).__name__}: {text}"


def read_file(uri: str) -> bytes:
    """A landing file's bytes, decompressed by its suffix (.gz, .bz2); LandingReadError when it cannot be read."""
    try:
        data = fs.local_path(uri).read_bytes()
        codec = PYTHON_CODECS.get(_suffix(uri) or "")
        return codec.decompress(data) if codec else data
    except _READ_ERRORS as exc:
        raise LandingReadError(uri, exc) from exc


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _writers() -> ThreadPoolExecutor:
    """The writer threads, kept for the process: Arrow's allocator gives each new thread memory of
    its own, so threads made anew for every batch left the process larger after each (its peak
    resident memory grew with the number of batches: bench/RESULTS.md, issue 16)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=MAX_WRITERS, thread_name_prefix="landing-write")
        return _pool


class DriverRead:
    """One batch's files read here and written as data files of one commit (:meth:`write`); then
    the lines each file gave (:attr:`counts`), the files it could not read (:attr:`failed`) and
    the ``times`` (measure -> time column, lakehouse.bronze.freshness_times) of the sampled
    lines, every ``every``-th of each file, its first included (:meth:`observed`: read by Spark
    on the driver, begun once every file is read, while the last rows are written)."""

    def __init__(self, spark: SparkSession, files: Sequence[tuple[str, str]], ingested_at: datetime, every: int,
                 times: dict[str, Column] | None = None, strict: bool = False):
        """``files``: (uri, the name bronze gives it, as ``_metadata.file_path`` does)."""
        self.spark, self.files, self.every, self.strict = spark, list(files), every, strict
        self.times = dict(times or {})
        self.micros = (ingested_at - _EPOCH) // timedelta(microseconds=1)
        self.counts: dict[str, int] = {}
        self.failed: dict[str, str] = {}  # canonical path -> why it was left out (missing, ...)
        self._sample: list[pa.RecordBatch] = []
        self._observed: Future | None = None
        self._todo = iter(self.files)
        self._lock = threading.Lock()
        self._reading = 0  # threads still reading files (write)
        self._stopped = False  # a thread failed: the others stop

    def write(self, folder: str, threads: int) -> list[DataFile]:
        """Write the rows as Parquet files into ``folder`` (the table's), by ``threads`` threads
        taking the files in turn; the files written. On an error none is left behind."""
        parts = [_Part(folder, self.micros) for _ in range(max(1, min(threads, len(self.files))))]
        self._reading, self._stopped = len(parts), False
        try:
            written = list(_writers().map(self._fill, parts))
        except BaseException:
            for part in parts:
                part.discard()
            raise
        return [data_file for data_file in written if data_file is not None]

    def _next(self) -> tuple[str, str] | None:
        """The next file to read (none once a thread has failed); with none left, the last thread
        to ask begins the sample's job (:meth:`observed`), which runs while the last rows are written."""
        with self._lock:
            file = None if self._stopped else next(self._todo, None)
            if file is None:
                self._reading -= 1
                if self._reading == 0 and self.times and not self._stopped:
                    self._observed = in_background(self._sampled, "landing-sample")
            return file

    def _fill(self, part: _Part) -> DataFile | None:
        try:
            return self._fill_part(part)
        except BaseException:
            self._stopped = True  # the other threads take no more files
            raise

    def _fill_part(self, part: _Part) -> DataFile | None:
        while (file := self._next()) is not None:
            uri, name = file
            try:
                data = read_file(uri)
            except LandingReadError as exc:
                if self.strict:
                    raise
                self.failed[fs.canonical(uri)] = exc.diagnosis()[0]
                continue
            lines = file_lines(data)
            del data  # the lines are a copy
            self.counts[fs.canonical(uri)] = len(lines)
            self._keep_sample(lines)
            part.add(lines, name)
        return part.close()

    def _keep_sample(self, lines: pa.Array) -> None:
        positions = np.arange(0, len(lines), self.every, dtype=np.int64)
        if len(positions):
            self._sample.append(pa.record_batch([lines.take(positions), pa.array(positions + 1)],
                                                names=["value", "_source_line"]))

    def _sampled(self) -> dict:
        """``<measure>_sample``: each measure's times over the sampled lines, as
        freshness.sampled_time_aggregates collects them. A projection of local rows, which
        Spark's optimizer evaluates on the driver (ConvertToLocalRelation): no job."""
        schema = pa.schema([("value", pa.binary()), ("_source_line", pa.int64())])
        sample = pa.Table.from_batches(self._sample, schema=schema.set(0, pa.field("value", pa.large_binary())))
        columns = [sampled_seconds(time, self.every).alias(measure) for measure, time in self.times.items()]
        frame = self.spark.createDataFrame(sample.cast(schema)).select(*columns)
        try:
            rows = frame.collect()
        finally:  # its plan holds the sample's rows: let the JVM drop them now, not at Python's next
            # collection of reference cycles (they were kept across batches: bench/RESULTS.md, issue 16)
            self.spark.sparkContext._gateway.detach(frame._jdf)
        return {f"{measure}_sample": [row[measure] for row in rows if row[measure] is not None] for measure in self.times}

    def observed(self) -> dict:
        """The sampled times (:meth:`_sampled`), once the rows are written."""
        if not self.times:
            return {}
        return (self._observed or in_background(self._sampled, "landing-sample")).result()


class _Part:
    """One Parquet data file, written by one thread: its rows buffered into row groups of about
    :data:`_ROW_GROUP_BYTES`, and its statistics (the provenance columns) kept as they come."""

    def __init__(self, folder: str, micros: int):
        self.name = f"part-{uuid.uuid4()}-c000.snappy.parquet"
        self.path = os.path.join(folder, self.name)
        self.micros = micros
        self.writer: pq.ParquetWriter | None = None
        self.buffered: list[pa.RecordBatch] = []
        self.buffered_bytes = self.rows = self.max_line = 0
        self.first_name: str | None = None
        self.last_name: str | None = None

    def add(self, lines: pa.Array, name: str) -> None:
        n = len(lines)
        if not n:
            return
        names = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([name], pa.large_string()))
        numbers = pa.array(np.arange(1, n + 1, dtype=np.int64))
        times = pa.array(np.full(n, self.micros, dtype=np.int64)).cast(ROWS_SCHEMA.field("_ingested_at").type)
        batch = pa.record_batch([lines, names, numbers, times], schema=ROWS_SCHEMA)
        self.buffered.append(batch)
        self.rows += n
        self.max_line = max(self.max_line, n)
        self.first_name = min(self.first_name or name, name)
        self.last_name = max(self.last_name or name, name)
        self.buffered_bytes += batch.nbytes
        if self.buffered_bytes >= _ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self.buffered:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, ROWS_SCHEMA, compression="snappy",
                                           use_dictionary=list(_STATS_COLUMNS), write_statistics=list(_STATS_COLUMNS))
        self.writer.write_table(pa.Table.from_batches(self.buffered), row_group_size=self.rows + 1)
        self.buffered, self.buffered_bytes = [], 0

    def close(self) -> DataFile | None:
        self._flush()
        if self.writer is None:
            return None
        self.writer.close()
        at = _stats_time(self.micros)
        stats = {"numRecords": self.rows,
                 "minValues": {"_source_file": self.first_name, "_source_line": 1, "_ingested_at": at},
                 "maxValues": {"_source_file": self.last_name, "_source_line": self.max_line, "_ingested_at": at},
                 "nullCount": dict.fromkeys(_STATS_COLUMNS, 0)}
        return DataFile(self.name, os.path.getsize(self.path), json.dumps(stats))

    def discard(self) -> None:
        """Remove the file, whatever state its writer is in (an error may have stopped it)."""
        with contextlib.suppress(Exception):
            if self.writer is not None:
                self.writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


def _stats_time(micros: int) -> str:
    """A Delta statistic of a timestamp: ISO 8601 in milliseconds, UTC (the rows' time is whole
    milliseconds, lakehouse.landing._now, so the minimum and maximum are exact)."""
    at = _EPOCH + timedelta(microseconds=micros)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def append_on_driver(spark: SparkSession, read: DriverRead, bronze: TableRef, marker: str, batch_id: int) -> bool:
    """Write the batch's rows into bronze's folder and add them in one commit marked ``marker``;
    False (nothing committed) when the table cannot take them this way. Files written but not
    committed (an error, a fallback) are removed; a crash between leaves them unreferenced, as a
    Spark write does, for VACUUM."""
    files = read.write(bronze.path, min(MAX_WRITERS, spark.sparkContext.defaultParallelism))
    committed = False
    try:
        failpoint("bronze.commit", batch_id)
        committed = commit_files(spark, bronze, files, ROWS_SCHEMA, marker)
        return committed
    finally:
        if not committed:  # an error, or a table that takes no such files (Spark writes the rows then)
            for data_file in files:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(bronze.path, data_file.name))
