#!/usr/bin/env python
"""The project's train step on a GPU, without Spark or Java: samples/s and peak GPU memory.

    python bench/gpu_check.py                # one process on cuda:0, then torchrun with one process
    python bench/gpu_check.py --device cpu   # the same on CPU (a smoke test where there is no GPU)
    python bench/gpu_check.py --task lm      # the causal_lm task only (TinyGPT, bf16 autocast on GPU)

A GPU machine may have PyTorch and CUDA but no Java, so this writes a synthetic feature table
(the gold.telemetry_features columns, as one Parquet file) and calls ``ml.train.train_process``
on it directly: first in this process (backend local), then under ``torchrun --nproc_per_node 1``
(backend torch-distributor: the DDP path, NCCL on GPU). The causal_lm task (``--task lm`` or
``both``) trains ml/lm.py's TinyGPT on a synthetic byte-token table (the gold.chat_tokens
columns) in this process: tokens/s, held-out perplexity against the untrained model's, peak
memory. Prints one JSON line per figure. Needs only torch, numpy, pandas and pyarrow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml.data import Snapshot  # noqa: E402
from ml.train import TrainSpec, train_process  # noqa: E402

FEATURES = ["cpu_util", "mem_util", "gpu_util", "fan_rpm", "inlet_temp_c", "exhaust_temp_c",
            "power_w", "power_w_max", "prev_power_w", "hour_of_day"]


def synthetic_table(path: Path, rows: int, seed: int = 7) -> Snapshot:
    """Feature rows with the generator's relations (power follows load), written as Parquet."""
    rng = np.random.default_rng(seed)
    load = np.clip(rng.normal(45, 20, rows), 0, 100)
    gpu = np.clip(rng.normal(30, 30, rows), 0, 100)
    power = 120 + 1.9 * load + 3.2 * gpu + rng.normal(0, 4, rows)
    frame = pd.DataFrame({
        "host": [f"h{i % 64:03d}" for i in range(rows)],
        "minute": pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(rows) // 64, unit="min"),
        "cpu_util": load, "mem_util": np.clip(load + rng.normal(0, 5, rows), 0, 100), "gpu_util": gpu,
        "fan_rpm": 2200 + 38 * load + 30 * gpu, "inlet_temp_c": 22 + 0.006 * power,
        "exhaust_temp_c": 30 + 0.01 * power, "power_w": power, "power_w_max": power + 5,
        "prev_power_w": power + rng.normal(0, 8, rows), "hour_of_day": (np.arange(rows) // 3840) % 24,
        "next_minute_power_w": power + rng.normal(0, 10, rows),
    })
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=65536)
    return Snapshot("synthetic.telemetry_features", 0, [(path.absolute().as_uri(), rows)])


def spec_for(snapshot: Snapshot, args, backend: str) -> TrainSpec:
    return TrainSpec(snapshot=snapshot, features=FEATURES, label="next_minute_power_w", split_key=["host", "minute"],
                     validation_fraction=0.1, hidden=[256, 256, 128], dropout=0.0, optimizer="adam",
                     learning_rate=0.001, batch_size=args.batch_size, epochs=args.epochs, seed=7,
                     log_every_steps=50, backend=backend, gpu=args.device == "cuda")


def run_here(snapshot: Snapshot, args, backend: str) -> dict:
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    result = train_process(spec_for(snapshot, args, backend))
    figures = {"samples_per_s": round(result.samples_per_s), "wall_s": round(time.monotonic() - started, 1),
               "val_rmse": round(result.epochs[-1]["val_rmse"], 3), "baseline_rmse": round(result.baseline_rmse, 3)}
    if args.device == "cuda":
        figures["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        figures["device"] = torch.cuda.get_device_name(0)
    return figures


def token_table(path: Path, rows: int, seq_len: int, seed: int = 7) -> Snapshot:
    """Sentences of a small vocabulary as byte tokens between BOS and EOS; a tenth held out."""
    from lakehouse.text_tokens import BOS, EOS

    rng = np.random.default_rng(seed)
    words = np.array("the a cat dog sat ran on to big red house green tea my friend likes with and".split())
    tokens = [[BOS, *" ".join(rng.choice(words, rng.integers(20, 80))).encode()[:seq_len - 1], EOS]
              for _ in range(rows)]
    pq.write_table(pa.table({"tokens": tokens, "heldout": (np.arange(rows) % 10 == 0)}), path)
    return Snapshot("synthetic.chat_tokens", 0, [(path.absolute().as_uri(), rows)])


def lm_here(path: Path, args) -> dict:
    """One local run of the causal_lm task; its settings are training.lm's (a namespace: no YAML needed)."""
    from types import SimpleNamespace

    gpu = args.device == "cuda"
    lm = SimpleNamespace(tokens_column="tokens", heldout_column="heldout", vocab_size=259, pad_id=258,
                         seq_len=args.seq_len, d_model=args.d_model, layers=args.layers, heads=args.d_model // 64,
                         dropout=0.0, module=None, module_options={}, batch_fn=None, checkpoint_every_steps=10**9,
                         max_steps=None, bf16=True)
    spec = TrainSpec(snapshot=token_table(path, args.lm_rows, args.seq_len), features=[], label="", split_key=[],
                     validation_fraction=0.1, hidden=[], dropout=0.0, optimizer="adam", learning_rate=1e-3,
                     batch_size=args.lm_batch_size, epochs=1, seed=7, log_every_steps=50, gpu=gpu, task="causal_lm",
                     lm=lm)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    result = train_process(spec)
    figures = {"figure": "one process: causal_lm train step", "device": args.device, "bf16": gpu,
               "sequences": args.lm_rows, "seq_len": args.seq_len, "d_model": args.d_model, "layers": args.layers,
               "batch_size": args.lm_batch_size, "tokens_per_s": round(result.figures["tokens_per_s"]),
               "samples_per_s": round(result.samples_per_s), "wall_s": round(time.monotonic() - started, 1),
               "val_perplexity": round(result.epochs[-1]["val_perplexity"], 2),
               "untrained_perplexity": round(result.figures["untrained_perplexity"], 2)}
    if gpu:
        figures["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--task", choices=["regression", "lm", "both"], default="both")
    parser.add_argument("--lm-rows", type=int, default=20_000, help="token sequences of the causal_lm check")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=256, help="a multiple of 64 (heads of 64)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lm-batch-size", type=int, default=64)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # torchrun's child: the snapshot file
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu for a smoke test")

    if args.worker:  # inside torchrun: the DDP path of the same train function
        rows = pq.ParquetFile(args.worker).metadata.num_rows
        figures = run_here(Snapshot("synthetic.telemetry_features", 0, [(Path(args.worker).as_uri(), rows)]),
                           args, "torch-distributor")
        if int(os.environ.get("RANK", 0)) == 0:
            print(json.dumps({"figure": "torchrun x1 (DDP): train step", **figures}), flush=True)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        if args.task in ("lm", "both"):
            print(json.dumps(lm_here(Path(tmp) / "tokens.parquet", args)), flush=True)
        if args.task == "lm":
            return 0
        path = Path(tmp) / "features.parquet"
        snapshot = synthetic_table(path, args.rows)
        print(json.dumps({"figure": "one process: train step", "device": args.device, "rows": args.rows,
                          "batch_size": args.batch_size, **run_here(snapshot, args, "local")}), flush=True)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--standalone",
                    str(Path(__file__).resolve()), "--device", args.device, "--rows", str(args.rows),
                    "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--worker", str(path)]
        completed = subprocess.run(torchrun, cwd=REPO)
        return completed.returncode


if __name__ == "__main__":
    sys.exit(main())
