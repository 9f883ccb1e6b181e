"""Silver: typed, validated records from bronze rows, one row per key, and the quarantine.

The silver flow of an entity streams its sources' bronze tables, as one union, through
lakehouse.refine's per-batch step (foreachBatch): parse, quarantine rules (lakehouse.quarantine),
expectations, dedupe, and the write into ``silver.<entity>`` (lakehouse.silver_merge: an append, or a
MERGE where a batch updates a key silver holds; tables: lakehouse.silver_tables).
:func:`start` wires the stream; lakehouse/runner.py runs it. `lakehouse reconcile` checks that
nothing was lost (lakehouse.reconcile).
Next stop: the gold tables that read silver (lakehouse.gold).
"""

from __future__ import annotations

from functools import partial

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from lakehouse.batch_plan import NewestEventTime, plan_batch
from lakehouse.bronze import ensure_source_bronze_table
from lakehouse.checkpoints import BatchPlans, logged_batches, planned_source_offsets, redone_batch
from lakehouse.config import LakehouseConfig
from lakehouse.errors import JobError, batch_query_id, raised_in_batch
from lakehouse.failpoints import failpoint
from lakehouse.parse import SOURCE_COLUMN, bronze_records
from lakehouse.pipeline import Flow
from lakehouse.progress import count_records, report_batch
from lakehouse.quality import ROW_LEVEL, BatchValidator, load_suite, row_rules
from lakehouse.refine import prepare_decisions, refine_batch
from lakehouse.silver_keys import SilverKeyIndex
from lakehouse.silver_tables import ensure_silver_tables
from lakehouse.suites import checked_suite
from lakehouse.tables import load_from, resolve_table
from lakehouse.threads import at_once, await_ready, in_background, start_beside


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


def batch_validator(config: LakehouseConfig, entity_name: str, rules: list, checked: dict) -> BatchValidator | None:
    """What GX validates on each batch: the expectations the fused aggregation does not compute
    (none: no validator, and GX is not loaded), or every one with ``quality.validation: gx``.
    ``checked``: the entity's suite as suites.checked_suite read it."""
    suite_path = config.suite_path(config.entity(entity_name).suite)
    if config.quality.validation == "gx":
        return BatchValidator(load_suite(suite_path), entity_name)
    if len(rules) < len(checked["expectations"]):
        suite = load_suite(suite_path)
        others = [e for e in suite.expectations if e.expectation_type not in ROW_LEVEL]
        return BatchValidator(suite, entity_name, only=others)
    return None


def start(spark: SparkSession, config: LakehouseConfig, flow: Flow, trigger: dict, backfill: bool = False) \
        -> StreamingQuery:
    """Stream the entity's bronze tables through lakehouse.refine.refine_batch (foreachBatch).

    ``backfill``: batches planned by this run judge no row late (``lakehouse refine --backfill``)."""
    entity_name, entity = flow.name, config.entity(flow.name)
    # A source that has not been ingested yet is an empty table: the query's set of sources (and
    # so its checkpoint) stays the same when that source's first records arrive.
    bronze_refs = at_once(*[partial(ensure_source_bronze_table, spark, config, source) for source in entity.sources])
    checked = checked_suite(config.suite_path(entity.suite))  # read once for the rules and the validator
    rules = row_rules(checked)
    validator = batch_validator(config, entity_name, rules, checked)
    check_checkpoint_sources(flow.checkpoint, entity_name, entity.sources)
    bronze = _bronze_stream(spark, config, entity_name, bronze_refs)
    plans = BatchPlans(spark, flow.checkpoint)
    newest = NewestEventTime(spark, config, entity_name)  # silver is read for it once, at the first plan
    redone = redone_batch(flow.checkpoint, spark)  # the batch that may be redone after a crash
    decisions = {}  # the expressions refine builds (decisions, counts), built as the query starts
    # Silver's keys, read at the first batch (none where the entity's key_index_max_keys is 0).
    key_index = SilverKeyIndex(spark, resolve_table(config, f"silver.{entity_name}"), entity,
                               entity.key_index_max_keys) if entity.key_index_max_keys else None

    # Made while the query starts its sources (their snapshots and offsets: about 1.5 s on two cores).
    prepared = in_background(partial(_prepare, spark, config, entity_name, bronze, rules, decisions),
                             f"silver-{entity_name}-start")

    def process(batch, batch_id: int) -> None:
        await_ready(prepared)
        if key_index is not None:
            key_index.read_in_background()  # the query's first batch reads silver's keys beside its parse
        # The query id is stable for one checkpoint, so (query, batch) identifies a batch across restarts.
        session = batch.sparkSession
        # A batch redone after a crash takes the plan its first attempt recorded.
        plan = plans.plan(batch_id, lambda: plan_batch(session, config, entity_name, backfill, newest))
        failpoint("silver.plan", batch_id)
        measured, kept_newest = refine_batch(config, entity_name, rules, f"{flow.query_name}-{batch_query_id(batch)}",
                                             batch, batch_id, plan, validator, may_be_replay=batch_id == redone,
                                             decisions=decisions, key_index=key_index)
        newest.advance(kept_newest)
        report_batch(flow.query_name, batch_id, freshness=[measured])

    return start_beside(lambda: (
        count_records(bronze).writeStream.foreachBatch(raised_in_batch(process))
        .queryName(flow.query_name)
        .option("checkpointLocation", flow.checkpoint)
        .trigger(**trigger)
        .start()
    ), prepared)


def _bronze_stream(spark: SparkSession, config: LakehouseConfig, entity_name: str, refs: list) -> DataFrame:
    """The entity's bronze tables (``refs``, in the order of its sources) as one stream of bronze rows."""
    entity = config.entity(entity_name)
    streams = []
    for source, ref in zip(entity.sources, refs, strict=True):
        reader = spark.readStream.format("delta")
        if entity.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", entity.max_files_per_trigger)
        stream = bronze_records(load_from(reader, ref), config.source(source))
        streams.append(stream.withColumn(SOURCE_COLUMN, F.lit(source)))  # parse_records picks the format by it
    bronze = streams[0]
    for other in streams[1:]:
        bronze = bronze.unionByName(other)
    return bronze


def _prepare(spark: SparkSession, config: LakehouseConfig, entity_name: str, bronze: DataFrame, rules: list,
             decisions: dict) -> None:
    """Silver's tables, and the expressions the batches' decisions are built of: made while the
    query starts, so its first batch waits for less."""
    at_once(partial(ensure_silver_tables, spark, config, entity_name),
            partial(prepare_decisions, bronze, config, entity_name, rules, decisions))


def describe(config: LakehouseConfig, flow: Flow, backfill: bool = False) -> list[str]:
    """What the flow reads and writes, for its first progress lines."""
    lines = [f"{', '.join(flow.inputs)} -> silver.{flow.name} (+ _quarantine; checkpoint {flow.checkpoint})"]
    if backfill:
        lines.append("backfill: the batches this run plans quarantine no row as late")
    return lines
