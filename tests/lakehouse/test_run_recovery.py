"""`lakehouse run` as a process: one JVM for every flow, and exactly-once across kill -9 of the whole
application at three moments while files keep landing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.processes import session_processes
from lakehouse.reconcile import reconcile
from lakehouse.tables import read_table, resolve_table
from tests.lakehouse.test_freshness import check_freshness
from tests.lakehouse.test_gold import _expected_minutes, _gold_minutes
from tests.processes import Lander, batches, kill_9, start_job, wait_for

pytestmark = pytest.mark.slow

FLOWS = ["bronze.telemetry", "silver.telemetry", "gold.telemetry_minute", "gold.telemetry_features"]


def _log(config) -> str:
    return (Path(config.storage.data_dir) / "run.log").read_text(errors="replace")[-4000:]


def test_kill_9_the_running_pipeline_at_three_moments_then_restart(spark, config, subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}  # the files feed only
    silver = Path(config.checkpoint_path("silver_telemetry"))
    minute = Path(config.checkpoint_path("gold_telemetry_minute"))
    # No faults: a late reading would be kept by silver (6 h watermark) yet be too late for gold's
    # closed minute, and gold must equal a batch recomputation. Faults under crashes: test_crash_recovery.
    lander = Lander(config, interval=0.5, lines=48, fault_rate=0.0)
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
    assert silver_rows.count() == silver_rows.select("event_id").distinct().count() == len(expected)
    report = reconcile(spark, config, "telemetry")
    assert report.holds, report.describe()
    gold, rows = _gold_minutes(spark, config)
    assert rows == len(gold) and gold == _expected_minutes(spark, config) and len(gold) > 24
    check_freshness(spark, config, FLOWS)
