#!/usr/bin/env python
"""A long run of the always-on pipeline, with table maintenance on and off: does it stay healthy?

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 1000] [--interval '5 minutes'] [--modes on,off]
                                   [--retention '10 minutes'] [--cleanup-every '10 minutes']
                                   [--trigger 2s] [--env dev] [--keep]

For each mode, in a fresh data directory: `lakehouse generate --rate R --clock live` lands a file
a second while `lakehouse run --trigger 2s` runs bronze, silver and the streaming gold table,
with `maintenance.interval` set to ``--interval`` (on) or null (off), for ``--minutes``. With
maintenance on, the deleted-file and log retention are ``--retention`` (10 minutes), so that
VACUUM has something to do within the soak, and the clean-up runs every ``--cleanup-every``
(10 minutes; ops.retention stays: the report reads the first
minutes' batch times from ops.stream_progress). Every
minute it samples the data files of each table's current version (from the Delta log, as
DESCRIBE DETAIL counts them) and the bytes on disk. At the start (after a 2-minute warm-up) and
at the end, the driver JVM's live heap: `jcmd <pid> GC.class_histogram` (which collects first)
summed. Afterwards, from ops.stream_progress, each flow's mean batch duration in the first and
the last 5 minutes, and their ratio (target <= 1.2); the heap's ratio (target <= 1.2); disk per
million events generated. One JSON line per figure; the two modes side by side show what
maintenance buys.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from latency import emit, lakehouse, stop  # noqa: E402

from lakehouse.config import load_config  # noqa: E402
from lakehouse.processes import session_processes  # noqa: E402

TABLES = ("bronze/telemetry", "silver/telemetry", "silver/telemetry_quarantine", "gold/telemetry_minute",
          "ops/stream_progress", "ops/freshness", "ops/ingested_files", "ops/silver_batches", "ops/quality_results")
WARMUP_S = 120.0
EDGE_S = 300.0  # the first and the last 5 minutes


def live_files(table: Path) -> int | None:
    """Data files of the table's current version, replayed from its JSON commits (and checkpoint)."""
    log = table / "_delta_log"
    if not log.is_dir():
        return None
    live: set[str] = set()
    checkpoints = sorted(log.glob("*.checkpoint.parquet"))
    start = -1
    if checkpoints:
        import pyarrow.parquet as pq

        newest = checkpoints[-1]
        start = int(newest.name.split(".")[0])
        rows = pq.read_table(newest, columns=["add"]).column("add").to_pylist()
        live = {row["path"] for row in rows if row}
    for commit in sorted(log.glob("*.json")):
        if int(commit.stem) <= start:
            continue
        for line in commit.read_text().splitlines():
            action = json.loads(line) if line.strip() else {}
            if "add" in action:
                live.add(action["add"]["path"])
            elif "remove" in action:
                live.discard(action["remove"]["path"])
    return len(live)


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def live_heap_mib(session: int) -> float | None:
    """The driver JVM's live heap: a class histogram after a full collection, summed."""
    for pid in session_processes(session, "java"):
        out = subprocess.run(["jcmd", str(pid), "GC.class_histogram"], capture_output=True, text=True, timeout=120)
        total = re.search(r"^Total\s+\d+\s+(\d+)", out.stdout, re.M)
        if total:
            return round(int(total.group(1)) / 1048576, 1)
    return None


def soak(mode: str, args, work: Path) -> dict:
    data = work / f"maintenance-{mode}"
    data.mkdir(parents=True)
    log = data / "bench.log"
    seconds = args.minutes * 60
    feed = lakehouse(args.env, data, "generate", "--rate", str(args.rate), "--duration", str(seconds + 30),
                     "--clock", "live", "--fault-rate", "0.02", "--run-id", "soak", log=log)
    if mode == "on":
        settings = [f"maintenance.interval={args.interval}", f"maintenance.deleted_file_retention={args.retention}",
                    f"maintenance.log_retention={args.retention}", f"maintenance.cleanup_every={args.cleanup_every}"]
    else:
        settings = ["maintenance.interval=null"]
    run = lakehouse(args.env, data, *(f for setting in settings for f in ("--set", setting)), "run",
                    "--trigger", args.trigger, "--only", "bronze.telemetry", "silver.telemetry",
                    "gold.telemetry_minute", log=log)
    started = time.monotonic()
    began = datetime.now(timezone.utc)
    samples, heap_start = [], None

    def sample() -> None:
        files = {name: live_files(data / "tables" / name) for name in TABLES}
        samples.append({"minute": round((time.monotonic() - started) / 60, 1), "files": files,
                        "disk_mib": round(disk_bytes(data / "tables") / 1048576, 1)})
        if run.poll() is not None or feed.poll() is not None:
            raise SystemExit(f"soak ({mode}): a process ended early; see {log}")
        print(f"# {mode} minute {samples[-1]['minute']}: {samples[-1]['disk_mib']} MiB, files {files}",
              file=sys.stderr, flush=True)

    try:
        while time.monotonic() - started < seconds:
            if heap_start is None and time.monotonic() - started >= WARMUP_S:
                heap_start = live_heap_mib(run.pid)
            sample()
            time.sleep(max(0.0, min(started + seconds, started + len(samples) * 60) - time.monotonic()))
        sample()
        ended = datetime.now(timezone.utc)  # before the heap's forced collection, outside the last window
        heap_end = live_heap_mib(run.pid)
    finally:
        stop(feed)
        stop(run)
    return {"data": data, "samples": samples, "heap": (heap_start, heap_end), "window": (began, ended)}


def report(mode: str, result: dict, spark, env: str) -> None:
    from pyspark.sql import functions as F

    from lakehouse.tables import read_table, resolve_table

    config = load_config(env, conf_dir=REPO / "conf", data_dir=result["data"])
    began, ended = result["window"]
    first = (began + timedelta(seconds=WARMUP_S), began + timedelta(seconds=WARMUP_S + EDGE_S))
    last = (ended - timedelta(seconds=EDGE_S), ended)
    progress = read_table(spark, resolve_table(config, "ops.stream_progress"))

    def mean_ms(window):
        low, high = (t.replace(tzinfo=None) for t in window)
        rows = (progress.where((F.col("batch_time") >= F.lit(low)) & (F.col("batch_time") < F.lit(high))
                               & (F.col("num_input_rows") > 0))
                .groupBy("query_name").agg(F.avg("batch_duration_ms").alias("ms"), F.count("*").alias("n")).collect())
        return {row["query_name"]: (row["ms"], row["n"]) for row in rows}

    early, late = mean_ms(first), mean_ms(last)
    for flow in sorted(set(early) | set(late)):
        a, b = early.get(flow, (None, 0)), late.get(flow, (None, 0))
        ratio = round(b[0] / a[0], 2) if a[0] and b[0] else None
        emit("batch_ms_first_last_5min", ratio, maintenance=mode, flow=flow, first_ms=round(a[0] or 0),
             last_ms=round(b[0] or 0), batches=(a[1], b[1]), target="<= 1.2")
    start, end = result["heap"]
    emit("driver_live_heap_mib", round(end / start, 2) if start and end else None, maintenance=mode, start=start,
         end=end, target="<= 1.2")
    samples = result["samples"]
    for sample in samples[:-1:max(1, len(samples) // 6)] + samples[-1:]:
        emit("files_per_table", sample["files"], maintenance=mode, minute=sample["minute"], disk_mib=sample["disk_mib"])
    events = read_table(spark, resolve_table(config, "bronze.telemetry")).count()
    disk = disk_bytes(result["data"] / "tables")
    emit("disk_mib_per_million_events", round(disk / 1048576 / (events / 1e6), 1) if events else None,
         maintenance=mode, events=events, disk_mib=round(disk / 1048576, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=1000, help="events/s")
    parser.add_argument("--interval", default="5 minutes", help="maintenance.interval when on")
    parser.add_argument("--modes", default="on,off", help="maintenance on, off, or both (comma-separated)")
    parser.add_argument("--retention", default="10 minutes",
                        help="with maintenance on: deleted-file and log retention (short, so that a "
                             "30-minute soak reaches the steady state a week's retention reaches in weeks)")
    parser.add_argument("--cleanup-every", default="10 minutes",
                        help="with maintenance on: maintenance.cleanup_every (retention and VACUUM at most this often; "
                             "10 minutes: every other pass at a 5-minute interval, where the default 1 day is one "
                             "pass in 24)")
    parser.add_argument("--trigger", default="2s")
    parser.add_argument("--env", default="dev")
    parser.add_argument("--keep", action="store_true", help="keep each mode's data directory and bench.log")
    args = parser.parse_args()
    emit("environment", platform.node(), cpus=os.cpu_count(), python=platform.python_version(),
         at=datetime.now(timezone.utc).isoformat(timespec="seconds"), minutes=args.minutes, rate=args.rate,
         interval=args.interval, retention=args.retention, cleanup_every=args.cleanup_every)
    work = Path(tempfile.mkdtemp(prefix="soak-bench-"))
    try:
        for mode in (mode for mode in args.modes.split(",") if mode):
            result = soak(mode, args, work)
            # The analysis session runs between the soaks, never beside one.
            from lakehouse.session import build_session

            spark = build_session(load_config(args.env, conf_dir=REPO / "conf", data_dir=work / "analysis"))
            report(mode, result, spark, args.env)
            spark.stop()
    except BaseException:
        print(f"# soak: failed; its data and bench.log are kept in {work}", file=sys.stderr)
        raise
    if args.keep:
        print(f"# soak: data and bench.log kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
