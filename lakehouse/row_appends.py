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
(lakehouse/maintenance.py), and may append beside it: both commit by creating the next version's
file only if it does not exist, and a commit that lost the race is redone
(tables.retry_on_conflict). A marked append carries its marker as the commit's
``userMetadata``, as Spark's do (tables.append_once), so a redone batch finds it.

A table named in a catalog (Unity Catalog), one not made yet (Spark makes it with the session's
default table properties), or one with a table feature delta-rs cannot write (in-commit
timestamps, row tracking, type widening) is appended to through Spark, as before.
"""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql.types import StructType

from lakehouse.tables import (
    APPEND_ATTEMPTS,
    TableRef,
    append_once,
    append_to_table,
    arrow_rows,
    committed,
    local_rows,
    retry_on_conflict,
    table_exists,
)


def append_rows(spark: SparkSession, rows: list, schema: StructType, ref: TableRef, marker: str | None = None,
                replay_since_ms: int | None = None, merge_schema: bool = False) -> bool:
    """Append ``rows`` (tuples in ``schema``'s order, or dicts by name; see tables.arrow_rows);
    False when skipped. Without ``marker``, a plain append (tables.append_to_table: a crash may
    lose or repeat the rows); with it, once (tables.append_once: for a batch that may be redone,
    ``replay_since_ms``, a commit already made under ``marker`` is not made again).
    ``merge_schema``: columns of ``schema`` the table lacks are added to it."""
    if rows and ref.is_path and table_exists(spark, ref):
        if marker is not None and replay_since_ms is not None and committed(spark, ref, marker, replay_since_ms):
            return False
        if _append_directly(ref.path, rows, schema, marker, merge_schema):
            return True
    df = local_rows(spark, rows, schema)
    if marker is None:
        append_to_table(df, ref)
        return True
    return append_once(df, ref, marker, replay_since_ms, merge_schema=merge_schema)


class _NotWritable(Exception):
    """delta-rs cannot write the table: its protocol needs a feature delta-rs lacks."""


def _append_directly(path: str, rows: list, schema: StructType, marker: str | None, merge_schema: bool) -> bool:
    """The append through delta-rs; False when delta-rs cannot write this table (in-commit
    timestamps, row tracking, type widening, ...), which Spark then appends to."""
    from deltalake import CommitProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError, DeltaProtocolError

    table = arrow_rows(rows, schema)
    properties = CommitProperties(custom_metadata={"userMetadata": marker}) if marker is not None else None

    def write() -> None:
        try:
            write_deltalake(path, table, mode="append", commit_properties=properties,
                            schema_mode="merge" if merge_schema else None)
        except (CommitFailedError, DeltaProtocolError) as exc:
            if isinstance(exc, DeltaProtocolError) or "Unsupported table features" in str(exc):
                raise _NotWritable(str(exc)) from exc
            raise  # a commit that lost to another: tables.is_conflict, redone

    try:
        retry_on_conflict(write, APPEND_ATTEMPTS)
    except _NotWritable:
        return False
    return True
