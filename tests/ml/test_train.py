"""ml.train's train function on a tiny Parquet snapshot, in this process: the scaling comes from
the training rows of every process only, a split that no process count changes, refused and
unlabelled rows counted, the same number of steps on every process. Several processes are
threads here, summing through a barrier (the backends' allreduce, without a network)."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ml.data import Snapshot, shard_bounds, usable_rows, validation_mask
from ml.dist import Comm
from ml.train import TrainResult, TrainSpec, _train, train_process

FEATURES, LABEL, KEY = ["a", "b"], "y", ["host", "minute"]
FRACTION = 0.25


def _table(n: int = 480, seed: int = 3) -> pd.DataFrame:
    """y = 2a - b + noise; a few rows no model can take (refused) and a few with no label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"host": [f"h{i % 6}" for i in range(n)],
                          "minute": pd.date_range("2026-03-01", periods=n, freq="min").astype("datetime64[us]"),
                          "a": rng.normal(10.0, 2.0, n), "b": rng.normal(-3.0, 0.5, n)})
    frame["y"] = 2 * frame["a"] - frame["b"] + rng.normal(0.0, 0.1, n)
    frame.loc[[5, 77], "a"] = np.inf
    frame.loc[[140], "b"] = 1e300  # finite as a double, not as a float
    frame.loc[[9, 200, 333], "y"] = np.nan  # unlabelled
    return frame


def _snapshot(tmp_path, frame: pd.DataFrame, files: int = 3) -> Snapshot:
    parts = []
    for i, (start, end) in enumerate(shard_bounds(len(frame), r, files) for r in range(files)):
        part = frame.iloc[start:end]
        path = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), path, row_group_size=50)
        parts.append((path.as_uri(), len(part)))
    return Snapshot("gold.features", 2, parts)


def _spec(snapshot: Snapshot, **changes) -> TrainSpec:
    values = {"snapshot": snapshot, "features": FEATURES, "label": LABEL, "split_key": KEY,
              "validation_fraction": FRACTION, "hidden": [8], "dropout": 0.0, "optimizer": "adam",
              "learning_rate": 0.02, "batch_size": 32, "epochs": 3, "seed": 11, "log_every_steps": 4}
    values.update(changes)
    return TrainSpec(**values)


class _Group:
    """What the processes of one run share: a sum over all ranks, in a fixed order."""

    def __init__(self, size: int):
        self.size, self.slots = size, [None] * size
        self.barrier = threading.Barrier(size, timeout=60)

    def allreduce(self, rank: int, tensor: torch.Tensor) -> torch.Tensor:
        self.slots[rank] = tensor.clone()
        self.barrier.wait()
        total = self.slots[0].clone()
        for other in self.slots[1:]:
            total += other
        self.barrier.wait()  # nobody overwrites a slot before everyone has summed
        return total


class _ThreadComm(Comm):
    def __init__(self, group: _Group, rank: int):
        self.group, self.rank, self.size, self.local_rank = group, rank, group.size, 0

    def allreduce_sum(self, tensor):
        return self.group.allreduce(self.rank, tensor)


def _run(spec: TrainSpec, size: int) -> list[TrainResult | None]:
    group = _Group(size)
    with ThreadPoolExecutor(max_workers=size) as pool:
        futures = [pool.submit(_train, spec, _ThreadComm(group, rank)) for rank in range(size)]
        return [f.result(timeout=120) for f in futures]


def _expected(frame: pd.DataFrame) -> dict:
    usable, refused, unlabelled = usable_rows(frame, FEATURES, LABEL)
    rows = frame[usable]
    val = validation_mask(rows, KEY, FRACTION)
    train, validation = rows[~val], rows[val]
    return {"train": train, "validation": validation, "refused": refused, "unlabelled": unlabelled}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return _table()


@pytest.fixture
def snapshot(tmp_path, table) -> Snapshot:
    return _snapshot(tmp_path, table)


def test_one_process_trains_on_the_training_rows_with_their_scaling(snapshot, table):
    result = train_process(_spec(snapshot))
    want = _expected(table)
    train, validation = want["train"], want["validation"]
    assert (result.processes, result.refused_rows, result.unlabelled_rows) == (1, 3, 3)
    assert (result.train_rows, result.validation_rows) == (len(train), len(validation))
    assert result.train_rows + result.validation_rows == len(table) - 6 and 80 < result.validation_rows < 150
    state = result.state_dict
    np.testing.assert_allclose(state["x_mean"].numpy(), train[FEATURES].mean().to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(state["x_std"].numpy(), train[FEATURES].std(ddof=0).to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(float(state["y_mean"]), train[LABEL].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(state["y_std"]), train[LABEL].std(ddof=0), rtol=1e-5)
    # The baseline predicts the training mean for every validation row.
    baseline = math.sqrt(((validation[LABEL] - train[LABEL].mean()) ** 2).mean())
    assert result.baseline_rmse == pytest.approx(baseline, rel=1e-9)
    # Steps: every epoch takes all full batches of the training rows; the loss is logged every 4.
    steps_per_epoch = len(train) // 32
    assert [e["step"] for e in result.epochs] == [steps_per_epoch * (i + 1) for i in range(3)]
    assert result.steps == list(range(4, 3 * steps_per_epoch + 1, 4)) and len(result.train_loss) == len(result.steps)
    assert all(math.isfinite(v) for v in result.train_loss) and result.samples_per_s > 0
    # A linear relation: three epochs beat predicting the mean.
    assert result.epochs[-1]["val_rmse"] < 0.5 * result.baseline_rmse


def test_validation_rows_do_not_move_the_scaling(tmp_path, table):
    """Validation rows far off: the scaling (from the training rows only) does not change."""
    usable = usable_rows(table, FEATURES, LABEL)[0]
    validation = np.zeros(len(table), dtype=bool)
    validation[usable] = validation_mask(table[usable], KEY, FRACTION)
    shifted = table.copy()
    shifted.loc[validation, "a"] += 1000.0
    shifted.loc[validation, "y"] += 5000.0
    (tmp_path / "plain").mkdir()
    (tmp_path / "shifted").mkdir()
    plain = train_process(_spec(_snapshot(tmp_path / "plain", table), epochs=1)).state_dict
    moved = train_process(_spec(_snapshot(tmp_path / "shifted", shifted), epochs=1))
    for name in ("x_mean", "x_std", "y_mean", "y_std"):
        torch.testing.assert_close(moved.state_dict[name], plain[name])
    assert float(moved.state_dict["x_mean"][0]) < 11  # not the mean of all rows (about 260)
    assert moved.baseline_rmse > 4000  # the validation rows are scored against the training mean


@pytest.mark.parametrize("size", [2, 3])
def test_more_processes_split_and_scale_the_rows_as_one_does(snapshot, table, size):
    one = train_process(_spec(snapshot))
    results = _run(_spec(snapshot), size)
    assert all(r is None for r in results[1:])  # only rank 0 hands back a result
    many = results[0]
    assert many.processes == size
    assert (many.train_rows, many.validation_rows, many.refused_rows, many.unlabelled_rows) == (
        one.train_rows, one.validation_rows, one.refused_rows, one.unlabelled_rows)
    for name in ("x_mean", "x_std", "y_mean", "y_std"):
        torch.testing.assert_close(many.state_dict[name], one.state_dict[name], rtol=1e-6, atol=1e-6)
    assert many.baseline_rmse == pytest.approx(one.baseline_rmse, rel=1e-9)
    # Every process takes as many steps as the smallest shard's training rows allow.
    smallest = min(
        int((~validation_mask(shard[usable_rows(shard, FEATURES, LABEL)[0]], KEY, FRACTION)).sum())
        for shard in (table.iloc[slice(*shard_bounds(len(table), rank, size))] for rank in range(size)))
    assert many.epochs[-1]["step"] == 3 * (smallest // 32)
    assert many.steps == list(range(4, many.epochs[-1]["step"] + 1, 4))


def test_a_shard_smaller_than_a_batch_still_takes_one_step_per_epoch(snapshot):
    result = train_process(_spec(snapshot, batch_size=10_000, epochs=2, log_every_steps=1))
    assert [e["step"] for e in result.epochs] == [1, 2] and result.steps == [1, 2]


def test_no_training_rows_is_an_error(tmp_path, table):
    unlabelled = table.assign(y=np.nan)
    with pytest.raises(RuntimeError, match=r"gold\.features@v2: no training rows"):
        train_process(_spec(_snapshot(tmp_path, unlabelled)))


def test_the_same_seed_trains_the_same_weights(snapshot):
    first, second = (train_process(_spec(snapshot, epochs=1)) for _ in range(2))
    for name, tensor in first.state_dict.items():
        torch.testing.assert_close(second.state_dict[name], tensor, rtol=0, atol=0)
    other = train_process(_spec(snapshot, epochs=1, seed=12))
    assert not torch.equal(other.state_dict["net.0.weight"], first.state_dict["net.0.weight"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_without_a_device_fails_clearly(snapshot):
    with pytest.raises(RuntimeError, match="--gpu: process 0 sees no CUDA device"):
        train_process(_spec(snapshot, gpu=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_training_splits_and_scales_as_the_cpu_does(snapshot):
    cpu = train_process(_spec(snapshot, epochs=2))
    gpu = train_process(_spec(snapshot, epochs=2, gpu=True))
    assert (gpu.train_rows, gpu.validation_rows, gpu.refused_rows) == (cpu.train_rows, cpu.validation_rows, cpu.refused_rows)
    for name in ("x_mean", "x_std", "y_mean", "y_std"):
        torch.testing.assert_close(gpu.state_dict[name], cpu.state_dict[name])
        assert gpu.state_dict[name].device.type == "cpu"  # handed back on the CPU
    assert gpu.epochs[-1]["val_rmse"] < 0.5 * gpu.baseline_rmse
