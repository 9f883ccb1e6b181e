"""Making a missing Delta table: its first commit (protocol, schema, properties, comment).

Every flow makes its tables as it starts (bronze.ensure_bronze_table, landing.ensure_landing_tables,
progress.ProgressRecorder.make_tables_beside, silver_tables, maintenance), and a query's first
batch waits for them. Spark's builder (``DeltaTable.createIfNotExists``) takes 0.1-0.3 s a table in
a warm JVM and up to 1 s while queries start beside it on two cores (bench/RESULTS.md, issue 16).

A table stored by path in a new folder, whose properties Spark and delta-rs write alike, is made
by delta-rs (``deltalake.DeltaTable.create``, about 0.02 s): version 0 holds the same protocol,
schema, properties and description as Spark's, in a commit named ``CREATE TABLE``
(tables.made_empty reads that name). tests/lakehouse/test_table_create.py compares the two
writers' first commits.

Spark makes every other table, as before:
- one named in a catalog (Unity Catalog), or a Databricks cluster's or Spark Connect server's;
- a folder holding a file or a link (Spark says why it cannot make a table there), a table that
  exists, a ``file:`` URI;
- a property outside :data:`SAME_IN_BOTH`, from the caller or from the session's defaults
  (``spark.databricks.delta.properties.defaults.*``, where a default protocol version or table
  feature is set too): a change data feed, say, for which Spark names table features where
  delta-rs writes writer version 4; or a value of one that Spark would refuse or rewrite;
- a column with metadata (a generated or identity column, a default, a comment) or of a type
  other than the plain ones (:func:`_plain`).
If delta-rs fails and no table is there, Spark's builder runs, and makes the table or says why not.
A commit lost to another writer making the same table at the same moment counts as made, by
either writer. The comparison holds for the pinned delta-spark and deltalake: the test runs again
with each upgrade.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql.types import ArrayType, DataType, DecimalType, MapType, StructType

from lakehouse.delta_log import newest_version
from lakehouse.session import SESSION_DEFAULTS
from lakehouse.tables import TableRef

_INTERVAL = re.compile(r"interval [1-9]\d* seconds")  # as maintenance writes them (config.running)


def _stats_columns(value: str, schema: StructType) -> bool:
    return all(name.strip() in schema.fieldNames() for name in value.split(","))


# The table properties whose first commit both writers write alike (protocol (1, 2), the property
# as given; tests/lakehouse/test_table_create.py), with the values taken here as they are.
_VALID_VALUE = {
    "delta.appendOnly": lambda value, _: value in ("true", "false"),
    "delta.checkpointInterval": lambda value, _: re.fullmatch(r"[1-9]\d{0,8}", value) is not None,
    "delta.dataSkippingStatsColumns": _stats_columns,  # top-level columns of the table, by name
    # maintenance's, session defaults (lakehouse/session.py)
    "delta.deletedFileRetentionDuration": lambda value, _: _INTERVAL.fullmatch(value) is not None,
    "delta.logRetentionDuration": lambda value, _: _INTERVAL.fullmatch(value) is not None,
}
SAME_IN_BOTH = frozenset(_VALID_VALUE)
_PLAIN_TYPES = {"string", "bigint", "int", "smallint", "tinyint", "double", "float", "boolean", "binary", "timestamp",
                "date"}


# For a table that only ever gains rows, a commit each micro-batch (bronze, the ops accounting
# tables): Delta writes a checkpoint of the table's whole state every 10 commits by default, which
# cost 0.5-1.3 s on two cores even for a small table (a tenth of a second per batch and table,
# bench/RESULTS.md, issue 16). Appends never need that state, and streaming readers follow the
# commits themselves; a reader starting cold replays at most this many commits.
APPEND_ONLY_CHECKPOINTS = {"delta.checkpointInterval": "100"}


def create_table_if_missing(spark: SparkSession, ref: TableRef, schema: StructType, properties: dict | None = None,
                            comment: str | None = None) -> None:
    """Make the table ``ref`` with ``schema``, ``properties`` (and the session's default table
    properties) and ``comment``, unless it exists (CREATE TABLE IF NOT EXISTS)."""
    if ref.is_path and made_by_delta_rs(spark, ref.path, schema, properties or {}, comment):
        return
    builder = DeltaTable.createIfNotExists(spark)
    builder = builder.location(ref.path) if ref.is_path else builder.tableName(ref.identifier)
    builder = builder.addColumns(schema)
    for key, value in (properties or {}).items():
        builder = builder.property(key, value)
    if comment:
        builder = builder.comment(comment)
    try:
        builder.execute()
    except Exception:
        if not ref.is_path or newest_version(spark, ref.path) is None:
            raise
        # another writer made it between Spark's look and its commit: there, as asked


def made_by_delta_rs(spark: SparkSession, path: str, schema: StructType, properties: dict,
                     comment: str | None) -> bool:
    """Make the table at ``path`` with delta-rs where it may (module docstring); True once the
    table is there (made here, or by another writer at the same moment), False for Spark to make
    it (delta-rs may not, or failed with no table made: Spark makes it or says why not)."""
    settings = first_commit_properties(spark, properties)
    if settings is None or not same_in_both(settings, schema) or urlparse(path).scheme:
        return False  # a file: URI too: Hadoop and Python may not unquote its path alike
    folder = Path(path).absolute()
    return _new_folder(folder) and create_by_delta_rs(str(folder), schema, settings, comment)


def create_by_delta_rs(path: str, schema: StructType, settings: dict[str, str], comment: str | None) -> bool:
    """Commit version 0 of the table at ``path`` with delta-rs; True once the table is there (made
    here, or by a writer whose version 0 landed first), False when none is (delta-rs failed).

    No retry: delta-rs retries a lost creation as version 1, so that writers making one table at
    once left two CREATE TABLE commits (CI, issue 16), and a row append racing the second failed."""
    from deltalake import CommitProperties, Schema
    from deltalake import DeltaTable as RustTable

    try:
        RustTable.create(path, Schema.from_json(schema.json()), mode="ignore", description=comment or None,
                         configuration=settings, commit_properties=CommitProperties(max_commit_retries=0))
    except Exception:  # noqa: BLE001 - Spark's builder runs instead, and raises its own error
        return newest_version(None, path) is not None  # a commit lost to another writer making it too
    return True


def first_commit_properties(spark: SparkSession, properties: dict) -> dict[str, str] | None:
    """The properties a new table gets in this session: the session's defaults, then
    ``properties``; None where the session's tables are not this machine's."""
    if getattr(spark, "_jvm", None) is None:  # a Spark Connect client: the tables are the server's
        return None
    conf = spark.conf.getAll
    if conf.get("spark.databricks.clusterUsageTags.clusterId"):
        return None  # a Databricks cluster: its paths are not this machine's
    settings = {f"delta.{key.removeprefix(SESSION_DEFAULTS)}": value
                for key, value in conf.items() if key.startswith(SESSION_DEFAULTS)}
    settings.update(properties)
    return settings


def same_in_both(settings: dict[str, str], schema: StructType) -> bool:
    """Whether Spark and delta-rs write the same first commit for a table of ``schema`` with
    ``settings``: every property in :data:`SAME_IN_BOTH` with a value Spark takes as it is (delta-rs
    checks few values), and every column of a plain type (:func:`_plain`)."""
    for key, value in settings.items():
        check = _VALID_VALUE.get(key)
        if check is None or not isinstance(value, str) or not check(value, schema):
            return False
    return _plain(schema)


def _plain(kind: DataType) -> bool:
    """A type both writers store alike: no field metadata (generated or identity columns, column
    defaults, comments: Spark may add table features for them), no collation, char, varchar,
    timestamp without time zone or variant, no NOT NULL inside an array or a map."""
    if isinstance(kind, StructType):
        return all(not field.metadata and _plain(field.dataType) for field in kind.fields)
    if isinstance(kind, ArrayType):
        return kind.containsNull and _plain(kind.elementType)
    if isinstance(kind, MapType):
        return kind.valueContainsNull and _plain(kind.keyType) and _plain(kind.valueType)
    return isinstance(kind, DecimalType) or kind.simpleString() in _PLAIN_TYPES


def _new_folder(folder: Path) -> bool:
    """No such folder, or one holding no file or link (empty folders only: a table's
    ``_delta_log`` left empty by a creation cut short)."""
    return not folder.exists() or (folder.is_dir() and not any(p.is_file() or p.is_symlink() for p in folder.rglob("*")))
