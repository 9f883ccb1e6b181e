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
- a folder that is not empty (Spark says why it cannot make a table there) or a table that exists;
- a property outside :data:`SAME_IN_BOTH`, from the caller or from the session's defaults
  (``spark.databricks.delta.properties.defaults.*``, where a default protocol version or table
  feature is set too): a change data feed, say, for which Spark names table features where
  delta-rs writes writer version 4.
"""

from __future__ import annotations

from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql.types import StructType

from lakehouse import fs
from lakehouse.delta_log import newest_version
from lakehouse.session import SESSION_DEFAULTS
from lakehouse.tables import TableRef

# The table properties whose first commit both writers write alike: protocol (1, 2), the property
# as given (tests/lakehouse/test_table_create.py).
SAME_IN_BOTH = frozenset({
    "delta.appendOnly",
    "delta.checkpointInterval",
    "delta.dataSkippingStatsColumns",
    "delta.deletedFileRetentionDuration",  # maintenance's, a session default (lakehouse/session.py)
    "delta.logRetentionDuration",
})

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
    builder.execute()


def made_by_delta_rs(spark: SparkSession, path: str, schema: StructType, properties: dict,
                     comment: str | None) -> bool:
    """Make the table at ``path`` with delta-rs where it may (module docstring); True once the
    table is there (made here, or by another writer at the same moment), False for Spark to make it."""
    settings = first_commit_properties(spark, properties)
    local = fs.local_path(path)
    if settings is None or local is None or not _new_folder(local):
        return False
    from deltalake import DeltaTable as RustTable
    from deltalake import Schema

    try:
        RustTable.create(str(local), Schema.from_json(schema.json()), mode="ignore", description=comment,
                         configuration=settings)
    except Exception:
        if newest_version(spark, path) is None:  # not a commit lost to another writer making it too
            raise
    return True


def first_commit_properties(spark: SparkSession, properties: dict) -> dict[str, str] | None:
    """The properties a new table gets in this session: the session's defaults, then
    ``properties``; None where delta-rs would not make the table as Spark does."""
    if getattr(spark, "_jvm", None) is None:  # a Spark Connect client: the tables are the server's
        return None
    conf = spark.conf.getAll
    if conf.get("spark.databricks.clusterUsageTags.clusterId"):
        return None  # a Databricks cluster: its paths are not this machine's
    settings = {f"delta.{key.removeprefix(SESSION_DEFAULTS)}": value
                for key, value in conf.items() if key.startswith(SESSION_DEFAULTS)}
    settings.update(properties)
    return settings if set(settings) <= SAME_IN_BOTH else None


def _new_folder(folder: Path) -> bool:
    """No such folder, or one with no file in it (empty folders only: a table's ``_delta_log``
    left empty by a creation cut short)."""
    return not folder.exists() or (folder.is_dir() and not any(p.is_file() or p.is_symlink() for p in folder.rglob("*")))
