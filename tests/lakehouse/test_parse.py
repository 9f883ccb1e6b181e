"""Parsing the faults real feeds carry: byte-order marks, Windows line ends, a field named twice,
NaN and Infinity, impossible years; and the time limits a batch's plan puts on event times."""

from __future__ import annotations

from datetime import datetime, timezone

from pyspark.sql import functions as F

from lakehouse.config import CsvOptions, SourceConfig
from lakehouse.parse import parse_records
from lakehouse.quality import FAILED_COLUMNS
from lakehouse.quarantine import quarantine_reasons

FULL = ('"event_id": "e1", "host": "h", "rack": "r01", "event_time": "2026-03-01T00:00:00Z", "cpu_util": 1, '
        '"mem_util": 1, "gpu_util": 1, "power_w": 1, "fan_rpm": 1, "inlet_temp_c": 1')


def _parse(spark, entity, texts: list[str], sources=None):
    lines = spark.createDataFrame([(t, "f", i + 1) for i, t in enumerate(texts)],
                                  "value string, _source_file string, _source_line long")
    return parse_records(lines, entity, sources).orderBy("_source_line").collect()


def test_byte_order_mark_duplicate_fields_and_numbers(spark, config):
    entity = config.entity("telemetry")
    rows = _parse(spark, entity, [
        "\ufeff{" + FULL + ', "exhaust_temp_c": 1}',
        "{" + FULL + ', "exhaust_temp_c": 1, "host": "other"}',
        "{" + FULL + ', "exhaust_temp_c": NaN}',
        "{" + FULL + ', "exhaust_temp_c": "-Infinity"}',
        "{" + FULL + ', "exhaust_temp_c": 1e400}',
        "{" + FULL + ', "exhaust_temp_c": 1e300}',
    ])
    assert not rows[0]._malformed and rows[0].event_id == "e1"  # the BOM is not part of the record
    assert rows[1]._duplicate_field and not rows[0]._duplicate_field
    assert [r._non_finite for r in rows] == [[], [], ["exhaust_temp_c"], ["exhaust_temp_c"], ["exhaust_temp_c"], []]
    assert rows[5].exhaust_temp_c == 1e300 and all(r._type_errors == [] for r in rows)


def test_non_finite_values_pass_in_an_allowed_column(spark, config):
    from dataclasses import replace

    entity = replace(config.entity("telemetry"), allow_non_finite=["exhaust_temp_c"])
    (row,) = _parse(spark, entity, ["{" + FULL + ', "exhaust_temp_c": "NaN"}'])
    assert row._non_finite == [] and row.exhaust_temp_c != row.exhaust_temp_c  # NaN kept


def test_timestamps_outside_1900_to_9999_are_type_errors(spark, config):
    entity = config.entity("telemetry")
    times = ["1900-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "10000-01-01T00:00:00Z", "1899-12-31T23:59:59Z",
             "+99999-01-01T00:00:00Z", "-0001-01-01T00:00:00Z"]
    rows = _parse(spark, entity, ["{" + FULL.replace("2026-03-01T00:00:00Z", t) + ', "exhaust_temp_c": 1}' for t in times])
    assert [r._type_errors for r in rows] == [[], [], ["event_time"], ["event_time"], ["event_time"], ["event_time"]]
    assert rows[1].event_time.year == 9999 and rows[2].event_time is None


def test_a_csv_line_ending_in_cr_keeps_it_out_of_the_last_field(spark, config):
    entity = config.entity("telemetry")
    csv = SourceConfig(kind="files", format="csv", csv=CsvOptions(header=False))
    line = "e1,h,r01,2026-03-01T00:00:00Z,1,1,1,1,1,1,2.5\r"
    (row,) = _parse(spark, entity, [line], {"csvfeed": csv})
    assert row.exhaust_temp_c == 2.5 and row._type_errors == [] and not row._malformed


def _reasons(spark, entity, plan, event_times: list[str], source: str = "a"):
    rows = spark.createDataFrame(
        [(t, source) for t in event_times], "event_time string, _source string").select(
        F.lit("{}").alias("value"), F.col("event_time").cast("timestamp").alias("event_time"), "_source",
        F.lit(False).alias("_too_large"), F.lit(False).alias("_malformed"), F.lit(False).alias("_duplicate_field"),
        F.array().cast("array<string>").alias("_type_errors"), F.array().cast("array<string>").alias("_non_finite"),
        F.lit(None).cast("string").alias("_rescued"), F.lit(None).cast("string").alias("_header"),
        *[F.array().cast("array<string>").alias(c) for c in FAILED_COLUMNS.values()])
    return [r[0] for r in rows.select(quarantine_reasons(entity, plan)).collect()]


def _micros(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1_000_000)


def test_the_plan_judges_future_and_late_event_times(spark, config):
    entity = config.entity("telemetry")
    plan = {"future_cutoff_us": _micros("2026-03-01T01:00:00"), "late_cutoff_us": _micros("2026-02-28T00:00:00"),
            "late_exempt": ["backfilled"]}
    times = ["2026-03-01 00:30:00", "2026-03-01 02:00:00", "2099-01-01 00:00:00", "2026-02-01 00:00:00"]
    assert _reasons(spark, entity, plan, times) == [[], ["future_event_time"], ["future_event_time"], ["late"]]
    assert _reasons(spark, entity, plan, times, source="backfilled") == [
        [], ["future_event_time"], ["future_event_time"], []]
    assert _reasons(spark, entity, None, times) == [[], [], [], []]
