"""Refine: one micro-batch of bronze rows into silver, its quarantine and the ops tables.

Each micro-batch is parsed (lakehouse.parse), checked by the entity's row rules
(lakehouse.quality), and each row decided: kept, or quarantined with its reasons
(lakehouse.quarantine). Kept rows are deduplicated (lakehouse.silver_dedupe) and written into
``silver.<entity>`` (lakehouse.silver_merge); the batch's counts go to ``ops.silver_batches``
and its expectation results to ``ops.quality_results``. What a decision depends on besides the
batch itself (its processing time, the late cut-off) is fixed in the batch's plan
(lakehouse.batch_plan) before the first write, so a redone batch decides as its first attempt did.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakehouse.batch_plan import late_exempt
from lakehouse.config import EntityConfig, LakehouseConfig
from lakehouse.errors import JobError
from lakehouse.failpoints import failpoint
from lakehouse.freshness import Measured, measure_aggregates, sampled_rows, time_aggregates
from lakehouse.parse import Stage, apply_stages, parse_stages
from lakehouse.quality import (
    FAILED_COLUMNS,
    QUALITY_RESULTS_SCHEMA,
    QUALITY_RESULTS_TABLE,
    BatchValidator,
    results_rows,
    rule_metric_columns,
    rule_result_columns,
    rule_results,
)
from lakehouse.quarantine import (
    is_failing,
    is_kept,
    is_quarantined,
    is_record,
    quarantine_error,
    quarantine_reasons,
)
from lakehouse.row_appends import append_rows
from lakehouse.session import redo_on_lost_checkpoint, release_checkpoint
from lakehouse.silver_dedupe import newest_per_key
from lakehouse.silver_keys import SilverKeyIndex
from lakehouse.silver_merge import merge_into_silver
from lakehouse.silver_tables import (
    SILVER_BATCHES_SCHEMA,
    SILVER_BATCHES_TABLE,
    silver_columns,
)
from lakehouse.tables import (
    append_once,
    batch_marker,
    last_commit,
    resolve_table,
    table_exists,
)
from lakehouse.text_prep import mark_text_duplicates, masked, may_be_quarantined, prepare_stages, silver_as_planned
from lakehouse.threads import in_background


class ExpectationFailedError(JobError):
    """A ``fail`` expectation did not hold: the batch is not committed and will be redone."""


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
    decisions: dict | None = None,
    key_index: SilverKeyIndex | None = None,
) -> tuple[Measured, int | None]:
    """Parse, check, quarantine, deduplicate and upsert one micro-batch of bronze rows.

    ``plan`` fixes what decisions depend on besides the rows (lakehouse.batch_plan.plan_batch,
    made when the batch was first planned). The parsed and checked batch is computed once (:func:`stage_rows`);
    one aggregation over it yields the batch's counts, the fail check and the row-level
    expectation results, and the writes read it. Each write is made once per batch
    (tables.append_once, marked ``app_id:batch_id``; ``may_be_replay``: the batch may be one
    redone after a crash, so writes it already made are looked for and skipped), and with the
    same plan a redone batch decides every row as before. ``validator`` validates with GX what
    the fused aggregation does not (every expectation when ``quality.validation`` is ``gx``).
    ``decisions``: the query's cache of the expressions :func:`decide_rows` and the batch's
    aggregation build. ``key_index``: the query's index of silver's keys, which lets a batch of
    new keys be appended (lakehouse/silver_keys.py). Returns what the same aggregation measured
    of the kept rows' ingest and event times, for ops.freshness (lakehouse/freshness.py), and
    the newest event time among them (microseconds; None: none kept), for the next batch's plan.
    """
    # The batch's writes all come after its plan, so a redone batch's history search stops there.
    replay_since = plan["planned_at_us"] // 1000

    def attempt(number: int):
        batch = _Batch(config, entity_name, batch_id, batch_marker(app_id, batch_id),
                       replay_since if may_be_replay or number > 1 else None)
        return batch, _refine_staged(bronze_batch, batch, plan, rules, validator, decisions, key_index)

    batch, counts = redo_on_lost_checkpoint(attempt, STAGE_ATTEMPTS, f"silver.{entity_name}: batch {batch_id}")
    silver = f"silver.{entity_name}"
    return Measured.from_row(counts, silver, silver, batch_id, marker=batch.marker), counts["kept_newest_us"]


def _refine_staged(bronze_batch: DataFrame, batch: _Batch, plan: dict, rules: list,
                   validator: BatchValidator | None, decisions: dict | None, key_index: SilverKeyIndex | None):
    """One attempt of :func:`refine_batch`: stage the batch, then count, check and write it; the
    batch's aggregated counts and measurements."""
    config, entity_name, batch_id = batch.config, batch.entity_name, batch.batch_id
    entity = config.entity(entity_name)
    decided = decide_rows(bronze_batch, config, entity, plan, rules, decisions)
    if entity.text is not None and entity.text.dedupe is not None:
        decided = mark_text_duplicates(decided, entity, silver_as_planned(bronze_batch.sparkSession, config, entity_name, plan))
        decided = decided.withColumn("value", F.when(F.size("_reasons") > 0, F.col("value")))
    decided = stage_rows(decided)
    # For the expectation results, looked up beside the batch's aggregation (a history read per
    # bronze table, which would otherwise share the cores with the writes after it). A batch that
    # fails its check leaves the lookup to end on its own.
    versions = in_background(partial(_source_versions, bronze_batch.sparkSession, config, entity),
                             f"silver-{entity_name}-versions") if validator is not None or rules else None
    try:
        counts = _count_and_check(decided, batch, rules, config.quality.validation == "fused", entity.event_time,
                                  decisions)
        results = rule_results(rules, counts, counts["records"]) if config.quality.validation == "fused" else []
        if validator is not None:
            checked = decided.where(is_record())
            results += validator.validate(checked.select(*entity.columns, *entity.prepared_columns))
        inserted = _write_outputs(decided, batch, results, counts, key_index, versions)
        failpoint("silver.stats", batch_id)
        valid_rows = counts["records"] - counts["quarantined"]
        stats = [(entity_name, batch_id, counts["bronze_rows"], counts["quarantined"], inserted, valid_rows - inserted,
                  counts["warnings"], datetime.now(timezone.utc),
                  counts["bronze_rows"] - counts["records"], _utc(plan["planned_at_us"]),
                  _utc(plan["late_cutoff_us"]), _utc(plan["future_cutoff_us"]))]
        spark = bronze_batch.sparkSession
        append_rows(spark, stats, SILVER_BATCHES_SCHEMA, resolve_table(config, SILVER_BATCHES_TABLE),
                    batch.marker, batch.replay_since, merge_schema=True)
        failpoint("silver.done", batch_id)
    finally:
        release_checkpoint(decided, "silver: a staged batch")
    return counts


@dataclass(frozen=True)
class _Batch:
    """One micro-batch's identity for its writes: the marker each commit carries, and since when
    (ms) a redone batch looks for commits it already made (None: not a redone batch)."""

    config: LakehouseConfig
    entity_name: str
    batch_id: int
    marker: str
    replay_since: int | None


def decide_rows(bronze_batch: DataFrame, config: LakehouseConfig, entity: EntityConfig, plan: dict,
                rules: list, cache: dict | None = None) -> DataFrame:
    """The batch parsed, checked and decided. ``_reasons``: null for a CSV header line (not a
    record), else why the row is quarantined ([] keeps it). Only what the later steps read: the
    raw line only where the row is quarantined (or, with exact text dedupe, may turn out a duplicate).

    The plan's cut-offs enter as two columns, so the expressions do not depend on the batch;
    with a ``cache`` (one per query) they are built once per bronze schema and set of
    late-exempt sources (lakehouse.parse.apply_stages)."""
    batch = bronze_batch.withColumns({column: F.lit(plan.get(key)).cast("long") for key, column in CUTOFF_COLUMNS.items()})
    return apply_stages(batch, _decisions(batch.schema, config, entity, list(plan.get("late_exempt") or []), rules, cache))


def prepare_decisions(stream: DataFrame, config: LakehouseConfig, entity_name: str, rules: list, cache: dict) -> None:
    """Build into the query's ``cache`` what its first batch's :func:`decide_rows` and
    :func:`_count_and_check` would (about 0.8 s of calls into the JVM), for batches of the
    query's ``stream`` of bronze rows, while the query starts (lakehouse/silver.py)."""
    entity = config.entity(entity_name)
    batch = stream.withColumns({column: F.lit(None).cast("long") for column in CUTOFF_COLUMNS.values()})
    _decisions(batch.schema, config, entity, late_exempt(config, entity_name), rules, cache)
    _count_columns_of(cache, rules, config.quality.validation == "fused", entity.event_time)


def _decisions(schema: StructType, config: LakehouseConfig, entity: EntityConfig, exempt: list[str], rules: list,
               cache: dict | None) -> list[Stage]:
    return _cached(cache, (schema.simpleString(), tuple(exempt)),
                   lambda: _decision_stages(schema, config, entity, exempt, rules))


def _cached(cache: dict | None, key: tuple, build):
    """``build()``, kept in the query's ``cache`` under ``key`` (None: no cache, built each time)."""
    if cache is None:
        return build()
    if key not in cache:
        cache[key] = build()
    return cache[key]


# The plan's cut-offs as columns of the batch (microseconds; null: no such limit).
CUTOFF_COLUMNS = {"future_cutoff_us": "_future_cutoff_us", "late_cutoff_us": "_late_cutoff_us"}


def _decision_stages(schema: StructType, config: LakehouseConfig, entity: EntityConfig, exempt: list[str],
                     rules: list) -> list[Stage]:
    sources = {name: config.source(name) for name in entity.sources}
    limits = {key: F.col(column) for key, column in CUTOFF_COLUMNS.items()}
    reasons = F.when(F.col("_header") == "ok", F.lit(None).cast("array<string>")).otherwise(
        quarantine_reasons(entity, {**limits, "late_exempt": exempt}))
    return [
        *parse_stages(schema, entity, sources),
        *prepare_stages(entity),
        ("withColumns", rule_result_columns(rules)),
        ("withColumns", {"_reasons": reasons}),
        ("select", [
            # Text that is not UTF-8 is kept with U+FFFD in its place, masked as the entity's text
            # is (lakehouse.text_prep); bronze holds the exact bytes.
            F.when(may_be_quarantined(entity), masked(F.make_valid_utf8("value"), entity)).alias("value"),
            *silver_columns(entity),
            "_reasons", F.when(F.size("_reasons") > 0, F.col("_non_finite")).alias("_non_finite"),
            *FAILED_COLUMNS.values(),
        ]),
    ]


def stage_rows(decided: DataFrame) -> DataFrame:
    """The decided batch with ``_competes`` (kept, and for silver to keep one row per key of:
    lakehouse.silver_dedupe), computed once and kept on the executors' disks (a local
    checkpoint, :data:`STAGE_STORAGE`) for every step that reads it: the aggregation, the
    quarantine append, the dedupe and the MERGE. Delta would otherwise materialise the MERGE's
    source again, as it must for a source that is not a plain Delta scan (bench/RESULTS.md, issue
    16). It is computed, and stored, by the first step that reads it (the aggregation). A block
    lost during that step is recomputed, which is safe only because the decisions are
    deterministic (the plan fixes the batch's times): keep them so. A block lost afterwards fails
    the read (lakehouse.session.LOST_CHECKPOINT_BLOCK), and :func:`refine_batch` stages the batch
    again (lakehouse.session.redo_on_lost_checkpoint).
    lakehouse.session.release_checkpoint frees the blocks."""
    competes = is_kept()
    if "_claims" in decided.columns:  # exact duplicates were marked: only each key's claimant may enter silver
        competes = competes & F.col("_claims")
    return decided.withColumn("_competes", competes).drop("_claims").localCheckpoint(
        eager=False, storageLevel=STAGE_STORAGE)


# Disk, as Delta's own MERGE source materialisation: a large batch stays off the executors' heap.
STAGE_STORAGE = StorageLevel.DISK_ONLY


STAGE_ATTEMPTS = 3  # stagings of a batch whose staged blocks are lost (redo_on_lost_checkpoint)


def _count_and_check(decided: DataFrame, batch: _Batch, rules: list, fused: bool, event_time: str,
                     cache: dict | None = None):
    """The batch's counts (and row-level expectation metrics, and the kept rows' freshness
    measurements) in one aggregation; raises ExpectationFailedError when a ``fail`` expectation
    does not hold on some row. ``cache``: the query's, which keeps the aggregation's expressions
    (:func:`_count_columns`) from its start on."""
    counts = decided.agg(*_count_columns_of(cache, rules, fused, event_time)).first().asDict()
    # No sampled line among the kept rows (short files, a few Kafka offsets, sampled lines all
    # quarantined): that measure's percentiles take every kept row, in a second, rare pass.
    unsampled = [m for m in ("ingest", "event") if counts[f"{m}_oldest"] is not None and not counts[f"{m}_sample"]]
    if unsampled:
        times = _kept_times(event_time)
        counts.update(decided.agg(*[a for m in unsampled for a in time_aggregates(m, times[m])]).first().asDict())
    if counts["failing"]:
        first = decided.where(is_failing()).select(FAILED_COLUMNS["fail"], "_source_file", "_source_line").first()
        raise ExpectationFailedError(
            f"batch {batch.batch_id} of silver.{batch.entity_name}: expectation {', '.join(first[0])} failed "
            f"(policy fail) on {counts['failing']} row(s), first at {first[1]} line {first[2]}; "
            "nothing was committed, the batch is redone after a fix"
        )
    return counts


def _count_columns_of(cache: dict | None, rules: list, fused: bool, event_time: str) -> list[Column]:
    return _cached(cache, ("counts", fused, event_time), lambda: _count_columns(rules, fused, event_time))


def _count_columns(rules: list, fused: bool, event_time: str) -> list[Column]:
    """:func:`_count_and_check`'s aggregation: a few hundred calls into the JVM to build, about
    0.15 s a micro-batch when built for each (bench/RESULTS.md, issue 16)."""
    record, kept = is_record(), is_kept()
    aggregates = {
        "bronze_rows": F.count(F.lit(1)),
        "records": F.count(F.when(record, 1)),
        "quarantined": F.count(F.when(is_quarantined(), 1)),
        "warnings": F.count(F.when(kept & (F.size(FAILED_COLUMNS["warn"]) > 0), 1)),
        "failing": F.count(F.when(is_failing(), 1)),
        "kept_newest_us": F.max(F.when(kept, F.unix_micros(F.col(event_time).cast("timestamp")))),
        **(rule_metric_columns(rules, where=record) if fused else {}),
    }
    return [*[column.alias(name) for name, column in aggregates.items()],
            *measure_aggregates(_kept_times(event_time), rows=kept, sample=sampled_rows())]


def _kept_times(event_time: str) -> dict[str, Column]:
    """The kept rows' ingest and event times, for ops.freshness (lakehouse/freshness.py)."""
    return {"ingest": F.when(is_kept(), F.col("_ingested_at")), "event": F.when(is_kept(), F.col(event_time))}


def _write_outputs(decided: DataFrame, batch: _Batch, results: list, counts: dict,
                   key_index: SilverKeyIndex | None, versions: Future | None) -> int:
    """Write the row each key keeps into silver (lakehouse.silver_dedupe, lakehouse.silver_merge),
    append the quarantined rows (a batch without any makes no quarantine commit) and the
    expectation results; returns the keys inserted. Each write is idempotent on its own, so any
    may be redone. ``counts``: the batch's (:func:`_count_and_check`); ``versions``: its
    :func:`_source_versions` (None: the batch has no expectation results)."""
    config, entity_name, batch_id = batch.config, batch.entity_name, batch.batch_id
    entity = config.entity(entity_name)
    spark = decided.sparkSession
    quarantine = decided.where(is_quarantined()).select(
        "value", "_source_file", "_source_line", F.col("_reasons").alias("reasons"),
        quarantine_error(F.col("_reasons")).alias("error"), F.lit(batch_id).cast("long").alias("batch_id"),
        F.current_timestamp().alias("_quarantined_at"),
    )

    def append_results() -> None:
        failpoint("silver.quality", batch_id)
        if results:
            looked_up = versions.result() if versions is not None else _source_versions(spark, config, entity)
            rows = results_rows(entity_name, entity.suite, results, batch_id, looked_up)
            append_rows(spark, rows, QUALITY_RESULTS_SCHEMA, resolve_table(config, QUALITY_RESULTS_TABLE),
                        batch.marker, batch.replay_since)

    def append_quarantine() -> None:
        failpoint("silver.quarantine", batch_id)
        if counts["quarantined"]:
            append_once(quarantine, resolve_table(config, f"silver.{entity_name}_quarantine"), batch.marker,
                        batch.replay_since)

    # The two appends are small and mostly wait on Delta's commit protocol: they run beside the MERGE.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"silver-{entity_name}") as pool:
        appends = [pool.submit(append_results), pool.submit(append_quarantine)]
        rows, keys = newest_per_key(decided.where("_competes"), entity, entity.key_index_max_keys,
                                    rows_at_most=counts["records"] - counts["quarantined"])
        failpoint("silver.merge", batch_id)
        inserted = merge_into_silver(resolve_table(config, f"silver.{entity_name}"), rows, entity, batch.marker,
                                     batch.replay_since, materialized=True, index=key_index, keys=keys)
        for done in appends:
            done.result()  # re-raises a failed append: the batch fails and is redone
    return inserted


def _utc(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, tz=timezone.utc)


def _source_versions(spark: SparkSession, config: LakehouseConfig, entity: EntityConfig) -> str:
    """The bronze tables' latest Delta versions as the batch's validation starts."""
    versions = []
    for source in entity.sources:
        ref = resolve_table(config, f"bronze.{source}")
        if table_exists(spark, ref):  # a batch handed in directly (tests, backfills) may have none
            versions.append(f"{ref.name}@{last_commit(spark, ref).version}")
    return ",".join(versions)
