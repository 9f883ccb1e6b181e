"""Exactly-once across crashes: kill -9 the bronze job at three moments while files keep landing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.tables import bronze_table, read_table
from tests.conftest import REPO
from tests.processes import Lander, start_job
from tests.processes import batches as _batches
from tests.processes import kill_9 as _kill_9
from tests.processes import wait_for as _wait_for

pytestmark = pytest.mark.slow


def _start_ingest(config, env, *mode) -> subprocess.Popen:
    return start_job(config, env, "ingest.log", "ingest", "--source", "telemetry", *mode)


def test_kill_9_at_three_moments_then_restart_gives_exactly_once(spark, config, subprocess_env):
    checkpoint = Path(config.checkpoint_path("bronze_telemetry"))
    lander = Lander(config)
    lander.start()
    moments = []
    try:
        # 1. right after the first batch committed
        proc = _start_ingest(config, subprocess_env, "--trigger", "1s")
        assert _wait_for(lambda: 0 in _batches(checkpoint, "commits")), "no batch committed"
        _kill_9(proc)
        moments.append("after a commit")

        # 2. mid-batch: offsets written (batch planned), commit not yet written
        proc = _start_ingest(config, subprocess_env, "--trigger", "1s")
        done = set(_batches(checkpoint, "commits"))
        def in_flight():
            return bool(_batches(checkpoint, "offsets") - _batches(checkpoint, "commits") - done)
        mid = _wait_for(in_flight)
        _kill_9(proc)
        moments.append("mid-batch" if mid else "timed out waiting for a batch")

        # 3. during start-up, before the restarted query has planned anything
        proc = _start_ingest(config, subprocess_env, "--trigger", "1s")
        time.sleep(4)
        _kill_9(proc)
        moments.append("during start-up")
    finally:
        lander.halt.set()
        lander.join()

    assert moments[1] == "mid-batch", moments
    # restart once more and drain everything that landed
    proc = _start_ingest(config, subprocess_env, "--once")
    assert proc.wait(timeout=300) == 0, (Path(config.storage.data_dir) / "ingest.log").read_text()[-3000:]

    bronze = read_table(spark, bronze_table(config, "telemetry"))
    keys = [
        (r.file, r._source_line)
        for r in bronze.select(F.element_at(F.split("_source_file", "/"), -1).alias("file"), "_source_line").collect()
    ]
    expected = {(f["file"], n) for f in lander.manifest.files for n in range(1, f["lines"] + 1)}
    assert len(keys) == len(set(keys)), "duplicate (file, line) rows in bronze"
    assert set(keys) == expected
    assert len(lander.manifest.files) > 10


def test_sigterm_stops_a_continuous_ingest_cleanly(config, subprocess_env):
    lander = Lander(config, interval=0.5, lines=20)
    lander.start()
    try:
        proc = _start_ingest(config, subprocess_env, "--trigger", "1s")
        checkpoint = Path(config.checkpoint_path("bronze_telemetry"))
        assert _wait_for(lambda: 0 in _batches(checkpoint, "commits")), "no batch committed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        lander.halt.set()
        lander.join()
    log = (Path(config.storage.data_dir) / "ingest.log").read_text()
    assert "bronze_telemetry: stopping" in log and "bronze_telemetry: done" in log


def test_kill_9_silver_mid_stream_then_restart_keeps_keys_unique_and_reconciles(spark, config, subprocess_env):
    from lakehouse.reconcile import reconcile
    from lakehouse.tables import resolve_table

    g = config.generator
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True, exist_ok=True)
    generator = TelemetryGenerator.from_config(g, seed=8, fault_rate=0.1)
    generate_batch(generator, landing, "telemetry", "k", 8, 1500, 5)
    data = str(config.storage.data_dir)
    ingest = [sys.executable, "-m", "lakehouse.cli", "--env", "test", "--data-dir", data,
              "--set", "sources.telemetry.max_files_per_trigger=1", "ingest", "--source", "telemetry", "--once"]
    assert subprocess.run(ingest, cwd=REPO, env=subprocess_env, capture_output=True, timeout=300).returncode == 0

    def refine(*mode):
        cmd = [sys.executable, "-m", "lakehouse.cli", "--env", "test", "--data-dir", data,
               "--set", "entities.telemetry.max_files_per_trigger=1", "refine", "--entity", "telemetry", *mode]
        log = open(Path(data) / "refine.log", "ab")
        return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    checkpoint = Path(config.checkpoint_path("silver_telemetry"))
    proc = refine("--trigger", "1s")
    def in_flight():
        return bool(_batches(checkpoint, "offsets") - _batches(checkpoint, "commits"))
    assert _wait_for(lambda: 0 in _batches(checkpoint, "commits")), "no silver batch committed"
    assert _wait_for(in_flight), "never saw a batch in flight"
    _kill_9(proc)  # mid-batch: planned, not committed

    proc = refine("--trigger", "1s")
    assert _wait_for(lambda: len(_batches(checkpoint, "commits")) >= 3)
    _kill_9(proc)  # after more commits

    proc = refine("--once")
    assert proc.wait(timeout=300) == 0, (Path(data) / "refine.log").read_text()[-3000:]

    silver = read_table(spark, resolve_table(config, "silver.telemetry"))
    assert silver.count() == silver.select("event_id").distinct().count() > 0
    report = reconcile(spark, config, "telemetry")
    assert report.holds, report.describe()
