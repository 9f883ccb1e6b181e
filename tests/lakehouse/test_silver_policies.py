"""Expectation policies in a running silver query: warn keeps and records, fail stops without
committing and names the expectation and the batch; after the fix a restart processes the batch."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from lakehouse.config import load_config
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.reconcile import reconcile
from lakehouse.runner import run_flow
from lakehouse.silver_tables import SILVER_BATCHES_TABLE
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
    assert run_flow(spark, config, "bronze.telemetry", {"availableNow": True}) == 0
    return manifest


# hosts on rack r01 only: every other rack's rows fail it
RACK_RULE = {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "rack", "value_set": ["r01"]}}


def test_warn_keeps_the_rows_and_records_them(spark, tmp_path):
    conf = _conf_with_rule(tmp_path, {**RACK_RULE, "meta": {"policy": "warn"}})
    config = load_config("test", conf_dir=conf, data_dir=tmp_path / "data")
    manifest = _landed(spark, config)
    assert run_flow(spark, config, "silver.telemetry", {"availableNow": True}) == 0
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
    assert run_flow(spark, config, "silver.telemetry", {"availableNow": True}) == 1
    err = capsys.readouterr().err
    assert "expect_column_values_to_be_in_set(rack)" in err and "batch 0" in err, err
    # the error the batch raised, as raised (lakehouse/errors.py), not Spark's wrapper around it
    assert "lakehouse: silver_telemetry failed: ExpectationFailedError: batch 0 of silver.telemetry" in err, err
    silver_ref = resolve_table(config, "silver.telemetry")
    assert read_table(spark, silver_ref).count() == 0
    assert read_table(spark, resolve_table(config, "silver.telemetry_quarantine")).count() == 0
    commits = Path(config.checkpoint_path("silver_telemetry"), "commits")
    assert not commits.is_dir() or not any(p.name.isdigit() for p in commits.iterdir())

    # the fix: the rule becomes a warning; the same checkpoint restarts and takes the batch in
    suite_path = conf / "base" / "expectations" / "telemetry.json"
    suite_path.write_text(suite_path.read_text().replace('"policy": "fail"', '"policy": "warn"'))
    assert run_flow(spark, config, "silver.telemetry", {"availableNow": True}) == 0
    assert read_table(spark, silver_ref).count() == manifest.total_lines
    assert table_exists(spark, silver_ref)


def test_late_rows_quarantined_and_new_fields_evolve_the_schema(spark, tmp_path):
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data", overrides=[
        "entities.telemetry.watermark=1 hour", "entities.telemetry.unexpected_fields=evolve"])
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    generator = TelemetryGenerator.from_config(config.generator, seed=33, fault_rate=0.1)
    counts = Counter()
    for run in ("w1", "w2"):  # the second run continues the first's clock
        manifest = generate_batch(generator, landing, "telemetry", run, 33, 1200, 2)
        counts.update({f"{run}_{kind}": n for kind, n in manifest.fault_counts().items()})
        assert run_flow(spark, config, "bronze.telemetry", {"availableNow": True}) == 0
        assert run_flow(spark, config, "silver.telemetry", {"availableNow": True}) == 0
    assert counts["w2_late_event"] > 0 and counts["w1_extra_field"] + counts["w2_extra_field"] > 0

    quarantine = read_table(spark, resolve_table(config, "silver.telemetry_quarantine"))
    # Late means behind what silver held before the batch: the first run's late rows were not.
    assert quarantine.where("array_contains(reasons, 'late')").count() == counts["w2_late_event"]  # 3 h > 1 h
    silver = read_table(spark, resolve_table(config, "silver.telemetry"))
    assert "firmware_version" in silver.columns  # the generator's extra field became a column
    assert silver.where("firmware_version IS NOT NULL").count() == counts["w1_extra_field"] + counts["w2_extra_field"]
    assert silver.where("_rescued IS NOT NULL").count() == 0
    assert reconcile(spark, config, "telemetry").holds


def test_evolved_columns_across_batches(spark, tmp_path):
    """A field evolves a column; a later version of the key without it holds null there; a name
    that is not an identifier stays rescued."""
    from lakehouse.batch_plan import plan_batch
    from lakehouse.quality import load_suite, row_rules
    from lakehouse.refine import refine_batch
    from lakehouse.silver_tables import ensure_silver_tables

    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data",
                         overrides=["entities.telemetry.unexpected_fields=evolve"])
    ensure_silver_tables(spark, config, "telemetry")
    rules = row_rules(load_suite(config.suite_path("telemetry")))
    base = {"host": "dc1-r01-h001", "rack": "r01", "cpu_util": 1, "mem_util": 1, "gpu_util": 1, "power_w": 100,
            "fan_rpm": 2000, "inlet_temp_c": 20, "exhaust_temp_c": 30}

    def batch(*records):
        rows = [(json.dumps({**base, **r}), "f", i, None) for i, r in enumerate(records)]
        return spark.createDataFrame(rows, "value string, _source_file string, _source_line long, _ingested_at timestamp")

    refine_batch(config, "telemetry", rules, "t", batch({"event_id": "e1", "event_time": "2026-01-01T00:00:01Z", "fw": "1.0"}), 0,
                 plan_batch(spark, config, "telemetry"))
    refine_batch(config, "telemetry", rules, "t", batch({"event_id": "e2", "event_time": "2026-01-01T00:00:02Z"},
                                                        {"event_id": "e1", "event_time": "2026-01-01T00:00:03Z"}), 1,
                 plan_batch(spark, config, "telemetry"))
    refine_batch(config, "telemetry", rules, "t", batch({"event_id": "e3", "event_time": "2026-01-01T00:00:04Z",
                                                         "Bad Name": "x", "fw2": "2"}), 2,
                 plan_batch(spark, config, "telemetry"))
    rows = {r.event_id: r for r in read_table(spark, resolve_table(config, "silver.telemetry")).collect()}
    assert sorted(rows) == ["e1", "e2", "e3"]
    assert rows["e1"].fw is None and rows["e1"].event_time.second == 3  # the newer version replaced the row
    assert (rows["e3"].fw2, rows["e3"]._rescued) == ("2", '{"Bad Name":"x"}')
