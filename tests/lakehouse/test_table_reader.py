"""The direct reader (lakehouse/table_reader.py: delta-rs and DuckDB, no JVM) against Spark's: every
table of every layer reads the same, `status` gives the same figures, and `sql --engine duckdb`
answers read-only queries."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pyspark.sql import Row

from lakehouse.cli import main
from lakehouse.config import load_config
from lakehouse.errors import UsageError
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.maintenance import Maintainer
from lakehouse.runner import pipeline_flows, run_flows
from lakehouse.status import collect_freshness, collect_growth, collect_status
from lakehouse.table_reader import DirectReader, ReaderError, SparkReader, direct_reads_possible
from lakehouse.tables import LAYERS, resolve_table
from tests.conftest import CONF_DIR
from tests.faults import land

ONCE = {"availableNow": True}


@pytest.fixture(scope="module")
def pipeline_data(spark, tmp_path_factory):
    """Every layer's tables after one run of the pipeline (a bad file among the landed ones, a
    file appended to after ingest), and one maintenance step: the configuration."""
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path_factory.mktemp("reader") / "data")
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True, exist_ok=True)
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=11, fault_rate=0.05), landing,
                   "telemetry", "r", 11, 300, 3)
    land(config, "broken.jsonl.gz", b"\x1f\x8b\x08\x00 this is not a gzip stream")
    grows = land(config, "grows.jsonl", b'{"event_id": "x1", "host": "dc1-r01-h000"}\n')
    assert run_flows(spark, config, pipeline_flows(config)[0], ONCE) == 0
    with open(grows, "ab") as fh:
        fh.write(b'{"event_id": "x2", "host": "dc1-r01-h000"}\n')
    Maintainer(spark, config).run(["ops.freshness"], landing=False)
    return config


def _plain(value):
    """One spelling of a value for both engines: Spark's Rows and Arrow's maps (lists of pairs) as dicts."""
    if isinstance(value, Row):
        return {k: _plain(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {k: _plain(v) for k, v in value}
        return [_plain(v) for v in value]
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _contents(reader, name: str) -> list[str]:
    return sorted(repr(sorted(_plain(row).items())) for row in reader.rows("SELECT * FROM {t}", name))


@pytest.mark.slow
def test_every_table_of_every_layer_reads_the_same_without_a_jvm(spark, pipeline_data):
    config = pipeline_data
    spark_reader, direct = SparkReader(spark, config), DirectReader(config)
    names = direct.register_all()
    assert {name.split(".")[0] for name in names} == set(LAYERS)  # bronze, silver, gold and ops
    for name in names:
        assert direct.exists(name) and spark_reader.exists(name), name
        assert direct.size(name) == spark_reader.size(name), name
        assert _contents(direct, name) == _contents(spark_reader, name), name
        features = direct.table(name).protocol()
        assert features.min_reader_version == 1, (name, features)  # no reader feature (README: what we avoid)
    silver = direct.table("silver.telemetry").protocol().writer_features
    assert "changeDataFeed" in silver  # gold reads silver's change feed; delta-rs reads the table all the same
    assert direct.db.sql("SELECT count(*) FROM silver.telemetry").fetchall()[0][0] == spark.sql(
        f"SELECT count(*) FROM delta.`{resolve_table(config, 'silver.telemetry').path}`").first()[0] > 0


@pytest.mark.slow
def test_status_gives_the_same_figures_through_either_reader(spark, pipeline_data):
    config = pipeline_data
    spark_reader, direct = SparkReader(spark, config), DirectReader(config)

    queries = [s.as_dict() for s in collect_status(direct, config)]
    assert queries == [s.as_dict() for s in collect_status(spark_reader, config)]
    bronze = next(q for q in queries if q["query_name"] == "bronze_telemetry")
    assert bronze["bad_files"] == 1 and [Path(p).name for p in bronze["changed_files"]] == ["grows.jsonl"]
    assert bronze["input_rows"] > 0 and bronze["last_batch_id"] is not None

    def without_ages(rows, age):
        return [{k: v for k, v in row.as_dict().items() if k != age} for row in rows]

    freshness = without_ages(collect_freshness(direct, config), "age_s")
    assert freshness == without_ages(collect_freshness(spark_reader, config), "age_s")
    assert {"bronze.telemetry", "silver.telemetry"} <= {t["table_name"] for t in freshness}
    growth = without_ages(collect_growth(direct, config), "since_maintenance_s")
    assert growth == without_ages(collect_growth(spark_reader, config), "since_maintenance_s")
    maintained = {t["table_name"]: t["last_maintenance"] for t in growth}
    assert maintained["ops.freshness"] is not None and maintained["bronze.telemetry"] is None
    assert datetime.fromisoformat(maintained["ops.freshness"]) <= datetime.now(timezone.utc).replace(tzinfo=None)


@pytest.mark.slow
def test_status_and_sql_answer_without_starting_spark(pipeline_data, capsys, monkeypatch):
    config = pipeline_data
    monkeypatch.setattr("lakehouse.cli_look.start_spark", lambda *a, **k: pytest.fail("started Spark"))
    data = ["--env", "test", "--data-dir", str(config.storage.data_dir)]
    capsys.readouterr()
    assert main([*data, "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"queries", "freshness", "tables"} == set(report)
    assert any(t["table_name"] == "silver.telemetry" and t["files"] > 0 for t in report["tables"])

    query = "SELECT count(*) AS n FROM bronze.telemetry WHERE _source_file LIKE '%grows.jsonl'"
    assert main([*data, "sql", "--engine", "duckdb", "--json", query]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 1}  # the line appended after ingest is not in bronze
    assert main([*data, "sql", "--engine", "duckdb", "SELECT reasons FROM silver.telemetry_quarantine"]) == 0
    assert "expect_column" in capsys.readouterr().out

    # Read-only: no file is written or read outside the tables, and no statement runs.
    for statement in ("COPY (SELECT 1) TO 'out.csv'", "SELECT * FROM read_csv('/etc/hostname')"):
        assert main([*data, "sql", "--engine", "duckdb", statement]) == 1
        assert "disabled by configuration" in capsys.readouterr().err
    assert not Path("out.csv").exists()
    assert main([*data, "sql", "--engine", "duckdb", "--write", "DELETE FROM bronze.telemetry"]) == UsageError.exit_code
    assert "read-only" in capsys.readouterr().err
    assert main([*data, "sql", "--engine", "duckdb", "SELECT * FROM bronze.nothing"]) == 1
    assert "nothing" in capsys.readouterr().err


def test_the_direct_reader_refuses_what_it_cannot_read(config, tmp_path):
    unity = replace(config, catalog=replace(config.catalog, kind="unity"))
    assert "catalog" in direct_reads_possible(unity)
    with pytest.raises(UsageError, match="--engine spark"):
        DirectReader(unity)
    log = Path(resolve_table(config, "ops.freshness").path, "_delta_log")
    log.mkdir(parents=True)
    (log / "00000000000000000000.json").write_text("not a Delta log\n")
    with pytest.raises(ReaderError, match="ops.freshness"):
        DirectReader(config).size("ops.freshness")


def test_a_table_with_deletion_vectors_reads_as_spark_reads_it(spark, config):
    """Not a feature our tables use, but one Databricks turns on by default: the direct reader
    applies the vectors (through delta-rs' own engine) instead of returning deleted rows."""
    ref = resolve_table(config, "gold.with_deletions")
    spark.range(0, 200).selectExpr("id", "id % 7 AS bucket").write.format("delta") \
        .option("delta.enableDeletionVectors", "true").save(ref.path)
    spark.sql(f"DELETE FROM delta.`{ref.path}` WHERE bucket = 3")
    direct = DirectReader(config)
    assert "deletionVectors" in direct.table(ref.name).protocol().reader_features
    rows = direct.rows("SELECT count(*) AS n, sum(id) AS total FROM {t}", ref.name)
    expected = spark.read.format("delta").load(ref.path).selectExpr("count(*) AS n", "sum(id) AS total").first()
    assert rows == [{"n": expected["n"], "total": expected["total"]}] and expected["n"] < 200
