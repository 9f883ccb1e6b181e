"""Silver refine: counts match the generator's manifest, reconciliation holds, a replayed batch changes nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.batch_plan import plan_batch
from lakehouse.cli import main
from lakehouse.freshness import ROW_SAMPLE
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.quality import load_suite, row_rules
from lakehouse.reconcile import reconcile
from lakehouse.refine import refine_batch
from lakehouse.runner import run_flow
from lakehouse.silver_tables import SILVER_BATCHES_TABLE, ensure_silver_tables
from lakehouse.tables import bronze_table, delta_table, read_table, resolve_table
from tests.faults import land, lines, reading

pytestmark = pytest.mark.slow

QUARANTINED_KINDS = ("malformed_json", "missing_field", "wrong_type", "out_of_range")


def _land_and_ingest(spark, config, records=3000, files=6, seed=21):
    g = config.generator
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True, exist_ok=True)
    generator = TelemetryGenerator.from_config(g, seed=seed, fault_rate=0.1)
    manifest = generate_batch(generator, landing, "telemetry", f"r{seed}", seed, records, files)
    assert run_flow(spark, config, "bronze.telemetry", {"availableNow": True}) == 0
    return manifest


def test_silver_quarantine_and_duplicates_match_the_manifest(spark, config, capsys):
    manifest = _land_and_ingest(spark, config)
    counts = manifest.fault_counts()
    assert run_flow(spark, config, "silver.telemetry", {"availableNow": True}) == 0

    silver = read_table(spark, resolve_table(config, "silver.telemetry"))
    quarantine = read_table(spark, resolve_table(config, "silver.telemetry_quarantine"))
    quarantined = sum(counts[k] for k in QUARANTINED_KINDS)
    assert quarantine.count() == quarantined
    assert silver.count() == manifest.total_lines - quarantined - counts["duplicate_event_id"]
    assert silver.select("event_id").distinct().count() == silver.count()
    assert silver.where(F.col("_rescued").isNotNull()).count() == counts["extra_field"]

    reasons = Counter(r.reasons[0] for r in quarantine.select("reasons").collect())
    assert reasons["malformed"] == counts["malformed_json"]
    assert sum(n for reason, n in reasons.items() if reason.startswith("type(")) == counts["wrong_type"]

    report = reconcile(spark, config, "telemetry")
    assert report.holds and report.duplicates == counts["duplicate_event_id"]

    # GX validated the whole suite on each micro-batch; its counts agree with the quarantine
    results = read_table(spark, resolve_table(config, "ops.quality_results"))
    suite_size = len(load_suite(config.suite_path("telemetry")).expectations)
    batches = read_table(spark, resolve_table(config, SILVER_BATCHES_TABLE)).count()
    assert results.count() == suite_size * batches
    assert results.groupBy().sum("element_count").first()[0] == suite_size * manifest.total_lines
    out_of_range = results.where("expectation LIKE 'expect_column_values_to_be_between%' AND policy = 'drop'")
    assert out_of_range.groupBy().sum("unexpected_count").first()[0] == counts["out_of_range"]
    assert results.where("source_versions LIKE 'bronze.telemetry@%'").count() == results.count()

    # GX Data Docs built from those rows
    capsys.readouterr()
    assert main(["--env", "test", "--data-dir", str(config.storage.data_dir), "quality", "docs"]) == 0
    index = Path(capsys.readouterr().out.strip().split("Data Docs: ", 1)[1])
    assert index.name == "index.html" and index.is_file()
    assert "telemetry" in index.read_text()
    pages = list(index.parent.glob("validations/telemetry/**/*.html"))
    assert len(pages) == batches
    capsys.readouterr()
    assert main(["--env", "test", "--data-dir", str(config.storage.data_dir), "reconcile", "--source", "telemetry"]) == 0
    assert "reconciled" in capsys.readouterr().out


def test_a_replayed_batch_changes_no_table(spark, config):
    _land_and_ingest(spark, config, records=600, files=2, seed=22)
    ensure_silver_tables(spark, config, "telemetry")
    entity = config.entity("telemetry")
    rules = row_rules(load_suite(config.suite_path(entity.suite)))
    bronze = read_table(spark, bronze_table(config, "telemetry"))
    tables = [resolve_table(config, n) for n in ("silver.telemetry", "silver.telemetry_quarantine", SILVER_BATCHES_TABLE)]

    plan = plan_batch(spark, config, "telemetry")
    refine_batch(config, "telemetry", rules, "replay-test", bronze, 0, plan)
    versions = [delta_table(spark, t).history(1).first().version for t in tables]
    rows = [read_table(spark, t).count() for t in tables]
    # the same batch again, as after a crash between the Delta commits and the checkpoint commit
    refine_batch(config, "telemetry", rules, "replay-test", bronze, 0, plan)
    assert [delta_table(spark, t).history(1).first().version for t in tables] == versions
    assert [read_table(spark, t).count() for t in tables] == rows
    assert reconcile(spark, config, "telemetry").holds


def test_a_batch_without_sampled_lines_still_measures_its_freshness(spark, config):
    """Percentiles come from every 16th line; a batch holding none of those lines (short files,
    a few Kafka offsets) takes them over every kept row instead of reporting none."""
    _land_and_ingest(spark, config, records=200, files=2, seed=23)
    ensure_silver_tables(spark, config, "telemetry")
    entity = config.entity("telemetry")
    rules = row_rules(load_suite(config.suite_path(entity.suite)))
    bronze = read_table(spark, bronze_table(config, "telemetry")).where(F.col("_source_line") % ROW_SAMPLE != 1)
    measured, _ = refine_batch(config, "telemetry", rules, "unsampled", bronze, 0, plan_batch(spark, config, "telemetry"))
    kept = read_table(spark, resolve_table(config, "silver.telemetry"))
    assert measured.rows > 0 and set(measured.times) == {"ingest", "event"}
    oldest, q05, q50 = measured.times["event"]
    newest = kept.agg(F.max(F.unix_micros(entity.event_time))).first()[0] / 1e6
    assert oldest <= q05 <= q50 <= newest


def test_a_staged_batch_whose_blocks_are_lost_is_staged_again_and_written_once(spark, config, monkeypatch, capsys):
    """An executor lost after a batch was staged takes the staged blocks with it: the batch is
    staged again from its bronze rows, and what the first attempt already committed is not
    written twice."""
    import lakehouse.refine as refine

    _land_and_ingest(spark, config, records=300, files=2, seed=24)
    ensure_silver_tables(spark, config, "telemetry")
    entity = config.entity("telemetry")
    rules = row_rules(load_suite(config.suite_path(entity.suite)))
    bronze = read_table(spark, bronze_table(config, "telemetry"))
    append_once, calls = refine.append_once, []

    def lose_blocks_after_the_quarantine(df, ref, *args, **kwargs):
        append_once(df, ref, *args, **kwargs)
        calls.append(ref.name)
        if ref.name.endswith("_quarantine") and calls.count(ref.name) == 1:
            raise RuntimeError("SparkException: Checkpoint block rdd_7_1 not found! Either the executor ...")

    monkeypatch.setattr(refine, "append_once", lose_blocks_after_the_quarantine)
    refine_batch(config, "telemetry", rules, "lost-blocks", bronze, 0, plan_batch(spark, config, "telemetry"),
                 may_be_replay=False)
    assert "batch 0: kept rows lost (an executor went away); doing it again (attempt 2 of 3)" in capsys.readouterr().err
    quarantine = read_table(spark, resolve_table(config, "silver.telemetry_quarantine"))
    assert quarantine.count() == quarantine.select("_source_file", "_source_line").distinct().count() > 0
    assert reconcile(spark, config, "telemetry").holds


def test_a_batch_without_quarantined_rows_makes_no_quarantine_commit(spark, config):
    """Clean batches (the always-on common case) skip the quarantine's commit; one with a bad line
    appends it."""
    land(config, "clean.jsonl", lines(reading(1), reading(2)))
    assert run_flow(spark, config, "bronze.telemetry", {"availableNow": True}) == 0
    assert run_flow(spark, config, "silver.telemetry", {"availableNow": True}) == 0
    quarantine = resolve_table(config, "silver.telemetry_quarantine")

    def writes() -> int:
        return sum(c["operation"] == "WRITE" for c in delta_table(spark, quarantine).history().collect())

    assert writes() == 0 and read_table(spark, resolve_table(config, "silver.telemetry")).count() == 2
    land(config, "bad.jsonl", lines(reading(3), b"{not json"))
    assert run_flow(spark, config, "bronze.telemetry", {"availableNow": True}) == 0
    assert run_flow(spark, config, "silver.telemetry", {"availableNow": True}) == 0
    assert writes() == 1 and read_table(spark, quarantine).count() == 1
