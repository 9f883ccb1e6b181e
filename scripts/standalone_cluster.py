#!/usr/bin/env python
"""A real Spark standalone cluster on 127.0.0.1: one master and two workers, from the pyspark install.

    .venv/bin/python scripts/standalone_cluster.py start [--state-dir DIR] [--workers 2] [--cores 1] [--memory 2g]
    .venv/bin/python scripts/standalone_cluster.py status [--state-dir DIR]
    .venv/bin/python scripts/standalone_cluster.py stop [--state-dir DIR]

`start` launches `spark-class org.apache.spark.deploy.master.Master` and N
`...deploy.worker.Worker` processes on free ports, waits until the master's JSON page lists every
worker ALIVE, and prints the master URL (also written to <state-dir>/master_url). `stop` ends them
all (SIGTERM, then SIGKILL). Logs go to <state-dir>/logs. Then, for example:

    .venv/bin/spark-submit --master "$(cat .cluster/master_url)" --packages io.delta:delta-spark_4.1_2.13:4.4.0 \\
        spark_jobs/bronze_ingest.py --source telemetry --once
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyspark

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lakehouse.processes import start_time, started_process, still_running, write_pid_file  # noqa: E402

SPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(state: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(state / "logs"),
        "SPARK_WORKER_DIR": str(state / "work"),
        "PYSPARK_PYTHON": sys.executable,  # executors run Python tasks in this environment
    })
    return env


def _launch(state: Path, name: str, args: list[str]) -> int:
    log = open(state / "logs" / f"{name}.log", "ab")
    process = subprocess.Popen([str(SPARK_CLASS), *args], env=_env(state), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # its own process group, stopped as one
    write_pid_file(state / f"{name}.pid", process.pid)
    return process.pid


def _role_class(pid_file: Path) -> str:
    """What the command line of the process a pid file names contains: its Spark daemon class."""
    return ("org.apache.spark.deploy.master.Master" if pid_file.stem == "master"
            else "org.apache.spark.deploy.worker.Worker")


def master_json(state: Path) -> dict | None:
    url_file = state / "master_webui"
    if not url_file.is_file():
        return None
    try:
        with urllib.request.urlopen(f"{url_file.read_text().strip()}/json", timeout=3) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def start(state: Path, workers: int, cores: int, memory: str, timeout: float = 120.0) -> str:
    if any(started_process(path, _role_class(path)) for path in state.glob("*.pid")):
        raise SystemExit(f"a cluster started from {state} still runs: stop it first")
    for stale in state.glob("*.pid"):
        stale.unlink()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / "work").mkdir(exist_ok=True)
    port, webui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    _launch(state, "master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                              "--webui-port", str(webui)])
    (state / "master_webui").write_text(f"http://127.0.0.1:{webui}")
    for i in range(workers):
        _launch(state, f"worker{i + 1}", ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                          "--cores", str(cores), "--memory", memory,
                                          "--webui-port", str(free_port()), master_url])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = master_json(state)
        alive = [w for w in (status or {}).get("workers", []) if w.get("state") == "ALIVE"]
        if len(alive) >= workers:
            (state / "master_url").write_text(master_url)
            print(f"master {master_url} (web UI {(state / 'master_webui').read_text()}), "
                  f"{len(alive)} workers alive, {cores} core(s) and {memory} each", flush=True)
            return master_url
        time.sleep(1)
    stop(state)
    raise SystemExit(f"the cluster did not come up within {timeout:.0f} s: see {state / 'logs'}")


def stop(state: Path) -> None:
    pids = {}
    for path in state.glob("*.pid"):
        pid = started_process(path, _role_class(path))
        if pid is None:  # stale: that process is gone, and the pid may be someone else's now
            print(f"{path.name}: no such process of this cluster (stale pid file removed)", flush=True)
            path.unlink()
        else:
            pids[path] = pid
    # Each daemon exits into init's hands, so its pid may pass to another process while we wait:
    # it is only waited for, and SIGKILLed, while it is still the process that started then.
    started = {path: start_time(pid) for path, pid in pids.items()}
    for pid in pids.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    for path, pid in pids.items():
        while still_running(pid, started[path]) and time.monotonic() < deadline:
            time.sleep(0.2)
        if still_running(pid, started[path]):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        path.unlink(missing_ok=True)
    (state / "master_url").unlink(missing_ok=True)
    if pids:
        print(f"stopped {len(pids)} process(es)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", default=".cluster", help="pids, logs and the master URL (default: .cluster)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores per worker")
    parser.add_argument("--memory", default="2g", help="memory per worker")
    args = parser.parse_args()
    state = Path(args.state_dir).absolute()
    if args.action == "start":
        start(state, args.workers, args.cores, args.memory)
    elif args.action == "stop":
        stop(state)
    else:
        status = master_json(state)
        if status is None:
            print("no cluster is running from", state)
            return 1
        for worker in status.get("workers", []):
            print(f"{worker['id']}: {worker['state']}, {worker['cores']} cores, {worker['coresused']} used")
    return 0


if __name__ == "__main__":
    sys.exit(main())
