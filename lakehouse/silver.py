"""Silver: typed, validated records parsed from bronze rows.

This module holds the pure DataFrame steps (usable on batch input and inside ``foreachBatch``).
A bronze row becomes one parsed row (a JSON-lines source: one JSON object per line; a CSV
source: fields by position, in the declared column order) with:
  - the entity's declared columns, typed (``try_cast``: a value of the wrong type becomes null);
  - ``_malformed``: the line is not a JSON object at all (CSV: blank, or too few fields);
  - ``_too_large``: the line is longer than the entity's ``max_record_bytes`` (not parsed);
  - ``_type_errors``: declared fields present in the line whose value has the wrong type;
  - ``_rescued``: fields the entity does not declare, as a JSON object (null when none).
Next stop: row rules (lakehouse.quality), then silver.<entity> or its quarantine table; from
silver, the gold tables that read it (lakehouse.gold).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

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

from lakehouse.config import EntityConfig, LakehouseConfig, SourceConfig, duration_seconds
from lakehouse.observability import count_records, logged_batches, planned_source_offsets
from lakehouse.quality import (
    FAILED_COLUMNS,
    QUALITY_RESULTS_SCHEMA,
    QUALITY_RESULTS_TABLE,
    ROW_LEVEL,
    BatchValidator,
    load_suite,
    names_where,
    results_rows,
    row_rules,
    rule_metric_columns,
    rule_results,
    with_rule_results,
)
from lakehouse.streaming import run_streaming_job
from lakehouse.tables import (
    append_to_table,
    create_table_if_missing,
    delta_table,
    last_commit,
    load_from,
    read_table,
    resolve_table,
    table_exists,
)

RAW_FIELDS = "_raw_fields"
SOURCE_COLUMN = "_source"  # which bronze table a row came from, when an entity reads several
CSV_EXTRA_FIELDS = 16  # CSV fields past the declared ones kept in _rescued as _c<position>


def parse_records(
    bronze: DataFrame, entity: EntityConfig, sources: dict[str, SourceConfig] | None = None
) -> DataFrame:
    """Parse ``value`` into the entity's typed columns, by each source's format.

    ``sources`` maps the entity's source names to their configs (default: one JSON-lines
    source). With more than one, each row names its source in ``_source``. Besides the typed
    columns, every row gets ``_malformed``, ``_type_errors``, ``_rescued`` (see the module
    docstring) and ``_header``: null for a record, "ok" for a CSV header line that names the
    declared columns (skipped, not a record), "mismatch" for one that does not (quarantined).
    """
    declared = list(entity.columns)
    # A record over the size limit is not parsed at all (a poison message may be megabytes).
    size_ok = F.coalesce(F.octet_length("value") <= entity.max_record_bytes, F.lit(True))
    text = F.when(size_ok, F.col("value"))
    sources = sources or {"": None}
    # Sources that share a format share one parse (files and Kafka feeds of the same JSON lines).
    parse_of = {name: _format_key(source) for name, source in sources.items()}
    parses = {parse_of[name]: _raw_fields(source, declared, text) for name, source in sources.items()}
    if len(parses) == 1:
        raw_map, malformed, header = next(iter(parses.values()))
    else:  # each of the three picked by the row's source
        raw_map, malformed, header = (_by_source({name: parses[parse_of[name]][i] for name in sources})
                                      for i in range(3))
    # A null value (a Kafka tombstone) is malformed whatever the format.
    malformed = F.coalesce(malformed, F.col("value").isNull()) & size_ok

    raw = F.col(RAW_FIELDS)
    typed = {name: F.expr(f"try_cast(`{RAW_FIELDS}`['{name}'] AS {kind})") for name, kind in entity.columns.items()}
    type_errors = names_where([(raw[name].isNotNull() & typed[name].isNull(), name) for name in declared])
    # Unexpected fields: found with array_except (generated code); the map of them is built, with
    # a lambda, only for the rare rows that have any.
    extra_keys = F.array_except(F.map_keys(raw), F.array(*[F.lit(name) for name in declared]))
    extra = F.when(F.size(extra_keys) > 0, F.to_json(F.map_filter(raw, lambda key, _: ~key.isin(declared))))
    parsed = bronze.withColumns({RAW_FIELDS: raw_map, "_malformed": malformed, "_header": header})
    return parsed.select(
        *bronze.columns,
        *[typed[name].alias(name) for name in declared],
        F.col("_malformed"),
        (~size_ok).alias("_too_large"),
        F.when(F.col("_malformed"), F.array().cast("array<string>")).otherwise(type_errors).alias("_type_errors"),
        extra.alias("_rescued"),
        F.col("_header"),
    )


def _by_source(columns: dict[str, Column]) -> Column:
    """CASE _source WHEN name THEN column ... END."""
    chosen = None
    for name, column in columns.items():
        condition = F.col(SOURCE_COLUMN) == name
        chosen = F.when(condition, column) if chosen is None else chosen.when(condition, column)
    return chosen


def _format_key(source: SourceConfig | None) -> tuple:
    if source is None or source.format == "json-lines":
        return ("json-lines",)
    return (source.format, source.csv.header, source.csv.delimiter)


def _raw_fields(source: SourceConfig | None, declared: list[str], value: Column) -> tuple[Column, Column, Column]:
    """(field name -> raw text map, malformed flag, header state) for one source's lines (``value``)."""
    no_header = F.lit(None).cast("string")
    if source is None or source.format == "json-lines":
        fields = F.from_json(value, MapType(StringType(), StringType()))
        return F.when(fields.isNotNull(), fields), fields.isNull(), no_header
    # CSV: fields by position; an empty field is a missing value; fields past the declared ones
    # are unexpected fields named _c<position> (0-based, as Spark names unnamed CSV columns).
    delimiter = source.csv.delimiter
    names = declared + [f"_c{i}" for i in range(len(declared), len(declared) + CSV_EXTRA_FIELDS)]
    schema = ", ".join(f"`{name}` STRING" for name in names)
    record = F.from_csv(value, schema, {"sep": delimiter})
    fields = F.map_filter(
        F.map_from_arrays(F.array(*[F.lit(n) for n in names]), F.array(*[record[n] for n in names])),
        lambda _, text: text.isNotNull(),
    )
    # Fields counted outside quoted sections, so a quoted delimiter does not count.
    unquoted = F.regexp_replace(value, r'"(?:[^"]|"")*"', "")
    split_pattern = re.escape(delimiter)  # F.split takes a (Java) regular expression
    field_count = F.size(F.split(unquoted, split_pattern, -1))
    malformed = (F.trim(value) == "") | (field_count < len(declared))
    header = no_header
    if source.csv.header:
        names_in_line = F.transform(F.split(value, split_pattern, -1),
                                    lambda name: F.lower(F.trim(F.regexp_replace(name, '"', ""))))
        matches = names_in_line == F.array(*[F.lit(n.lower()) for n in declared])
        header = F.when(F.col("_source_line") == 1, F.when(matches, "ok").otherwise("mismatch"))
    is_header = header.isNotNull()
    return F.when(~is_header, fields), F.when(is_header, False).otherwise(malformed), header


# -- refine: one micro-batch of bronze rows into silver, quarantine and ops -----------------

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
    ]
)


class ExpectationFailedError(RuntimeError):
    """A ``fail`` expectation did not hold: the batch is not committed and will be redone."""


def _no_reasons() -> Column:
    return F.array().cast("array<string>")


def quarantine_reasons(entity: EntityConfig, horizon=None) -> Column:
    """Why a checked row goes to quarantine; an empty array keeps it.

    ``horizon``: the oldest event time still accepted (the entity's watermark before the newest
    event time seen); an older row is quarantined as ``late``. None: no row is late.
    """
    reasons = F.concat(
        F.when(~F.is_valid_utf8("value"), F.array(F.lit("not_utf8"))).otherwise(_no_reasons()),
        F.when(F.col("_too_large"), F.array(F.lit("too_large"))).otherwise(_no_reasons()),
        F.when(F.col("_malformed"), F.array(F.lit("malformed"))).otherwise(_no_reasons()),
        names_where([(F.array_contains("_type_errors", name), f"type({name})") for name in entity.columns]),
        F.col(FAILED_COLUMNS["drop"]),
    )
    if entity.unexpected_fields == "quarantine":
        reasons = F.concat(reasons, F.when(F.col("_rescued").isNotNull(), F.array(F.lit("unexpected_fields"))).otherwise(_no_reasons()))
    if horizon is not None:
        late = F.coalesce(F.col(entity.event_time) < F.lit(horizon), F.lit(False))
        reasons = F.concat(reasons, F.when(late, F.array(F.lit("late"))).otherwise(_no_reasons()))
    # A CSV header line is not a record: one that names other columns is quarantined for that alone.
    return F.when(F.col("_header") == "mismatch", F.array(F.lit("header_mismatch"))).otherwise(reasons)


def latest_per_key(valid: DataFrame, entity: EntityConfig) -> DataFrame:
    """One row per key: the latest event time wins; ties go to the later bronze position."""
    order = [F.col(entity.event_time).desc_nulls_last(), F.col("_source_file").desc(), F.col("_source_line").desc()]
    newest_first = Window.partitionBy(*entity.keys).orderBy(*order)
    return valid.withColumn("_rank", F.row_number().over(newest_first)).where("_rank = 1").drop("_rank")


def silver_columns(entity: EntityConfig) -> list[str]:
    return [*entity.columns, "_rescued", "_source_file", "_source_line", "_ingested_at"]


def silver_schema(entity: EntityConfig) -> StructType:
    return StructType(
        [StructField(name, _spark_type(kind)) for name, kind in entity.columns.items()]
        + [
            StructField("_rescued", StringType()),  # unexpected fields, as a JSON object
            StructField("_source_file", StringType()),
            StructField("_source_line", LongType()),
            StructField("_ingested_at", TimestampType()),
        ]
    )


def ensure_silver_tables(spark: SparkSession, config: LakehouseConfig, entity_name: str) -> None:
    entity = config.entity(entity_name)
    silver = resolve_table(config, f"silver.{entity_name}")
    # The change feed lets streaming gold tables read silver's new rows although MERGE rewrites files.
    create_table_if_missing(spark, silver, silver_schema(entity), properties={CHANGE_FEED: "true"},
                            comment="Typed, validated, one row per key; see lakehouse/silver.py")
    if delta_table(spark, silver).detail().first()["properties"].get(CHANGE_FEED) != "true":
        target = f"delta.`{silver.path}`" if silver.is_path else silver.identifier
        spark.sql(f"ALTER TABLE {target} SET TBLPROPERTIES ({CHANGE_FEED} = true)")  # made by an older release
    create_table_if_missing(spark, resolve_table(config, f"silver.{entity_name}_quarantine"), QUARANTINE_SCHEMA,
                            comment="Rows that failed parsing or a drop expectation, with reasons")
    create_table_if_missing(spark, resolve_table(config, SILVER_BATCHES_TABLE), SILVER_BATCHES_SCHEMA)
    create_table_if_missing(spark, resolve_table(config, QUALITY_RESULTS_TABLE), QUALITY_RESULTS_SCHEMA)


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


def refine_batch(
    config: LakehouseConfig,
    entity_name: str,
    rules: list,
    app_id: str,
    bronze_batch: DataFrame,
    batch_id: int,
    validator: BatchValidator | None = None,
) -> None:
    """Parse, check, quarantine, deduplicate and upsert one micro-batch of bronze rows.

    The parsed and checked batch is cached once; one aggregation over it yields the batch's
    counts, the fail check and the row-level expectation results. Every write carries Delta's
    idempotent-write marker (``app_id``, ``batch_id``), so a batch redone after a crash changes
    nothing that already committed. ``validator`` validates with GX what the fused aggregation
    does not (every expectation when ``quality.validation`` is ``gx``).
    """
    spark = bronze_batch.sparkSession
    entity = config.entity(entity_name)
    sources = {name: config.source(name) for name in entity.sources}
    silver = delta_table(spark, resolve_table(config, f"silver.{entity_name}"))
    horizon = late_horizon(silver.toDF(), entity)
    checked = with_rule_results(parse_records(bronze_batch, entity, sources), rules)
    # _reasons: null for a CSV header line (not a record), else why the row is quarantined (or []).
    reasons = F.when(F.col("_header") == "ok", F.lit(None).cast("array<string>")).otherwise(
        quarantine_reasons(entity, horizon))
    # The cache holds what the steps below read; the raw line only where it is quarantined.
    decided = checked.withColumn("_reasons", reasons).select(
        # Text that is not UTF-8 is kept with U+FFFD in its place; bronze holds the exact bytes.
        F.when(F.size("_reasons") > 0, F.make_valid_utf8("value")).alias("value"), *silver_columns(entity), "_reasons",
        *FAILED_COLUMNS.values(),
    ).persist()
    try:
        record = F.col("_reasons").isNotNull()
        kept = record & (F.size("_reasons") == 0)
        failing = record & (F.size(FAILED_COLUMNS["fail"]) > 0)
        fused = config.quality.validation == "fused"
        aggregates = {
            "bronze_rows": F.count(F.lit(1)),
            "records": F.count(F.when(record, 1)),
            "quarantined": F.count(F.when(record & (F.size("_reasons") > 0), 1)),
            "warnings": F.count(F.when(kept & (F.size(FAILED_COLUMNS["warn"]) > 0), 1)),
            "failing": F.count(F.when(failing, 1)),
            **(rule_metric_columns(rules, where=record) if fused else {}),
        }
        counts = decided.agg(*[column.alias(name) for name, column in aggregates.items()]).first()
        if counts["failing"]:
            first = decided.where(failing).select(FAILED_COLUMNS["fail"], "_source_file", "_source_line").first()
            raise ExpectationFailedError(
                f"batch {batch_id} of silver.{entity_name}: expectation {', '.join(first[0])} failed "
                f"(policy fail) on {counts['failing']} row(s), first at {first[1]} line {first[2]}; "
                "nothing was committed, the batch is redone after a fix"
            )

        results = rule_results(rules, counts, counts["records"]) if fused else []
        if validator is not None:
            results += validator.validate(decided.where(record).select(*entity.columns))
        quarantine = decided.where(record & (F.size("_reasons") > 0)).select(
            "value", "_source_file", "_source_line", F.col("_reasons").alias("reasons"),
            F.array_join("_reasons", "; ").alias("error"), F.lit(batch_id).cast("long").alias("batch_id"),
            F.current_timestamp().alias("_quarantined_at"),
        )

        def append_results() -> None:
            if results:
                rows = results_rows(entity_name, entity.suite, results, batch_id, _source_versions(spark, config, entity))
                append_to_table(spark.createDataFrame(rows, QUALITY_RESULTS_SCHEMA),
                                resolve_table(config, QUALITY_RESULTS_TABLE), txn=(f"{app_id}-quality", batch_id))

        def append_quarantine() -> None:
            append_to_table(quarantine, resolve_table(config, f"silver.{entity_name}_quarantine"),
                            txn=(f"{app_id}-quarantine", batch_id))

        # The two appends are small and mostly wait on Delta's commit protocol: they run beside
        # the MERGE. Each is idempotent on its own, so any of the three may be redone after a crash.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"silver-{entity_name}") as pool:
            appends = [pool.submit(append_results), pool.submit(append_quarantine)]
            inserted = merge_into_silver(silver, latest_per_key(decided.where(kept), entity), entity,
                                         f"{app_id}-merge", batch_id)
            for done in appends:
                done.result()  # re-raises a failed append: the batch fails and is redone
        valid_rows = counts["records"] - counts["quarantined"]
        stats = [(entity_name, batch_id, counts["bronze_rows"], counts["quarantined"], inserted, valid_rows - inserted,
                  counts["warnings"], datetime.now(timezone.utc).replace(tzinfo=None),
                  counts["bronze_rows"] - counts["records"])]
        append_to_table(spark.createDataFrame(stats, SILVER_BATCHES_SCHEMA),
                        resolve_table(config, SILVER_BATCHES_TABLE), txn=(f"{app_id}-stats", batch_id), merge_schema=True)
    finally:
        decided.unpersist()


def merge_into_silver(silver, rows: DataFrame, entity: EntityConfig, app_id: str, batch_id: int) -> int:
    """MERGE one row per key into silver (a seen key takes the row with the later event time).

    Idempotent: Delta skips the MERGE when ``app_id`` already committed ``batch_id``. Returns the
    keys it inserted, from the MERGE's own metrics (its commit is found by its user metadata, so
    a replayed batch gets the figure of the MERGE that committed before the crash).
    """
    spark = rows.sparkSession
    rows = rows.select(*silver_columns(entity))
    if entity.unexpected_fields == "evolve":
        rows, _ = evolve_rescued_fields(rows, entity)
        # Columns earlier batches evolved: a row without the field holds null there (the newer
        # version of a key replaces the whole row).
        rows = rows.withColumns({f.name: F.lit(None).cast(f.dataType) for f in silver.toDF().schema.fields
                                 if f.name not in rows.columns})
    marker = f"{app_id}:{batch_id}"
    session_conf = {"spark.databricks.delta.write.txnAppId": app_id,
                    "spark.databricks.delta.write.txnVersion": str(batch_id),
                    "spark.databricks.delta.commitInfo.userMetadata": marker}
    if set(rows.columns) - set(silver.toDF().columns):  # new columns join silver's schema in this MERGE
        session_conf["spark.databricks.delta.schema.autoMerge.enabled"] = "true"
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in entity.keys)
    newer = f"s.`{entity.event_time}` > t.`{entity.event_time}` OR t.`{entity.event_time}` IS NULL"
    for key, value in session_conf.items():
        spark.conf.set(key, value)
    try:
        silver.alias("t").merge(rows.alias("s"), condition).whenMatchedUpdateAll(condition=newer) \
            .whenNotMatchedInsertAll().execute()
    finally:
        for key in session_conf:
            spark.conf.unset(key)
    for limit in (10, None):  # normally the newest commit; after a crash maybe further back
        history = silver.history(limit) if limit else silver.history()
        found = history.where(F.col("userMetadata") == marker).select("operationMetrics").first()
        if found is not None:
            return int(found[0].get("numTargetRowsInserted", 0))
    raise RuntimeError(f"silver MERGE {marker} committed no entry in the table's history")


def late_horizon(silver: DataFrame, entity: EntityConfig):
    """The oldest event time a row of the next batch may have: silver's newest minus the watermark.

    As with Spark's own watermarks, the horizon comes from what earlier batches committed, so
    the rows of one batch (a backlog read at once, say) are never late relative to each other.
    None while silver is empty.
    """
    newest = silver.agg(F.max(entity.event_time)).first()[0]  # from Delta's file statistics
    return None if newest is None else newest - timedelta(seconds=duration_seconds(entity.watermark))


IDENTIFIER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def evolve_rescued_fields(latest: DataFrame, entity: EntityConfig) -> tuple[DataFrame, list[str]]:
    """Move rescued fields into string columns of their own (``unexpected_fields: evolve``).

    A field whose name is not a plain identifier, or clashes with a declared or system column,
    stays in ``_rescued``. Returns the rows and the names of the fields given columns.
    """
    rescued = F.from_json("_rescued", MapType(StringType(), StringType()))
    names = [r[0] for r in latest.select(F.explode(F.map_keys(rescued))).distinct().collect()]
    taken = {c.lower() for c in latest.columns}
    evolved = sorted(n for n in names if IDENTIFIER_NAME.match(n) and n.lower() not in taken)
    if not evolved:
        return latest, []
    left = F.map_filter(rescued, lambda key, _: ~key.isin(evolved))
    return latest.withColumns(
        {**{name: rescued[name] for name in evolved},
         "_rescued": F.when(F.size(left) > 0, F.to_json(left))}
    ), evolved


def _source_versions(spark: SparkSession, config: LakehouseConfig, entity: EntityConfig) -> str:
    """The bronze tables' latest Delta versions when the batch was validated."""
    versions = []
    for source in entity.sources:
        ref = resolve_table(config, f"bronze.{source}")
        if table_exists(spark, ref):  # a batch handed in directly (tests, backfills) may have none
            versions.append(f"{ref.name}@{last_commit(spark, ref).version}")
    return ",".join(versions)


class CheckpointSourcesChanged(RuntimeError):
    """The entity reads a different number of sources than its silver query's checkpoint holds."""


def check_checkpoint_sources(checkpoint: str, entity_name: str, sources: list[str]) -> None:
    """Fail clearly, before Spark's bare assertion, when the entity's sources changed under an
    existing checkpoint (a streaming query cannot add or drop a source of a union)."""
    planned = logged_batches(checkpoint, "offsets")
    if not planned:
        return
    recorded = len(planned_source_offsets(checkpoint, planned[-1]))
    if recorded != len(sources):
        raise CheckpointSourcesChanged(
            f"silver.{entity_name}'s checkpoint {checkpoint} was started with {recorded} source(s); the entity now "
            f"reads {len(sources)} ({', '.join(sources)}). A streaming query cannot change its sources: refine into a "
            "fresh silver (remove that checkpoint and the silver tables of the entity), or use a new --data-dir"
        )


def bronze_records(bronze: DataFrame, source: SourceConfig) -> DataFrame:
    """Bronze rows of any source kind as records: ``value`` text and where it came from.

    A file source's rows already are (line text, file, line number). A Kafka message's value
    bytes become the text unchanged (bytes that are not UTF-8 are quarantined as ``not_utf8``);
    its position ``kafka://<topic>/<partition>`` and offset stand in for file and line, so
    silver and its quarantine say where any record came from. (Two versions of a key with equal
    event times are told apart by that position, compared as text: a deterministic choice, not
    an arrival order across partitions or sources.)
    """
    if source.kind == "kafka":
        return bronze.select(
            F.col("value").cast("string").alias("value"),
            F.concat(F.lit("kafka://"), F.col("topic"), F.lit("/"), F.col("partition").cast("string")).alias("_source_file"),
            F.col("offset").alias("_source_line"),
            "_ingested_at",
        )
    return bronze.select("value", "_source_file", "_source_line", "_ingested_at")


def silver_query_name(entity_name: str) -> str:
    return f"silver_{entity_name}"


def start_silver_refine(spark: SparkSession, config: LakehouseConfig, entity_name: str, trigger: dict):
    """Stream the entity's bronze tables through :func:`refine_batch` (foreachBatch)."""
    entity = config.entity(entity_name)
    ensure_silver_tables(spark, config, entity_name)
    suite = load_suite(config.suite_path(entity.suite))
    rules = row_rules(suite)
    if config.quality.validation == "gx":
        validator = BatchValidator(suite, entity_name)
    else:  # row-level expectations are computed with the batch's counts; GX takes the rest, if any
        others = [e for e in suite.expectations if e.expectation_type not in ROW_LEVEL]
        validator = BatchValidator(suite, entity_name, only=others) if others else None
    from lakehouse.bronze import ensure_source_bronze_table  # bronze imports streaming, as this module does

    check_checkpoint_sources(config.checkpoint_path(silver_query_name(entity_name)), entity_name, entity.sources)
    streams = []
    for source in entity.sources:
        # A source that has not been ingested yet is an empty table: the query's set of sources
        # (and so its checkpoint) stays the same when that source's first records arrive.
        ref = ensure_source_bronze_table(spark, config, source)
        reader = spark.readStream.format("delta")
        if entity.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", entity.max_files_per_trigger)
        stream = bronze_records(load_from(reader, ref), config.source(source))
        streams.append(stream.withColumn(SOURCE_COLUMN, F.lit(source)))  # parse_records picks the format by it
    bronze = streams[0]
    for other in streams[1:]:
        bronze = bronze.unionByName(other)
    query_name = silver_query_name(entity_name)

    def process(batch: DataFrame, batch_id: int) -> None:
        # The query id is stable for one checkpoint, so (query, batch) identifies a batch across restarts.
        query_id = batch.sparkSession.sparkContext.getLocalProperty("sql.streaming.queryId")
        refine_batch(config, entity_name, rules, f"{query_name}-{query_id}", batch, batch_id, validator)

    return (
        count_records(bronze).writeStream.foreachBatch(process)
        .queryName(query_name)
        .option("checkpointLocation", config.checkpoint_path(query_name))
        .trigger(**trigger)
        .start()
    )


def run_silver_refine(spark: SparkSession, config: LakehouseConfig, entity_name: str, trigger: dict) -> int:
    """The silver job: refine until done (availableNow) or stopped. Exit code."""
    query_name = silver_query_name(entity_name)
    checkpoint = config.checkpoint_path(query_name)
    sources = ", ".join(f"bronze.{s}" for s in config.entity(entity_name).sources)
    print(f"{query_name}: {sources} -> silver.{entity_name} (+ _quarantine; checkpoint {checkpoint})", flush=True)
    return run_streaming_job(
        spark, config, query_name, checkpoint, lambda: start_silver_refine(spark, config, entity_name, trigger)
    )


@dataclass
class Reconciliation:
    source: str
    entities: list[str]
    bronze_rows: int
    refined_rows: int  # bronze rows the silver queries have taken in
    silver_rows: int
    quarantined: int
    duplicates: int
    skipped: int = 0  # CSV header lines: not records
    bronze_tables: list[str] | None = None  # every bronze table the entities read (default: the source's)

    @property
    def accounted(self) -> int:
        return self.silver_rows + self.quarantined + self.duplicates + self.skipped

    @property
    def difference(self) -> int:
        return self.refined_rows - self.accounted

    @property
    def holds(self) -> bool:
        return self.difference == 0 and self.bronze_rows == self.refined_rows

    def describe(self) -> str:
        lines = [
            f"{' + '.join(self.bronze_tables or [f'bronze.{self.source}'])}: {self.bronze_rows:,} rows, "
            f"{self.refined_rows:,} refined into "
            f"{', '.join('silver.' + e for e in self.entities)}",
            f"silver {self.silver_rows:,} + quarantined {self.quarantined:,} + duplicates {self.duplicates:,}"
            + (f" + header lines {self.skipped:,}" if self.skipped else "") + f" = {self.accounted:,}",
        ]
        if self.bronze_rows != self.refined_rows:
            lines.append(f"NOT RECONCILED: {self.bronze_rows - self.refined_rows:,} bronze rows not refined yet")
        if self.difference:
            lines.append(f"NOT RECONCILED: {self.difference:+,} rows refined but in none of silver, quarantine, duplicates")
        if self.holds:
            lines.append("reconciled: every bronze row is in silver, in quarantine, or counted as a duplicate"
                         + (" or a header line" if self.skipped else ""))
        return "\n".join(lines)


def reconcile(spark: SparkSession, config: LakehouseConfig, source: str) -> Reconciliation:
    """bronze = silver + quarantine + duplicates, for the entities that read ``source``."""
    entities = [name for name, e in config.entities.items() if source in e.sources]
    bronze_rows = 0
    bronze_sources = sorted({s for e in entities for s in config.entity(e).sources} or {source})
    for name in bronze_sources:
        ref = resolve_table(config, f"bronze.{name}")
        bronze_rows += read_table(spark, ref).count() if table_exists(spark, ref) else 0
    refined = silver_rows = quarantined = duplicates = skipped = 0
    batches_ref = resolve_table(config, SILVER_BATCHES_TABLE)
    for entity in entities:
        silver_ref = resolve_table(config, f"silver.{entity}")
        if not table_exists(spark, silver_ref):
            continue
        silver_rows += read_table(spark, silver_ref).count()
        quarantined += read_table(spark, resolve_table(config, f"silver.{entity}_quarantine")).count()
        batches = read_table(spark, batches_ref)
        sums = batches.where(F.col("entity") == entity).agg(
            F.sum("bronze_rows").alias("refined"), F.sum("duplicates").alias("duplicates"),
            F.sum("skipped" if "skipped" in batches.columns else F.lit(0)).alias("skipped")).first()
        refined += sums["refined"] or 0
        duplicates += sums["duplicates"] or 0
        skipped += sums["skipped"] or 0
    return Reconciliation(source, entities, bronze_rows, refined, silver_rows, quarantined, duplicates, skipped,
                          [f"bronze.{name}" for name in bronze_sources])
