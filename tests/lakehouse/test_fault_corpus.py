"""The fault corpus (tests/fixtures/fault_corpus) landed together with the generator's faults and
the faults of landing itself, through bronze, silver and gold: every line ends where expected.json
says, reconcile is exact, no key is doubled, and every bad file is named."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote

import pytest
from pyspark.sql import functions as F

from lakehouse.cli import main
from lakehouse.config import load_config
from lakehouse.failpoints import FAILPOINTS_ENV
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.landing import BAD_FILES_TABLE
from lakehouse.reconcile import reconcile
from lakehouse.runner import run_flow, run_flows
from lakehouse.silver_tables import SILVER_BATCHES_TABLE
from lakehouse.status import collect_status
from lakehouse.table_reader import SparkReader
from lakehouse.tables import bronze_table, read_table, resolve_table
from tests.conftest import CONF_DIR
from tests.faults import land, lines, reading

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "fault_corpus"
ONCE = {"availableNow": True}
OVERRIDES = ["sources.telemetry.max_file_bytes=40000", "sources.telemetry.max_files_per_trigger=100",
             "entities.telemetry.max_record_bytes=2048"]


def test_the_fault_corpus_lands_exactly(spark, tmp_path, monkeypatch, capsys):
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data", overrides=OVERRIDES)
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    expected = json.loads((CORPUS / "expected.json").read_text())
    for name in expected:
        shutil.copy(CORPUS / "landing" / name, landing / name)
    # the generator's faults beside them
    manifest = generate_batch(TelemetryGenerator.from_config(config.generator, seed=3, fault_rate=0.25),
                              landing, "telemetry", "corpus", 3, 240, 2)
    # the faults of landing itself
    now = datetime.now(timezone.utc)
    land(config, "future_mtime.jsonl", lines(reading(900001)), mtime=datetime(2099, 1, 1, tzinfo=timezone.utc))
    land(config, "backfill_mtime.jsonl", lines(reading(900002)), mtime=now - timedelta(days=30))
    land(config, "huge.jsonl", lines(*[reading(910000 + i) for i in range(200)]))  # over max_file_bytes
    land(config, "doomed.jsonl", lines(reading(900003)))
    # planned, then the job dies before reading; the file is deleted meanwhile
    monkeypatch.setenv(FAILPOINTS_ENV, "bronze.read@0")
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 1
    (landing / "doomed.jsonl").unlink()
    monkeypatch.delenv(FAILPOINTS_ENV)
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert run_flow(spark, config, "silver.telemetry", ONCE) == 0
    with open(landing / "valid.jsonl", "ab") as grown:  # appended after ingest
        grown.write(lines(reading(900004)))

    bad = {Path(r.path).name: r.reason for r in read_table(spark, resolve_table(config, BAD_FILES_TABLE)).collect()}
    assert bad == {**{name: e["file"] for name, e in expected.items() if e["file"] != "ingested"},
                   "huge.jsonl": "too_large", "doomed.jsonl": "missing"}

    silver = read_table(spark, resolve_table(config, "silver.telemetry"))
    assert silver.count() == silver.select("event_id").distinct().count()  # no key doubled
    # _source_file is a URI: a name with spaces or brackets comes percent-encoded
    in_silver = {(unquote(Path(r._source_file).name), r._source_line)
                 for r in silver.select("_source_file", "_source_line").collect()}
    quarantine = read_table(spark, resolve_table(config, "silver.telemetry_quarantine"))
    reasons = {(unquote(Path(r._source_file).name), r._source_line): r.reasons[0] for r in quarantine.collect()}
    outcome = {}
    for name, e in expected.items():
        for line in e["lines"]:
            key = (name, int(line))
            outcome[key] = "silver" if key in in_silver else reasons.get(key, "duplicate")
    assert outcome == {(name, int(line)): o for name, e in expected.items() for line, o in e["lines"].items()}
    assert {"future_mtime.jsonl", "backfill_mtime.jsonl"} <= {name for name, _ in in_silver}

    counts = manifest.fault_counts()
    generated = Counter(reason for (name, _), reason in reasons.items() if name.startswith("telemetry-corpus"))
    assert sum(generated.values()) == sum(counts[k] for k in ("malformed_json", "missing_field", "wrong_type",
                                                               "out_of_range"))

    report = reconcile(spark, config, "telemetry")
    assert report.holds, report.describe()
    assert [Path(c.path).name for c in report.changed_files] == ["valid.jsonl"]
    bronze = read_table(spark, bronze_table(config, "telemetry")).count()
    duplicates = read_table(spark, resolve_table(config, SILVER_BATCHES_TABLE)).groupBy().sum("duplicates").first()[0]
    assert bronze == silver.count() + quarantine.count() + duplicates

    capsys.readouterr()
    data = ["--env", "test", "--data-dir", str(config.storage.data_dir), *[a for o in OVERRIDES for a in ("--set", o)]]
    assert main([*data, "reconcile", "--source", "telemetry"]) == 0
    out = capsys.readouterr().out
    for name, reason in bad.items():
        assert f"{name}: {reason}" in out
    assert "valid.jsonl" in out.split("WARNING", 1)[1]
    status = next(s for s in collect_status(SparkReader(spark, config), config) if s.query_name == "bronze_telemetry")
    assert status.bad_files == len(bad) and status.backlog_files == 0

    assert run_flows(spark, config, [f"gold.{name}" for name in config.gold], ONCE) == 0
    minutes = read_table(spark, resolve_table(config, "gold.telemetry_minute"))
    assert minutes.count() > 0 and minutes.agg(F.max("minute")).first()[0].year == 2026
    assert read_table(spark, resolve_table(config, "gold.telemetry_features")).count() > 0
