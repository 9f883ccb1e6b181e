"""A local job listens on the loopback only: every listening socket of a running continuous
ingest (driver, block manager, the web UI it starts) and of its Python workers, read from
/proc/net/tcp and /proc/net/tcp6, is bound to 127.0.0.1 or ::1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults import land, lines, reading
from tests.processes import signal_job

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")]

LISTEN = "0A"


def _listening() -> dict[str, str]:
    """inode -> local address of every listening TCP socket on this machine."""
    found = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN:
                found[inode] = address[:width]
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack += children.get(current, [])
    return tree


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def test_a_running_job_listens_on_the_loopback_only(config, subprocess_env):
    land(config, "a.jsonl", lines(*[reading(i) for i in range(20)]))
    checkpoint_commits = Path(config.checkpoint_path("bronze_telemetry"), "commits")
    job = subprocess.Popen([sys.executable, "-m", "lakehouse.cli", "--env", "test", "--data-dir",
                            str(config.storage.data_dir), "--set", "spark.conf.spark.ui.enabled=true",
                            "ingest", "--source", "telemetry", "--trigger", "1s"],
                           env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (checkpoint_commits.is_dir() and any(checkpoint_commits.iterdir())):
            assert job.poll() is None, job.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no micro-batch committed"
            time.sleep(1)
        listening = _listening()
        ours = {inode: listening[inode] for pid in _tree(job.pid) for inode in _socket_inodes(pid)
                if inode in listening}
        assert len(ours) >= 3, ours  # py4j gateway, driver RPC, block manager, UI
        exposed = {inode: address for inode, address in ours.items() if address.split(":")[0] not in LOOPBACK}
        assert not exposed, f"listening beyond the loopback: {exposed}"
    finally:
        signal_job(job, signal.SIGTERM)
        try:
            job.wait(timeout=60)
        except subprocess.TimeoutExpired:
            signal_job(job, signal.SIGKILL)
            job.wait()
