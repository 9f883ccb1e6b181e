"""Training the causal language model, in each process of any backend (``ml.train.train_process``
calls :func:`train_lm` when ``training.task`` is ``causal_lm``).

Each process reads its shard of the pinned token table; rows flagged held out (whole
conversations, gold.chat_tokens' ``heldout``) are evaluated on, the rest trained on. The shard is
kept on the device as one token matrix, so on a GPU no loader stands between the steps. Every
process takes the same number of steps per epoch (the smallest shard's), in an order fixed by the
seed, the epoch and the rank: a resumed run takes exactly the batches it would have taken.

Perplexity is exp of the mean next-token cross-entropy over every held-out token of every process.
It is measured before the first step (the untrained model), after each epoch, and for a unigram
model of the training tokens (the baseline a language model must beat). Rank 0 writes a
checkpoint (weights, optimiser state, step, the curves so far) every ``checkpoint_every_steps``;
`lakehouse train --resume RUN_ID` starts from it (ml/run.py).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext

import numpy as np
import torch

from lakehouse.failpoints import failpoint
from ml.data import read_shard
from ml.lm import batch_function, build_model, lm_loss, token_matrix
from ml.spec import CHECKPOINT_FILE, TrainResult, resume_settings


def autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast on a GPU when asked (CPU: full precision, unless a test asks)."""
    if not bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_lm(spec, comm, device: torch.device):
    """The whole run in this process; rank 0 returns the TrainResult (module doc)."""
    lm = spec.lm
    torch.manual_seed(spec.seed)  # the same initial weights everywhere (and broadcast from rank 0)

    def total(values) -> np.ndarray:
        return comm.allreduce_sum(torch.tensor(values, dtype=torch.float64)).numpy()

    frame = read_shard(spec.snapshot, [lm.tokens_column, lm.heldout_column], comm.rank, comm.size)
    tokens = token_matrix(list(frame[lm.tokens_column]), lm.seq_len, lm.pad_id)
    heldout = frame[lm.heldout_column].fillna(False).to_numpy(dtype=bool)
    train_set, heldout_set = tokens[~heldout].to(device), tokens[heldout].to(device)
    batch_fn = batch_function(lm)
    counts = total([len(train_set), len(heldout_set)])
    per_rank = np.zeros(comm.size)
    per_rank[comm.rank] = len(train_set)
    fewest = int(total(per_rank).min())
    if fewest == 0:
        raise RuntimeError(f"{spec.snapshot.table}@v{spec.snapshot.version}: a training process has no rows to train "
                           f"on ({int(counts[0]):,} training rows over {comm.size} processes)")
    steps_per_epoch = max(1, fewest // spec.batch_size)

    model = build_model(lm).to(device)
    optimizer_class = torch.optim.AdamW if spec.optimizer == "adam" else torch.optim.SGD
    optimizer = optimizer_class(model.parameters(), lr=spec.learning_rate)
    result = TrainResult(comm.size, int(counts[0]), int(counts[1]), float("nan"))
    start_step = _restore(spec, model, optimizer, result, device)
    steps = np.zeros(comm.size)
    steps[comm.rank] = start_step
    if len(set(total(steps).tolist())) != 1:  # a stale copy of the file somewhere: the ranks would part ways
        raise RuntimeError(f"the training processes read different checkpoints from {spec.checkpoint_dir}")
    trained, optimizer = comm.prepare(model, optimizer)

    def evaluate() -> dict:
        nll, scored = _heldout_nll(model, heldout_set, batch_fn, lm, spec.batch_size, device, spec.gpu)
        summed = total([nll, scored])
        loss = summed[0] / summed[1] if summed[1] else float("nan")
        return {"val_loss": float(loss), "val_perplexity": math.exp(min(loss, 50.0))}

    if start_step == 0:
        result.figures["unigram_perplexity"] = _unigram_perplexity(train_set, heldout_set, batch_fn, lm, total)
        result.figures["untrained_perplexity"] = evaluate()["val_perplexity"]
    context = _Loop(spec, comm, model, trained, optimizer, train_set, batch_fn, device, steps_per_epoch, total)
    context.run(start_step, result, evaluate)
    if comm.rank != 0:
        return None
    result.state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return result


class _Loop:
    """The steps, the loss curve, the per-epoch evaluation and the checkpoints."""

    def __init__(self, spec, comm, model, trained, optimizer, train_set, batch_fn, device, steps_per_epoch, total):
        self.spec, self.comm, self.model, self.trained, self.optimizer = spec, comm, model, trained, optimizer
        self.train_set, self.batch_fn, self.device = train_set, batch_fn, device
        self.steps_per_epoch, self.total = steps_per_epoch, total
        lm = spec.lm
        self.window, self.saving = [], 0.0  # training losses since the last point; seconds spent saving
        self.last_step = spec.epochs * steps_per_epoch
        if lm.max_steps is not None:
            self.last_step = min(self.last_step, lm.max_steps)

    def batches(self, epoch: int, first: int):
        """The epoch's batches from its ``first`` step on: the same order in every run."""
        size = self.spec.batch_size
        generator = torch.Generator().manual_seed(self.spec.seed * 1_000_003 + epoch * 7919 + self.comm.rank)
        order = torch.randperm(len(self.train_set), generator=generator).to(self.device)
        for i in range(first, self.steps_per_epoch):
            yield self.train_set[order[i * size:(i + 1) * size]]

    def step(self, rows: torch.Tensor) -> tuple[float, int]:
        lm = self.spec.lm
        inputs, targets = self.batch_fn(rows, lm.pad_id)
        self.optimizer.zero_grad()
        with autocast(self.device, self.spec.gpu and lm.bf16):
            logits = self.trained(inputs)  # through the wrapper: DDP synchronises gradients there
        loss = lm_loss(logits, targets, lm.pad_id)
        loss.backward()
        self.optimizer.step()
        return loss.item(), int((targets != lm.pad_id).sum())

    def run(self, step: int, result, evaluate) -> None:
        spec, tokens, rows_trained, seconds = self.spec, 0, 0, 0.0
        while step < self.last_step:
            epoch, first = divmod(step, self.steps_per_epoch)
            self.trained.train()
            started, self.saving = time.perf_counter(), 0.0
            for rows in self.batches(epoch, first):
                loss, scored = self.step(rows)
                step, tokens, rows_trained = step + 1, tokens + scored, rows_trained + len(rows)
                self.window.append(loss)
                if step % spec.log_every_steps == 0 or step == self.last_step:
                    self.log(step, result)
                if step == self.last_step or step % self.steps_per_epoch == 0:
                    break
                if step % spec.lm.checkpoint_every_steps == 0:
                    self.checkpoint(step, result)
            seconds += time.perf_counter() - started - self.saving
            metrics = evaluate()
            if self.comm.rank == 0:
                result.epochs.append({"epoch": epoch, "step": step, **metrics})
            self.checkpoint(step, result)
        figures = self.total([tokens, rows_trained, seconds])
        if figures[2] > 0:  # steps were taken here (a run resumed at its last step takes none)
            busy = figures[2] / self.comm.size  # seconds in steps, per process
            result.figures["tokens_per_s"] = float(figures[0] / busy)
            result.samples_per_s = float(figures[1] / busy)

    def log(self, step: int, result) -> None:
        """The mean training loss since the last point, over all processes (a collective)."""
        mean = self.total([sum(self.window), len(self.window)])
        if self.comm.rank == 0 and mean[1]:
            result.steps.append(step)
            result.train_loss.append(float(mean[0] / mean[1]))
        self.window = []

    def checkpoint(self, step: int, result) -> None:
        """Rank 0 saves the run so far (atomically: a crash leaves the previous one). The loss
        since the last point is logged first, so a resumed run's curve is an unbroken run's.
        Every process learns whether the save worked (a collective), so none waits on a rank 0
        that failed."""
        started = time.perf_counter()
        self.log(step, result)
        failed = None
        if self.comm.rank == 0 and self.spec.checkpoint_dir:
            state = {"step": step, "processes": self.comm.size, "settings": resume_settings(self.spec),
                     "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "history": {"steps": result.steps, "train_loss": result.train_loss, "epochs": result.epochs,
                                 "figures": result.figures}}
            try:
                save_checkpoint(state, self.spec.checkpoint_dir)
            except Exception as exc:  # noqa: BLE001 - whatever it is, every process must hear of it
                failed = exc
        if self.total([1.0 if failed else 0.0])[0]:
            raise failed or RuntimeError(f"rank 0 could not save the checkpoint of step {step}")
        self.saving += time.perf_counter() - started
        failpoint("train.checkpoint", step)


def save_checkpoint(state: dict, directory: str) -> None:
    """``state`` as ``<directory>/checkpoint.pt``: written to a file of this process's own, flushed
    to disk, then renamed over the previous one."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CHECKPOINT_FILE)
    scratch = f"{path}.{os.getpid()}.tmp"
    with open(scratch, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, path)


def _restore(spec, model, optimizer, result, device) -> int:
    """Load the checkpoint of a resumed run into the model, optimiser and curves: its step (0: a
    new run). The driver checked that it was written by as many processes (ml/resume.py)."""
    if not spec.resume:
        return 0
    state = torch.load(os.path.join(spec.checkpoint_dir, CHECKPOINT_FILE), map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    history = state["history"]
    result.steps, result.train_loss = list(history["steps"]), list(history["train_loss"])
    result.epochs, result.figures = list(history["epochs"]), dict(history["figures"])
    result.figures["resumed_from_step"] = state["step"]
    return int(state["step"])


@torch.no_grad()
def _heldout_nll(model, heldout_set, batch_fn, lm, batch_size: int, device, gpu: bool) -> tuple[float, int]:
    """(summed next-token cross-entropy, tokens scored) over this process's held-out rows."""
    model.eval()
    nll, scored = 0.0, 0
    for start in range(0, len(heldout_set), batch_size):
        inputs, targets = batch_fn(heldout_set[start:start + batch_size], lm.pad_id)
        with autocast(device, gpu and lm.bf16):
            logits = model(inputs)
        nll += float(lm_loss(logits, targets, lm.pad_id, reduction="sum"))
        scored += int((targets != lm.pad_id).sum())
    return nll, scored


def _unigram_perplexity(train_set, heldout_set, batch_fn, lm, total) -> float:
    """Held-out perplexity of predicting every token by its frequency among all processes' training
    targets (add-one smoothed)."""
    def target_counts(rows) -> np.ndarray:
        if not len(rows):
            return np.zeros(lm.vocab_size)
        targets = batch_fn(rows, lm.pad_id)[1].reshape(-1)
        targets = targets[targets != lm.pad_id].cpu()
        return torch.bincount(targets, minlength=lm.vocab_size).double().numpy()[:lm.vocab_size]

    counts = total(target_counts(train_set)) + 1.0
    log_p = np.log(counts / counts.sum())
    held = total(target_counts(heldout_set))
    return math.exp(-(held * log_p).sum() / held.sum()) if held.sum() else float("nan")
