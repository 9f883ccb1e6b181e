"""Silver against real-world faults: clock skew, impossible years, backfills, non-finite numbers,
and batches redone after a crash between any two of their writes."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.config import load_config
from lakehouse.failpoints import FAILPOINTS_ENV
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.reconcile import reconcile
from lakehouse.runner import run_flow, run_flows
from lakehouse.silver_tables import SILVER_BATCHES_TABLE
from lakehouse.tables import read_table, resolve_table
from tests.conftest import CONF_DIR
from tests.faults import land, lines, reading

pytestmark = pytest.mark.slow

ONCE = {"availableNow": True}


def _ingest_refine(spark, config, **refine) -> None:
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert run_flow(spark, config, "silver.telemetry", ONCE, **refine) == 0


def _quarantine_reasons(spark, config) -> Counter:
    """The first reason of each quarantined row (the rules a null or NaN also fails come after it)."""
    quarantine = read_table(spark, resolve_table(config, "silver.telemetry_quarantine"))
    return Counter(row.reasons[0] for row in quarantine.select("reasons").collect())


def _silver_ids(spark, config) -> set[str]:
    return {r.event_id for r in read_table(spark, resolve_table(config, "silver.telemetry")).select("event_id").collect()}


def test_clock_skew_cannot_poison_silver_or_gold(spark, config):
    # 24 hosts x 10 minutes of readings, and one host whose clock says 2099
    skewed = reading(9999, event_time="2099-01-01T00:00:00.000Z")
    land(config, "first.jsonl", lines(*[reading(i, host=i % 24, seconds=(i // 24) * 25) for i in range(576)], skewed))
    _ingest_refine(spark, config)
    assert _quarantine_reasons(spark, config) == Counter({"future_event_time": 1})
    land(config, "second.jsonl", lines(*[reading(1000 + i, host=i % 24, seconds=600 + (i // 24) * 25)
                                         for i in range(576)]))
    _ingest_refine(spark, config)
    # nothing after the skewed reading is late: it never reached silver, so it moved no cut-off
    assert _quarantine_reasons(spark, config) == Counter({"future_event_time": 1})
    assert len(_silver_ids(spark, config)) == 1152
    batches = read_table(spark, resolve_table(config, SILVER_BATCHES_TABLE)).orderBy("batch_id").collect()
    assert all(b.late_cutoff is None or b.late_cutoff.year == 2026 for b in batches)

    assert run_flows(spark, config, ["gold.telemetry_minute"], ONCE) == 0
    gold = {(r.host, r.minute): r.readings for r in read_table(spark, resolve_table(config, "gold.telemetry_minute")).collect()}
    # every minute that closed before silver's newest reading (minus gold's 2-minute delay) is in gold
    silver = read_table(spark, resolve_table(config, "silver.telemetry"))
    newest = silver.agg(F.max("event_time")).first()[0]
    per_minute = silver.groupBy("host", F.window("event_time", "1 minute").start.alias("minute")).count()
    closed = per_minute.where(F.col("minute") <= F.lit(newest) - F.expr("INTERVAL 3 MINUTES")).collect()
    assert gold == {(r.host, r.minute): r["count"] for r in closed}
    assert max(minute for _, minute in gold).minute >= 15  # windows of the second file closed too


def test_an_impossible_year_is_a_type_error_and_never_stops_refine(spark, config):
    land(config, "years.jsonl", lines(
        reading(1), reading(2, event_time="10000-01-01T00:00:00Z"), reading(3, event_time="1899-12-31T23:59:59Z"),
        reading(4, event_time="+99999-01-01T00:00:00Z"), reading(5, event_time="0001-01-01T00:00:00Z")))
    _ingest_refine(spark, config)
    assert _quarantine_reasons(spark, config) == Counter({"type(event_time)": 4})
    land(config, "more.jsonl", lines(reading(6), reading(7)))
    _ingest_refine(spark, config)  # the next batches still run (exit 0, asserted inside)
    assert _silver_ids(spark, config) == {"e000001", "e000006", "e000007"}


def _station_month(host: int, first: int) -> list[dict]:
    """Hourly readings of one host over 30 days, oldest first."""
    return [reading(first + h, host=host, seconds=3600 * h) for h in range(30 * 24)]


def test_a_backfill_is_not_quarantined_as_late_when_asked(spark, tmp_path):
    # Historical hourly data ordered by station, then time: station 2's month arrives after station
    # 1's, so against station 1's newest reading nearly all of it is older than the watermark.
    def run(name: str, overrides=(), gold=False, **refine):
        config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / name, overrides=list(overrides))
        for station, first in ((1, 0), (2, 10_000)):
            land(config, f"station-{station}.jsonl", lines(*_station_month(station, first)))
            _ingest_refine(spark, config, **refine)
            if gold:
                assert run_flows(spark, config, ["gold.telemetry_minute"], ONCE) == 0
        return config, _quarantine_reasons(spark, config), len(_silver_ids(spark, config))

    _, reasons, kept = run("plain")
    assert reasons["late"] > 700 and kept < 800  # what the late rule does to a backfill
    assert run("per-run", backfill=True)[1:] == (Counter(), 1440)  # lakehouse refine --backfill
    config, *outcome = run("per-source", overrides=["sources.telemetry.backfill=true"], gold=True)
    assert outcome == [Counter(), 1440]

    # gold.telemetry_minute had closed station 2's windows before its readings came; rebuilt as
    # conf/README.md says, it counts them
    def gold_minutes() -> dict:
        rows = read_table(spark, resolve_table(config, "gold.telemetry_minute")).groupBy("host").count().collect()
        return {r.host: r["count"] for r in rows}

    assert gold_minutes() == {"dc1-r01-h001": 719}  # its last minute is still open
    shutil.rmtree(config.checkpoint_path("gold_telemetry_minute"))
    shutil.rmtree(resolve_table(config, "gold.telemetry_minute").path)
    assert run_flows(spark, config, ["gold.telemetry_minute"], ONCE) == 0
    assert gold_minutes() == {"dc1-r01-h001": 719, "dc1-r01-h002": 719}


def test_non_finite_numbers_are_quarantined_unless_allowed(spark, tmp_path):
    rows = lines(reading(1), reading(2, exhaust_temp_c="Infinity"), '{"event_id": "e000003", "host": "dc1-r01-h000", '
                 '"rack": "r01", "event_time": "2026-03-01T00:00:30.000Z", "cpu_util": NaN, "mem_util": 1, '
                 '"gpu_util": 1, "power_w": 1e400, "fan_rpm": 1, "inlet_temp_c": 1, "exhaust_temp_c": 1}',
                 reading(4, exhaust_temp_c=1e300))
    strict = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "strict")
    land(strict, "numbers.jsonl", rows)
    _ingest_refine(spark, strict)
    assert _quarantine_reasons(spark, strict) == Counter({"not_finite": 2})
    assert _silver_ids(spark, strict) == {"e000001", "e000004"}  # 1e300 is finite (the warn rule keeps it)
    errors = [r.error for r in read_table(spark, resolve_table(strict, "silver.telemetry_quarantine")).collect()]
    assert any("cpu_util" in e and "power_w" in e for e in errors)

    lenient = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "lenient",
                          overrides=["entities.telemetry.allow_non_finite=[exhaust_temp_c]"])
    land(lenient, "numbers.jsonl", rows)
    _ingest_refine(spark, lenient)
    assert _silver_ids(spark, lenient) == {"e000001", "e000002", "e000004"}


# The writes of one silver batch, and the failpoint before each (lakehouse.refine.refine_batch):
# plan recorded -> [quarantine append | quality results append | MERGE] -> batch stats -> done.
CRASH_POINTS = ["silver.quarantine@0", "silver.plan@1", "silver.quality@2", "silver.merge@3", "silver.stats@4",
                "silver.done@5"]


def _outcome(spark, config) -> tuple:
    silver = read_table(spark, resolve_table(config, "silver.telemetry"))
    rows = {(r.event_id, r.event_time, r.power_w, Path(r._source_file).name, r._source_line)
            for r in silver.collect()}
    quarantine = read_table(spark, resolve_table(config, "silver.telemetry_quarantine"))
    reasons = {(Path(r._source_file).name, r._source_line): tuple(r.reasons) for r in quarantine.collect()}
    duplicates = read_table(spark, resolve_table(config, SILVER_BATCHES_TABLE)).groupBy().sum("duplicates").first()[0]
    return rows, reasons, duplicates


def test_a_batch_redone_after_a_crash_between_any_two_writes_decides_as_before(spark, tmp_path, monkeypatch):
    overrides = ["entities.telemetry.watermark=1 hour", "entities.telemetry.max_files_per_trigger=1",
                 "sources.telemetry.max_files_per_trigger=1"]
    crashed = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "crashed", overrides=overrides)
    clean = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "clean", overrides=overrides)
    landing = Path(crashed.landing_path("telemetry"))
    landing.mkdir(parents=True)
    # late events (3 h behind) in every file, duplicates, and the other faults
    generator = TelemetryGenerator.from_config(crashed.generator, seed=41, fault_rate=0.15)
    generate_batch(generator, landing, "telemetry", "crash", 41, 1400, 7)
    assert run_flow(spark, crashed, "bronze.telemetry", ONCE) == 0
    # the same bronze table (the same Delta files, so the same silver batches) for the uncrashed run
    shutil.copytree(resolve_table(crashed, "bronze.telemetry").path, resolve_table(clean, "bronze.telemetry").path)
    assert run_flow(spark, clean, "silver.telemetry", ONCE) == 0

    for point in CRASH_POINTS:  # each run redoes the batch the last one crashed in, then crashes in the next
        monkeypatch.setenv(FAILPOINTS_ENV, point)
        assert run_flow(spark, crashed, "silver.telemetry", ONCE) == 1, point
    monkeypatch.delenv(FAILPOINTS_ENV)
    assert run_flow(spark, crashed, "silver.telemetry", ONCE) == 0

    rows, reasons, duplicates = _outcome(spark, crashed)
    assert (rows, reasons, duplicates) == _outcome(spark, clean)
    assert len({r[0] for r in rows}) == len(rows) and "late" in {r for rs in reasons.values() for r in rs}
    report = reconcile(spark, crashed, "telemetry")
    assert report.holds, report.describe()
    silver_keys = {r[3:] for r in rows}
    assert not silver_keys & set(reasons)  # no bronze row both in silver and in quarantine
    bronze = read_table(spark, resolve_table(crashed, "bronze.telemetry")).count()
    assert len(rows) + len(reasons) + duplicates == bronze


def test_a_batch_that_changes_nothing_in_silver_blocks_no_later_batch(spark, config):
    """Batches whose MERGE has nothing to do (Delta then records no commit): one whose every row is
    quarantined, and a refined file landed again under a new name (its rows are duplicates)."""
    first = lines(*[reading(i) for i in range(20)])
    land(config, "a-first.jsonl", first)
    _ingest_refine(spark, config)
    # one file per micro-batch, in name order: garbage, the copy, then new readings
    land(config, "b-garbage.jsonl", lines("not json", b"\xff\xfe", "{\"event_id\": "))
    land(config, "c-first-again.jsonl", first)
    land(config, "d-later.jsonl", lines(*[reading(100 + i) for i in range(5)]))
    one_by_one = load_config("test", conf_dir=CONF_DIR, data_dir=config.storage.data_dir,
                             overrides=["sources.telemetry.max_files_per_trigger=1",
                                        "entities.telemetry.max_files_per_trigger=1"])
    _ingest_refine(spark, one_by_one)
    batches = read_table(spark, resolve_table(config, SILVER_BATCHES_TABLE)).count()
    assert batches == 4, batches
    assert len(_silver_ids(spark, config)) == 25
    assert sum(_quarantine_reasons(spark, config).values()) == 3
    report = reconcile(spark, config, "telemetry")
    assert report.holds and report.duplicates == 20, report.describe()
