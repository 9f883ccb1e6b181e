#!/usr/bin/env python
"""Silver refine with the full suite and quarantine vs a parse-and-write-only pass, on the same
bronze table, in one run.

    .venv/bin/python bench/silver_overhead.py [--records 1000000] [--files 100] [--repeats 2]
    .venv/bin/python bench/silver_overhead.py --per-batch 8 [--records 8000]

Both passes are streaming queries over bronze.telemetry with availableNow and no rate limit (one
micro-batch of every row), each from a fresh checkpoint into fresh tables:
  (a) parse only: parse_records with the declared schema, silver's columns appended to a Delta table;
  (b) refine: lakehouse.silver's foreachBatch (parse, row rules, late check, quarantine,
      per-batch counts, GX validation of the whole suite into ops.quality_results, dedupe,
      MERGE into silver).
Prints one JSON line per figure. Target (issue 3): (b) <= 1.5x (a) on 1M rows.

``--per-batch K``: the fixed cost per micro-batch instead, of both passes: the same bronze rows
(``--records``, landed in K files, one bronze file each) in K micro-batches (one bronze file per
trigger) and in one; (t(K) - t(1)) / (K - 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lakehouse.config import load_config  # noqa: E402
from lakehouse.generator import TelemetryGenerator  # noqa: E402
from lakehouse.generator_runs import generate_batch  # noqa: E402
from lakehouse.parse import parse_records  # noqa: E402
from lakehouse.runner import run_flow  # noqa: E402
from lakehouse.session import build_session  # noqa: E402
from lakehouse.silver_tables import SILVER_BATCHES_TABLE, silver_columns  # noqa: E402
from lakehouse.tables import read_table, resolve_table  # noqa: E402


def config_for(data: Path, *overrides: str):
    return load_config("dev", conf_dir=REPO / "conf", data_dir=data, overrides=list(overrides))


def emit(figure: str, value, **extra) -> None:
    print(json.dumps({"figure": figure, "value": value, **extra}), flush=True)


def parse_only(spark, config, checkpoint: Path, target: Path, files_per_trigger: int | None = None) \
        -> tuple[int, int]:
    """Stream bronze.telemetry through parse_records into a plain Delta append; rows written and
    micro-batches run."""
    entity = config.entity("telemetry")
    sources = {name: config.source(name) for name in entity.sources}
    reader = spark.readStream.format("delta")
    if files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", files_per_trigger)
    bronze = reader.load(resolve_table(config, "bronze.telemetry").path)

    def write(batch, batch_id):
        # The columns silver keeps (typed fields, _rescued, provenance), so both passes write the same shape.
        parsed = parse_records(batch, entity, sources).select(*silver_columns(entity))
        parsed.write.format("delta").mode("append").save(str(target))

    query = (bronze.writeStream.foreachBatch(write).option("checkpointLocation", str(checkpoint))
             .trigger(availableNow=True).start())
    query.awaitTermination()
    batches = len({p["batchId"] for p in query.recentProgress if p["numInputRows"]})
    return spark.read.format("delta").load(str(target)).count(), batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, help="bronze rows (default 1,000,000)")
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each pass")
    parser.add_argument("--work-dir", help="keep data here (default: a temporary directory, removed)")
    parser.add_argument("--per-batch", type=int, metavar="K",
                        help="measure the fixed cost per micro-batch over K batches instead (--records default 8000)")
    args = parser.parse_args()
    records = args.records or (8_000 if args.per_batch else 1_000_000)
    files = args.per_batch or args.files

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="silver-bench-"))
    data = work / "data"
    # One bronze file per landing file when measuring per batch: one bronze batch per file.
    config = config_for(data, f"sources.telemetry.max_files_per_trigger={1 if args.per_batch else 'null'}")
    try:
        landing = Path(config.landing_path("telemetry"))
        landing.mkdir(parents=True, exist_ok=True)
        generator = TelemetryGenerator.from_config(config.generator, fault_rate=0.02)
        lines = generate_batch(generator, landing, "telemetry", "bench", 7, records, files).total_lines
        spark = build_session(config)
        started = time.monotonic()
        assert run_flow(spark, config, "bronze.telemetry", {"availableNow": True}) == 0
        emit("bronze ingest (setup)", round(time.monotonic() - started, 2), unit="s", rows=lines)
        if args.per_batch:
            measure_per_batch(spark, config, work, lines, args.per_batch, args.repeats)
        else:
            measure_ratio(spark, config, work, lines, args.repeats)
        spark.stop()
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def refine(spark, config, lines: int, **extra) -> tuple[float, int]:
    """One silver.telemetry run from a fresh silver (its own tables and checkpoint); seconds and
    micro-batches run."""
    data = config.storage.data_dir
    for layer in ("silver", "ops"):
        shutil.rmtree(data / "tables" / layer, ignore_errors=True)
    shutil.rmtree(Path(config.checkpoint_path("silver_telemetry")), ignore_errors=True)
    started = time.monotonic()
    assert run_flow(spark, config, "silver.telemetry", {"availableNow": True}) == 0
    seconds = time.monotonic() - started
    silver = read_table(spark, resolve_table(config, "silver.telemetry")).count()
    quarantined = read_table(spark, resolve_table(config, "silver.telemetry_quarantine")).count()
    batches = read_table(spark, resolve_table(config, SILVER_BATCHES_TABLE)).count()
    emit("refine: full suite, quarantine, GX validation, MERGE", round(seconds, 2), unit="s",
         rows=lines, silver=silver, quarantined=quarantined, batches=batches, **extra)
    return seconds, batches


def measure_ratio(spark, config, work: Path, lines: int, repeats: int) -> None:
    """Refine against parse-only, each in one micro-batch of every row (best of ``repeats``)."""
    best = {"parse": None, "refine": None}
    for attempt in range(repeats):
        run_dir = work / f"run{attempt}"
        started = time.monotonic()
        written, _ = parse_only(spark, config, run_dir / "parse-checkpoint", run_dir / "parsed")
        seconds = time.monotonic() - started
        assert written == lines, (written, lines)
        emit("parse and write only", round(seconds, 2), unit="s", rows=written, attempt=attempt)
        best["parse"] = min(best["parse"] or seconds, seconds)
        seconds, _ = refine(spark, config, lines, attempt=attempt)
        best["refine"] = min(best["refine"] or seconds, seconds)

    ratio = best["refine"] / best["parse"]
    emit("refine / parse-only (best of each)", round(ratio, 3), target="<= 1.5", met=ratio <= 1.5, **machine())


def measure_per_batch(spark, config, work: Path, lines: int, batches: int, repeats: int) -> None:
    """Both passes over the same bronze rows in ``batches`` micro-batches and in one, alternating
    (best of ``repeats``); each pass's fixed cost per micro-batch."""
    data = config.storage.data_dir
    one_by_one = config_for(data, "sources.telemetry.max_files_per_trigger=1", "entities.telemetry.max_files_per_trigger=1")
    all_at_once = config_for(data, "sources.telemetry.max_files_per_trigger=1", "entities.telemetry.max_files_per_trigger=null")
    best, counts = {}, {}

    def keep(name: str, limit: int | None, seconds: float, ran: int) -> None:
        best[name, limit] = min(best.get((name, limit), seconds), seconds)
        counts[name, limit] = ran

    for attempt in range(repeats):
        for limit in (1, None):
            run_dir = work / f"run{attempt}-{limit}"
            started = time.monotonic()
            written, ran = parse_only(spark, config, run_dir / "parse-checkpoint", run_dir / "parsed", limit)
            seconds = time.monotonic() - started
            assert written == lines, (written, lines)
            emit("parse and write only", round(seconds, 2), unit="s", rows=lines, batches=ran, attempt=attempt)
            keep("parse", limit, seconds, ran)
            keep("refine", limit, *refine(spark, one_by_one if limit else all_at_once, lines, attempt=attempt))
    for name, label in (("parse", "parse and write only"), ("refine", "refine")):
        many, one = counts[name, 1], counts[name, None]
        assert many > one, f"{label}: {many} micro-batches one file at a time, {one} at once"
        fixed = (best[name, 1] - best[name, None]) / (many - one)
        emit(f"{label}: fixed cost per micro-batch", round(fixed, 3), unit="s", batches=[many, one], rows=lines,
             **machine())


def machine() -> dict:
    return {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


if __name__ == "__main__":
    sys.exit(main())
