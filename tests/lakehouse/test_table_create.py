"""lakehouse.table_create: a new table stored by path made by delta-rs holds the first commit Spark
would write (protocol, schema, properties, description); every other table is Spark's to make."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql.types import LongType, StringType, StructField, StructType

from lakehouse.bronze import BRONZE_FILE_SCHEMA, BRONZE_KAFKA_SCHEMA
from lakehouse.delta_log import newest_version
from lakehouse.landing import BAD_FILES_SCHEMA
from lakehouse.progress import STREAM_PROGRESS_SCHEMA
from lakehouse.session import SESSION_DEFAULTS
from lakehouse.table_create import APPEND_ONLY_CHECKPOINTS, create_table_if_missing
from lakehouse.tables import TableRef, append_to_table, last_commit, local_rows, made_empty, read_table, session_conf

BRONZE = {"delta.appendOnly": "true", "delta.dataSkippingStatsColumns": "_source_file,_source_line,_ingested_at",
          **APPEND_ONLY_CHECKPOINTS}
SMALL = StructType([StructField("name", StringType(), nullable=False), StructField("n", LongType())])


def _ref(folder: Path) -> TableRef:
    return TableRef("ops.t", "ops", "t", str(folder), "ops.t")


def _first_commit(ref: TableRef) -> dict:
    """Version 0's actions by kind (commitInfo, protocol, metaData)."""
    actions = {}
    for line in Path(ref.path, "_delta_log", f"{0:020}.json").read_text().splitlines():
        (kind, action), = json.loads(line).items()
        actions[kind] = action
    return actions


def _engine(ref: TableRef) -> str:
    return _first_commit(ref)["commitInfo"]["engineInfo"].split("/")[0].split(":")[0]


def _by_spark(spark, ref: TableRef, schema: StructType, properties: dict, comment: str | None) -> None:
    builder = DeltaTable.createIfNotExists(spark).location(ref.path).addColumns(schema)
    for key, value in properties.items():
        builder = builder.property(key, value)
    (builder.comment(comment) if comment else builder).execute()


def _as_made(actions: dict) -> dict:
    """What a reader takes from a first commit: the protocol and the metadata but its id and time."""
    metadata = {k: v for k, v in actions["metaData"].items() if k not in ("id", "createdTime", "name")}
    metadata["description"] = metadata.get("description")
    metadata["schema"] = json.loads(metadata.pop("schemaString"))
    return {"protocol": actions["protocol"], "metaData": metadata, "operation": actions["commitInfo"]["operation"]}


@pytest.mark.parametrize(("schema", "properties", "comment"), [
    (BRONZE_FILE_SCHEMA, BRONZE, "Raw landing lines"),
    (BRONZE_KAFKA_SCHEMA, {**BRONZE, "delta.dataSkippingStatsColumns": "topic,partition,offset"}, "Raw messages"),
    (STREAM_PROGRESS_SCHEMA, APPEND_ONLY_CHECKPOINTS, None),
    (BAD_FILES_SCHEMA, APPEND_ONLY_CHECKPOINTS, "it's a 'comment' with \"quotes\""),
    (SMALL, {}, None),
], ids=["bronze-files", "bronze-kafka", "stream-progress", "bad-files", "no-properties"])
def test_delta_rs_writes_the_first_commit_spark_writes(spark, tmp_path, schema, properties, comment):
    ours, spark_made = _ref(tmp_path / "ours"), _ref(tmp_path / "spark")
    create_table_if_missing(spark, ours, schema, properties, comment)
    _by_spark(spark, spark_made, schema, properties, comment)
    assert (_engine(ours), _engine(spark_made)) == ("delta-rs", "Apache-Spark")
    assert _as_made(_first_commit(ours)) == _as_made(_first_commit(spark_made))
    # the session's defaults (maintenance's retention) are in both
    assert "delta.logRetentionDuration" in _first_commit(ours)["metaData"]["configuration"]
    assert made_empty(last_commit(spark, ours))
    assert read_table(spark, ours).schema == read_table(spark, spark_made).schema


def test_spark_appends_to_a_table_delta_rs_made(spark, tmp_path):
    ref = _ref(tmp_path / "t")
    create_table_if_missing(spark, ref, SMALL, APPEND_ONLY_CHECKPOINTS)
    append_to_table(local_rows(spark, [("a", 1), ("b", None)], SMALL), ref)
    assert sorted(tuple(r) for r in read_table(spark, ref).collect()) == [("a", 1), ("b", None)]
    with pytest.raises((PySparkException, Py4JJavaError), match="NOT_NULL"):  # NOT NULL kept, as in Spark's own table
        append_to_table(local_rows(spark, [("c", 2)], SMALL).selectExpr("CAST(NULL AS STRING) AS name", "n"), ref)


@pytest.mark.parametrize("why", ["change-data-feed", "session-default", "session-protocol"])
def test_spark_makes_a_table_delta_rs_would_make_otherwise(spark, tmp_path, why):
    ref = _ref(tmp_path / "t")
    properties, settings = dict(APPEND_ONLY_CHECKPOINTS), {}
    if why == "change-data-feed":  # Spark names its table features where delta-rs writes writer version 4
        properties["delta.enableChangeDataFeed"] = "true"
    elif why == "session-default":
        settings[SESSION_DEFAULTS + "enableDeletionVectors"] = "true"
    else:
        settings[SESSION_DEFAULTS + "minWriterVersion"] = "3"  # Delta's default protocol, set
    with session_conf(spark, settings):
        create_table_if_missing(spark, ref, SMALL, properties)
    assert _engine(ref) == "Apache-Spark"
    protocol = _first_commit(ref)["protocol"]
    features = set(protocol.get("writerFeatures", ()))
    assert {"change-data-feed": "changeDataFeed" in features, "session-default": "deletionVectors" in features,
            "session-protocol": protocol["minWriterVersion"] >= 3}[why]


def test_a_folder_with_files_is_left_to_spark(spark, tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "stray.csv").write_text("a,b\n")
    with pytest.raises(PySparkException):
        create_table_if_missing(spark, _ref(folder), SMALL)
    assert not (folder / "_delta_log").exists() or newest_version(spark, str(folder)) is None


def test_an_empty_log_folder_left_by_a_creation_cut_short_is_made_anew(spark, tmp_path):
    ref = _ref(tmp_path / "t")
    Path(ref.path, "_delta_log").mkdir(parents=True)
    create_table_if_missing(spark, ref, SMALL)
    assert _engine(ref) == "delta-rs"
    assert read_table(spark, ref).count() == 0


@pytest.mark.parametrize("first", ["delta-rs", "spark"])
def test_an_existing_table_is_left_as_it_is(spark, tmp_path, first):
    ref = _ref(tmp_path / "t")
    if first == "spark":
        _by_spark(spark, ref, SMALL, {}, None)
    else:
        create_table_if_missing(spark, ref, SMALL)
    create_table_if_missing(spark, ref, SMALL, APPEND_ONLY_CHECKPOINTS, "again")
    assert newest_version(spark, ref.path) == 0
    assert "delta.checkpointInterval" not in _first_commit(ref)["metaData"]["configuration"]


def test_writers_making_one_table_at_once_all_return(spark, tmp_path):
    ref = _ref(tmp_path / "t")
    errors, start = [], threading.Barrier(4)

    def make() -> None:
        start.wait()
        try:
            create_table_if_missing(spark, ref, SMALL, APPEND_ONLY_CHECKPOINTS)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert newest_version(spark, ref.path) == 0
    assert read_table(spark, ref).schema == local_rows(spark, [], SMALL).schema
