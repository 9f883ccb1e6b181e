"""Gold: tables declared in configuration (``conf/<layer>/gold/<name>.yml``), Spark SQL over silver.

Each declared input is visible to the table's SQL as a view named like the table with "_" for
"." (``silver.telemetry`` -> ``silver_telemetry``). Two modes:

- ``streaming``: the one input is read as a stream (a silver input through its Delta change
  feed, taking inserted rows, because silver's MERGE rewrites files), the watermark is applied
  to it, and the SQL's windowed aggregates are appended to ``gold.<name>`` once their window
  closes (window end <= newest event time - delay). Exactly-once through the query's checkpoint.
  Rows later than the watermark do not count in a window already closed; a key whose silver row
  is later replaced by a newer version keeps its first version in gold.
- ``batch``: the SQL is recomputed over the inputs' current versions and replaces the table
  (one Delta commit, so a reader sees the old or the new table, never a mix). The commit's
  ``userMetadata`` records the input versions, so a training run can name the data it read.

Next stop: training (ml/, issue 4) reads a gold feature table at a pinned Delta version.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from lakehouse.config import GoldTableConfig, LakehouseConfig, spark_interval, view_name
from lakehouse.exit_codes import EXIT_OK, JobError
from lakehouse.observability import count_records
from lakehouse.streaming import run_streaming_job
from lakehouse.tables import (
    TableRef,
    last_commit,
    load_from,
    read_table,
    resolve_table,
    save_to,
    start_to,
    table_exists,
)

CHANGE_FEED_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


class GoldInputMissing(JobError):
    """An input table of a gold table does not exist yet (its job has not run)."""


def gold_query_name(name: str) -> str:
    return f"gold_{name}"


def _require_inputs(spark: SparkSession, config: LakehouseConfig, name: str) -> list[TableRef]:
    refs = [resolve_table(config, table) for table in config.gold_table(name).inputs]
    for ref in refs:
        if not table_exists(spark, ref):
            layer, table = ref.layer, ref.table
            hint = {
                "bronze": f"lakehouse ingest --source {table}",
                "silver": f"lakehouse refine --entity {table.removesuffix('_quarantine')}",
                "gold": f"lakehouse gold --table {table}",
            }.get(layer, "the job that writes it")
            raise GoldInputMissing(f"gold.{name}: input {ref.name} does not exist yet: run `{hint}` first")
    return refs


def input_stream(spark: SparkSession, ref: TableRef) -> DataFrame:
    """An input table as a stream of its new rows."""
    reader = spark.readStream.format("delta")
    if ref.layer == "silver":
        # MERGE rewrites files when it updates a key, which a plain Delta stream refuses; the
        # change feed yields each commit's inserted rows instead.
        reader = reader.option("readChangeFeed", "true")
    stream = load_from(reader, ref)
    if ref.layer == "silver":
        stream = stream.where("_change_type = 'insert'").drop(*CHANGE_FEED_COLUMNS)
    return stream


def start_gold_stream(spark: SparkSession, config: LakehouseConfig, name: str, trigger: dict) -> StreamingQuery:
    gold = config.gold_table(name)
    (source,) = _require_inputs(spark, config, name)
    stream = count_records(input_stream(spark, source))
    stream.withWatermark(gold.watermark.column, spark_interval(gold.watermark.delay)).createOrReplaceTempView(view_name(source.name))
    result = spark.sql(gold.sql)
    target = resolve_table(config, f"gold.{name}")
    writer = (
        result.writeStream.format("delta")
        .outputMode("append")
        .queryName(gold_query_name(name))
        .option("checkpointLocation", config.checkpoint_path(gold_query_name(name)))
        .trigger(**trigger)
    )
    return start_to(writer, target)


@dataclass
class BatchBuild:
    table: str
    version: int
    rows: int
    inputs: dict[str, int]  # input table -> the Delta version read


def build_batch_table(spark: SparkSession, config: LakehouseConfig, name: str) -> BatchBuild:
    """Recompute a batch gold table from its inputs' current versions; one overwrite commit."""
    gold = config.gold_table(name)
    versions = {}
    for ref in _require_inputs(spark, config, name):
        version = last_commit(spark, ref).version
        read_table(spark, ref, version=version).createOrReplaceTempView(view_name(ref.name))
        versions[ref.name] = version
    result = spark.sql(gold.sql)
    target = resolve_table(config, f"gold.{name}")
    writer = (
        result.write.format("delta").mode("overwrite")
        .option("overwriteSchema", "true")  # the SQL may have changed since the last build
        .option("userMetadata", json.dumps({"gold_table": target.name, "inputs": versions}))
    )
    save_to(writer, target)
    commit = last_commit(spark, target)  # the overwrite's own metrics: no second scan to count rows
    return BatchBuild(target.name, commit.version, int(commit.operationMetrics["numOutputRows"]), versions)


def run_gold(spark: SparkSession, config: LakehouseConfig, name: str, trigger: dict) -> int:
    """Build one gold table: a streaming query until done/stopped, or one batch recompute. Exit code."""
    gold: GoldTableConfig = config.gold_table(name)
    inputs = ", ".join(gold.inputs)
    if gold.mode == "batch":
        print(f"gold.{name}: batch rebuild from {inputs}", flush=True)
        build = build_batch_table(spark, config, name)
        read = ", ".join(f"{table}@v{version}" for table, version in build.inputs.items())
        print(f"gold.{name}: version {build.version}, {build.rows:,} rows (read {read})", flush=True)
        return EXIT_OK
    query_name = gold_query_name(name)
    checkpoint = config.checkpoint_path(query_name)
    print(f"{query_name}: {inputs} -> gold.{name} (streaming, watermark {gold.watermark.column} "
          f"{gold.watermark.delay}; checkpoint {checkpoint})", flush=True)
    return run_streaming_job(spark, config, query_name, checkpoint,
                             lambda: start_gold_stream(spark, config, name, trigger))


def run_gold_tables(spark: SparkSession, config: LakehouseConfig, names: list[str], trigger: dict) -> int:
    """Build several gold tables in dependency order; stop at the first that fails."""
    for name in config.gold_order(names):
        code = run_gold(spark, config, name, trigger)
        if code != EXIT_OK:
            print(f"lakehouse: gold.{name} failed (exit {code}); tables after it were not built", file=sys.stderr)
            return code
    return EXIT_OK
