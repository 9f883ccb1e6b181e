"""What the driver sends every training process (:class:`TrainSpec`) and what rank 0 sends back
(:class:`TrainResult`), for every task and backend (ml/train.py, ml/lm_train.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

from ml.data import Snapshot

CHECKPOINT_FILE = "checkpoint.pt"  # a causal_lm run's, in its checkpoint directory (ml/resume.py)


@dataclass
class TrainSpec:
    """Everything a training process needs; picklable, sent to every process."""

    snapshot: Snapshot
    features: list[str]
    label: str
    split_key: list[str]
    validation_fraction: float
    hidden: list[int]
    dropout: float
    optimizer: str
    learning_rate: float
    batch_size: int
    epochs: int
    seed: int
    log_every_steps: int
    backend: str = "local"
    gpu: bool = False
    task: str = "regression"  # or causal_lm: ml/lm_train.py, with the settings in lm
    lm: Any = None  # LanguageModelConfig (training.lm)
    checkpoint_dir: str | None = None  # causal_lm: where rank 0 keeps the run's checkpoint
    resume: bool = False  # causal_lm: start from checkpoint_dir's checkpoint


@dataclass
class TrainResult:
    """What rank 0 hands back to the driver."""

    processes: int
    train_rows: int
    validation_rows: int
    baseline_rmse: float  # predicting the training mean for every validation row
    refused_rows: int = 0  # not finite in float32 (ml.data.usable_rows), over all processes
    unlabelled_rows: int = 0  # no label
    steps: list[int] = field(default_factory=list)  # global step of each logged training loss
    train_loss: list[float] = field(default_factory=list)  # mean squared error in label-std units
    epochs: list[dict] = field(default_factory=list)  # per epoch: val_loss, val_rmse, val_mae
    samples_per_s: float = 0.0  # training samples over all processes per second of training
    state_dict: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)  # causal_lm: baseline perplexities, tokens/s, resumed_from_step

    def as_dict(self) -> dict:
        return asdict(self)


def resume_settings(spec) -> dict:
    """What a resumed run must share with the run it goes on with (the batches, steps and model
    depend on them): the optimiser's, the batch size, the seed, the epochs, and training.lm but
    for what only the samples and the GPU's autocast read."""
    lm = asdict(spec.lm) if is_dataclass(spec.lm) else dict(vars(spec.lm))
    for name in ("sample_prompts", "sample_tokens", "bf16"):
        lm.pop(name, None)
    return {"optimizer": spec.optimizer, "learning_rate": spec.learning_rate, "batch_size": spec.batch_size,
            "seed": spec.seed, "epochs": spec.epochs, "log_every_steps": spec.log_every_steps,
            **{f"lm.{name}": value for name, value in lm.items()}}
