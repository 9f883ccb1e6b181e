"""Bronze: every input line of a file source, byte for byte, plus where and when it arrived.

The landing directory is read as whole files (``wholetext``) and split into lines here, because
Spark's line reader cannot say which line of its file a row was. The result is appended to
``bronze.<source>`` by a Delta sink, whose checkpoint makes a restart exactly-once.
Next stop for each row: ``silver.<entity>`` (lakehouse.silver, issue 3).
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from lakehouse.config import LakehouseConfig, SourceConfig
from lakehouse.observability import count_records
from lakehouse.streaming import run_streaming_job
from lakehouse.tables import TableRef, create_table_if_missing, resolve_table, start_to

BRONZE_FILE_SCHEMA = StructType(
    [
        StructField("value", StringType(), nullable=True),  # the raw line, without its "\n"
        StructField("_source_file", StringType(), nullable=False),  # URI of the landing file
        StructField("_source_line", LongType(), nullable=False),  # 1-based line number in that file
        StructField("_ingested_at", TimestampType(), nullable=False),  # the micro-batch's time
    ]
)


def bronze_table(config: LakehouseConfig, source: str) -> TableRef:
    return resolve_table(config, f"bronze.{source}")


def bronze_query_name(source: str) -> str:
    return f"bronze_{source}"


def with_lines(files: DataFrame, file_path: Column) -> DataFrame:
    """One row per line of each whole-file row (``value`` holds the file's text).

    Lines end at "\\n"; a "\\r" before it stays in the line, so the line is stored as received.
    A final "\\n" ends the last line rather than starting an empty one; an empty file has no lines.

    Cost matters here (every landed byte passes through): the text is split once, and the
    empty piece after a final "\\n" is dropped from the array, not by trimming the text (which
    walks and copies each file again). The array is the generator's only input, so no per-line
    row carries the file's text; and nothing after the explode refers back to the array, or the
    optimizer would re-split the file once per line.
    """
    text = F.col("value")
    pieces, ends_with_newline = F.col("_pieces"), F.col("_ends_with_newline")
    whole_lines = F.when(ends_with_newline, F.slice(pieces, 1, F.size(pieces) - 1)).otherwise(pieces)
    return (
        files.select(
            file_path.alias("_source_file"),
            F.when(text == "", F.array().cast("array<string>")).otherwise(F.split(text, "\n", -1)).alias("_pieces"),
            text.endswith("\n").alias("_ends_with_newline"),
        )
        .select("_source_file", F.posexplode(whole_lines).alias("_position", "value"))
        .select(
            "value",
            "_source_file",
            (F.col("_position") + 1).cast("long").alias("_source_line"),
            F.current_timestamp().alias("_ingested_at"),
        )
    )


def read_landing_stream(spark: SparkSession, source: SourceConfig, path: str) -> DataFrame:
    reader = spark.readStream.format("text").option("wholetext", True)
    if source.max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", source.max_files_per_trigger)
    if source.max_bytes_per_trigger:
        reader = reader.option("maxBytesPerTrigger", source.max_bytes_per_trigger)
    return reader.load(path)


def ensure_bronze_table(spark: SparkSession, table: TableRef) -> None:
    """Create the bronze table up front, append-only, so nothing can rewrite what landed."""
    create_table_if_missing(
        spark,
        table,
        BRONZE_FILE_SCHEMA,
        properties={
            "delta.appendOnly": "true",
            # File statistics for data skipping on the provenance columns only: min/max of raw
            # lines would cost a pass over every value and never prune a query.
            "delta.dataSkippingStatsColumns": "_source_file,_source_line,_ingested_at",
        },
        comment="Raw landing lines, one row per input line; see lakehouse/bronze.py",
    )


def start_file_ingest(
    spark: SparkSession,
    config: LakehouseConfig,
    source_name: str,
    trigger: dict,
) -> StreamingQuery:
    """Start the bronze query for a file source. ``trigger`` is passed to ``writeStream.trigger``."""
    source = config.source(source_name)
    table = bronze_table(config, source_name)
    ensure_bronze_table(spark, table)
    landing = config.landing_path(source_name)
    if "://" not in landing:
        Path(landing).mkdir(parents=True, exist_ok=True)  # files may start arriving later
    files = read_landing_stream(spark, source, landing)
    lines = count_records(with_lines(files, F.col("_metadata.file_path")))
    writer = (
        lines.writeStream.format("delta")
        .outputMode("append")
        .queryName(bronze_query_name(source_name))
        .option("checkpointLocation", config.checkpoint_path(bronze_query_name(source_name)))
        .trigger(**trigger)
    )
    return start_to(writer, table)


def run_bronze_ingest(spark: SparkSession, config: LakehouseConfig, source_name: str, trigger: dict) -> int:
    """The bronze job: run the source's query until done (availableNow) or stopped. Exit code."""
    query_name = bronze_query_name(source_name)
    checkpoint = config.checkpoint_path(query_name)
    print(f"{query_name}: {config.landing_path(source_name)} -> bronze.{source_name} (checkpoint {checkpoint})",
          flush=True)
    return run_streaming_job(
        spark, config, query_name, checkpoint, lambda: start_file_ingest(spark, config, source_name, trigger)
    )
