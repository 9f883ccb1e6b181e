#!/usr/bin/env python
"""Bronze ingest from Kafka against bronze ingest from landing files, on the same events, one run.

    .venv/bin/python bench/kafka_ingest.py [--records 500000] [--files 50] [--partitions 3]

The generator's events (faults included) are written once as landing files and published once
to a fresh topic on a local broker (lakehouse/devtools/kafka_broker.py); then each bronze query takes its
whole backlog in one availableNow run, in the same Spark session (files first, then Kafka, then
both again; the faster of the two runs counts). Prints one JSON line per figure, including the
publish rate (not part of the ingest figures). No target is set in the issue: the ratio is recorded.
"""

from __future__ import annotations

import argparse
import json
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
from lakehouse.devtools.kafka_broker import KafkaBroker  # noqa: E402
from lakehouse.generator import TelemetryGenerator  # noqa: E402
from lakehouse.generator_runs import generate_batch  # noqa: E402
from lakehouse.kafka import TopicPublisher, ensure_topic  # noqa: E402
from lakehouse.runner import run_flow  # noqa: E402
from lakehouse.session import build_session  # noqa: E402
from lakehouse.tables import bronze_table, read_table  # noqa: E402

ONCE = {"availableNow": True}


def emit(figure: str, value, **extra) -> None:
    print(json.dumps({"figure": figure, "value": value, **extra}), flush=True)


def config_for(data_dir: Path, bootstrap: str, topic: str):
    return load_config("dev", conf_dir=REPO / "conf", data_dir=data_dir, overrides=[
        f"sources.telemetry_kafka.kafka.bootstrap_servers={bootstrap}",
        f"sources.telemetry_kafka.kafka.topics=[{topic}]",
        # One micro-batch for the whole backlog, as the file source gets with its own limit lifted.
        "sources.telemetry_kafka.kafka.max_offsets_per_trigger=null",
        "sources.telemetry.max_files_per_trigger=null",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()
    emit("environment", platform.node(), cpus=__import__("os").cpu_count(), python=platform.python_version(),
         at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    work = Path(tempfile.mkdtemp(prefix="kafka-bench-"))
    try:
        with KafkaBroker(work / "broker", partitions=args.partitions) as broker:
            topic = "bench"
            base = config_for(work / "base", broker.bootstrap, topic)
            landing = work / "events"
            generator = TelemetryGenerator.from_config(base.generator, fault_rate=0.02)
            manifest = generate_batch(generator, landing, "telemetry", "bench", base.generator.seed, args.records,
                                      args.files)
            lines = [line for path in sorted(landing.glob("*.jsonl")) for line in path.read_bytes().splitlines()]
            assert len(lines) == manifest.total_lines

            options = base.source("telemetry_kafka").kafka
            ensure_topic(options, topic, args.partitions)
            publisher = TopicPublisher(options, topic)
            started = time.monotonic()
            for line in lines:
                publisher.send(line)
            publisher.flush()
            publish_s = time.monotonic() - started
            emit("kafka_publish_records_per_s", round(len(lines) / publish_s), seconds=round(publish_s, 2),
                 records=len(lines), partitions=args.partitions)

            spark = build_session(base)
            best = {"files": float("inf"), "kafka": float("inf")}
            for attempt in range(2):
                for kind, source in (("files", "telemetry"), ("kafka", "telemetry_kafka")):
                    run = config_for(work / f"{kind}-{attempt}", broker.bootstrap, topic)
                    if kind == "files":
                        shutil.copytree(landing, run.landing_path("telemetry"))
                    started = time.monotonic()
                    if run_flow(spark, run, f"bronze.{source}", ONCE) != 0:
                        raise SystemExit(f"bronze ingest from {kind} failed")
                    best[kind] = min(best[kind], time.monotonic() - started)
                    rows = read_table(spark, bronze_table(run, source)).count()
                    if rows != len(lines):
                        raise SystemExit(f"bronze from {kind} holds {rows} rows, expected {len(lines)}")
            spark.stop()
        files_rate, kafka_rate = len(lines) / best["files"], len(lines) / best["kafka"]
        emit("bronze_from_files_records_per_s", round(files_rate), seconds=round(best["files"], 2),
             records=len(lines), files=len(list(landing.glob("*.jsonl"))))
        emit("bronze_from_kafka_records_per_s", round(kafka_rate), seconds=round(best["kafka"], 2),
             records=len(lines), partitions=args.partitions)
        emit("kafka_vs_files_ratio", round(kafka_rate / files_rate, 3))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
