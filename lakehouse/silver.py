"""Silver: typed, validated records from bronze rows, one row per key, and the quarantine.

Each micro-batch of bronze records is parsed (lakehouse.parse), checked by the entity's row
rules (lakehouse.quality), and each row decided: kept, or quarantined with its reasons
(:func:`quarantine_reasons`). Kept rows are deduplicated and MERGEd into ``silver.<entity>``;
the batch's counts go to ``ops.silver_batches`` and its expectation results to
``ops.quality_results``. What a decision depends on besides the batch itself (its processing
time, the late cut-off) is fixed in the batch's plan before the first write, so a batch redone
after a crash decides every row as the first attempt did.
Next stop: the gold tables that read silver (lakehouse.gold).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

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

from lakehouse.checkpoints import BatchPlans, logged_batches, planned_source_offsets
from lakehouse.config import EntityConfig, LakehouseConfig, duration_seconds
from lakehouse.exit_codes import JobError
from lakehouse.failpoints import failpoint
from lakehouse.observability import count_records
from lakehouse.parse import SOURCE_COLUMN, TIMESTAMP_RANGE_MICROS, bronze_records, parse_records
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
from lakehouse.suites import checked_suite
from lakehouse.tables import (
    TableRef,
    append_once,
    batch_marker,
    committed,
    create_table_if_missing,
    delta_table,
    last_commit,
    load_from,
    read_table,
    resolve_table,
    table_exists,
)

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
        # The batch's plan (silver.plan_batch): when it was first planned, and the event-time limits
        # it judged rows by (older than late_cutoff: late; newer than future_cutoff: future_event_time).
        StructField("planned_at", TimestampType()),
        StructField("late_cutoff", TimestampType()),
        StructField("future_cutoff", TimestampType()),
    ]
)


class ExpectationFailedError(RuntimeError):
    """A ``fail`` expectation did not hold: the batch is not committed and will be redone."""


def _no_reasons() -> Column:
    return F.array().cast("array<string>")


def _reason(condition: Column, name: str) -> Column:
    return F.when(condition, F.array(F.lit(name))).otherwise(_no_reasons())


def quarantine_reasons(entity: EntityConfig, plan: dict | None = None) -> Column:
    """Why a checked row goes to quarantine; an empty array keeps it.

    ``plan`` (see :func:`plan_batch`) fixes the batch's time limits: an event time after
    ``future_cutoff_us`` is ``future_event_time`` (a skewed clock: such a row would otherwise
    move the late cut-off, and gold's watermarks, into the future); one before
    ``late_cutoff_us`` is ``late``, unless the row comes from a source in ``late_exempt``
    (a backfill). None: no time limits.
    """
    reasons = F.concat(
        _reason(~F.is_valid_utf8("value"), "not_utf8"),
        _reason(F.col("_too_large"), "too_large"),
        _reason(F.col("_malformed"), "malformed"),
        _reason(F.col("_duplicate_field"), "duplicate_field"),
        names_where([(F.array_contains("_type_errors", name), f"type({name})") for name in entity.columns]),
        _reason(F.size("_non_finite") > 0, "not_finite"),
        F.col(FAILED_COLUMNS["drop"]),
    )
    if entity.unexpected_fields == "quarantine":
        reasons = F.concat(reasons, _reason(F.col("_rescued").isNotNull(), "unexpected_fields"))
    event_time = F.col(entity.event_time).cast("timestamp")
    plan = plan or {}
    future = F.lit(False)
    if plan.get("future_cutoff_us") is not None:
        future = F.coalesce(event_time > F.timestamp_micros(F.lit(plan["future_cutoff_us"])), F.lit(False))
        reasons = F.concat(reasons, _reason(future, "future_event_time"))
    if plan.get("late_cutoff_us") is not None:
        late = F.coalesce(event_time < F.timestamp_micros(F.lit(plan["late_cutoff_us"])), F.lit(False))
        if plan.get("late_exempt"):
            late = late & ~F.coalesce(F.col(SOURCE_COLUMN).isin(plan["late_exempt"]), F.lit(False))
        reasons = F.concat(reasons, _reason(late, "late"))
    # A CSV header line is not a record: one that names other columns is quarantined for that alone.
    return F.when(F.col("_header") == "mismatch", F.array(F.lit("header_mismatch"))).otherwise(reasons)


def quarantine_error(reasons: Column) -> Column:
    """The quarantine's one readable line: the reasons, and which columns were not finite."""
    non_finite = F.when(F.size("_non_finite") > 0, F.concat(F.lit("not finite: "), F.array_join("_non_finite", ", ")))
    return F.concat_ws("; ", F.array_join(reasons, "; "), non_finite)


def plan_batch(spark: SparkSession, config: LakehouseConfig, entity_name: str, backfill: bool = False) -> dict:
    """What the batch's decisions depend on besides its rows, fixed when it is first planned.

    - ``planned_at_us``: the batch's processing time; ``future_cutoff_us`` = that + ``max_future``.
    - ``late_cutoff_us``: silver's newest event time before the batch (never later than the
      future cut-off) minus the entity's watermark, as Spark's watermarks come from what earlier
      batches committed, so the rows of one batch are never late relative to each other. None
      while silver is empty, and for a backfill run (``--backfill``).
    - ``late_exempt``: the entity's sources configured as backfills (``sources.<s>.backfill``).
    Times are microseconds since the epoch (UTC), so no local clock or Python datetime is involved.
    """
    entity = config.entity(entity_name)
    planned_at = int(datetime.now(timezone.utc).timestamp() * 1_000_000)
    # Clamped to the timestamps a row can hold (1900-9999), so a huge max_future is no crash.
    future_cutoff = min(planned_at + int(duration_seconds(entity.max_future) * 1_000_000),
                        TIMESTAMP_RANGE_MICROS[1] - 1)
    silver = read_table(spark, resolve_table(config, f"silver.{entity_name}"))
    newest = silver.agg(F.max(F.col(entity.event_time)).alias("newest")).select(
        F.unix_micros(F.col("newest").cast("timestamp"))).first()[0]
    late_cutoff = None
    if newest is not None and not backfill:
        late_cutoff = max(min(newest, future_cutoff) - int(duration_seconds(entity.watermark) * 1_000_000),
                          TIMESTAMP_RANGE_MICROS[0])
    return {
        "planned_at_us": planned_at,
        "future_cutoff_us": future_cutoff,
        "late_cutoff_us": late_cutoff,
        "late_exempt": sorted(s for s in entity.sources if config.source(s).backfill),
        "backfill": backfill,
    }


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
    plan: dict,
    validator: BatchValidator | None = None,
    may_be_replay: bool = True,
) -> None:
    """Parse, check, quarantine, deduplicate and upsert one micro-batch of bronze rows.

    ``plan`` fixes what decisions depend on besides the rows (:func:`plan_batch`, made when the
    batch was first planned). The parsed and checked batch is cached once; one aggregation over it
    yields the batch's counts, the fail check and the row-level expectation results. Each write
    is made once per batch (tables.append_once, marked ``app_id:batch_id``; ``may_be_replay``:
    the batch may be one redone after a crash, so writes it already made are looked for and
    skipped), and with the same plan a redone batch decides every row as before. ``validator`` validates with GX what the fused aggregation does not
    (every expectation when ``quality.validation`` is ``gx``).
    """
    spark = bronze_batch.sparkSession
    entity = config.entity(entity_name)
    sources = {name: config.source(name) for name in entity.sources}
    silver_ref = resolve_table(config, f"silver.{entity_name}")
    marker = batch_marker(app_id, batch_id)
    # the batch's writes all come after its plan, so a redone batch's history search stops there
    replay_since = plan["planned_at_us"] // 1000 if may_be_replay else None
    checked = with_rule_results(parse_records(bronze_batch, entity, sources), rules)
    # _reasons: null for a CSV header line (not a record), else why the row is quarantined (or []).
    reasons = F.when(F.col("_header") == "ok", F.lit(None).cast("array<string>")).otherwise(
        quarantine_reasons(entity, plan))
    # The cache holds what the steps below read; the raw line only where it is quarantined.
    decided = checked.withColumn("_reasons", reasons).select(
        # Text that is not UTF-8 is kept with U+FFFD in its place; bronze holds the exact bytes.
        F.when(F.size("_reasons") > 0, F.make_valid_utf8("value")).alias("value"), *silver_columns(entity), "_reasons",
        F.when(F.size("_reasons") > 0, F.col("_non_finite")).alias("_non_finite"), *FAILED_COLUMNS.values(),
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
            quarantine_error(F.col("_reasons")).alias("error"), F.lit(batch_id).cast("long").alias("batch_id"),
            F.current_timestamp().alias("_quarantined_at"),
        )

        def append_results() -> None:
            failpoint("silver.quality", batch_id)
            if results:
                rows = results_rows(entity_name, entity.suite, results, batch_id, _source_versions(spark, config, entity))
                append_once(spark.createDataFrame(rows, QUALITY_RESULTS_SCHEMA), resolve_table(config, QUALITY_RESULTS_TABLE),
                            marker, replay_since)

        def append_quarantine() -> None:
            failpoint("silver.quarantine", batch_id)
            append_once(quarantine, resolve_table(config, f"silver.{entity_name}_quarantine"), marker, replay_since)

        # The two appends are small and mostly wait on Delta's commit protocol: they run beside
        # the MERGE. Each is idempotent on its own, so any of the three may be redone after a crash.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"silver-{entity_name}") as pool:
            appends = [pool.submit(append_results), pool.submit(append_quarantine)]
            failpoint("silver.merge", batch_id)
            inserted = merge_into_silver(silver_ref, latest_per_key(decided.where(kept), entity), entity, marker,
                                         replay_since)
            for done in appends:
                done.result()  # re-raises a failed append: the batch fails and is redone
        failpoint("silver.stats", batch_id)
        valid_rows = counts["records"] - counts["quarantined"]
        stats = [(entity_name, batch_id, counts["bronze_rows"], counts["quarantined"], inserted, valid_rows - inserted,
                  counts["warnings"], datetime.now(timezone.utc).replace(tzinfo=None),
                  counts["bronze_rows"] - counts["records"], _utc(plan["planned_at_us"]),
                  _utc(plan["late_cutoff_us"]), _utc(plan["future_cutoff_us"]))]
        append_once(spark.createDataFrame(stats, SILVER_BATCHES_SCHEMA), resolve_table(config, SILVER_BATCHES_TABLE),
                    marker, replay_since, merge_schema=True)
        failpoint("silver.done", batch_id)
    finally:
        decided.unpersist()


def _utc(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, tz=timezone.utc)


def merge_into_silver(silver_ref: TableRef, rows: DataFrame, entity: EntityConfig, marker: str,
                      replay_since_ms: int | None) -> int:
    """MERGE one row per key into silver (a seen key takes the row with the later event time).

    Once per micro-batch, as tables.append_once: for a batch that may be redone
    (``replay_since_ms``), a MERGE already committed under ``marker`` is not run again. Returns
    the keys it inserted, from the MERGE's own metrics (a redone batch gets the figure of the
    MERGE that committed before the crash).
    """
    spark = rows.sparkSession
    if replay_since_ms is not None:
        done = committed(spark, silver_ref, marker, replay_since_ms)
        if done is not None:
            return int(done["operationMetrics"].get("numTargetRowsInserted", 0))
    silver = delta_table(spark, silver_ref)
    rows = rows.select(*silver_columns(entity))
    if entity.unexpected_fields == "evolve":
        rows, _ = evolve_rescued_fields(rows, entity)
        # Columns earlier batches evolved: a row without the field holds null there (the newer
        # version of a key replaces the whole row).
        rows = rows.withColumns({f.name: F.lit(None).cast(f.dataType) for f in silver.toDF().schema.fields
                                 if f.name not in rows.columns})
    session_conf = {"spark.databricks.delta.commitInfo.userMetadata": marker}
    if set(rows.columns) - set(silver.toDF().columns):  # new columns join silver's schema in this MERGE
        session_conf["spark.databricks.delta.schema.autoMerge.enabled"] = "true"
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in entity.keys)
    newer = f"s.`{entity.event_time}` > t.`{entity.event_time}` OR t.`{entity.event_time}` IS NULL"
    for key, value in session_conf.items():
        spark.conf.set(key, value)
    try:
        # The MERGE's own metrics (a MERGE that changes nothing commits nothing: Delta skips empty commits).
        metrics = silver.alias("t").merge(rows.alias("s"), condition).whenMatchedUpdateAll(condition=newer) \
            .whenNotMatchedInsertAll().execute().first()
    finally:
        for key in session_conf:
            spark.conf.unset(key)
    return int(metrics["num_inserted_rows"]) if metrics is not None else 0


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


class CheckpointSourcesChanged(JobError):
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


def silver_query_name(entity_name: str) -> str:
    return f"silver_{entity_name}"


def start_silver_refine(spark: SparkSession, config: LakehouseConfig, entity_name: str, trigger: dict,
                        backfill: bool = False):
    """Stream the entity's bronze tables through :func:`refine_batch` (foreachBatch).

    ``backfill``: batches planned by this run judge no row late (``lakehouse refine --backfill``)."""
    entity = config.entity(entity_name)
    ensure_silver_tables(spark, config, entity_name)
    suite_path = config.suite_path(entity.suite)
    rules = row_rules(checked_suite(suite_path))
    # Row-level expectations are computed with the batch's counts; GX validates the rest, if any
    # (and all of them with quality.validation: gx). Only then is GX loaded.
    validator = None
    if config.quality.validation == "gx":
        validator = BatchValidator(load_suite(suite_path), entity_name)
    elif len(rules) < len(checked_suite(suite_path)["expectations"]):
        suite = load_suite(suite_path)
        others = [e for e in suite.expectations if e.expectation_type not in ROW_LEVEL]
        validator = BatchValidator(suite, entity_name, only=others)
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
    plans = BatchPlans(spark, config.checkpoint_path(query_name))
    started = []  # the first batch after a start may be one redone after a crash

    def process(batch: DataFrame, batch_id: int) -> None:
        # The query id is stable for one checkpoint, so (query, batch) identifies a batch across restarts.
        session = batch.sparkSession
        query_id = session.sparkContext.getLocalProperty("sql.streaming.queryId")
        # A batch redone after a crash takes the plan its first attempt recorded.
        plan = plans.plan(batch_id, lambda: plan_batch(session, config, entity_name, backfill))
        failpoint("silver.plan", batch_id)
        refine_batch(config, entity_name, rules, f"{query_name}-{query_id}", batch, batch_id, plan, validator,
                     may_be_replay=not started)
        started.append(batch_id)

    return (
        count_records(bronze).writeStream.foreachBatch(process)
        .queryName(query_name)
        .option("checkpointLocation", config.checkpoint_path(query_name))
        .trigger(**trigger)
        .start()
    )


def run_silver_refine(spark: SparkSession, config: LakehouseConfig, entity_name: str, trigger: dict,
                      backfill: bool = False) -> int:
    """The silver job: refine until done (availableNow) or stopped. Exit code."""
    query_name = silver_query_name(entity_name)
    checkpoint = config.checkpoint_path(query_name)
    sources = ", ".join(f"bronze.{s}" for s in config.entity(entity_name).sources)
    print(f"{query_name}: {sources} -> silver.{entity_name} (+ _quarantine; checkpoint {checkpoint})", flush=True)
    if backfill:
        print(f"{query_name}: backfill: the batches this run plans quarantine no row as late", flush=True)
    return run_streaming_job(
        spark, config, query_name, checkpoint,
        lambda: start_silver_refine(spark, config, entity_name, trigger, backfill),
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
    # File sources: lines of the files read into bronze, per source, against bronze's rows.
    landed: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # source -> (files, lines, bronze rows)
    bad_files: list = field(default_factory=list)  # ops.bad_files rows: never in bronze, named here
    changed_files: list = field(default_factory=list)  # landing.ChangedFile: changed after ingest

    @property
    def accounted(self) -> int:
        return self.silver_rows + self.quarantined + self.duplicates + self.skipped

    @property
    def difference(self) -> int:
        return self.refined_rows - self.accounted

    @property
    def landing_holds(self) -> bool:
        return all(lines == rows for _, lines, rows in self.landed.values())

    @property
    def holds(self) -> bool:
        return self.difference == 0 and self.bronze_rows == self.refined_rows and self.landing_holds

    def describe(self) -> str:
        lines = []
        for name, (files, landed_lines, rows) in self.landed.items():
            lines.append(f"landing files of {name}: {files:,} read, {landed_lines:,} lines; bronze.{name}: {rows:,} rows"
                         + ("" if landed_lines == rows else
                            f"  NOT RECONCILED: {rows - landed_lines:+,} rows against the files' lines"))
        if self.bad_files:
            lines.append(f"bad files (not read, so not in bronze; see ops.bad_files): {len(self.bad_files):,}")
            lines += [f"  {row['path']}: {row['reason']} ({row['detail']})" for row in self.bad_files]
        lines += [
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
        if self.changed_files:
            lines.append(f"WARNING: {len(self.changed_files):,} landing file(s) changed after they were read; what "
                         "changed is not in bronze (landing files must not change: land new data as new files)")
            lines += [f"  {c.path}: {c.size_read:,} -> {c.size_now:,} bytes, modified {c.mtime_read} -> {c.mtime_now} UTC"
                      for c in self.changed_files]
        if self.holds:
            lines.append("reconciled: every bronze row is in silver, in quarantine, or counted as a duplicate"
                         + (" or a header line" if self.skipped else "")
                         + ("; every landed line of a file read is in bronze" if self.landed else ""))
        return "\n".join(lines)


def reconcile(spark: SparkSession, config: LakehouseConfig, source: str) -> Reconciliation:
    """bronze = silver + quarantine + duplicates, for the entities that read ``source``; and, for
    file sources, the lines of the files read = bronze rows, with bad and changed files named."""
    from lakehouse.landing import INGESTED_FILES_TABLE, bad_files, changed_files

    entities = [name for name, e in config.entities.items() if source in e.sources]
    bronze_rows = 0
    bronze_sources = sorted({s for e in entities for s in config.entity(e).sources} or {source})
    landed, bad, changed = {}, [], []
    ingested_ref = resolve_table(config, INGESTED_FILES_TABLE)
    for name in bronze_sources:
        ref = resolve_table(config, f"bronze.{name}")
        rows = read_table(spark, ref).count() if table_exists(spark, ref) else 0
        bronze_rows += rows
        if config.source(name).kind == "files" and table_exists(spark, ingested_ref):
            files = read_table(spark, ingested_ref).where(F.col("source") == name).agg(
                F.count("*").alias("files"), F.sum("lines").alias("lines")).first()
            landed[name] = (files["files"], files["lines"] or 0, rows)
            bad += bad_files(spark, config, name)
            changed += changed_files(spark, config, name)
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
                          [f"bronze.{name}" for name in bronze_sources], landed, bad, changed)
