"""Bronze from landing files: every line exactly once, malformed lines byte for byte, progress recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse import errors
from lakehouse.bronze import BronzeSchemaError
from lakehouse.cli import main
from lakehouse.config import load_config
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.progress import STREAM_PROGRESS_TABLE
from lakehouse.runner import run_flow
from lakehouse.status import collect_status
from lakehouse.table_reader import SparkReader
from lakehouse.tables import bronze_table, delta_table, read_table, resolve_table
from tests.conftest import CONF_DIR

pytestmark = pytest.mark.slow


def _land(config, records=3000, files=6, fault_rate=0.08, run_id="it"):
    g = config.generator
    generator = TelemetryGenerator.from_config(g, seed=11, fault_rate=fault_rate)
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True, exist_ok=True)
    return generate_batch(generator, landing, "telemetry", run_id, 11, records, files)


def test_every_line_lands_once_and_malformed_lines_byte_for_byte(spark, config):
    manifest = _land(config)
    assert all(n > 0 for n in manifest.fault_counts().values())  # every fault kind is in the set

    assert run_flow(spark, config, "bronze.telemetry", {"availableNow": True}) == 0

    bronze = read_table(spark, bronze_table(config, "telemetry"))
    rows = bronze.select(
        F.element_at(F.split("_source_file", "/"), -1).alias("file"), "_source_line", "value"
    ).collect()
    assert len(rows) == manifest.total_lines
    assert len({(r.file, r._source_line) for r in rows}) == manifest.total_lines
    assert {(f["file"], n) for f in manifest.files for n in range(1, f["lines"] + 1)} == {
        (r.file, r._source_line) for r in rows
    }
    stored = {(r.file, r._source_line): r.value for r in rows}
    malformed = [f for f in manifest.faults if f["kind"] == "malformed_json"]
    assert malformed
    landing = Path(config.landing_path("telemetry"))
    for fault in malformed[:5]:
        original = (landing / fault["file"]).read_bytes().split(b"\n")[fault["line"] - 1]
        assert bytes(stored[(fault["file"], fault["line"])]) == original
        with pytest.raises(json.JSONDecodeError):
            json.loads(original)
    assert bronze.where(F.col("_ingested_at").isNull()).count() == 0
    # an append-only table checkpoints its state every 100 commits, not Delta's 10
    properties = delta_table(spark, bronze_table(config, "telemetry")).detail().first()["properties"]
    assert properties["delta.checkpointInterval"] == "100" and properties["delta.appendOnly"] == "true"


def test_progress_has_one_row_per_micro_batch_and_status_shows_r_and_b(spark, config, capsys):
    _land(config, records=1200, files=6, fault_rate=0.0)
    limited = load_config("test", conf_dir=CONF_DIR, data_dir=config.storage.data_dir,
                          overrides=["sources.telemetry.max_files_per_trigger=2"])
    assert run_flow(spark, limited, "bronze.telemetry", {"availableNow": True}) == 0

    commits = sorted(int(p.name) for p in Path(limited.checkpoint_path("bronze_telemetry"), "commits").iterdir()
                     if p.name.isdigit())
    assert len(commits) == 3  # 6 files, 2 per trigger
    progress = read_table(spark, resolve_table(limited, STREAM_PROGRESS_TABLE)).collect()
    assert sorted(r.batch_id for r in progress) == commits
    assert sum(r.num_input_rows for r in progress) == 1200
    assert all(r.num_input_files == 2 and r.records_per_second > 0 for r in progress)

    (status,) = collect_status(SparkReader(spark, limited), limited)
    assert status.query_name == "bronze_telemetry"
    assert status.last_batch_id == commits[-1]
    assert status.per_channel == pytest.approx(status.records_per_second / 2)
    assert status.backlog_files == 0

    capsys.readouterr()
    assert main(["--env", "test", "--data-dir", str(limited.storage.data_dir), "status"]) == 0
    out = capsys.readouterr().out
    assert "R rec/s" in out and "B rec/s/ch" in out and "bronze_telemetry" in out

    # a newly landed file shows as backlog until the next run takes it in
    _land(limited, records=10, files=1, fault_rate=0.0, run_id="late")
    (status,) = collect_status(SparkReader(spark, limited), limited)
    assert status.backlog_files == 1


def test_sql_command_reads_tables_by_name(spark, config, capsys):
    _land(config, records=200, files=2, fault_rate=0.0)
    assert run_flow(spark, config, "bronze.telemetry", {"availableNow": True}) == 0
    capsys.readouterr()
    code = main(["--env", "test", "--data-dir", str(config.storage.data_dir), "sql",
                 "SELECT count(*) AS n FROM bronze.telemetry", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip()) == {"n": 200}
    assert main(["--env", "test", "--data-dir", str(config.storage.data_dir), "sql", "SELECT * FROM bronze.nope"]) == 1


def test_a_bronze_table_of_an_older_layout_stops_the_ingest_before_any_line_lands(spark, config):
    """A bronze table holding ``value`` as text (an older release's) is found while the query
    starts (its tables are checked beside the query's start): the start fails with what to do,
    the query is stopped, and nothing is appended or committed."""
    _land(config, records=200, files=2, fault_rate=0.0)
    ref = bronze_table(config, "telemetry")
    spark.createDataFrame([("old line", "file:/old.jsonl", 1)], "value string, _source_file string, _source_line long") \
        .write.format("delta").save(ref.path)
    with pytest.raises(BronzeSchemaError, match="fresh --data-dir"):
        run_flow(spark, config, "bronze.telemetry", {"availableNow": True})
    assert not [q for q in spark.streams.active if q.name == "bronze_telemetry"]
    assert not errors._raised  # noqa: SLF001 - a batch that waited for the tables kept no error for a later run
    assert [r.value for r in read_table(spark, ref).collect()] == ["old line"]
    assert not Path(config.checkpoint_path("bronze_telemetry"), "commits").exists() or not any(
        p.name.isdigit() for p in Path(config.checkpoint_path("bronze_telemetry"), "commits").iterdir())


def test_ingest_before_any_file_landed_waits_for_files(spark, config):
    assert run_flow(spark, config, "bronze.telemetry", {"availableNow": True}) == 0
    assert Path(config.landing_path("telemetry")).is_dir()
    assert read_table(spark, bronze_table(config, "telemetry")).count() == 0
