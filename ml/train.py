"""The train function every backend runs, once per process.

``train_process(spec)`` runs the configured task: ``causal_lm`` in ml/lm_train.py, and here the
``regression`` task, which reads this process's shard of the pinned feature table, fits the
scaling on the training rows of all processes (sums exchanged with the backend), trains the
MLP with the squared-error loss, and evaluates on the validation rows of all processes after
each epoch. Every process takes the same number of steps per epoch (the smallest shard's), as
Horovod and DDP require. Rank 0 returns the history and the trained weights; the driver
(ml.run) logs them to MLflow.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ml.data import read_shard, usable_rows, validation_mask
from ml.dist import make_comm
from ml.model import MLPRegressor
from ml.spec import TrainResult, TrainSpec


def train_process(spec: TrainSpec) -> TrainResult | None:
    """The train function every backend runs in each of its processes."""
    comm = make_comm(spec.backend, spec.gpu)
    try:
        if spec.task == "causal_lm":
            from ml.lm_train import train_lm

            return train_lm(spec, comm, _device(spec, comm))
        return _train(spec, comm)
    finally:
        comm.close()


class ScalingError(RuntimeError):
    """The training rows give no usable scaling (none at all, or not finite)."""


@dataclass(frozen=True)
class Scaling:
    """Feature and label standardisation fitted on the training rows of every process."""

    train_rows: int
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float


def fit_scaling(x_train: np.ndarray, y_train: np.ndarray, total) -> Scaling:
    """Means and standard deviations over all processes' training rows, from the count, sums and
    sums of squares each process contributes (``total``: element-wise sum over processes).
    A constant column has std 0 (the model then only centres it: ml.model.set_scaling)."""
    n_feat = x_train.shape[1]
    sums = total(np.concatenate([[len(y_train)], x_train.sum(0), (x_train ** 2).sum(0),
                                 [y_train.sum(), (y_train ** 2).sum()]]))
    n_train = int(sums[0])
    if n_train == 0:
        raise ScalingError("no training rows")
    x_mean = sums[1:1 + n_feat] / n_train
    x_std = np.sqrt(np.maximum(sums[1 + n_feat:1 + 2 * n_feat] / n_train - x_mean ** 2, 0.0))
    y_mean = sums[-2] / n_train
    y_std = math.sqrt(max(sums[-1] / n_train - y_mean ** 2, 0.0))
    if not (np.isfinite(x_mean).all() and np.isfinite(x_std).all() and math.isfinite(y_mean) and math.isfinite(y_std)):
        raise ScalingError("the feature scaling is not finite")
    return Scaling(n_train, x_mean, x_std, float(y_mean), float(y_std))


def _device(spec: TrainSpec, comm) -> torch.device:
    if not spec.gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"--gpu: process {comm.rank} sees no CUDA device")
    device = torch.device("cuda", comm.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def _train(spec: TrainSpec, comm) -> TrainResult | None:
    device = _device(spec, comm)
    torch.manual_seed(spec.seed)  # the same initial weights everywhere (and broadcast from rank 0)

    def total(values) -> np.ndarray:
        """Element-wise sum over all processes, in float64."""
        return comm.allreduce_sum(torch.tensor(values, dtype=torch.float64)).numpy()

    frame = read_shard(spec.snapshot, [*spec.features, spec.label, *spec.split_key], comm.rank, comm.size)
    usable, refused, unlabelled = usable_rows(frame, spec.features, spec.label)
    frame = frame[usable]
    is_validation = validation_mask(frame, spec.split_key, spec.validation_fraction)
    x = frame[spec.features].to_numpy(dtype=np.float64)
    y = frame[spec.label].to_numpy(dtype=np.float64)
    x_train, y_train, x_val, y_val = x[~is_validation], y[~is_validation], x[is_validation], y[is_validation]
    try:
        scaling = fit_scaling(x_train, y_train, total)
    except ScalingError as exc:
        raise ScalingError(f"{spec.snapshot.table}@v{spec.snapshot.version}: {exc}") from None
    val_counts = total([len(y_val), ((y_val - scaling.y_mean) ** 2).sum()])
    n_val = int(val_counts[0])
    baseline_rmse = math.sqrt(val_counts[1] / n_val) if n_val else float("nan")
    skipped = total([refused, unlabelled])

    model = MLPRegressor(len(spec.features), spec.hidden, spec.dropout)
    model.set_scaling(scaling.x_mean.astype(np.float32), scaling.x_std.astype(np.float32),
                      np.float32(scaling.y_mean), np.float32(scaling.y_std))
    model.to(device)
    optimizer_class = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.SGD
    extra = {"momentum": 0.9} if spec.optimizer == "sgd" else {}
    trained, optimizer = comm.prepare(model, optimizer_class(model.parameters(), lr=spec.learning_rate, **extra))

    def as_tensor(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    train_set = (as_tensor(x_train), as_tensor((y_train - scaling.y_mean) / max(scaling.y_std, 1e-6)))
    val_set = (as_tensor(x_val), as_tensor(y_val))
    # The same number of steps on every process: the smallest shard's training rows.
    per_rank = np.zeros(comm.size)
    per_rank[comm.rank] = len(y_train)
    steps_per_epoch = max(1, int(total(per_rank).min()) // spec.batch_size)
    result = TrainResult(comm.size, scaling.train_rows, n_val, baseline_rmse, refused_rows=int(skipped[0]),
                         unlabelled_rows=int(skipped[1]))
    samples = _fit(spec, comm, model, trained, optimizer, train_set, val_set, steps_per_epoch, total, result)
    if comm.rank != 0:
        return None
    result.samples_per_s = samples[0] / max(samples[1] / comm.size, 1e-9)
    result.state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return result


def _fit(spec: TrainSpec, comm, model, trained, optimizer, train_set, val_set, steps_per_epoch: int, total,
         result: TrainResult) -> np.ndarray:
    """The epochs: ``steps_per_epoch`` steps each, the mean training loss every
    ``log_every_steps`` steps, then validation over all processes. Records on rank 0 into
    ``result``; returns (samples trained, seconds training) summed over processes."""
    xt, yt = train_set
    generator = torch.Generator().manual_seed(spec.seed * 1000 + comm.rank)
    step, trained_samples, train_seconds, window = 0, 0, 0.0, []
    for epoch in range(spec.epochs):
        trained.train()
        order = torch.randperm(len(yt), generator=generator).to(xt.device)
        started = time.perf_counter()
        for i in range(steps_per_epoch):
            batch = order[i * spec.batch_size:(i + 1) * spec.batch_size]
            optimizer.zero_grad()
            # Through the wrapper's forward (DDP synchronises gradients there), in label-std units.
            prediction = (trained(xt[batch]) - model.y_mean) / model.y_std
            loss = torch.nn.functional.mse_loss(prediction, yt[batch])
            loss.backward()
            optimizer.step()
            step += 1
            trained_samples += len(batch)
            window.append(loss.item())
            if step % spec.log_every_steps == 0:
                mean_loss = total([sum(window), len(window)])
                if comm.rank == 0:
                    result.steps.append(step)
                    result.train_loss.append(float(mean_loss[0] / mean_loss[1]))
                window = []
        train_seconds += time.perf_counter() - started
        metrics = _validate(model, trained, *val_set, total)
        if comm.rank == 0:
            result.epochs.append({"epoch": epoch, "step": step, **metrics})
    return total([trained_samples, train_seconds])


def _validate(model, trained, xv, yv, total) -> dict:
    """val_loss (label-std units), val_rmse and val_mae over every process's validation rows."""
    trained.eval()
    with torch.no_grad():
        errors = model(xv) - yv if len(yv) else torch.zeros(0, device=xv.device)
        scaled_errors = errors / model.y_std
        stats = total([float((errors ** 2).sum()), float(errors.abs().sum()), float((scaled_errors ** 2).sum()), len(yv)])
    count = stats[3] if stats[3] > 0 else float("nan")  # no validation rows: no validation metric
    return {"val_loss": stats[2] / count, "val_rmse": math.sqrt(stats[0] / count), "val_mae": stats[1] / count}
