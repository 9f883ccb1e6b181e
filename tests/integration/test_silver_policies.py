"""Expectation policies in a running silver query: warn keeps and records, fail stops without
committing and names the expectation and the batch; after the fix a restart processes the batch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lakehouse.bronze import run_bronze_ingest
from lakehouse.config import load_config
from lakehouse.generator import TelemetryGenerator, generate_batch
from lakehouse.silver import SILVER_BATCHES_TABLE, run_silver_refine
from lakehouse.tables import read_table, resolve_table, table_exists
from tests.conftest import CONF_DIR

pytestmark = pytest.mark.slow


def _conf_with_rule(tmp_path: Path, rule: dict) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    suite_path = conf / "base" / "expectations" / "telemetry.json"
    suite = json.loads(suite_path.read_text())
    suite["expectations"].append(rule)
    suite_path.write_text(json.dumps(suite))
    return conf


def _landed(spark, config):
    g = config.generator
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True, exist_ok=True)
    generator = TelemetryGenerator.from_config(g, seed=31, fault_rate=0.0)
    manifest = generate_batch(generator, landing, "telemetry", "p", 31, 400, 2)
    assert run_bronze_ingest(spark, config, "telemetry", {"availableNow": True}) == 0
    return manifest


# hosts on rack r01 only: every other rack's rows fail it
RACK_RULE = {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "rack", "value_set": ["r01"]}}


def test_warn_keeps_the_rows_and_records_them(spark, tmp_path):
    conf = _conf_with_rule(tmp_path, {**RACK_RULE, "meta": {"policy": "warn"}})
    config = load_config("test", conf_dir=conf, data_dir=tmp_path / "data")
    manifest = _landed(spark, config)
    assert run_silver_refine(spark, config, "telemetry", {"availableNow": True}) == 0
    silver = read_table(spark, resolve_table(config, "silver.telemetry"))
    assert silver.count() == manifest.total_lines  # nothing quarantined
    off_rack = silver.where("rack <> 'r01'").count()
    assert off_rack > 0
    warnings = read_table(spark, resolve_table(config, SILVER_BATCHES_TABLE)).groupBy().sum("warnings").first()[0]
    assert warnings == off_rack


def test_fail_stops_without_committing_then_a_fixed_restart_processes_the_batch(spark, tmp_path, capsys):
    conf = _conf_with_rule(tmp_path, {**RACK_RULE, "meta": {"policy": "fail"}})
    config = load_config("test", conf_dir=conf, data_dir=tmp_path / "data")
    manifest = _landed(spark, config)

    capsys.readouterr()
    assert run_silver_refine(spark, config, "telemetry", {"availableNow": True}) == 1
    err = capsys.readouterr().err
    assert "expect_column_values_to_be_in_set(rack)" in err and "batch 0" in err, err
    silver_ref = resolve_table(config, "silver.telemetry")
    assert read_table(spark, silver_ref).count() == 0
    assert read_table(spark, resolve_table(config, "silver.telemetry_quarantine")).count() == 0
    commits = Path(config.checkpoint_path("silver_telemetry"), "commits")
    assert not commits.is_dir() or not any(p.name.isdigit() for p in commits.iterdir())

    # the fix: the rule becomes a warning; the same checkpoint restarts and takes the batch in
    suite_path = conf / "base" / "expectations" / "telemetry.json"
    suite_path.write_text(suite_path.read_text().replace('"policy": "fail"', '"policy": "warn"'))
    assert run_silver_refine(spark, config, "telemetry", {"availableNow": True}) == 0
    assert read_table(spark, silver_ref).count() == manifest.total_lines
    assert table_exists(spark, silver_ref)
