#!/usr/bin/env python
"""The bronze -> silver -> gold telemetry flow run two ways on the same landing files, in one run:
ours (`lakehouse run --once`) against Apache Spark Declarative Pipelines (`spark-pipelines run`).

    .venv/bin/python bench/pipeline_vs_sdp.py [--records 1000000] [--files 100] [--repeats 2]

  ours: `lakehouse --env dev --data-dir D run --once --only bronze.telemetry silver.telemetry
        gold.telemetry_minute`: bronze ingest, silver refine (rule suite, quarantine, late check,
        MERGE dedupe), streaming gold with its watermark.
  SDP:  a pipeline project (bench/sdp/) over the same files, Delta tables: a streaming table
        bronze_telemetry, a materialized view silver_telemetry (from_json with the entity's
        declared columns, lines without a key or event time dropped, the latest event time per
        key) and a materialized view gold_telemetry_minute with gold.telemetry_minute's SQL.
Each side is timed as the wall time of its whole command (JVM start included), from fresh tables,
checkpoints and metastore, with the same master (spark.master), shuffle partitions and every
other Spark setting ours uses; best of --repeats, alternating which side goes first. SDP's
Spark Connect client deps (grpcio, ...) are installed on first use into a cache directory, never
into the venv. Prints one JSON line per figure. Target: ours / SDP <= 1.0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "bench" / "sdp"
sys.path.insert(0, str(REPO))

from pyspark.sql import functions as F  # noqa: E402

from lakehouse.config import load_config  # noqa: E402
from lakehouse.fs import user_cache  # noqa: E402
from lakehouse.generator import TelemetryGenerator  # noqa: E402
from lakehouse.generator_runs import generate_batch  # noqa: E402
from lakehouse.local_fs import CLASSES as LOCAL_FS_CLASSES  # noqa: E402
from lakehouse.session import DRIVER_OPTIONS, build_session, resolved_jars, session_settings, spark_packages  # noqa: E402
from lakehouse.tables import read_table, resolve_table  # noqa: E402

FLOWS = ["bronze.telemetry", "silver.telemetry", "gold.telemetry_minute"]
OURS_TABLES = ["bronze.telemetry", "silver.telemetry", "silver.telemetry_quarantine", "gold.telemetry_minute"]
SDP_TABLES = ["bronze_telemetry", "silver_telemetry", "gold_telemetry_minute"]
# Spark Connect's Python deps for pyspark 4.1.1's spark-pipelines (its "pipelines" extra), pinned.
SDP_PYDEPS = ["grpcio==1.85.3", "grpcio-status==1.85.3", "googleapis-common-protos==1.76.0", "zstandard==0.25.0"]
BIN = Path(sys.executable).parent  # the venv's scripts: lakehouse, spark-pipelines


def emit(figure: str, value, **extra) -> None:
    print(json.dumps({"figure": figure, "value": value, **extra}), flush=True)


def config_for(data_dir: Path, overrides: list[str]):
    return load_config("dev", conf_dir=REPO / "conf", data_dir=data_dir, overrides=overrides)


# -- one-time setup: Delta's jars and SDP's Python deps ------------------------------------------
def delta_jars(config) -> list[str]:
    """Local paths of the delta-spark and delta-storage jars, resolved the way the project does
    (lakehouse/session.py); on a fresh machine a throwaway session resolves them through Ivy first
    (in its own process, so no JVM of ours lingers while anything is timed)."""
    packages = spark_packages(config)
    jars = resolved_jars(packages, config)
    if jars is None:
        print("resolving Delta's jars through Ivy (first run on this machine) ...", file=sys.stderr, flush=True)
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from lakehouse.config import load_config; "
                "from lakehouse.session import build_session; "
                "build_session(load_config('dev', conf_dir=sys.argv[1] + '/conf', data_dir=sys.argv[2])).stop()")
        done = subprocess.run([sys.executable, "-c", code, str(REPO), str(config.storage.data_dir)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"resolving Delta's jars failed:\n{done.stderr[-3000:]}")
        jars = resolved_jars(packages, config)
    local = [jar.removeprefix("file://").removeprefix("file:") for jar in jars or []]
    delta = [jar for jar in local if Path(jar).name.split("_", 1)[-1].startswith(("delta-spark_", "delta-storage-"))]
    if len(delta) != 2:
        raise SystemExit(f"cannot find Delta's jars among {local}")
    return delta


def sdp_pydeps() -> Path:
    """A directory holding SDP_PYDEPS (for the spark-pipelines process's PYTHONPATH only: they
    would conflict with the venv's protobuf users), installed there on first use."""
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    pins = hashlib.sha256(" ".join(SDP_PYDEPS).encode()).hexdigest()[:12]
    target = user_cache(f"sdp-pydeps-{version}-{pins}")
    if (target / ".complete").is_file():
        return target
    print(f"installing spark-pipelines' Python deps into {target} ...", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sdp-pydeps-", dir=target.parent))  # renamed into place when complete
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                           str(staging), *SDP_PYDEPS], capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise SystemExit(f"pip install {' '.join(SDP_PYDEPS)} failed:\n{done.stderr[-3000:]}")
    (staging / ".complete").write_text("\n".join(SDP_PYDEPS) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


# -- the two sides, each one command timed from fresh state --------------------------------------
def run_logged(cmd: list[str], log: Path, cwd: Path, env: dict, timeout: float) -> float:
    """Run ``cmd`` with its output in ``log``; its wall seconds. On failure: the log's tail, exit 1."""
    started = time.monotonic()
    with log.open("w") as out:
        # A process group of its own: a timeout (or Ctrl-C) ends the JVM and its Python children too.
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        if rc == "timeout":
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds = time.monotonic() - started
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        print(f"FAILED ({rc}) after {seconds:.0f} s: {' '.join(cmd)}\n--- tail of {log} ---\n{tail}\n"
              f"(data and logs kept in {log.parent.parent}; remove it when done)", file=sys.stderr, flush=True)
        raise SystemExit(1)
    return seconds


def link_landing(source: Path, target: Path) -> None:
    """The same landing files (and _manifests) under another directory, as hard links."""
    shutil.copytree(source, target, copy_function=os.link)


def run_ours(run_dir: Path, landing: Path, overrides: list[str], log: Path, timeout: float) -> float:
    config = config_for(run_dir, overrides)
    link_landing(landing, Path(config.landing_path("telemetry")))
    lakehouse = [str(BIN / "lakehouse")] if (BIN / "lakehouse").is_file() else [sys.executable, "-m", "lakehouse.cli"]
    cmd = [*lakehouse, "--env", "dev", "--conf-dir", str(REPO / "conf"), "--data-dir", str(run_dir),
           *[arg for item in overrides for arg in ("--set", item)], "run", "--once", "--only", *FLOWS]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    return run_logged(cmd, log, REPO, env, timeout)


def write_sdp_project(project: Path, config, jars: list[str]) -> None:
    """The pipeline project: spec, transformations (bench/sdp/ with the entity's columns and the
    gold table's SQL filled in) and a Spark conf dir. Every setting goes in spark-defaults.conf:
    pyspark 4.1.1 forwards only some --conf to the Connect server, and static ones fail in the
    spec's `configuration:`."""
    (project / "transformations").mkdir(parents=True)
    (project / "conf").mkdir()
    shutil.copy(TEMPLATES / "transformations" / "bronze.py", project / "transformations")
    shutil.copy(TEMPLATES / "log4j2.properties", project / "conf")
    entity = config.entity("telemetry")
    quoted = {name: f"`{name}`" for name in entity.columns}
    silver = string.Template((TEMPLATES / "transformations" / "silver.sql").read_text()).substitute(
        schema=", ".join(f"{quoted[name]} {kind.upper()}" for name, kind in entity.columns.items()),
        columns=", ".join(quoted.values()),
        keys=", ".join(f"r.{quoted[key]}" for key in entity.keys),
        keys_present=" AND ".join(f"r.{quoted[key]} IS NOT NULL" for key in entity.keys),
        event_time=quoted[entity.event_time])
    (project / "transformations" / "silver.sql").write_text(silver)
    gold = config.gold_table("telemetry_minute")  # its SQL reads the view silver_telemetry: SDP's silver
    (project / "transformations" / "gold.sql").write_text(
        "CREATE MATERIALIZED VIEW gold_telemetry_minute AS\n" + gold.sql.strip().rstrip(";") + "\n")
    (project / "pipeline.yml").write_text(
        f"name: telemetry_sdp\nstorage: {(project / 'storage').as_uri()}\n"
        "libraries:\n  - glob:\n      include: transformations/**\n")
    # Ours' own session settings (shuffle partitions, Delta snapshot partitions, time zone, ...),
    # then what SDP needs: Delta on the driver's classpath, a Hive catalog in Derby, Delta default.
    settings = session_settings(config)
    settings.pop("spark.jars.packages", None)
    # The JVM options as configured: our driver's class archive (lakehouse/jvm_archive.py) is not
    # what a user's SDP pipeline would start with; nor is our local file system (lakehouse/local_fs.py):
    # SDP's JVM writes through Hadoop's own (its class path is set below).
    settings[DRIVER_OPTIONS] = config.spark.conf.get(DRIVER_OPTIONS, "")
    for key in LOCAL_FS_CLASSES:
        if settings.get(f"spark.hadoop.{key}") == LOCAL_FS_CLASSES[key]:
            del settings[f"spark.hadoop.{key}"]
    for key in config.spark.conf_env:  # values from the environment (secrets) stay off the disk
        settings.pop(key, None)
    settings.update({
        "spark.jars": ",".join(jars), "spark.driver.extraClassPath": ":".join(jars),
        "spark.sql.sources.default": "delta", "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(project / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={project / 'metastore_db'};create=true",
        "spark.ui.enabled": "false"})
    lines = [f"{key} {value}".replace("\\", "\\\\") for key, value in settings.items()]  # Java properties
    (project / "conf" / "spark-defaults.conf").write_text("\n".join(lines) + "\n")


def run_sdp(project: Path, config, jars: list[str], landing: Path, pydeps: Path, log: Path, timeout: float) -> float:
    write_sdp_project(project, config, jars)
    env = {**os.environ, "SPARK_CONF_DIR": str(project / "conf"), "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1", "SDP_LANDING": str(landing), "PATH": f"{BIN}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(pydeps), os.environ.get("PYTHONPATH")) if p)}
    cmd = [str(BIN / "spark-pipelines"), "--remote", config.spark.master or "local[*]", "run",
           "--spec", str(project / "pipeline.yml")]
    return run_logged(cmd, log, project, env, timeout)


def count_rows(ours_dir: Path, project: Path, overrides: list[str], log: Path) -> tuple[dict, dict]:
    """Rows of each table on both sides (one classic session, after all timing)."""
    config = config_for(ours_dir, overrides)
    saved = os.dup(2)  # the JVM's start-up chatter goes to the log: it inherits stderr as it starts
    with log.open("w") as out:
        os.dup2(out.fileno(), 2)
        try:
            spark = build_session(config)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    spark.sparkContext.setLogLevel("ERROR")
    ours = {name: read_table(spark, resolve_table(config, name)).count() for name in OURS_TABLES}
    sdp_table = {name: spark.read.format("delta").load(str(project / "warehouse" / name)) for name in SDP_TABLES}
    sdp = {name: table.count() for name, table in sdp_table.items()}
    # SDP's gold rows past ours' last minute: ours appends a window only once its watermark passed it.
    last = read_table(spark, resolve_table(config, "gold.telemetry_minute")).agg(F.max("minute").alias("last"))
    sdp["gold_telemetry_minute after ours' last minute"] = (
        sdp_table["gold_telemetry_minute"].crossJoin(last).where("minute > last").count())
    sdp["gold_telemetry_minute with a null host or rack"] = (
        sdp_table["gold_telemetry_minute"].where("host IS NULL OR rack IS NULL").count())
    # Rows SDP's silver keeps that ours has not: what ours quarantined (bar malformed or keyless lines).
    keys = config.entity("telemetry").keys
    sdp["silver_telemetry keys not in ours"] = sdp_table["silver_telemetry"].join(
        read_table(spark, resolve_table(config, "silver.telemetry")), keys, "left_anti").count()
    spark.stop()
    return ours, sdp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each side")
    parser.add_argument("--work-dir", help="keep data and logs here (default: a temporary directory, removed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="configuration override for ours and for the settings SDP copies (repeatable)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds either command may take")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="pipeline-vs-sdp-")).absolute()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    # -- the landing files, generated once; each run reads hard links to them --------------------
    base = config_for(work / "landing-set", args.overrides)
    landing = Path(base.landing_path("telemetry"))
    landing.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    generator = TelemetryGenerator.from_config(base.generator, fault_rate=0.02)
    lines = generate_batch(generator, landing, "telemetry", "bench", base.generator.seed, args.records,
                           args.files).total_lines
    size = sum(p.stat().st_size for p in landing.glob("*.jsonl"))
    emit("generated lines", lines, files=args.files, mib=round(size / 2**20, 1),
         seconds=round(time.monotonic() - started, 1))
    jars, pydeps = delta_jars(base), sdp_pydeps()

    # -- the timed runs: alternating which side goes first, each from fresh state ---------------
    best = {"ours": float("inf"), "sdp": float("inf")}
    for attempt in range(args.repeats):
        runs = work / f"attempt-{attempt}"
        for side in (["ours", "sdp"] if attempt % 2 == 0 else ["sdp", "ours"]):
            log = work / "logs" / f"{side}-{attempt}.log"
            if side == "ours":
                seconds = run_ours(runs / "ours", landing, args.overrides, log, args.timeout)
            else:
                sdp_config = config_for(runs / "sdp", args.overrides)
                seconds = run_sdp(runs / "sdp", sdp_config, jars, landing, pydeps, log, args.timeout)
            best[side] = min(best[side], seconds)
            label = "ours: lakehouse run --once" if side == "ours" else "sdp: spark-pipelines run"
            emit(label, round(seconds, 2), unit="s", attempt=attempt, lines=lines)
        if attempt + 1 < args.repeats:  # only the last attempt's tables are counted
            shutil.rmtree(runs, ignore_errors=True)

    # -- rows per table (last attempt), then the ratio ------------------------------------------
    ours_rows, sdp_rows = count_rows(runs / "ours", runs / "sdp", args.overrides, work / "logs" / "count.log")
    emit("ours rows", ours_rows, note="bronze = silver + quarantine (malformed lines and the rule suite's "
         "drops) + duplicate keys; gold has the minutes its watermark (newest event - 2 min) closed")
    emit("sdp rows", sdp_rows, note="silver drops only lines without a key or event time (malformed ones "
         "included) and duplicate keys, so it keeps rows ours quarantines; gold (a batch MV) has every minute")
    ratio = best["ours"] / best["sdp"]
    emit("ours / sdp wall time (best of each)", round(ratio, 3), ours_s=round(best["ours"], 2),
         sdp_s=round(best["sdp"], 2), target="<= 1.0", met=ratio <= 1.0,
         machine=f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
         at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
