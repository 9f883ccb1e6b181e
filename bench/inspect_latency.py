#!/usr/bin/env python
"""How long a user waits to look at the pipeline: `lakehouse status` read directly (delta-rs and
DuckDB) against the same command through Spark (the peer: what `status` was before), and the
operations page's data endpoint (`lakehouse ui`'s /api/overview), on the demo's data.

    .venv/bin/python bench/inspect_latency.py [--data-dir DIR] [--repeats 3]

Without --data-dir, `lakehouse demo --run-seconds 0` first makes the data in a temporary
directory (a few minutes). Each figure is the wall time of a whole command as a user starts it
(a fresh process: imports, and for Spark its JVM), best and median of --repeats; the page's
refresh is a request to a running server (its first read, which loads MLflow's client, is timed
apart). Prints one JSON line per figure. Targets (issue 17): status < 3 s, a refresh < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAKEHOUSE = str(Path(sys.executable).parent / "lakehouse")


def emit(figure: str, value, **extra) -> None:
    print(json.dumps({"figure": figure, "value": value, **extra}), flush=True)


def timed(command: list[str]) -> float:
    began = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.monotonic() - began


def summary(times: list[float]) -> dict:
    return {"best_s": round(min(times), 3), "median_s": round(statistics.median(times), 3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_refresh(data_dir: Path, repeats: int) -> tuple[float, list[float]]:
    """(the first read, then each refresh) of /api/overview on a `lakehouse ui` server."""
    port = free_port()
    server = subprocess.Popen([LAKEHOUSE, "--data-dir", str(data_dir), "ui", "--port", str(port)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        began = time.monotonic()
        while True:  # the server reads the pipeline once before it listens: that is its first read
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_dash-layout", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() - began > 120:
                    raise SystemExit(f"lakehouse ui did not start:\n{server.stdout.read()}") from None
                time.sleep(0.2)
        first = time.monotonic() - began
        refreshes = []
        for _ in range(repeats):
            began = time.monotonic()
            page = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=60).read())
            refreshes.append(time.monotonic() - began)
            assert page["graph"]["nodes"], "the page read no node"
        return first, refreshes
    finally:
        server.terminate()
        server.wait(timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="a demo's data directory (default: make one)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    emit("machine", platform.platform(), cpus=os.cpu_count(), python=platform.python_version(),
         date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    made = None
    data_dir = args.data_dir
    if data_dir is None:
        made = Path(tempfile.mkdtemp(prefix="inspect-latency-"))
        data_dir = made / "data"
        print(f"making the demo's data in {data_dir} (lakehouse demo --run-seconds 0) ...", file=sys.stderr, flush=True)
        timed([LAKEHOUSE, "--data-dir", str(data_dir), "demo", "--run-seconds", "0"])
    try:
        base = [LAKEHOUSE, "--data-dir", str(data_dir)]
        direct = [timed([*base, "status", "--engine", "duckdb"]) for _ in range(args.repeats)]
        spark = [timed([*base, "status", "--engine", "spark"]) for _ in range(args.repeats)]
        emit("status_direct", summary(direct)["median_s"], **summary(direct), target_s=3.0)
        emit("status_spark", summary(spark)["median_s"], **summary(spark), peer=True)
        emit("status_spark_over_direct", round(statistics.median(spark) / statistics.median(direct), 1))
        query = "SELECT count(*) FROM silver.telemetry_quarantine"
        sql_direct = [timed([*base, "sql", "--engine", "duckdb", query]) for _ in range(args.repeats)]
        sql_spark = [timed([*base, "sql", query]) for _ in range(args.repeats)]
        emit("sql_direct", summary(sql_direct)["median_s"], **summary(sql_direct))
        emit("sql_spark", summary(sql_spark)["median_s"], **summary(sql_spark), peer=True)
        first, refreshes = page_refresh(data_dir, max(args.repeats, 5))
        emit("ui_first_read_and_start", round(first, 3))
        emit("ui_refresh", summary(refreshes)["median_s"], **summary(refreshes), target_s=1.0)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
