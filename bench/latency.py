#!/usr/bin/env python
"""End-to-end latency of the always-on pipeline at fixed event rates, and the separate-jobs peer.

    .venv/bin/python bench/latency.py [--rates 500,2000,5000] [--seconds 180] [--warmup 45]
                                      [--trigger 2s] [--peer-rate 2000] [--env dev]

For each rate, in a fresh data directory: `lakehouse generate --rate R --clock live` lands a file
a second (event time = the wall clock as each reading is made) while `lakehouse run --trigger
2s` runs every flow in one application. After a warm-up, for ``--seconds``:

- every 5 s the backlog is sampled: landing files not yet taken in by bronze, and the Delta
  versions of bronze that silver has not read (from the checkpoints, as `lakehouse status` does);
- afterwards, from the tables themselves, per row committed in the measured window: event ->
  bronze (the bronze commit's timestamp minus the event time read from the raw line), event ->
  silver (silver's change feed ``_commit_timestamp`` minus event_time), window close -> gold
  (the gold.telemetry_minute commit minus the minute's end). p50 / p95 / p99 of each.

The rate is "sustainable" when neither backlog grows over the window (least-squares slope of
the bronze file backlog below 0.05 files/s and of the silver version backlog below 0.05
versions/s). The peer, in the same invocation at ``--peer-rate``: the same flows as three
separate processes (`ingest --trigger`, `refine --trigger`, `gold --table telemetry_minute
--trigger`), as before `lakehouse run` existed; its latencies and the summed resident memory of
its JVMs against the one application's. One JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lakehouse.checkpoints import logged_batches, planned_source_offsets  # noqa: E402
from lakehouse.config import load_config  # noqa: E402
from lakehouse.pipeline import Pipeline  # noqa: E402
from lakehouse.processes import session_processes  # noqa: E402
from lakehouse.status import file_backlog  # noqa: E402
from lakehouse.tables import resolve_table  # noqa: E402

PYTHON = sys.executable


def emit(figure: str, value, **extra) -> None:
    print(json.dumps({"figure": figure, "value": value, **extra}), flush=True)


def lakehouse(env: str, data: Path, *args: str, log: Path) -> subprocess.Popen:
    cmd = [PYTHON, "-m", "lakehouse.cli", "--env", env, "--data-dir", str(data), *args]
    environment = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}  # the files feed only
    return subprocess.Popen(cmd, cwd=REPO, env=environment, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 120) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def session_rss_mib(session: int) -> float:
    """Resident memory of the java processes of a process session."""
    total = 0
    for pid in session_processes(session, "java"):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def silver_backlog(config) -> int:
    """Versions of bronze.telemetry that silver's query has not planned yet (its newest offsets
    entry: the first source is bronze.telemetry; index -1 means nothing of that version yet)."""
    bronze_log = Path(resolve_table(config, "bronze.telemetry").path, "_delta_log")
    newest = max((int(p.stem) for p in bronze_log.glob("*.json")), default=-1)
    checkpoint = config.checkpoint_path("silver_telemetry")
    planned = logged_batches(checkpoint, "offsets")
    if not planned:
        return newest + 1
    offset = json.loads(planned_source_offsets(checkpoint, planned[-1])[0])
    done = offset["reservoirVersion"] - (1 if offset.get("index", -1) == -1 else 0)
    return max(0, newest - done)


def slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def measure(mode: str, rate: int, args, work: Path) -> dict:
    data = work / f"{mode}-{rate}"
    config = load_config(args.env, conf_dir=REPO / "conf", data_dir=data)
    log = data / "bench.log"
    data.mkdir(parents=True)
    total = args.warmup + args.seconds
    # No faults: a reading stamped 3 hours late would count as 3 hours of latency.
    feed = lakehouse(args.env, data, "generate", "--rate", str(rate), "--duration", str(total + 5), "--clock", "live",
                     "--fault-rate", "0", "--run-id", "bench", log=log)
    started = time.monotonic()
    if mode == "run":
        jobs = [lakehouse(args.env, data, "run", "--trigger", args.trigger, "--only", "bronze.telemetry",
                          "silver.telemetry", "gold.telemetry_minute", log=log)]
    else:  # the peer: one process (and JVM) per flow
        jobs = [lakehouse(args.env, data, "ingest", "--source", "telemetry", "--trigger", args.trigger, log=log),
                lakehouse(args.env, data, "refine", "--entity", "telemetry", "--trigger", args.trigger, log=log)]
        silver_log = Path(resolve_table(config, "silver.telemetry").path, "_delta_log")
        deadline = time.monotonic() + 180
        while not silver_log.is_dir() and time.monotonic() < deadline:  # gold starts once silver's table exists
            time.sleep(1)
        jobs.append(lakehouse(args.env, data, "gold", "--table", "telemetry_minute", "--trigger", args.trigger,
                              log=log))
    time.sleep(max(0.0, started + args.warmup - time.monotonic()))
    window_start = datetime.now(timezone.utc)
    bronze_flow = Pipeline(config).bronze("telemetry")
    samples, rss = [], []
    while time.monotonic() - started < total:
        at = time.monotonic() - started
        samples.append((at, file_backlog(config, bronze_flow), silver_backlog(config)))
        rss.append(sum(session_rss_mib(job.pid) for job in jobs))
        time.sleep(5)
    window_end = datetime.now(timezone.utc)
    stop(feed)
    for job in reversed(jobs):
        stop(job)
    return {"config": config, "window": (window_start, window_end), "samples": samples,
            "rss_mib": max(rss, default=0)}


def commit_times(table: Path) -> dict[str, float]:
    """Data file name -> the epoch seconds of the commit that added it: the commit file's time, as
    Delta's history and change feed (``_commit_timestamp``) and ops.freshness take it."""
    added = {}
    for entry in sorted((table / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in entry.read_text().splitlines() if line.strip()]
        added.update({Path(a["add"]["path"]).name: entry.stat().st_mtime for a in actions if "add" in a})
    return added


def latencies(spark, config, window: tuple[datetime, datetime]) -> dict[str, dict]:
    from pyspark.sql import functions as F

    low, high = (w.timestamp() for w in window)
    figures = {}

    def quantiles(df, name):
        q = df.where((F.col("at") >= low) & (F.col("at") <= high)).agg(
            F.count(F.lit(1)).alias("rows"),
            F.percentile("latency", F.array(F.lit(0.5), F.lit(0.95), F.lit(0.99))).alias("q")).first()
        figures[name] = {"rows": q["rows"], **({"p50": round(q["q"][0], 2), "p95": round(q["q"][1], 2),
                                                 "p99": round(q["q"][2], 2)} if q["q"] else {})}

    def by_commit(table: Path):
        stamps = commit_times(table) or {"": 0.0}
        lookup = spark.createDataFrame(list(stamps.items()), "file string, at double")
        rows = spark.read.format("delta").load(str(table)).withColumn(
            "file", F.element_at(F.split(F.col("_metadata.file_path"), "/"), -1))
        return rows.join(F.broadcast(lookup), "file")

    def path(name: str) -> Path:
        return Path(resolve_table(config, name).path)

    if path("bronze.telemetry").joinpath("_delta_log").is_dir():
        bronze = by_commit(path("bronze.telemetry"))
        event = F.get_json_object(F.col("value").cast("string"), "$.event_time").try_cast("timestamp")
        quantiles(bronze.select("at", (F.col("at") - F.unix_micros(event) / 1e6).alias("latency")), "event_to_bronze")
    if path("silver.telemetry").joinpath("_delta_log").is_dir():
        silver = (spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", 0)
                  .load(str(path("silver.telemetry"))).where("_change_type = 'insert'"))
        at = F.unix_micros("_commit_timestamp") / 1e6
        quantiles(silver.select(at.alias("at"), (at - F.unix_micros("event_time") / 1e6).alias("latency")),
                  "event_to_silver")
    if path("gold.telemetry_minute").joinpath("_delta_log").is_dir():
        gold = by_commit(path("gold.telemetry_minute"))
        end = F.unix_micros(F.col("minute") + F.expr("INTERVAL 1 MINUTE")) / 1e6
        quantiles(gold.select("at", (F.col("at") - end).alias("latency")), "window_close_to_gold")
    return figures


def report(label: str, rate: int, result: dict, spark) -> bool:
    figures = latencies(spark, result["config"], result["window"])
    for name, values in figures.items():
        emit(f"{label}_{name}_seconds", values, rate=rate)
    samples = result["samples"]
    files = slope([(t, b) for t, b, _ in samples])
    versions = slope([(t, v) for t, _, v in samples])
    sustainable = files < 0.05 and versions < 0.05
    emit(f"{label}_backlog", {"bronze_files_per_s": round(files, 4), "silver_versions_per_s": round(versions, 4),
                              "bronze_files_last": samples[-1][1] if samples else None,
                              "silver_versions_last": samples[-1][2] if samples else None,
                              "sustainable": sustainable}, rate=rate)
    emit(f"{label}_jvm_rss_mib_peak", round(result["rss_mib"]), rate=rate)
    return sustainable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="500,2000,5000", help="events/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=180.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=45.0, help="seconds before measuring")
    parser.add_argument("--trigger", default="2s")
    parser.add_argument("--peer-rate", type=int, default=2000, help="rate of the separate-jobs peer (0: skip)")
    parser.add_argument("--env", default="dev", help="configuration overlay (dev: local[*], long-running JVM settings)")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r]
    emit("environment", platform.node(), cpus=os.cpu_count(), python=platform.python_version(),
         at=datetime.now(timezone.utc).isoformat(timespec="seconds"), trigger=args.trigger)
    work = Path(tempfile.mkdtemp(prefix="latency-bench-"))
    spark = None
    try:
        sustained = []
        for label, rate in [("run", r) for r in rates] + ([("separate_jobs", args.peer_rate)] if args.peer_rate else []):
            result = measure("run" if label == "run" else "jobs", rate, args, work)
            if spark is None:  # started after the first measurement, idle during the next ones
                from lakehouse.session import build_session

                spark = build_session(load_config(args.env, conf_dir=REPO / "conf", data_dir=work / "analysis"))
            if report(label, rate, result, spark) and label == "run":
                sustained.append(rate)
        emit("highest_sustainable_rate", max(sustained, default=None), measured=rates)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
