#!/usr/bin/env python
"""Does compacting or Z-ordering silver on its key speed up silver's MERGE? One run, up to six layouts.

    .venv/bin/python bench/zorder_merge.py [--rows 2000000] [--appends 200] [--batch 20000]
                                           [--duplicates 0.02] [--repeats 3]

A silver.telemetry table of ``--rows`` rows is written the way the stream writes it: ``--appends``
time-ordered appends, keys random UUIDs (as event ids are). Three copies of it then take the same
MERGE batches through lakehouse.silver_merge.merge_into_silver (silver's own MERGE, change feed on):
  (a) as written: one small file per append;
  (b) compacted: OPTIMIZE (bin-packing, what `lakehouse maintain` runs);
  (c) Z-ordered: OPTIMIZE ZORDER BY (event_id);
  (d) compacted, with deletion vectors (delta.enableDeletionVectors: a MERGE marks the replaced
      rows instead of rewriting their files);
  (e), (f) compacted into files of at most 16 MiB (optimize.maxFileSize), without and with
      deletion vectors.
Each batch holds ``--batch`` rows: new keys, and a ``--duplicates`` share of keys already in
silver, re-sent with a later event time (a resend is recent: its key is drawn from the newest 5%
of rows). Prints one JSON line per layout: the median MERGE seconds, the files each MERGE
rewrote and the bytes it wrote, and the time ratios to (b).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lakehouse.config import load_config  # noqa: E402
from lakehouse.session import build_session  # noqa: E402
from lakehouse.silver_merge import merge_into_silver  # noqa: E402
from lakehouse.silver_tables import ensure_silver_tables, silver_schema  # noqa: E402
from lakehouse.tables import resolve_table  # noqa: E402

# layout -> (Z-order by the key, deletion vectors, OPTIMIZE's target file size in MiB; None: Delta's 1 GiB)
LAYOUTS = {
    "as_written": (False, False, None),
    "compacted": (False, False, None),
    "zordered": (True, False, None),
    "compacted_dv": (False, True, None),
    "compacted_16mib": (False, False, 16),
    "compacted_16mib_dv": (False, True, 16),
}


def emit(figure: str, value, **extra) -> None:
    print(json.dumps({"figure": figure, "value": value, **extra}), flush=True)


def telemetry_rows(spark, entity, first: int, count: int, start_s: int):
    """``count`` silver rows numbered from ``first``: a random UUID key, an event time a
    second apart from ``start_s``, and readings."""
    from pyspark.sql import functions as F

    columns = {
        "event_id": F.expr("uuid()"),
        "host": F.format_string("host-%03d", F.col("id") % 200),
        "rack": F.format_string("rack-%02d", F.col("id") % 20),
        "event_time": F.timestamp_seconds(F.lit(start_s) + F.col("id") / 1000),
        **{name: F.rand() * 100 for name in ("cpu_util", "mem_util", "gpu_util", "power_w", "fan_rpm",
                                             "inlet_temp_c", "exhaust_temp_c")},
        "_rescued": F.lit(None).cast("string"),
        "_source_file": F.format_string("landing/telemetry/%06d.jsonl", (F.col("id") / 10000).cast("long")),
        "_source_line": F.col("id") % 10000,
        "_ingested_at": F.current_timestamp(),
    }
    frame = spark.range(first, first + count).withColumns(columns)
    return frame.select(*(F.col(f.name).cast(f.dataType) for f in silver_schema(entity).fields))


def merge_batches(spark, entity, silver_path: str, args, seed: int) -> list:
    """The same batches for every layout: new keys plus re-sent recent keys (later event time)."""
    from pyspark.sql import functions as F

    recent = spark.read.format("delta").load(silver_path).orderBy(F.col("event_time").desc()) \
        .limit(max(1, args.rows // 20)).cache()
    batches = []
    for i in range(args.repeats):
        resent = int(args.batch * args.duplicates)
        again = (recent.sample(fraction=min(1.0, 2.0 * resent / recent.count()), seed=seed + i).limit(resent)
                 .withColumn("event_time", F.col("event_time") + F.expr("INTERVAL 1 MINUTE")))
        fresh = telemetry_rows(spark, entity, args.rows + i * args.batch, args.batch - resent, 1_800_000_000)
        batches.append(fresh.unionByName(again).localCheckpoint())
    return batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--appends", type=int, default=200)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--duplicates", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of {', '.join(LAYOUTS)}")
    args = parser.parse_args()
    emit("environment", platform.node(), python=platform.python_version(),
         at=datetime.now(timezone.utc).isoformat(timespec="seconds"), rows=args.rows, appends=args.appends,
         batch=args.batch, duplicates=args.duplicates)
    work = Path(tempfile.mkdtemp(prefix="zorder-bench-"))
    try:
        base = load_config("dev", conf_dir=REPO / "conf", data_dir=work / "as_written")
        spark = build_session(base)
        spark.sparkContext.setLogLevel("ERROR")
        entity = base.entity("telemetry")
        ensure_silver_tables(spark, base, "telemetry")
        silver = resolve_table(base, "silver.telemetry")
        per_append = args.rows // args.appends
        started = time.perf_counter()
        for i in range(args.appends):
            telemetry_rows(spark, entity, i * per_append, per_append, 1_700_000_000 + i * per_append // 1000) \
                .coalesce(1).write.format("delta").mode("append").save(silver.path)
        print(f"# wrote {args.rows} rows in {args.appends} appends ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
        configs = {"as_written": base}
        for layout in args.layouts.split(","):
            if layout == "as_written":
                continue
            zorder, vectors, max_mib = LAYOUTS[layout]
            shutil.copytree(work / "as_written", work / layout)
            configs[layout] = load_config("dev", conf_dir=REPO / "conf", data_dir=work / layout)
            path = resolve_table(configs[layout], "silver.telemetry").path
            if vectors:
                spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
            if max_mib:
                spark.conf.set("spark.databricks.delta.optimize.maxFileSize", str(max_mib * 1048576))
            spark.sql(f"OPTIMIZE delta.`{path}`" + (" ZORDER BY (event_id)" if zorder else ""))
            spark.conf.unset("spark.databricks.delta.optimize.maxFileSize")
        batches = merge_batches(spark, entity, silver.path, args, seed=7)
        figures = {}
        for layout, config in configs.items():
            ref = resolve_table(config, "silver.telemetry")
            seconds, rewritten, written = [], [], []
            for i, batch in enumerate(batches):
                began = time.perf_counter()
                merge_into_silver(ref, batch, entity, marker=f"bench-{i}", replay_since_ms=None)
                seconds.append(time.perf_counter() - began)
                metrics = spark.sql(f"DESCRIBE HISTORY delta.`{ref.path}` LIMIT 1").first()["operationMetrics"]
                rewritten.append(int(metrics.get("numTargetFilesRemoved", 0)))
                written.append(int(metrics.get("numTargetBytesAdded", 0)))
            files = spark.sql(f"DESCRIBE DETAIL delta.`{ref.path}`").first()["numFiles"]
            figures[layout] = statistics.median(seconds)
            print(f"# {layout}: MERGE {[round(s, 2) for s in seconds]} s", file=sys.stderr, flush=True)
            emit("merge_seconds", round(figures[layout], 2), layout=layout, files_after=files,
                 files_rewritten_per_merge=statistics.median(rewritten),
                 mib_written_per_merge=round(statistics.median(written) / 1048576, 1),
                 runs=[round(s, 2) for s in seconds])
        for layout in (name for name in figures if name != "compacted" and "compacted" in figures):
            emit("merge_time_ratio_to_compacted", round(figures[layout] / figures["compacted"], 2), layout=layout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
