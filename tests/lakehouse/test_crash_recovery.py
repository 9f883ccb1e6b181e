"""Exactly-once across crashes: kill -9 the bronze job at three moments while files keep landing.
(Silver killed mid-batch, with the rest of the pipeline: tests/lakehouse/test_run_recovery.py;
silver crashed between any two of its writes: tests/lakehouse/test_silver_faults.py.)"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.landing import INGESTED_FILES_TABLE
from lakehouse.tables import bronze_table, read_table, resolve_table
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
    # Each file read is in ops.ingested_files once, with its lines: rows journaled by batches that
    # committed before a kill were appended by a later run (lakehouse/landing_journal.py).
    ingested = read_table(spark, resolve_table(config, INGESTED_FILES_TABLE)).collect()
    assert sorted((Path(r.path).name, r.lines) for r in ingested) == sorted(
        (f["file"], f["lines"]) for f in lander.manifest.files)


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
