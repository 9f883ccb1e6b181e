"""Bronze: every input record, byte for byte, plus where and when it arrived.

A file source (``kind: files``): Spark's file source plans which landing files each micro-batch
takes (its checkpoint makes that exactly-once); the batch then reads the planned files itself
(lakehouse.landing: a file that cannot be read is recorded in ops.bad_files instead of stopping
the stream; lakehouse.landing_lines: one row per line, its bytes as landed, with its file and
line number, which the file source's own rows could not give). A Kafka source (``kind: kafka``):
one row per message, read by Spark's Kafka connector, with the key and value as raw bytes and
the topic, partition, offset and Kafka timestamp, appended by a Delta sink. Either way the
query's checkpoint (file list or Kafka offsets) and commits marked with the batch
(lakehouse.tables.append_once; the Delta sink's own for Kafka) make a restart exactly-once.
Next stop for each row: ``silver.<entity>`` (lakehouse.silver).
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.checkpoints import batch_planned_ms, planned_files, redone_batch
from lakehouse.config import LakehouseConfig, SourceConfig
from lakehouse.errors import JobError, batch_query_id, raised_in_batch
from lakehouse.freshness import Measured, observe_freshness
from lakehouse.landing import ensure_landing_tables, ingest_files
from lakehouse.landing_journal import IngestedJournal
from lakehouse.parse import record_event_time
from lakehouse.pipeline import Flow
from lakehouse.progress import count_records, on_flush, report_batch
from lakehouse.table_create import APPEND_ONLY_CHECKPOINTS, create_table_if_missing
from lakehouse.tables import TableRef, batch_marker, bronze_table, read_table, start_to, table_exists
from lakehouse.threads import at_once, await_ready, in_background, start_beside

BRONZE_FILE_SCHEMA = StructType(
    [
        StructField("value", BinaryType(), nullable=True),  # the raw line's bytes, without its "\n"
        StructField("_source_file", StringType(), nullable=False),  # URI of the landing file
        StructField("_source_line", LongType(), nullable=False),  # 1-based line number in that file
        StructField("_ingested_at", TimestampType(), nullable=False),  # the micro-batch's time
    ]
)

# The Kafka connector's columns, as it reads them, plus the micro-batch's time.
BRONZE_KAFKA_SCHEMA = StructType(
    [
        StructField("key", BinaryType(), nullable=True),
        StructField("value", BinaryType(), nullable=True),  # the message, raw bytes (null: a tombstone)
        StructField("topic", StringType(), nullable=False),
        StructField("partition", IntegerType(), nullable=False),
        StructField("offset", LongType(), nullable=False),
        StructField("timestamp", TimestampType(), nullable=True),  # Kafka's (producer or log-append) time
        StructField("timestampType", IntegerType(), nullable=True),  # 0: create time, 1: log-append time
        StructField("_ingested_at", TimestampType(), nullable=False),
    ]
)


# Spark's file source skips files whose modification time is more than maxFileAge (7 days by
# default) older than the newest file it has seen: a file stamped in the future would hide every
# later file, and a backfill copied with its old times (cp -p, rsync -t) would be dropped. Every
# new path is read instead, whatever its time. (The source's memory of seen paths then grows with
# the landing directory, which its listing does anyway.)
EVERY_FILE_AGE = "3650000000d"


def read_landing_stream(spark: SparkSession, source: SourceConfig, path: str) -> DataFrame:
    """The file source that plans each micro-batch's files (its rows are not read: see landing)."""
    reader = spark.readStream.format("text").option("wholetext", True).option("maxFileAge", EVERY_FILE_AGE)
    if source.max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", source.max_files_per_trigger)
    if source.max_bytes_per_trigger:
        reader = reader.option("maxBytesPerTrigger", source.max_bytes_per_trigger)
    return reader.load(path)


class BronzeSchemaError(JobError):
    """A bronze table written by an older release, in a layout this one cannot append to."""


def ensure_bronze_table(spark: SparkSession, table: TableRef, kind: str = "files") -> None:
    """Create the bronze table up front, append-only, so nothing can rewrite what landed."""
    if kind == "kafka":
        schema, stats = BRONZE_KAFKA_SCHEMA, "topic,partition,offset,timestamp,_ingested_at"
        comment = "Raw Kafka messages, one row per message; see lakehouse/bronze.py"
    else:
        schema, stats = BRONZE_FILE_SCHEMA, "_source_file,_source_line,_ingested_at"
        comment = "Raw landing lines, one row per input line; see lakehouse/bronze.py"
    if table_exists(spark, table):
        existing = read_table(spark, table).schema
        if "value" in existing.fieldNames() and existing["value"].dataType != schema["value"].dataType:
            raise BronzeSchemaError(
                f"{table.name} holds value as {existing['value'].dataType.simpleString()}, this release writes "
                f"{schema['value'].dataType.simpleString()} (raw bytes): ingest into a fresh --data-dir, or move "
                f"{table.path or table.identifier} and its checkpoint away (README: upgrading a data directory)")
    create_table_if_missing(
        spark,
        table,
        schema,
        properties={
            "delta.appendOnly": "true",
            # File statistics for data skipping on the provenance columns only: min/max of raw
            # records would cost a pass over every value and never prune a query.
            "delta.dataSkippingStatsColumns": stats,
            **APPEND_ONLY_CHECKPOINTS,
        },
        comment=comment,
    )


def ensure_source_bronze_table(spark: SparkSession, config: LakehouseConfig, source_name: str) -> TableRef:
    """The source's bronze table, created (empty) if no ingest has run yet."""
    table = bronze_table(config, source_name)
    ensure_bronze_table(spark, table, config.source(source_name).kind)
    return table


class FileBatchIngest:
    """The foreachBatch function of a file source's bronze query: each micro-batch's planned files
    (from the query's own file-source log) read into bronze by lakehouse.landing."""

    def __init__(self, config: LakehouseConfig, flow: Flow, redone: int | None = None,
                 tables: Future | None = None):
        self.config, self.source_name = config, flow.name
        self.query_name, self.checkpoint = flow.query_name, flow.checkpoint
        self.redone = redone  # the batch that may be redone after a crash (checkpoints.redone_batch)
        self.times = freshness_times(config, flow.name)  # what each batch measures for ops.freshness
        self.tables = tables  # the tables' creation, begun beside the query's start (start_file_ingest)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        if self.tables is not None:
            await_ready(self.tables)
        spark = batch.sparkSession
        # The query id is stable for one checkpoint, so (query, batch) identifies a batch across restarts.
        app_id = f"{self.query_name}-{batch_query_id(batch)}"
        uris = [entry["path"] for entry in planned_files(spark, self.checkpoint, batch_id)]
        replay_since = batch_planned_ms(self.checkpoint, batch_id, spark) if batch_id == self.redone else None
        files, times = ingest_files(spark, self.config, self.source_name, uris, app_id, batch_id, replay_since,
                                    self.checkpoint, self.times)
        measured = [] if times is None else [
            Measured.from_row(times, f"bronze.{self.source_name}", f"bronze.{self.source_name}", batch_id,
                              marker=batch_marker(app_id, batch_id))]
        report_batch(self.query_name, batch_id, records=sum(f.lines or 0 for f in files),
                     bad_files=[f"{f.path}: {f.reason} ({f.detail})" for f in files if f.reason], freshness=measured)


def freshness_times(config: LakehouseConfig, source_name: str) -> dict[str, Column]:
    """What a bronze batch measures for ops.freshness (lakehouse/freshness.py), besides its rows:
    the event time read from raw records by the first entity that reads the source, and, from a
    Kafka source, ``_ingested_at``.

    A file source's batch reads the event time from a sample of its lines only
    (lakehouse.landing applies freshness.sampled_time_aggregates, every
    freshness.bronze_sample_every-th line): reading it from every raw line (a JSON or CSV parse
    and a timestamp cast) and the percentiles over every line tripled bronze's cost per line
    (bench/RESULTS.md, issue 16). The event time's oldest is then the sample's too. Its ingest
    time is one per batch, a literal of the batch's read, measured exactly without reading rows
    (landing._append_lines). Kafka measures every message."""
    source = config.source(source_name)
    times = {"ingest": F.col("_ingested_at")} if source.kind == "kafka" else {}
    reader = next((name for name, entity in config.entities.items() if source_name in entity.sources), None)
    if reader is not None:
        times["event"] = record_event_time(F.col("value").cast("string"), config.entity(reader), source)
    return times


def start(spark: SparkSession, config: LakehouseConfig, flow: Flow, trigger: dict) -> StreamingQuery:
    """Start the bronze query of the flow's source (files or Kafka). ``trigger`` is passed to
    ``writeStream.trigger``; lakehouse/runner.py runs it."""
    starter = start_kafka_ingest if config.source(flow.name).kind == "kafka" else start_file_ingest
    return starter(spark, config, flow, trigger)


def start_file_ingest(spark: SparkSession, config: LakehouseConfig, flow: Flow, trigger: dict) -> StreamingQuery:
    """Start the bronze query for a file source. Its tables are made (lakehouse/table_create.py)
    while the query starts; its first batch waits for them, and so does the return."""
    source = config.source(flow.name)
    # The batches' ops.ingested_files rows, appended whenever the progress recorder flushes.
    on_flush(flow.query_name, IngestedJournal(spark, config, flow.name, flow.checkpoint).flush)
    landing = config.landing_path(flow.name)
    if "://" not in landing:
        Path(landing).mkdir(parents=True, exist_ok=True)  # files may start arriving later
    tables = in_background(lambda: at_once(lambda: ensure_source_bronze_table(spark, config, flow.name),
                                           lambda: ensure_landing_tables(spark, config)), f"bronze-{flow.name}-start")
    return start_beside(lambda: (
        read_landing_stream(spark, source, landing).writeStream
        .foreachBatch(raised_in_batch(FileBatchIngest(config, flow, redone_batch(flow.checkpoint, spark), tables)))
        .queryName(flow.query_name)
        .option("checkpointLocation", flow.checkpoint)
        .trigger(**trigger)
        .start()
    ), tables)


def start_kafka_ingest(spark: SparkSession, config: LakehouseConfig, flow: Flow, trigger: dict) -> StreamingQuery:
    """Start the bronze query for a Kafka source: every message of its topics, as received.

    The checkpoint holds the offsets of each micro-batch before it runs and marks it committed
    after the Delta commit, so a restart re-reads exactly the uncommitted offset ranges (and the
    Delta sink skips a batch it already committed): no message lost, none doubled.
    """
    from lakehouse.kafka import kafka_options, spark_source_options
    from lakehouse.session import require_kafka_connector

    require_kafka_connector(spark)
    options = spark_source_options(kafka_options(config.source(flow.name), flow.name))
    table = ensure_source_bronze_table(spark, config, flow.name)
    messages = spark.readStream.format("kafka").options(**options).load()
    rows = messages.select(*[c for c in BRONZE_KAFKA_SCHEMA.fieldNames() if c != "_ingested_at"],
                           F.current_timestamp().alias("_ingested_at"))
    writer = (
        observe_freshness(count_records(rows), freshness_times(config, flow.name)).writeStream.format("delta")
        .outputMode("append")
        .queryName(flow.query_name)
        .option("checkpointLocation", flow.checkpoint)
        .trigger(**trigger)
    )
    return start_to(writer, table)


def describe(config: LakehouseConfig, flow: Flow) -> list[str]:
    """What the flow reads and writes, for its first progress line."""
    source = config.source(flow.name)
    where = config.landing_path(flow.name)
    if source.kind == "kafka":
        kafka = source.kafka
        topics = ",".join(kafka.topics) if kafka.topics else f"/{kafka.topic_pattern}/"
        from lakehouse.kafka import KafkaSetupError, bootstrap_servers

        try:
            servers = bootstrap_servers(kafka)
        except KafkaSetupError:
            servers = f"${kafka.bootstrap_servers_env} (not set)"
        where = f"kafka topic {topics} at {servers}"
    return [f"{where} -> bronze.{flow.name} (checkpoint {flow.checkpoint})"]


def restart_reason(config: LakehouseConfig, flow: Flow, error: Exception) -> str | None:
    """Spark 4.1.1's Kafka source fails its progress report on the first micro-batch after a restart
    that redoes a planned batch (SPARK-55271: ``metrics()`` before ``latestOffset()``). That happens
    after the batch committed (Delta commit and checkpoint), so a restart goes on where it stopped."""
    text = str(error)
    if config.source(flow.name).kind != "kafka":
        return None
    if 'the return value of "scala.Option.get()" is null' in text and "IterableOps.map" in text:
        return "Spark's Kafka source failed reporting progress after a redone batch (SPARK-55271), after its commit"
    return None
