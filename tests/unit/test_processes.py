"""The service scripts signal only the processes they started: a stale pid file is not obeyed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lakehouse.processes import started_process, write_pid_file

REPO = Path(__file__).resolve().parents[2]


def _bystander() -> subprocess.Popen:
    """A process that is not ours to stop (as when a stale pid was given to another program)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


def test_started_process_checks_the_command_line_and_start_time(tmp_path):
    other = _bystander()
    try:
        pid_file = tmp_path / "x.pid"
        write_pid_file(pid_file, other.pid)
        assert started_process(pid_file, "time.sleep(120)") == other.pid
        assert started_process(pid_file, "kafka.Kafka") is None
        pid_file.write_text(f"{other.pid} 1\n")  # same pid, another start time: a reused pid
        assert started_process(pid_file, "time.sleep(120)") is None
    finally:
        other.kill()
        other.wait()


def test_stop_scripts_leave_a_stale_pids_process_alone(tmp_path):
    other = _bystander()
    try:
        kafka_state, cluster_state = tmp_path / "kafka", tmp_path / "cluster"
        kafka_state.mkdir()
        cluster_state.mkdir()
        write_pid_file(kafka_state / "broker.pid", other.pid)
        write_pid_file(cluster_state / "master.pid", other.pid)
        for script, state in (("kafka_broker.py", kafka_state), ("standalone_cluster.py", cluster_state)):
            result = subprocess.run([sys.executable, str(REPO / "scripts" / script), "stop", "--state-dir", str(state)],
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            assert other.poll() is None, f"{script} signalled a process it did not start"
            assert "stale" in result.stdout
        assert not (kafka_state / "broker.pid").exists() and not (cluster_state / "master.pid").exists()
    finally:
        other.kill()
        other.wait()
