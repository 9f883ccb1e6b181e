"""A few rows made on the driver appended to a Delta table: the ops tables' bookkeeping rows.

Every micro-batch and every flush of the progress recorder appends a handful of rows
(``ops.stream_progress``, ``ops.freshness``, ``ops.ingested_files``, ``ops.bad_files``,
``ops.silver_batches``, ``ops.quality_results``, ``ops.maintenance``). Through Spark each append
is a job and a commit, 0.15-0.2 s in a warm JVM and longer when it waits for a core behind a
running stage; the end of a run waits for its last ones. :func:`append_rows` writes such rows to
a table stored by path with delta-rs (the ``deltalake`` package, already used to read tables,
lakehouse/table_reader.py): a Parquet file and a commit in the log, written from this process,
about 0.01 s (bench/RESULTS.md, issue 16).

The commit is an ordinary Delta commit. Spark reads it, compacts and vacuums the table
(lakehouse/maintenance.py), and may append beside it. delta-rs commits a version only if its file
does not exist yet, and redoes a blind append that lost the race itself; a commit that lost to
a change of the table's metadata is redone here (tables.retry_on_conflict). (Spark's own commit
on a local disk is a check, then a rename, in Delta's HDFS log store, as between two Spark
writers: a commit made in the microseconds between them would be replaced.) A marked append
carries its marker as the commit's ``userMetadata``, as Spark's do (tables.append_once), so a
redone batch finds it.

The commit itself is all the call does: delta-rs' hooks after a commit (a checkpoint every
``delta.checkpointInterval`` commits, the log's clean-up) would raise their own errors from the
same call, after the rows had landed, and a retry would append them twice. :func:`_after_commit`
runs them once a checkpoint is due, and prints what fails.

A table named in a catalog (Unity Catalog), one not made yet (Spark's append makes it, with
the session's default table properties; lakehouse/table_create.py makes the ops tables
beforehand), one with a table feature delta-rs cannot write (in-commit timestamps, row
tracking, type widening), or one whose schema differs from the rows' is appended to through
Spark, as before.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql.types import StructType

from lakehouse.delta_log import newest_version
from lakehouse.redaction import error_summary
from lakehouse.tables import (
    APPEND_ATTEMPTS,
    TableRef,
    append_once,
    append_to_table,
    arrow_rows,
    committed,
    local_rows,
    retry_on_conflict,
)

CHECKPOINT_INTERVAL = 10  # Delta's default for delta.checkpointInterval, where a table sets none


def append_rows(spark: SparkSession, rows: list, schema: StructType, ref: TableRef, marker: str | None = None,
                replay_since_ms: int | None = None, merge_schema: bool = False) -> bool:
    """Append ``rows`` (tuples in ``schema``'s order, or dicts by name; see tables.arrow_rows);
    False when skipped. Without ``marker``, a plain append (tables.append_to_table: a crash may
    lose or repeat the rows); with it, once (tables.append_once: for a batch that may be redone,
    ``replay_since_ms``, a commit already made under ``marker`` is not made again).
    ``merge_schema``: columns of ``schema`` the table lacks are added to it."""
    # A table is there once its first commit is: a folder being made has none yet.
    if rows and ref.is_path and newest_version(spark, ref.path) is not None:
        if marker is not None and replay_since_ms is not None and committed(spark, ref, marker, replay_since_ms):
            return False
        if _append_directly(ref.path, lambda: arrow_rows(rows, schema), marker, merge_schema):
            _after_commit(spark, ref)
            return True
    df = local_rows(spark, rows, schema)
    if marker is None:
        append_to_table(df, ref)
        return True
    return append_once(df, ref, marker, replay_since_ms, merge_schema=merge_schema)


@dataclass(frozen=True)
class DataFile:
    """A Parquet file written into a table's folder, to be added by :func:`commit_files`."""

    name: str  # relative to the table's folder
    size: int
    stats: str  # Delta's per-file statistics, JSON


# Writer features a table may have and still take files written by this package (appendOnly:
# no remove is ever written here; invariants: NOT NULL columns, which the writer fills; a column
# with an invariant expression is refused by plain_table).
_PLAIN_WRITER_FEATURES = {"appendOnly", "invariants"}


def plain_table(path: str, schema: pa.Schema, table=None) -> bool:
    """Whether the table at ``path`` (or the delta-rs ``table`` given) takes Parquet files written
    with ``schema`` as they are: its columns are ``schema``'s (names and types), not partitioned,
    no column mapping (physical names), no writer feature beyond :data:`_PLAIN_WRITER_FEATURES`
    (constraints, generated columns, row tracking, deletion vectors, in-commit timestamps all ask
    more of a writer)."""
    from deltalake import DeltaTable

    try:
        table = table or DeltaTable(path, without_files=True)
        protocol, metadata = table.protocol(), table.metadata()
        columns = pa.schema(table.schema().to_arrow())
    except Exception:  # noqa: BLE001 - not a table delta-rs reads: Spark writes it
        return False
    if protocol.min_writer_version == 7:  # table features, named
        if not set(protocol.writer_features or ()) <= _PLAIN_WRITER_FEATURES:
            return False
    elif protocol.min_writer_version > 2:  # 3-6: constraints, change data feed, generated columns, ... implied
        return False
    if metadata.partition_columns or metadata.configuration.get("delta.columnMapping.mode", "none") != "none":
        return False
    if any("delta.invariants" in (field.metadata or {}) for field in table.schema().fields):
        return False  # a column's invariant expression, which only Spark checks
    return [(f.name, _kind(f.type)) for f in columns] == [(f.name, _kind(f.type)) for f in schema]


def _kind(kind: pa.DataType) -> str:
    """One name for the Arrow spellings of a Delta type (delta-rs may read a string column as a
    string view; a writer may use large or dictionary-encoded strings)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    name = str(kind)
    return {"large_string": "string", "string_view": "string", "large_binary": "binary", "binary_view": "binary"}.get(name, name)


def commit_files(spark: SparkSession, ref: TableRef, files: list[DataFile], schema: pa.Schema,
                 marker: str | None = None) -> bool:
    """One commit adding ``files`` (Parquet written with ``schema``), already in the table's
    folder, marked ``marker`` (delta-rs' ``create_write_transaction``; a commit lost to a change
    of the table's metadata is redone, unless the marker shows it was made). No files: nothing
    to commit, True. False when the table, as it is at the commit, does not take such files
    (:func:`plain_table`): nothing committed; the files are the caller's to remove."""
    from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties
    from deltalake.transaction import AddAction

    if not files:
        return True
    now_ms = int(time.time() * 1000)
    actions = [AddAction(f.name, f.size, {}, now_ms, True, f.stats) for f in files]
    properties = CommitProperties(custom_metadata={"userMetadata": marker}) if marker is not None else None
    commit_only = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)

    attempts = []

    def commit() -> None:
        if attempts and marker is not None and committed(spark, ref, marker, since_ms=attempts[0]):
            return  # the failed attempt had committed after all
        attempts.append(int(time.time() * 1000) - 1000)
        table = DeltaTable(ref.path, without_files=True)
        if not plain_table(ref.path, schema, table):  # the table may have changed since the files were written
            raise _NotWritable(f"{ref.name} asks more of a writer than plain Parquet files")
        with _not_writable_errors():
            table.create_write_transaction(actions, mode="append", schema=table.schema(),
                                           commit_properties=properties, post_commithook_properties=commit_only)

    try:
        retry_on_conflict(commit, APPEND_ATTEMPTS)
    except _NotWritable:
        return False
    _after_commit(spark, ref)
    return True


class _NotWritable(Exception):
    """delta-rs cannot write the table, found before any commit: Spark appends the rows."""


@contextmanager
def _not_writable_errors():
    """delta-rs' errors that say it cannot write the table, as :class:`_NotWritable`; a commit
    lost to another is left as it is (tables.is_conflict: redone)."""
    from deltalake.exceptions import CommitFailedError, DeltaProtocolError, SchemaMismatchError

    try:
        yield
    except (DeltaProtocolError, SchemaMismatchError) as exc:
        raise _NotWritable(str(exc)) from exc
    except CommitFailedError as exc:
        if "Unsupported" in str(exc) and "features" in str(exc):  # "Unsupported table features required: ..."
            raise _NotWritable(str(exc)) from exc
        raise


def _append_directly(path: str, data: Callable[[], object], marker: str | None, merge_schema: bool) -> bool:
    """The append through delta-rs, its commit only; False when delta-rs cannot write this table
    (a feature it lacks, a schema other than the rows')."""
    from deltalake import CommitProperties, PostCommitHookProperties, write_deltalake

    properties = CommitProperties(custom_metadata={"userMetadata": marker}) if marker is not None else None
    commit_only = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)

    def write() -> None:
        with _not_writable_errors():
            write_deltalake(path, data(), mode="append", commit_properties=properties,
                            post_commithook_properties=commit_only, schema_mode="merge" if merge_schema else None)

    try:
        retry_on_conflict(write, APPEND_ATTEMPTS)
    except _NotWritable:
        return False
    return True


# Table path -> its delta.checkpointInterval, read once (a snapshot's load) per process.
_intervals: dict[str, int] = {}


def _after_commit(spark: SparkSession, ref: TableRef) -> None:
    """A checkpoint of the table when one is due (at every ``delta.checkpointInterval``-th
    version, as Spark writes them), then the log's clean-up of what it allows (entries older
    than ``delta.logRetentionDuration``), by delta-rs; a failure is printed, the rows are in."""
    version = newest_version(spark, ref.path)
    try:
        from deltalake import DeltaTable

        if ref.path not in _intervals:
            configuration = DeltaTable(ref.path).metadata().configuration
            _intervals[ref.path] = int(configuration.get("delta.checkpointInterval") or CHECKPOINT_INTERVAL)
        if not version or version % _intervals[ref.path]:
            return
        table = DeltaTable(ref.path)
        table.create_checkpoint()
        table.cleanup_metadata()
    except Exception as exc:  # noqa: BLE001 - upkeep: the next due checkpoint tries again
        print(f"lakehouse: no checkpoint of {ref.name} at version {version}: {type(exc).__name__}: "
              f"{error_summary(exc)}", file=sys.stderr, flush=True)
