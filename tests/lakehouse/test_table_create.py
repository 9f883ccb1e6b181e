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
from pyspark.sql.types import ArrayType, CharType, LongType, StringType, StructField, StructType

from lakehouse.bronze import ensure_bronze_table, ensure_source_bronze_table
from lakehouse.delta_log import newest_version
from lakehouse.landing import ensure_landing_tables
from lakehouse.maintenance_steps import MAINTENANCE_SCHEMA, MAINTENANCE_TABLE
from lakehouse.progress import ProgressRecorder
from lakehouse.session import SESSION_DEFAULTS
from lakehouse.silver_tables import ensure_silver_tables
from lakehouse.table_create import APPEND_ONLY_CHECKPOINTS, create_by_delta_rs, create_table_if_missing
from lakehouse.tables import (
    TableRef,
    append_to_table,
    last_commit,
    local_rows,
    made_empty,
    read_table,
    resolve_table,
    session_conf,
)

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


def _all_tables(spark, config) -> dict[str, TableRef]:
    """Every table a first run makes, made by the calls the flows make (ops.maintenance's apart)."""
    ensure_source_bronze_table(spark, config, "telemetry")
    ensure_bronze_table(spark, resolve_table(config, "bronze.events"), kind="kafka")
    ensure_landing_tables(spark, config)
    ensure_silver_tables(spark, config, "telemetry")
    recorder = ProgressRecorder(spark, config)
    recorder.make_tables_beside()
    recorder._tables.result(timeout=120)
    create_table_if_missing(spark, resolve_table(config, MAINTENANCE_TABLE), MAINTENANCE_SCHEMA,
                            comment="One row per maintenance step")  # as Maintainer does
    root = Path(config.storage.data_dir, "tables")
    return {f"{log.parent.parent.name}.{log.parent.name}": resolve_table(config, f"{log.parent.parent.name}.{log.parent.name}")
            for log in sorted(root.glob("*/*/_delta_log"))}


def test_delta_rs_writes_the_first_commit_spark_writes(spark, config, tmp_path):
    """Each table a first run makes by delta-rs, against its twin made by Spark's builder from
    the same schema, properties and comment: the same protocol, metadata and operation."""
    tables = _all_tables(spark, config)
    engines = {name: _engine(ref) for name, ref in tables.items()}
    assert engines.pop("silver.telemetry") == "Apache-Spark"  # a change data feed
    assert set(engines.values()) == {"delta-rs"}, engines
    assert set(engines) == {"bronze.telemetry", "bronze.events", "ops.bad_files", "ops.ingested_files",
                            "silver.telemetry_quarantine", "ops.silver_batches", "ops.quality_results",
                            "ops.stream_progress", "ops.freshness", "ops.maintenance"}
    for name in engines:
        made = _first_commit(tables[name])["metaData"]
        twin = _ref(tmp_path / "spark" / name)
        _by_spark(spark, twin, StructType.fromJson(json.loads(made["schemaString"])), made["configuration"],
                  made.get("description"))
        assert _engine(twin) == "Apache-Spark"
        assert _as_made(_first_commit(tables[name])) == _as_made(_first_commit(twin)), name
        assert made_empty(last_commit(spark, tables[name])), name
    # the session's defaults (maintenance's retention) are in both
    assert "delta.logRetentionDuration" in _first_commit(tables["ops.bad_files"])["metaData"]["configuration"]


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
        settings[SESSION_DEFAULTS + "minWriterVersion"] = "3"  # a default protocol other than Delta's (1, 2)
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


def test_delta_rs_writers_making_one_table_at_once_leave_one_commit(tmp_path):
    """Without Spark's calls between them the writers meet at delta-rs' commit, where a lost
    creation was retried as version 1 (a second CREATE TABLE) in nearly every round before."""
    settings = dict(APPEND_ONLY_CHECKPOINTS)
    for round_ in range(25):
        folder, made, start = tmp_path / f"t{round_}", [], threading.Barrier(4)

        def make(folder=folder, made=made, start=start) -> None:
            start.wait()
            made.append(create_by_delta_rs(str(folder), SMALL, settings, None))

        threads = [threading.Thread(target=make) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert made == [True] * 4
        assert newest_version(None, str(folder)) == 0, round_


@pytest.mark.parametrize("made_meanwhile", [True, False])
def test_a_failed_delta_rs_create(spark, tmp_path, monkeypatch, made_meanwhile):
    """delta-rs raises: a table another writer made meanwhile is the one asked for; with no table,
    Spark's builder makes it."""
    import deltalake

    ref, create = _ref(tmp_path / "t"), deltalake.DeltaTable.create

    def failing(*args, **kwargs):
        if made_meanwhile:
            create(*args, **kwargs)
        raise OSError("commit lost")

    monkeypatch.setattr(deltalake.DeltaTable, "create", failing)
    create_table_if_missing(spark, ref, SMALL, APPEND_ONLY_CHECKPOINTS)
    assert newest_version(spark, ref.path) == 0
    assert _engine(ref) == ("delta-rs" if made_meanwhile else "Apache-Spark")


@pytest.mark.parametrize("why", ["char-column", "column-comment", "not-null-in-array", "stats-column-missing",
                                 "interval-in-months", "file-uri"])
def test_what_delta_rs_would_write_otherwise_is_made_by_spark(spark, tmp_path, why):
    ref, schema, properties = _ref(tmp_path / "t"), SMALL, dict(APPEND_ONLY_CHECKPOINTS)
    if why == "char-column":
        schema = StructType([*SMALL.fields, StructField("code", CharType(3))])
    elif why == "column-comment":
        schema = StructType([*SMALL.fields, StructField("note", StringType(), metadata={"comment": "a note"})])
    elif why == "not-null-in-array":
        schema = StructType([*SMALL.fields, StructField("tags", ArrayType(StringType(), containsNull=False))])
    elif why == "stats-column-missing":
        properties["delta.dataSkippingStatsColumns"] = "name,absent"
    elif why == "interval-in-months":
        properties["delta.logRetentionDuration"] = "interval 1 month"
    else:
        ref = TableRef("ops.t", "ops", "t", (tmp_path / "t").as_uri(), "ops.t")
    try:
        create_table_if_missing(spark, ref, schema, properties)
    except (PySparkException, Py4JJavaError):
        made = False  # Spark's refusal (delta-rs would have made the table)
    else:
        made = True
    folder = tmp_path / "t"
    assert not made or _first_commit(_ref(folder))["commitInfo"]["engineInfo"].startswith("Apache-Spark")
    assert made or not (folder / "_delta_log").exists() or newest_version(spark, str(folder)) is None
