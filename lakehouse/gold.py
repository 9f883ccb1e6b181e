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
from dataclasses import dataclass
from datetime import timezone

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from lakehouse.config import ConfigError, LakehouseConfig, spark_interval, view_name
from lakehouse.errors import JobError
from lakehouse.failpoints import failpoint
from lakehouse.freshness import Measured, append_freshness, measure_aggregates, observe_freshness
from lakehouse.pipeline import Flow
from lakehouse.progress import count_records
from lakehouse.tables import (
    TableRef,
    last_commit,
    load_from,
    read_table,
    resolve_table,
    retry_on_conflict,
    save_to,
    session_conf,
    start_to,
    table_exists,
    writing,
)

CHANGE_FEED_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


class GoldInputMissing(JobError):
    """An input table of a gold table does not exist yet (its job has not run)."""


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


def start(spark: SparkSession, config: LakehouseConfig, flow: Flow, trigger: dict) -> StreamingQuery:
    """Start a streaming gold table's query (lakehouse/runner.py runs it)."""
    name = flow.name
    gold = config.gold_table(name)
    (source,) = _require_inputs(spark, config, name)
    stream = count_records(input_stream(spark, source))
    watermarked = stream.withWatermark(gold.watermark.column, spark_interval(gold.watermark.delay))
    watermarked.createOrReplaceTempView(view_name(source.name))
    result = spark.sql(gold.sql)
    if gold.window_end:  # ops.freshness: commit time minus each appended window's end
        result = _with_window_end(config, name, result,
                                  lambda df, end: observe_freshness(df, {"window": end}))
    target = resolve_table(config, f"gold.{name}")
    writer = (
        result.writeStream.format("delta")
        .outputMode("append")
        .queryName(flow.query_name)
        .option("checkpointLocation", flow.checkpoint)
        .trigger(**trigger)
    )
    # The query takes the session's settings as it starts, and its first run fixes its state's
    # partitions (the aggregation's shuffle) in its checkpoint.
    with session_conf(spark, {"spark.sql.shuffle.partitions": state_partitions(spark, config)}):
        return start_to(writer, target)


def state_partitions(spark: SparkSession, config: LakehouseConfig) -> int | None:
    """``streaming.state_partitions`` as a number (None: the session's shuffle partitions)."""
    chosen = config.streaming.state_partitions
    return spark.sparkContext.defaultParallelism if chosen == "cores" else chosen


@dataclass
class BatchBuild:
    table: str
    version: int
    rows: int
    inputs: dict[str, int]  # input table -> the Delta version read

    def describe(self) -> str:
        read = ", ".join(f"{table}@v{version}" for table, version in self.inputs.items())
        return f"version {self.version}, {self.rows:,} rows (read {read})"


def build(spark: SparkSession, config: LakehouseConfig, flow: Flow) -> BatchBuild:
    """Recompute a batch gold table from its inputs' current versions; one overwrite commit."""
    name = flow.name
    gold = config.gold_table(name)
    versions, frames = {}, {}
    for ref in _require_inputs(spark, config, name):
        version = last_commit(spark, ref).version
        frames[ref.name] = read_table(spark, ref, version=version)
        frames[ref.name].createOrReplaceTempView(view_name(ref.name))
        versions[ref.name] = version
    if gold.transform is not None:
        from lakehouse.preflight import transform_function

        result = transform_function(config, name)(spark, frames, **gold.options)
    else:
        result = spark.sql(gold.sql)
    target = resolve_table(config, f"gold.{name}")
    observed = Observation(f"freshness-{name}") if gold.window_end else None
    if observed is not None:
        result = _with_window_end(config, name, result, lambda df, end: _observe_new_windows(
            df, end, observed, _newest_window_end(spark, target, gold.window_end)))
    writer = (
        result.write.format("delta").mode("overwrite")
        .option("overwriteSchema", "true")  # the SQL may have changed since the last build
        .option("userMetadata", json.dumps({"gold_table": target.name, "inputs": versions}))
    )
    failpoint("gold.build")  # the rows are planned, nothing written (tests/lakehouse/test_chat_gold.py)
    with writing(target):  # maintenance in this application waits (and the commit read next is this one)
        retry_on_conflict(lambda: save_to(writer, target), 4)  # lost to another application's commit: redone
        commit = last_commit(spark, target)  # the overwrite's own metrics: no second scan to count rows
    if observed is not None:
        when = commit.timestamp.astimezone(timezone.utc)  # pyspark gives a naive local time
        measured = Measured.from_row(observed.get, flow.id, target.name, commit.version)
        append_freshness(spark, config, [measured.row(commit.version, when)] if measured.rows else [])
    return BatchBuild(target.name, commit.version, int(commit.operationMetrics["numOutputRows"]), versions)


def _with_window_end(config: LakehouseConfig, name: str, result: DataFrame, measure) -> DataFrame:
    """``measure(result, window end column)``; a window_end that does not parse or resolve
    against the table's columns is a configuration error naming the key."""
    from lakehouse.preflight import conf_file

    try:
        return measure(result, F.expr(config.gold_table(name).window_end))
    except (AnalysisException, ParseException) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise ConfigError(conf_file(config, "gold", name), f"gold.{name}.window_end",
                          f"is not an expression over the table's columns ({', '.join(result.columns)}): {first}"
                          ) from None


def _newest_window_end(spark: SparkSession, target: TableRef, window_end: str) -> int | None:
    """The newest window end the table holds before a rebuild, in microseconds (None: no table,
    or no rows yet)."""
    if not table_exists(spark, target):
        return None
    try:
        return read_table(spark, target).agg(F.max(F.unix_micros(F.expr(window_end).cast("timestamp")))).first()[0]
    except AnalysisException:  # the table predates a change of its SQL: every row counts as new
        return None


def _observe_new_windows(result: DataFrame, end: Column, observed: Observation, newest: int | None) -> DataFrame:
    """A rebuild's freshness covers the windows it adds: those ending after the newest one the
    table held (every row on the first build)."""
    new = end.isNotNull() if newest is None else F.unix_micros(end.cast("timestamp")) > F.lit(newest)
    return result.observe(observed, *measure_aggregates({"window": F.when(new, end)}, rows=new))


def describe(config: LakehouseConfig, flow: Flow) -> list[str]:
    """What the flow reads and writes, for its first progress line."""
    gold = config.gold_table(flow.name)
    if not flow.streaming:
        how = f" by {gold.transform}" if gold.transform else ""
        return [f"batch rebuild from {', '.join(gold.inputs)}{how}"]
    return [f"{', '.join(gold.inputs)} -> gold.{flow.name} (streaming, watermark {gold.watermark.column} "
            f"{gold.watermark.delay}; checkpoint {flow.checkpoint})"]
