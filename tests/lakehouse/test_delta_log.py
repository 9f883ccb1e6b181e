"""lakehouse.delta_log: a table's commits read from its log's files give what Delta's history gives."""

from __future__ import annotations

import shutil
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import functions as F

from lakehouse.delta_log import COMMIT_COLUMNS, log_commits, newest_version
from lakehouse.tables import TableRef, commits, committed, last_commit


def _history(spark, path) -> list[dict]:
    return [row.asDict() for row in DeltaTable.forPath(spark, path).history().select(*COMMIT_COLUMNS).collect()]


def _rows(rows) -> list[dict]:
    return [row.asDict() for row in rows]


def _same_as_history(spark, path) -> list[dict]:
    """The log's rows against history's, column by column (times within a millisecond: history
    nudges equal times apart)."""
    direct, history = _rows(log_commits(spark, path)), _history(spark, path)
    assert [row["version"] for row in direct] == [row["version"] for row in history]
    for ours, theirs in zip(direct, history, strict=True):
        assert {k: v for k, v in ours.items() if k != "timestamp"} == {k: v for k, v in theirs.items() if k != "timestamp"}
        assert abs((ours["timestamp"] - theirs["timestamp"]).total_seconds()) <= 0.002
    return direct


def test_every_kind_of_commit_reads_as_history_shows_it(spark, tmp_path):
    path = str(tmp_path / "t")
    DeltaTable.create(spark).location(path).addColumn("id", "long").addColumn("v", "string").execute()
    spark.range(5).select("id", F.lit("a").alias("v")).write.format("delta").mode("append") \
        .option("userMetadata", "q:0").save(path)
    stream = (spark.readStream.format("rate").option("rowsPerSecond", 5).load()
              .select(F.col("value").alias("id"), F.lit("s").alias("v"))
              .writeStream.format("delta").option("checkpointLocation", str(tmp_path / "cp"))
              .trigger(availableNow=True).start(path))
    stream.awaitTermination()
    DeltaTable.forPath(spark, path).alias("t").merge(
        spark.range(3, 8).select("id", F.lit("m").alias("v")).alias("s"), "t.id = s.id") \
        .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
    spark.sql(f"OPTIMIZE delta.`{path}`")
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('x.y' = 'z')")

    direct = _same_as_history(spark, path)
    assert [row["operation"] for row in direct][:3] == ["SET TBLPROPERTIES", "OPTIMIZE", "MERGE"]
    assert direct[-1]["operation"] == "CREATE TABLE" and direct[-1]["version"] == 0
    assert newest_version(spark, path) == direct[0]["version"]
    ref = TableRef("bronze.t", "bronze", "t", path, "bronze.t")
    assert last_commit(spark, ref)["operation"] == "SET TBLPROPERTIES"
    assert committed(spark, ref, "q:0")["operationMetrics"]["numOutputRows"] == "5"
    assert committed(spark, ref, "q:9") is None


def test_commits_removed_by_the_log_clean_up_end_the_history(spark, tmp_path):
    """Versions before a checkpoint may be gone (the log's clean-up): the rows stop where history's do."""
    path = str(tmp_path / "t")
    spark.range(1).write.format("delta").option("delta.checkpointInterval", 3).save(path)
    for _ in range(5):
        spark.range(1).write.format("delta").mode("append").save(path)
    log = Path(path, "_delta_log")
    assert (log / "_last_checkpoint").exists()
    for version in (0, 1):
        (log / f"{version:020d}.json").unlink()
    direct = _same_as_history(spark, path)
    assert [row["version"] for row in direct] == [5, 4, 3, 2]


def test_a_table_made_again_at_the_same_path_is_read_anew(spark, tmp_path):
    path = str(tmp_path / "t")
    for _ in range(4):
        spark.range(1).write.format("delta").mode("append").save(path)
    assert newest_version(spark, path) == 3
    shutil.rmtree(path)
    spark.range(1).write.format("delta").save(path)
    assert newest_version(spark, path) == 0
    for _ in range(6):
        spark.range(1).write.format("delta").mode("append").save(path)
    assert newest_version(spark, path) == 6
    assert [row["version"] for row in _same_as_history(spark, path)] == list(range(6, -1, -1))


def test_staged_commits_and_missing_logs_go_to_deltas_history(spark, tmp_path):
    """Coordinated commits keep their newest commits outside the log until written into it: the
    log alone cannot answer then, and tables.commits reads Delta's history instead."""
    path = str(tmp_path / "t")
    spark.range(1).write.format("delta").save(path)
    spark.range(1).write.format("delta").mode("append").option("userMetadata", "m").save(path)
    staged = Path(path, "_delta_log", "_staged_commits")
    staged.mkdir(exist_ok=True)
    (staged / "00000000000000000002.0d9b4f1e.json").write_text("")
    assert log_commits(spark, path) is None
    ref = TableRef("bronze.t", "bronze", "t", path, "bronze.t")
    assert _rows(commits(spark, ref)) == _history(spark, path)
    assert log_commits(spark, str(tmp_path / "none")) is None


def test_the_newest_version_is_found_by_probing_from_any_start(tmp_path):
    """Commit files numbered from a cleaned-up start to the newest, with or without a checkpoint
    pointer, found again as the log grows (local paths need no Spark session)."""
    log = tmp_path / "t" / "_delta_log"
    log.mkdir(parents=True)

    def commit_files(first: int, last: int) -> None:
        for version in range(first, last + 1):
            (log / f"{version:020d}.json").write_text('{"commitInfo":{"operation":"WRITE"}}\n')

    commit_files(300, 1000)  # the first 300 cleaned up, no _last_checkpoint
    assert newest_version(None, str(tmp_path / "t")) == 1000
    commit_files(1001, 1001)
    assert newest_version(None, str(tmp_path / "t")) == 1001  # from the version seen last
    for name in ("x", "y"):
        fresh = tmp_path / name / "_delta_log"
        fresh.mkdir(parents=True)
        for version in range(700, 700 + (1 if name == "x" else 555)):
            (fresh / f"{version:020d}.json").write_text("{}\n")
        (fresh / "_last_checkpoint").write_text('{"version": 700}')
        assert newest_version(None, str(tmp_path / name)) == (700 if name == "x" else 1254)
    assert newest_version(None, str(tmp_path / "none")) is None
