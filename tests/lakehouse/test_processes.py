"""The service scripts signal only the processes they started: a stale pid file is not obeyed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lakehouse.processes import started_process, write_pid_file

REPO = Path(__file__).resolve().parents[2]


def _bystander() -> subprocess.Popen:
    """A process that is not ours to stop (as when a stale pid was given to another program),
    returned once it runs its own command line: until its exec, a forked child shows its parent's
    (pytest's), and started_process rightly takes it for another program."""
    other = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(120)"],
                             stdout=subprocess.PIPE, start_new_session=True)
    other.stdout.readline()
    other.stdout.close()  # it prints nothing more
    return other


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


def test_still_running_is_false_for_a_reused_pid_and_for_an_exited_process():
    from lakehouse.processes import start_time, still_running

    other = _bystander()
    try:
        started = start_time(other.pid)
        assert still_running(other.pid, started)
        if started is not None:  # Linux: the start time tells a reused pid apart
            assert not still_running(other.pid, str(int(started) + 1))
        other.kill()
        deadline = time.monotonic() + 30
        while still_running(other.pid, started) and time.monotonic() < deadline:
            time.sleep(0.05)
        # exited, not yet reaped (a zombie, as a stopped daemon is until init reaps it): not running
        assert not still_running(other.pid, started)
    finally:
        other.kill()
        other.wait()
    assert not still_running(other.pid, started)


def test_a_stop_sends_no_sigkill_once_the_pid_is_another_process(tmp_path, monkeypatch):
    """stop() SIGTERMs the broker, then SIGKILLs it if it still runs after 30 s. Here the process
    behind the pid (which ignores SIGTERM) did not start when the broker signalled did (as when
    the broker exited and its pid went to another process): it is left alone, at once."""
    from lakehouse.devtools import kafka_broker

    state = tmp_path / "kafka"
    state.mkdir()
    expect = f"kafka.Kafka {(state / 'server.properties').resolve()}"
    script = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(120)"
    other = subprocess.Popen([sys.executable, "-c", script, *expect.split()], stdout=subprocess.PIPE,
                             start_new_session=True)
    try:
        other.stdout.readline()  # SIGTERM ignored from here on
        write_pid_file(state / "broker.pid", other.pid)
        monkeypatch.setattr(kafka_broker, "start_time", lambda pid: "1")  # the signalled broker's
        begun = time.monotonic()
        kafka_broker.stop(state, quiet=True)
        assert time.monotonic() - begun < 10
        assert other.poll() is None, "stop() SIGKILLed a process that was not the broker it signalled"
        assert not (state / "broker.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_a_job_already_reaped_is_not_signalled(monkeypatch):
    """Once Popen has reaped a job, its pid (and group id) may be another process's: no signal."""
    from tests import processes

    job = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    job.wait()
    sent = []
    monkeypatch.setattr(processes.os, "killpg", lambda pid, sig: sent.append((pid, sig)))
    processes.signal_job(job, signal.SIGTERM)
    processes.kill_9(job)
    assert sent == []


def test_horovod_leaves_the_drivers_signal_handlers_as_they_were():
    """Horovod's Gloo launcher replaces SIGINT's and SIGTERM's handlers and never puts them back;
    the training driver does."""
    gloo_run = pytest.importorskip("horovod.runner.gloo_run")
    from ml.run import _signal_handlers_kept

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with _signal_handlers_kept():
        gloo_run.register_shutdown_event()  # what horovod.spark.run calls in the driver
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {sig: signal.getsignal(sig) for sig in before} == before
