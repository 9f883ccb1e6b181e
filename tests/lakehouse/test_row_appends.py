"""lakehouse.row_appends: an ops table's rows appended by delta-rs read in Spark as Spark's own
appends do, once per marker, beside Spark's commits and maintenance."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType, TimestampType

from lakehouse.row_appends import append_rows
from lakehouse.table_create import create_table_if_missing
from lakehouse.tables import TableRef, append_to_table, committed, local_rows, read_table

SCHEMA = StructType([
    StructField("name", StringType()),
    StructField("count", LongType()),
    StructField("ratio", DoubleType()),
    StructField("at", TimestampType()),
])


def _ref(tmp_path: Path) -> TableRef:
    return TableRef("ops.t", "ops", "t", str(tmp_path / "t"), "ops.t")


def _engines(ref: TableRef) -> list[str]:
    """Each commit's engine, oldest first."""
    engines = []
    for commit in sorted(Path(ref.path, "_delta_log").glob("*.json")):
        info = json.loads(commit.read_text().splitlines()[0])["commitInfo"]
        engines.append(info["engineInfo"].split("/")[0].split(":")[0])
    return engines


def _sorted(rows) -> list[str]:
    return sorted(repr(tuple(row)) for row in rows)  # as text: NaN equals NaN


def test_rows_read_back_as_spark_appends_them(spark, tmp_path):
    ref = _ref(tmp_path)
    create_table_if_missing(spark, ref, SCHEMA)
    rows = [("a", 1, 0.5, datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)),
            ("b", None, float("nan"), datetime(2026, 1, 2, 3, 4, 5)),  # naive: the local time
            ({"name": "c", "count": 2**62, "ratio": None, "at": None})]
    assert append_rows(spark, rows, SCHEMA, ref) is True
    assert _engines(ref) == ["delta-rs", "delta-rs"]  # made (lakehouse/table_create.py), then appended
    expected = local_rows(spark, rows, SCHEMA).collect()
    assert _sorted(read_table(spark, ref).collect()) == _sorted(expected)


def test_a_marked_append_is_made_once(spark, tmp_path):
    ref = _ref(tmp_path)
    create_table_if_missing(spark, ref, SCHEMA)
    row = [("a", 1, 1.0, None)]
    assert append_rows(spark, row, SCHEMA, ref, marker="q:7") is True
    assert committed(spark, ref, "q:7") is not None
    assert append_rows(spark, row, SCHEMA, ref, marker="q:7", replay_since_ms=0) is False
    assert append_rows(spark, row, SCHEMA, ref, marker="q:8", replay_since_ms=0) is True
    assert read_table(spark, ref).count() == 2


def test_a_table_not_made_yet_is_made_by_spark(spark, tmp_path):
    ref = _ref(tmp_path)
    append_rows(spark, [("a", 1, 1.0, None)], SCHEMA, ref)
    append_rows(spark, [("b", 2, 2.0, None)], SCHEMA, ref)
    assert _engines(ref) == ["Apache-Spark", "delta-rs"]
    assert read_table(spark, ref).count() == 2


def test_new_columns_join_the_schema_when_asked(spark, tmp_path):
    ref = _ref(tmp_path)
    create_table_if_missing(spark, ref, SCHEMA)
    wider = StructType([*SCHEMA.fields, StructField("note", StringType())])
    append_rows(spark, [("a", 1, 1.0, None, "new")], wider, ref, marker="q:1", merge_schema=True)
    table = read_table(spark, ref)
    assert table.schema.fieldNames() == wider.fieldNames()
    assert [row["note"] for row in table.collect()] == ["new"]


def test_a_feature_delta_rs_cannot_write_goes_to_spark(spark, tmp_path):
    ref = _ref(tmp_path)
    create_table_if_missing(spark, ref, SCHEMA, properties={"delta.enableInCommitTimestamps": "true"})
    append_rows(spark, [("a", 1, 1.0, None)], SCHEMA, ref, marker="q:1")
    assert _engines(ref) == ["Apache-Spark", "Apache-Spark"]
    assert committed(spark, ref, "q:1") is not None


@pytest.mark.slow
def test_appends_beside_spark_commits_and_compaction_lose_nothing(spark, tmp_path):
    """delta-rs appends from threads while Spark appends and compacts the same table: every row
    lands once, and Spark's OPTIMIZE compacts what delta-rs wrote."""
    ref = _ref(tmp_path)
    create_table_if_missing(spark, ref, SCHEMA)
    errors = []

    def appender(name: str, count: int, through_spark: bool) -> None:
        try:
            for i in range(count):
                rows = [(name, i, None, None)]
                if through_spark:
                    append_to_table(local_rows(spark, rows, SCHEMA), ref)
                else:
                    append_rows(spark, rows, SCHEMA, ref)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=("rs1", 30, False)),
               threading.Thread(target=appender, args=("rs2", 30, False)),
               threading.Thread(target=appender, args=("spark", 6, True))]
    for thread in threads:
        thread.start()
    spark.sql(f"OPTIMIZE delta.`{ref.path}`").collect()
    for thread in threads:
        thread.join()
    assert errors == []
    compacted = spark.sql(f"OPTIMIZE delta.`{ref.path}`").collect()[0]["metrics"]
    assert compacted["numFilesAdded"] == 1 and compacted["numFilesRemoved"] > 1
    table = read_table(spark, ref)
    counts = {row["name"]: row["n"] for row in table.groupBy("name").count().withColumnRenamed("count", "n").collect()}
    assert counts == {"rs1": 30, "rs2": 30, "spark": 6}
    assert table.select("name", "count").distinct().count() == 66


def test_checkpoints_are_written_at_the_tables_interval(spark, tmp_path):
    """delta-rs' commit alone, then a checkpoint at every interval-th version, which Spark reads."""
    ref = _ref(tmp_path)
    create_table_if_missing(spark, ref, SCHEMA, properties={"delta.checkpointInterval": "4"})
    for i in range(9):
        append_rows(spark, [("a", i, None, None)], SCHEMA, ref)
    log = Path(ref.path, "_delta_log")
    assert sorted(p.name.split(".")[0] for p in log.glob("*.checkpoint.parquet")) == [f"{4:020d}", f"{8:020d}"]
    assert json.loads((log / "_last_checkpoint").read_text())["version"] == 8
    assert sorted(row["count"] for row in read_table(spark, ref).collect()) == list(range(9))
