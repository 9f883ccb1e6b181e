"""`lakehouse run` as a process: one JVM for every flow, and exactly-once across kill -9 of the whole
application at three moments while files keep landing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.config import duration_seconds
from lakehouse.processes import session_processes
from lakehouse.reconcile import reconcile
from lakehouse.tables import read_table, resolve_table
from tests.lakehouse.test_freshness import check_freshness
from tests.lakehouse.test_gold import _expected_minutes, _gold_minutes
from tests.processes import Lander, batches, kill_9, start_job, wait_for

pytestmark = pytest.mark.slow

FLOWS = ["bronze.telemetry", "silver.telemetry", "gold.telemetry_minute", "gold.telemetry_features"]


def _minutes_with_late_rows(spark, config) -> set:
    """(host, minute) of silver rows that may have reached gold's stream after its watermark had
    passed their minute: older, by more than the watermark's delay, than a row landed before them
    (the generator's late readings, kept by silver's 6-hour watermark). Gold leaves such rows out
    of a minute it has closed, as designed; a batch recomputation from silver counts them."""
    delay = timedelta(seconds=duration_seconds(config.gold_table("telemetry_minute").watermark.delay))
    rows = (read_table(spark, resolve_table(config, "silver.telemetry"))
            .select("host", "event_time", "_source_file", "_source_line").orderBy("_source_file", "_source_line")
            .collect())
    late, newest = set(), None
    for row in rows:  # landing order: the lander names its files in sequence
        if newest is not None and row.event_time < newest - delay:
            late.add((row.host, row.event_time.replace(second=0, microsecond=0)))
        newest = row.event_time if newest is None else max(newest, row.event_time)
    return late


def _log(config) -> str:
    return (Path(config.storage.data_dir) / "run.log").read_text(errors="replace")[-4000:]


def test_kill_9_the_running_pipeline_at_three_moments_then_restart(spark, config, subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}  # the files feed only
    silver = Path(config.checkpoint_path("silver_telemetry"))
    minute = Path(config.checkpoint_path("gold_telemetry_minute"))
    lander = Lander(config, interval=0.5, lines=48, fault_rate=0.1)  # duplicates, late and broken lines too
    lander.start()
    moments = []
    try:
        # 1. once silver has committed a batch; every flow runs in the one JVM
        proc = start_job(config, env, "run.log", "run", "--trigger", "1s")
        assert wait_for(lambda: 0 in batches(silver, "commits"), timeout=240), _log(config)
        jvms = session_processes(proc.pid, "java")
        kill_9(proc)
        moments.append("after silver's first commit")

        # 2. mid-batch: silver has planned a batch it has not committed
        proc = start_job(config, env, "run.log", "run", "--trigger", "1s")
        done = batches(silver, "commits")
        mid = wait_for(lambda: bool(batches(silver, "offsets") - batches(silver, "commits") - done), timeout=240)
        kill_9(proc)
        moments.append("mid-batch" if mid else "timed out waiting for a silver batch")

        # 3. once gold's streaming table has committed again after the restart
        proc = start_job(config, env, "run.log", "run", "--trigger", "1s")
        before = batches(minute, "commits")
        later = wait_for(lambda: bool(batches(minute, "commits") - before), timeout=240)
        kill_9(proc)
        moments.append("after a gold commit" if later else "timed out waiting for a gold commit")
    finally:
        lander.halt.set()
        lander.join()

    assert len(jvms) == 1, f"the run's process session holds {len(jvms)} JVMs: {jvms}"
    assert moments == ["after silver's first commit", "mid-batch", "after a gold commit"], (moments, _log(config))
    proc = start_job(config, env, "run.log", "run", "--once")  # drain everything that landed
    assert proc.wait(timeout=600) == 0, _log(config)

    bronze = read_table(spark, resolve_table(config, "bronze.telemetry"))
    keys = [(r.file, r._source_line) for r in bronze.select(
        F.element_at(F.split("_source_file", "/"), -1).alias("file"), "_source_line").collect()]
    expected = {(f["file"], n) for f in lander.manifest.files for n in range(1, f["lines"] + 1)}
    assert len(keys) == len(set(keys)), "a landed line is in bronze twice"
    assert set(keys) == expected and len(lander.manifest.files) > 10
    silver_rows = read_table(spark, resolve_table(config, "silver.telemetry"))
    assert silver_rows.count() == silver_rows.select("event_id").distinct().count() > 0
    report = reconcile(spark, config, "telemetry")
    assert report.holds and report.duplicates > 0 and report.quarantined > 0, report.describe()
    gold, rows = _gold_minutes(spark, config)
    expected, late = _expected_minutes(spark, config), _minutes_with_late_rows(spark, config)
    assert late and rows == len(gold) and len(gold) > 24
    assert {k: v for k, v in gold.items() if k not in late} == {k: v for k, v in expected.items() if k not in late}
    check_freshness(spark, config, FLOWS)
