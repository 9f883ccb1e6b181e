"""Running `lakehouse` jobs as child processes, killing them, and watching their checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import Manifest, write_file
from tests.conftest import REPO


def start_job(config, env, log_name: str, *args: str) -> subprocess.Popen:
    """``lakehouse --env test --data-dir <config's> <args>`` in the background, output to <data>/<log_name>."""
    data = Path(config.storage.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lakehouse.cli", "--env", "test", "--data-dir", str(data), *args]
    log = open(data / log_name, "ab")
    # A session of its own, so kill -9 reaches the whole job: Python and its JVM together.
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def signal_job(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to the job's process group (its Python and JVM), only while Popen has not reaped the
    job: until then its pid, and so the group's id, cannot pass to another process. Once reaped
    (poll() or wait() saw it exit) the pid may be anyone's; the job's JVM exits by itself then,
    when its stdin pipe from the job's Python closes."""
    if proc.returncode is None:
        os.killpg(proc.pid, sig)


def kill_9(proc: subprocess.Popen) -> None:
    if proc.returncode is not None:
        return  # reaped already: see signal_job
    signal_job(proc, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the JVM of that group is gone too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("the killed job's processes did not exit")


def batches(checkpoint: Path, kind: str) -> set[int]:
    """Micro-batch ids with an entry in the checkpoint's ``offsets`` or ``commits`` log."""
    folder = checkpoint / kind
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


def wait_for(predicate, timeout=180.0, poll=0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


class Lander(threading.Thread):
    """Lands a small file every ``interval`` seconds until stopped."""

    def __init__(self, config, interval=0.4, lines=40, fault_rate=0.05):
        super().__init__(daemon=True)
        g = config.generator
        self.generator = TelemetryGenerator.from_config(g, seed=5, fault_rate=fault_rate)
        self.manifest = Manifest("telemetry", "crash", 5, fault_rate)
        self.landing = Path(config.landing_path("telemetry"))
        self.landing.mkdir(parents=True, exist_ok=True)
        self.interval, self.lines = interval, lines
        self.halt = threading.Event()

    def run(self):
        index = 0
        while not self.halt.is_set():
            write_file(self.generator, self.manifest, self.landing, f"telemetry-crash-{index:05d}.jsonl", self.lines)
            index += 1
            self.halt.wait(self.interval)
