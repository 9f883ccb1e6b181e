"""Logical table names (``bronze.<source>``, ``silver.<entity>``, ``gold.<table>``, ``ops.<table>``)
and where they live.

:func:`resolve_table` is the one place that maps a logical name to storage: locally
(``catalog.kind: path``) a Delta directory under ``<data_dir>/tables/<layer>/<table>``; on
Databricks (``catalog.kind: unity``) the Unity Catalog table ``<catalog>.<schema>.<table>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from lakehouse.config import LAYERS, LakehouseConfig

_PART = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class TableNameError(ValueError):
    """A table name that is not ``<layer>.<table>`` with a known layer and a plain identifier."""


@dataclass(frozen=True)
class TableRef:
    name: str  # logical name, e.g. "bronze.telemetry"
    layer: str
    table: str
    path: str | None  # Delta directory (catalog.kind == "path")
    identifier: str  # the name Spark SQL resolves: bronze.telemetry, or main.bronze.telemetry

    @property
    def is_path(self) -> bool:
        return self.path is not None


def resolve_table(config: LakehouseConfig, name: str) -> TableRef:
    layer, _, table = name.partition(".")
    if layer not in LAYERS or not _PART.match(table):
        raise TableNameError(
            f"bad table name {name!r}: expected <layer>.<table> with layer one of "
            f"{', '.join(LAYERS)} and a lower-case identifier for the table"
        )
    if config.catalog.kind == "unity":
        schema = config.catalog.schemas[layer]
        return TableRef(name, layer, table, None, f"{config.catalog.name}.{schema}.{table}")
    path = str(Path(config.storage.data_dir, "tables", layer, table).absolute())
    return TableRef(name, layer, table, path, f"{layer}.{table}")


def table_exists(spark: SparkSession, ref: TableRef) -> bool:
    if ref.is_path:
        return Path(ref.path, "_delta_log").is_dir()
    return spark.catalog.tableExists(ref.identifier)


def read_table(spark: SparkSession, ref: TableRef, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return load_from(reader, ref)


def load_from(reader, ref: TableRef) -> DataFrame:
    """``reader`` (batch or streaming, options set) applied to the table's path or name."""
    return reader.load(ref.path) if ref.is_path else reader.table(ref.identifier)


def save_to(writer, ref: TableRef) -> None:
    """A batch ``DataFrameWriter`` (format and options set) into the table's path or name."""
    writer.save(ref.path) if ref.is_path else writer.saveAsTable(ref.identifier)


def start_to(writer, ref: TableRef):
    """A ``DataStreamWriter`` started into the table's path or name; returns the query."""
    return writer.start(ref.path) if ref.is_path else writer.toTable(ref.identifier)


def last_commit(spark: SparkSession, ref: TableRef):
    """The table's newest commit: ``version``, ``operationMetrics`` (e.g. numOutputRows), ``userMetadata``."""
    return delta_table(spark, ref).history(1).first()


def append_to_table(df: DataFrame, ref: TableRef, txn: tuple[str, int] | None = None,
                    merge_schema: bool = False) -> None:
    """Append ``df``. With ``txn`` = (app id, version) the append is idempotent: Delta skips it
    when that app id already committed that version (a micro-batch redone after a crash).
    ``merge_schema``: columns the table lacks are added (a table written by an older release)."""
    writer = df.write.format("delta").mode("append")
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if txn is not None:  # options win over session-wide settings another thread may have made
        writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
        writer = writer.option("userMetadata", f"{txn[0]}:{txn[1]}")
    save_to(writer, ref)


def delta_table(spark: SparkSession, ref: TableRef) -> DeltaTable:
    return DeltaTable.forPath(spark, ref.path) if ref.is_path else DeltaTable.forName(spark, ref.identifier)


def create_table_if_missing(spark: SparkSession, ref: TableRef, schema, properties: dict | None = None,
                            comment: str | None = None) -> None:
    builder = DeltaTable.createIfNotExists(spark)
    builder = builder.location(ref.path) if ref.is_path else builder.tableName(ref.identifier)
    builder = builder.addColumns(schema)
    for key, value in (properties or {}).items():
        builder = builder.property(key, value)
    if comment:
        builder = builder.comment(comment)
    builder.execute()


def register_local_tables(spark: SparkSession, config: LakehouseConfig) -> list[str]:
    """Make every local Delta table resolvable by its logical name in Spark SQL.

    Locally there is no metastore, so each ``<data_dir>/tables/<layer>/<table>`` directory is
    registered as an external table in this session's catalog. Returns the names registered.
    """
    if config.catalog.kind != "path":
        return []
    root = Path(config.storage.data_dir, "tables")
    names = []
    for layer in LAYERS:
        for table_dir in sorted(Path(root, layer).glob("*/_delta_log")):
            ref = resolve_table(config, f"{layer}.{table_dir.parent.name}")
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {layer}")
            location = ref.path.replace("'", "\\'")
            spark.sql(f"CREATE TABLE IF NOT EXISTS {ref.identifier} USING delta LOCATION '{location}'")
            names.append(ref.name)
    return names
