#!/usr/bin/env python
"""Bronze ingest throughput against the plain stream a user would write (readStream text ->
writeStream Delta, same rate limit), at the default rate limit and in one micro-batch, with each
one's fixed cost per micro-batch; and the driver's peak memory when the backlog is 10x larger
(rate limits must bound it).

    .venv/bin/python bench/bronze_throughput.py [--records 1000000] [--files 100] [--repeats 2]

Prints one JSON line per figure. Targets (issue 16): ingest / peer >= 1.0, at the default rate
limit and in one micro-batch; fixed cost per micro-batch, (t(k batches) - t(1 batch)) / (k - 1),
<= 0.5 s. Issue 2's ingest / (text -> Parquet copy) and its memory target (peak live heap at
10x backlog <= 1.2x the 1x figure) are still printed, with the Python driver's peak resident
memory beside it (on one machine it reads the batches' files itself: lakehouse/landing_arrow.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lakehouse.config import load_config  # noqa: E402
from lakehouse.generator import TelemetryGenerator  # noqa: E402
from lakehouse.generator_runs import generate_batch  # noqa: E402
from lakehouse.runner import run_flow  # noqa: E402
from lakehouse.session import build_session  # noqa: E402


def emit(figure: str, value, **extra) -> None:
    print(json.dumps({"figure": figure, "value": value, **extra}), flush=True)


def land(config, records: int, files: int) -> int:
    g = config.generator
    generator = TelemetryGenerator.from_config(g, fault_rate=0.02)
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True, exist_ok=True)
    return generate_batch(generator, landing, "telemetry", "bench", g.seed, records, files).total_lines


EXTRA_OVERRIDES: list[str] = []


def config_for(data_dir: Path, *overrides: str):
    return load_config("dev", conf_dir=REPO / "conf", data_dir=data_dir, overrides=EXTRA_OVERRIDES + list(overrides))


def link_landing(source: Path, target: Path) -> None:
    """The same landing files under another data dir, as hard links (no copy)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            os.link(path, target / path.name)


def measure_job_memory(cmd: list[str], env: dict, commits: Path) -> dict:
    """Run ``cmd``; return its JVM's peak resident memory and its peak live heap between batches.

    Resident memory (VmHWM) mostly shows how far the JVM let its heap grow before collecting,
    which grows with run time. The live heap is what the job keeps from one micro-batch to the
    next: right after each batch commits (a new file in the checkpoint's ``commits/``), the JDK's
    ``jcmd <pid> GC.class_histogram`` runs a full collection and totals the objects still alive.
    A backlog that the rate limits do not bound shows up there. Its peak over eleven samples
    exceeds its peak over one or two by the samples' noise alone (a few MiB: 60-66 MiB through
    100 batches of one run, bench/RESULTS.md), so the median between batches is given beside it.
    """
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_rss_kib, peak_python_kib, live_bytes, seen = 0, 0, [], set()
    while proc.poll() is None:
        java = [pid for pid in _descendants(proc.pid) if _comm(pid) == "java"]
        for pid in java:
            peak_rss_kib = max(peak_rss_kib, _peak_rss_kib(pid))
        # The Python driver reads a batch's files itself on one machine (lakehouse/landing_arrow.py).
        peak_python_kib = max(peak_python_kib, _peak_rss_kib(proc.pid))
        done = {p.name for p in commits.iterdir() if p.name.isdigit()} if commits.is_dir() else set()
        if java and done - seen:
            seen |= done
            live_bytes.append(_live_bytes(java[0]))
        time.sleep(0.1)
    if proc.returncode != 0:
        raise SystemExit(f"ingest job failed ({proc.returncode}): {' '.join(cmd)}")
    return {"rss_mib": peak_rss_kib / 1024, "python_rss_mib": peak_python_kib / 1024,
            "live_heap_mib": max(live_bytes, default=0) / 2**20,
            "live_heap_median_mib": statistics.median(live_bytes) / 2**20 if live_bytes else 0,
            "batches_sampled": len(seen), "seconds": time.monotonic() - started}


def _peak_rss_kib(pid: int) -> int:
    """A process's peak resident memory so far (VmHWM), KiB; 0 once it has gone."""
    line = next((line for line in _read(f"/proc/{pid}/status").splitlines() if line.startswith("VmHWM:")), None)
    return int(line.split()[1]) if line else 0


def _live_bytes(pid: int) -> int:
    try:
        histogram = subprocess.run(["jcmd", str(pid), "GC.class_histogram"], capture_output=True,
                                   text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r"^Total\s+\d+\s+(\d+)", histogram, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="ignore")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    return _read(f"/proc/{pid}/comm").strip()


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int(Path(task, "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            children.append(int(task.name))
    return children + [d for c in children for d in _descendants(c)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best counts")
    parser.add_argument("--work-dir", default=str(REPO / "bench" / "out"))
    parser.add_argument("--only", choices=["throughput", "memory"], help="run one half of the benchmark")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="configuration override for every run (repeatable)")
    args = parser.parse_args()
    global EXTRA_OVERRIDES
    EXTRA_OVERRIDES = list(args.overrides)

    work = Path(args.work_dir) / datetime.now(timezone.utc).strftime("bronze-%Y%m%dT%H%M%S")
    emit("machine", platform.node(), cpus=os.cpu_count(), python=platform.python_version())

    # -- the landing set, generated once ----------------------------------------------------
    base = config_for(work / "landing-set")
    t0 = time.monotonic()
    lines = land(base, args.records, args.files)
    emit("generated_lines", lines, files=args.files, seconds=round(time.monotonic() - t0, 1))
    landing = Path(base.landing_path("telemetry"))

    if args.only != "memory":
        measure_throughput(base, landing, lines, work, args.repeats, args.files)
    if args.only != "throughput":
        measure_memory(landing, work, args.records, args.files)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def plain_stream(spark, landing: Path, target: Path, limits: dict[str, int]) -> int:
    """The peer a user would write: readStream text -> writeStream Delta, availableNow, with
    bronze's rate limit (``limits``: maxFilesPerTrigger or maxBytesPerTrigger; empty: one
    micro-batch). Returns its micro-batches."""
    reader = spark.readStream.format("text").options(**{k: str(v) for k, v in limits.items()})
    query = (reader.load(str(landing)).writeStream.format("delta")
             .option("checkpointLocation", str(target / "_checkpoint")).trigger(availableNow=True)
             .start(str(target / "table")))
    query.awaitTermination()
    return len([p for p in (target / "_checkpoint" / "commits").iterdir() if p.name.isdigit()])


def measure_throughput(base, landing: Path, lines: int, work: Path, repeats: int, files: int) -> None:
    """On the same files, in one session, alternating, best of ``repeats``: bronze ingest at the
    default rate limit, in one micro-batch and in about ten (a tenth of the files per trigger, for
    the fixed cost per batch); the plain stream text -> Delta (the peer) likewise; and a batch
    text -> Parquet copy (the earlier peer)."""
    spark = build_session(base)
    warm = config_for(work / "warm-up")
    link_landing(landing, Path(warm.landing_path("telemetry")))
    spark.read.text(str(landing)).limit(1000).write.mode("overwrite").parquet(str(work / "warm-up" / "copy"))
    source = base.source("telemetry")
    limits = {key: value for key, value in (("maxFilesPerTrigger", source.max_files_per_trigger),
                                            ("maxBytesPerTrigger", source.max_bytes_per_trigger)) if value}

    tenth = max(1, files // 10)
    best: dict[str, float] = {}
    batches: dict[str, int] = {}

    def timed(name: str, action) -> None:
        started = time.monotonic()
        batches[name] = action()
        best[name] = min(best.get(name, float("inf")), time.monotonic() - started)

    def bronze(run_dir: Path, *overrides: str) -> int:
        run = config_for(run_dir, *overrides)
        link_landing(landing, Path(run.landing_path("telemetry")))
        if run_flow(spark, run, "bronze.telemetry", {"availableNow": True}) != 0:
            raise SystemExit("bronze ingest failed")
        commits = Path(run.checkpoint_path("bronze_telemetry"), "commits")
        return len([p for p in commits.iterdir() if p.name.isdigit()])

    for attempt in range(repeats):  # each action runs at once: the loop variable is bound in time
        runs = work / f"attempt-{attempt}"
        timed("copy", lambda: spark.read.text(str(landing)).write.parquet(str(runs / "copy")) or 1)  # noqa: B023
        timed("peer", lambda: plain_stream(spark, landing, runs / "peer", limits))  # noqa: B023
        timed("ingest", lambda: bronze(runs / "ingest"))  # noqa: B023
        timed("peer_one_batch", lambda: plain_stream(spark, landing, runs / "peer1", {}))  # noqa: B023
        timed("ingest_one_batch", lambda: bronze(runs / "ingest1", "sources.telemetry.max_files_per_trigger=null",  # noqa: B023
                                                 "sources.telemetry.max_bytes_per_trigger=null"))
        timed("peer_tenth", lambda: plain_stream(spark, landing, runs / "peer10", {"maxFilesPerTrigger": tenth}))  # noqa: B023
        timed("ingest_tenth", lambda: bronze(runs / "ingest10", f"sources.telemetry.max_files_per_trigger={tenth}"))  # noqa: B023
        shutil.rmtree(runs, ignore_errors=True)

    for name, seconds in best.items():
        emit(f"{name}_records_per_s", round(lines / seconds), seconds=round(seconds, 2), batches=batches[name], records=lines)
    emit("ingest_vs_peer_ratio", round(best["peer"] / best["ingest"], 3), rate_limit=limits, target=">= 1.0")
    emit("ingest_vs_peer_ratio_one_batch", round(best["peer_one_batch"] / best["ingest_one_batch"], 3), target=">= 1.0")
    emit("ingest_vs_copy_ratio", round(best["copy"] / best["ingest"], 3), note="the issue-2 figure (text -> Parquet)")
    for who, many, one in (("ingest", "ingest_tenth", "ingest_one_batch"), ("peer", "peer_tenth", "peer_one_batch")):
        if batches[many] > batches[one]:
            fixed = (best[many] - best[one]) / (batches[many] - batches[one])
            emit("fixed_cost_per_batch_s", round(fixed, 2), who=who, batches=(batches[many], batches[one]),
                 target="<= 0.5")
    spark.stop()


def measure_memory(landing: Path, work: Path, records: int, files: int) -> None:
    """Driver memory with a backlog of 1x and 10x, the same rate limit (the 1x backlog's bytes per
    micro-batch, so 10x takes about ten), each in its own job."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    per_trigger = max(1, sum(p.stat().st_size for p in landing.glob("*.jsonl")) // 10)
    peaks = {}
    for factor in (1, 10):
        run = config_for(work / f"memory-{factor}x")
        target = Path(run.landing_path("telemetry"))
        if factor == 10:
            link_landing(landing, target)
        else:
            land(run, records // 10, max(1, files // 10))
        cmd = [sys.executable, "-m", "lakehouse.cli", "--data-dir", str(run.storage.data_dir),
               *[arg for item in EXTRA_OVERRIDES for arg in ("--set", item)],
               "--set", "sources.telemetry.max_files_per_trigger=null",
               "--set", f"sources.telemetry.max_bytes_per_trigger={per_trigger}",
               "ingest", "--source", "telemetry", "--once"]
        peaks[factor] = measure_job_memory(cmd, env, Path(run.checkpoint_path("bronze_telemetry"), "commits"))
        backlog = len(list(target.glob("*.jsonl")))
        for key in ("rss_mib", "python_rss_mib", "live_heap_mib", "live_heap_median_mib"):
            emit(f"driver_{'' if 'median' in key else 'peak_'}{key}_{factor}x", round(peaks[factor][key]), backlog_files=backlog,
                 max_bytes_per_trigger=per_trigger, batches_sampled=peaks[factor]["batches_sampled"],
                 seconds=round(peaks[factor]["seconds"], 1))
    for key in ("rss_mib", "python_rss_mib", "live_heap_mib", "live_heap_median_mib"):
        emit(f"driver_{key[:-4]}_ratio_10x_vs_1x", round(peaks[10][key] / peaks[1][key], 3), target="<= 1.2")

if __name__ == "__main__":
    sys.exit(main())
