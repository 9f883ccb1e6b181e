"""Silver's tables: ``silver.<entity>``, its quarantine, and the ops tables each batch appends to.

``silver.<entity>`` holds one typed row per key (the entity's declared columns plus where the row
came from); ``silver.<entity>_quarantine`` every row that was not kept, with its reasons;
``ops.silver_batches`` each micro-batch's counts and plan; ``ops.quality_results`` its
expectation results (lakehouse.quality). A micro-batch writes them in lakehouse/refine.py.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.config import EntityConfig, LakehouseConfig
from lakehouse.quality import QUALITY_RESULTS_SCHEMA, QUALITY_RESULTS_TABLE
from lakehouse.table_create import APPEND_ONLY_CHECKPOINTS, create_table_if_missing
from lakehouse.tables import resolve_table, sql_target, table_properties
from lakehouse.threads import at_once

QUARANTINE_SCHEMA = StructType(
    [
        StructField("value", StringType()),  # the raw record, as bronze holds it
        StructField("_source_file", StringType()),
        StructField("_source_line", LongType()),
        StructField("reasons", ArrayType(StringType())),  # "malformed", "type(col)", failed expectation names
        StructField("error", StringType()),  # one readable line
        StructField("batch_id", LongType()),
        StructField("_quarantined_at", TimestampType()),
    ]
)

SILVER_BATCHES_TABLE = "ops.silver_batches"
SILVER_BATCHES_SCHEMA = StructType(
    [
        StructField("entity", StringType()),
        StructField("batch_id", LongType()),
        StructField("bronze_rows", LongType()),
        StructField("quarantined", LongType()),
        StructField("inserted", LongType()),  # new keys
        StructField("duplicates", LongType()),  # valid rows whose key was seen (in the batch or before)
        StructField("warnings", LongType()),  # rows kept with a failed warn expectation
        StructField("recorded_at", TimestampType()),
        StructField("skipped", LongType()),  # CSV header lines: not records, in no other table
        # The batch's plan (lakehouse.batch_plan.plan_batch): when it was first planned, and the
        # event-time limits it judged rows by (older than late_cutoff: late; newer than
        # future_cutoff: future_event_time).
        StructField("planned_at", TimestampType()),
        StructField("late_cutoff", TimestampType()),
        StructField("future_cutoff", TimestampType()),
    ]
)


def silver_columns(entity: EntityConfig) -> list[str]:
    return [*entity.columns, *entity.prepared_columns, "_rescued", "_source_file", "_source_line", "_ingested_at"]


def prepared_fields(entity: EntityConfig) -> list[StructField]:
    """The columns silver adds to the declared ones (EntityConfig.prepared_columns; lakehouse/text_prep.py)."""
    types = {name: _spark_type(derived.type) for name, derived in entity.derived.items()}
    types["masked_counts"] = MapType(StringType(), LongType())  # placeholder name -> matches masked in the row
    if entity.text is not None and entity.text.dedupe is not None:
        types[f"{entity.text.dedupe.column}_hash"] = StringType()  # SHA-256 of the text as matched, hex
    return [StructField(name, types[name]) for name in entity.prepared_columns]


def silver_schema(entity: EntityConfig) -> StructType:
    return StructType(
        [StructField(name, _spark_type(kind)) for name, kind in entity.columns.items()]
        + prepared_fields(entity)
        + [
            StructField("_rescued", StringType()),  # unexpected fields, as a JSON object
            StructField("_source_file", StringType()),
            StructField("_source_line", LongType()),
            StructField("_ingested_at", TimestampType()),
        ]
    )


def ensure_silver_tables(spark: SparkSession, config: LakehouseConfig, entity_name: str) -> None:
    """Create the entity's silver and quarantine tables and the silver ops tables if missing (at once)."""
    entity = config.entity(entity_name)
    silver = resolve_table(config, f"silver.{entity_name}")

    def ensure_silver() -> None:
        # The change feed lets streaming gold tables read silver's new rows although MERGE rewrites files.
        create_table_if_missing(spark, silver, silver_schema(entity), properties={CHANGE_FEED: "true"},
                                comment="Typed, validated, one row per key; see lakehouse/silver.py")
        if table_properties(spark, silver).get(CHANGE_FEED) != "true":
            spark.sql(f"ALTER TABLE {sql_target(silver)} SET TBLPROPERTIES ({CHANGE_FEED} = true)")  # an older release's

    at_once(
        ensure_silver,
        lambda: create_table_if_missing(spark, resolve_table(config, f"silver.{entity_name}_quarantine"),
                                        QUARANTINE_SCHEMA,
                                        comment="Rows that failed parsing or a drop expectation, with reasons"),
        lambda: create_table_if_missing(spark, resolve_table(config, SILVER_BATCHES_TABLE), SILVER_BATCHES_SCHEMA,
                                        properties=APPEND_ONLY_CHECKPOINTS),
        lambda: create_table_if_missing(spark, resolve_table(config, QUALITY_RESULTS_TABLE), QUALITY_RESULTS_SCHEMA,
                                        properties=APPEND_ONLY_CHECKPOINTS),
    )


CHANGE_FEED = "delta.enableChangeDataFeed"

SPARK_TYPES = {
    "string": StringType(),
    "double": DoubleType(),
    "long": LongType(),
    "int": IntegerType(),
    "boolean": BooleanType(),
    "timestamp": TimestampType(),
    "date": DateType(),
}


def _spark_type(kind: str):
    return SPARK_TYPES[kind]  # the config only admits these names (config.ColumnType)


def newest_of_its_key(entity: EntityConfig, among: Column) -> Column:
    """True for the row its key keeps: the latest event time wins; ties go to the later bronze
    position. Only the rows where ``among`` holds compete (the others get False)."""
    order = [F.col(entity.event_time).desc_nulls_last(), F.col("_source_file").desc(), F.col("_source_line").desc()]
    # The rows that do not compete are each a partition of their own (by bronze position): many
    # null keys (malformed lines) would otherwise all go to one task.
    partition = [among, *[F.when(among, F.col(k)) for k in entity.keys],
                 *[F.when(~among, F.col(c)) for c in ("_source_file", "_source_line")]]
    return among & (F.row_number().over(Window.partitionBy(*partition).orderBy(*order)) == 1)


def newest_rows(rows: DataFrame, entity: EntityConfig) -> DataFrame:
    """The row each key keeps (:func:`newest_of_its_key`, every row competing): a window over the
    rows sorted by key, a shuffle of them all."""
    return rows.withColumn("_newest", newest_of_its_key(entity, among=F.lit(True))).where("_newest").drop("_newest")
