"""Running `lakehouse` jobs as child processes, killing them, and watching their checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO


def start_job(config, env, log_name: str, *args: str) -> subprocess.Popen:
    """``lakehouse --env test --data-dir <config's> <args>`` in the background, output to <data>/<log_name>."""
    data = Path(config.storage.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lakehouse.cli", "--env", "test", "--data-dir", str(data), *args]
    log = open(data / log_name, "ab")
    # A session of its own, so kill -9 reaches the whole job: Python and its JVM together.
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
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
