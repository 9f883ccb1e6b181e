#!/usr/bin/env python
"""Training throughput of the one train function under each backend, in one run.

    .venv/bin/python bench/train_throughput.py [--records 40000] [--epochs 10] [--num-proc 2]

Builds a feature table from generated telemetry (bronze -> silver -> gold, in a temporary data
directory), then runs ``ml.train.train_process`` with the local backend (1 process), Horovod
(N processes) and TorchDistributor (N processes) on the same pinned version, without MLflow.
Prints one JSON line per figure: samples/s (training loop only, all processes together), wall
seconds (process start-up included), and the scaling efficiency = samples/s with N processes /
(N x samples/s of one process). On a machine with 2 cores, N = 2 leaves nothing for Spark and
the OS, so the efficiency says more about the machine than about the backends.
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
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lakehouse.config import load_config  # noqa: E402
from lakehouse.generator import TelemetryGenerator  # noqa: E402
from lakehouse.generator_runs import generate_batch  # noqa: E402
from lakehouse.runner import run_flow, run_flows  # noqa: E402
from lakehouse.session import build_session  # noqa: E402
from ml.data import pin_snapshot  # noqa: E402
from ml.run import check_backend, run_backend  # noqa: E402
from ml.train import TrainSpec  # noqa: E402

ONCE = {"availableNow": True}


def emit(figure: str, value, **extra) -> None:
    print(json.dumps({"figure": figure, "value": value, **extra}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=40_000, help="generated telemetry lines")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-proc", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    try:
        config = load_config("dev", conf_dir=REPO / "conf", data_dir=work / "data",
                             overrides=[f"spark.master=local[{max(2, args.num_proc)}]"])
        landing = Path(config.landing_path("telemetry"))
        landing.mkdir(parents=True)
        generate_batch(TelemetryGenerator.from_config(config.generator), landing, "telemetry", "b", 7, args.records, 8)
        spark = build_session(config)
        assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
        assert run_flow(spark, config, "silver.telemetry", ONCE) == 0
        assert run_flows(spark, config, [f"gold.{name}" for name in config.gold], ONCE) == 0
        training = config.training
        snapshot = pin_snapshot(spark, config, training.table)
        emit("feature rows", snapshot.rows, table=f"{snapshot.table}@v{snapshot.version}")
        base = TrainSpec(
            snapshot=snapshot, features=list(training.features), label=training.label,
            split_key=list(training.split_key), validation_fraction=training.validation_fraction,
            hidden=list(training.model.hidden), dropout=training.model.dropout, optimizer=training.optimizer,
            learning_rate=training.learning_rate, batch_size=training.batch_size, epochs=args.epochs,
            seed=training.seed, log_every_steps=training.log_every_steps,
        )
        rates = {}
        for backend, processes in (("local", 1), ("horovod", args.num_proc), ("torch-distributor", args.num_proc)):
            check_backend(spark, backend, processes, gpu=False)
            started = time.monotonic()
            result = run_backend(spark, replace(base, backend=backend), backend, processes)
            wall = time.monotonic() - started
            rates[backend] = result.samples_per_s
            emit(f"{backend} x{processes}: samples/s", round(result.samples_per_s), wall_s=round(wall, 1),
                 val_rmse=round(result.epochs[-1]["val_rmse"], 3), baseline_rmse=round(result.baseline_rmse, 3))
        for backend in ("horovod", "torch-distributor"):
            efficiency = rates[backend] / (args.num_proc * rates["local"])
            emit(f"{backend} x{args.num_proc}: scaling efficiency", round(efficiency, 3),
                 machine=f"{platform.machine()}, {os.cpu_count()} cores",
                 at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
