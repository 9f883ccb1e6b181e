"""The training section of the configuration (``training:``, conf/<layer>/training.yml): what
ml/ trains, on which gold table, and how (ml/run.py reads it). ``task`` picks the kind of model:
``regression`` (an MLP on a feature table's columns) or ``causal_lm`` (a decoder-only language
model on a table of token sequences, ``lm``). lakehouse/config/schema.py holds the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from lakehouse.config.values import Duration, Identifier, ImportName, Pattern, PositiveInt, Range, TableName


@dataclass(frozen=True)
class ModelConfig:
    hidden: list[PositiveInt] = field(default_factory=lambda: [64, 32])  # MLP hidden layer widths
    dropout: Annotated[float, Range(0.0, 0.9)] = 0.0


@dataclass(frozen=True)
class RetrainConfig:
    """`lakehouse run` retraining on its own (ml/retrain.py); off unless ``enabled``."""

    enabled: bool = False
    # Retrain when the training table has gained at least this many rows since the version the
    # champion was trained on (no champion yet: since empty) ...
    min_new_rows: PositiveInt | None = 5000
    every: Duration | None = None  # ... or when this long has passed since the champion's run started
    check_every: Duration = "1 minute"  # how often the run looks
    backend: Literal["local", "horovod", "torch-distributor"] = "local"
    num_proc: PositiveInt = 1

    def problems(self) -> list[tuple[str, str]]:
        if self.enabled and self.min_new_rows is None and self.every is None:
            return [("min_new_rows", "set min_new_rows or every (or both) to say when to retrain")]
        if self.backend == "local" and self.num_proc != 1:
            return [("num_proc", "the local backend runs one process")]
        return []


@dataclass(frozen=True)
class LanguageModelConfig:
    """``training.lm``: the causal language model (ml/lm.py) and its training table of token
    sequences (one array<int> column, e.g. gold.chat_tokens; held-out rows flagged by a column)."""

    tokens_column: Identifier = "tokens"
    heldout_column: Identifier = "heldout"  # true: the row is evaluated on, never trained on
    vocab_size: PositiveInt = 259  # token ids 0..vocab_size-1 (bytes, BOS, EOS, PAD: lakehouse/text_tokens.py)
    pad_id: Annotated[int, Range(low=0)] = 258  # fills short sequences; never a target
    seq_len: PositiveInt = 256  # tokens per training sequence (a longer row is cut, a shorter one padded)
    # The built-in model (ml/lm.py TinyGPT): its size.
    d_model: PositiveInt = 128
    layers: PositiveInt = 2
    heads: PositiveInt = 4
    dropout: Annotated[float, Range(0.0, 0.9)] = 0.0
    # Or a model of one's own: "package.module:Class", built as Class(vocab_size=..., **module_options),
    # taking token ids (batch x time) and returning logits (batch x time x vocab_size).
    module: ImportName | None = None
    module_options: dict[str, Any] = field(default_factory=dict)
    # "package.module:function": (tokens, pad_id) -> (inputs, targets); default ml.lm.next_token_batch
    batch_fn: ImportName | None = None
    checkpoint_every_steps: PositiveInt = 50  # `lakehouse train --resume RUN_ID` continues from the last
    max_steps: PositiveInt | None = None  # stop after this many steps in all (null: the epochs decide)
    bf16: bool = True  # autocast to bfloat16 on a GPU (ignored on CPU)
    # Generations from these prompts after training, logged to the run as samples.txt.
    sample_prompts: list[str] = field(default_factory=lambda: ["<|user|> "])
    sample_tokens: PositiveInt = 80

    def problems(self) -> list[tuple[str, str]]:
        if self.pad_id >= self.vocab_size:
            return [("pad_id", f"must be below vocab_size {self.vocab_size}")]
        if self.module is None and self.d_model % self.heads:
            return [("heads", f"d_model {self.d_model} is not a multiple of heads {self.heads}")]
        return []


@dataclass(frozen=True)
class TrainingConfig:
    """Training on a gold table (ml/): the task, data, model, optimiser, tracking, gate."""

    table: TableName  # the training table, read at a pinned Delta version
    registered_model: Annotated[str, Pattern(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$", "a model name")]
    task: Literal["regression", "causal_lm"] = "regression"
    # regression: feature columns, the label, and the columns whose hash puts a row in validation
    features: list[Identifier] = field(default_factory=list)
    label: Identifier | None = None
    split_key: list[Identifier] = field(default_factory=list)
    lm: LanguageModelConfig = field(default_factory=LanguageModelConfig)  # causal_lm
    validation_fraction: Annotated[float, Range(0.01, 0.9)] = 0.2
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: Literal["sgd", "adam"] = "adam"
    learning_rate: Annotated[float, Range(low=1e-7)] = 0.003
    batch_size: PositiveInt = 128  # per process
    epochs: PositiveInt = 20
    seed: int = 7
    log_every_steps: PositiveInt = 10  # training loss (averaged over processes) every N steps
    # MLflow: tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<data_dir>/mlflow.db);
    # experiment name, "{env}" replaced by the environment.
    tracking_uri: str | None = None
    experiment: str = "lakehouse-{env}"
    # Quality gate: refuse (exit 3) when the share of rows the entity's last silver batches kept
    # is below this (unless --force).
    min_quality_pass_rate: Annotated[float, Range(0.0, 1.0)] = 0.9
    quality_window_batches: PositiveInt = 20
    # Rows whose features or label are not finite (NaN, +-Infinity, or beyond float32, the
    # model's precision) are refused; above this share of the table the run stops (exit 3).
    max_refused_fraction: Annotated[float, Range(0.0, 1.0)] = 0.01
    retrain: RetrainConfig = field(default_factory=RetrainConfig)  # in `lakehouse run`
    # Where the registry keeps models when names are qualified (Unity Catalog: "<catalog>.<schema>");
    # the model is then registered as "<registry_schema>.<registered_model>" (:attr:`model_name`).
    registry_schema: Annotated[str, Pattern(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$",
                                            "catalog.schema")] | None = None

    @property
    def model_name(self) -> str:
        """The registered model's full name (what MLflow's registry is asked for)."""
        return f"{self.registry_schema}.{self.registered_model}" if self.registry_schema else self.registered_model

    def problems(self) -> list[tuple[str, str]]:
        if self.registry_schema and "." in self.registered_model:
            return [("registered_model", f"is qualified by registry_schema {self.registry_schema}: give the model's "
                                         "own name, without dots")]
        if self.task != "regression":
            return []
        if self.label is None:
            return [("label", "the regression task needs a label column")]
        if not self.split_key:
            return [("split_key", "the regression task needs the columns that split off validation rows")]
        if self.label in self.features:
            return [("label", f"'{self.label}' is also a feature")]
        if not self.features:
            return [("features", "at least one feature column is required")]
        return []
