"""The causal language model task (``training.task: causal_lm``): the model, its batches and loss,
text in and out, and its files.

The training table holds token sequences (gold.chat_tokens: a document's UTF-8 bytes between BOS
and EOS, lakehouse/text_tokens.py). A batch is a (sequences x seq_len + 1) matrix of token ids,
padded with the pad token; the batch function turns it into inputs and next-token targets, and
the loss is the cross-entropy over every target that is not padding. The built-in model is
:class:`TinyGPT`, a decoder-only transformer whose size is in ``training.lm``; a user's own
``torch.nn.Module`` and batch function can be named there instead (``module``, ``batch_fn``).
ml/lm_train.py trains it; ml/lm_tracking.py logs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lakehouse.text_tokens import BOS, EOS

if TYPE_CHECKING:  # the configuration is imported where it is used: a GPU check runs without it
    from lakehouse.config.training import LanguageModelConfig


def load_import_name(name: str):
    from lakehouse.config.values import load_import_name as load

    return load(name)


class _Block(nn.Module):
    """Pre-norm self-attention (causal) and an MLP, each added to the residual stream."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, time, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                  dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, time, width))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    """A small decoder-only transformer: token and position embeddings, ``layers`` blocks, a final
    norm, and an output layer that shares the token embedding's weights."""

    def __init__(self, vocab_size: int, seq_len: int, d_model: int = 128, layers: int = 2, heads: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.seq_len = seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (batch x time, time <= seq_len) -> logits (batch x time x vocab)."""
        x = self.embed(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def next_token_batch(tokens: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The default batch function: inputs are every token but the last, targets every token but
    the first (a target equal to ``pad_id`` is not scored)."""
    return tokens[:, :-1], tokens[:, 1:]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the next token, padding left out (natural log: perplexity is its exp)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=pad_id, reduction=reduction)


def build_model(lm: LanguageModelConfig) -> nn.Module:
    """The configured model: the user's ``module`` class if named, else :class:`TinyGPT`."""
    if lm.module:
        return load_import_name(lm.module)(vocab_size=lm.vocab_size, **lm.module_options)
    return TinyGPT(lm.vocab_size, lm.seq_len, lm.d_model, lm.layers, lm.heads, lm.dropout)


def batch_function(lm: LanguageModelConfig):
    return load_import_name(lm.batch_fn) if lm.batch_fn else next_token_batch


def check_code(lm: LanguageModelConfig) -> str | None:
    """Why the configured module or batch function cannot be used (None: they can), checked on
    the driver before any training process starts."""
    for key, name in (("module", lm.module), ("batch_fn", lm.batch_fn)):
        if name is None:
            continue
        try:
            loaded = load_import_name(name)
        except (ImportError, AttributeError) as exc:
            return f"training.lm.{key}: cannot load {name}: {exc}"
        if not callable(loaded):
            return f"training.lm.{key}: {name} cannot be called"
    try:
        model = build_model(lm)
    except Exception as exc:  # noqa: BLE001 - the user's constructor: any error is a configuration error
        return f"training.lm.module: {lm.module}(vocab_size={lm.vocab_size}, **module_options) fails: {exc}"
    if not isinstance(model, nn.Module):
        return f"training.lm.module: {lm.module} does not build a torch.nn.Module"
    return None


def token_matrix(rows, seq_len: int, pad_id: int) -> torch.Tensor:
    """Sequences of token ids (each an array) as one (rows x seq_len + 1) int64 matrix: longer
    ones cut, shorter ones padded."""
    matrix = np.full((len(rows), seq_len + 1), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        values = np.asarray(row if row is not None else [], dtype=np.int64)[:seq_len + 1]
        matrix[i, :len(values)] = values
    return torch.from_numpy(matrix)


# -- text in and out (the byte-level tokens of lakehouse/text_tokens.py) --------------------


def encode(text: str) -> list[int]:
    return [BOS, *text.encode("utf-8")]


def decode(ids) -> str:
    """Bytes up to the first EOS, as text (bytes that are not UTF-8 shown as U+FFFD)."""
    data = bytearray()
    for token in ids:
        if token == EOS:
            break
        if 0 <= token < 256:
            data.append(token)
    return data.decode("utf-8", errors="replace")


@torch.no_grad()
def generate(model: nn.Module, prompt: str, new_tokens: int, seq_len: int, temperature: float = 0.8,
             seed: int = 0) -> str:
    """The prompt's continuation (without the prompt), sampled (seeded: the same text for the same
    model and prompt)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids = encode(prompt)
    start = len(ids)
    for _ in range(new_tokens):
        logits = model(torch.tensor([ids[-seq_len:]]))[0, -1].float()
        probabilities = torch.softmax(logits / temperature, dim=-1)
        token = int(torch.multinomial(probabilities, 1, generator=generator))
        if token == EOS:
            break
        ids.append(token)
    return decode(ids[start:])


# -- the model's files: weights and architecture (no pickle; as ml/model.py for regression) -

ARCHITECTURE_FILE, WEIGHTS_FILE = "architecture.json", "state_dict.pt"


def save_lm_files(model: nn.Module, lm: LanguageModelConfig, directory) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    architecture = {"kind": "causal_lm", "module": lm.module, "module_options": lm.module_options,
                    "vocab_size": lm.vocab_size, "seq_len": lm.seq_len, "d_model": lm.d_model,
                    "layers": lm.layers, "heads": lm.heads, "pad_id": lm.pad_id}
    (directory / ARCHITECTURE_FILE).write_text(json.dumps(architecture, indent=2))
    torch.save({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}, directory / WEIGHTS_FILE)


def load_lm_files(directory) -> tuple[nn.Module, LanguageModelConfig]:
    """The model (eval mode) and its settings; the weights are read as plain tensors only."""
    directory = Path(directory)
    from lakehouse.config.training import LanguageModelConfig

    architecture = json.loads((directory / ARCHITECTURE_FILE).read_text())
    if architecture.pop("kind", None) != "causal_lm":
        raise ValueError(f"{directory / ARCHITECTURE_FILE} is not a causal_lm architecture")
    lm = LanguageModelConfig(**architecture)
    model = build_model(lm)
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return model.eval(), lm


class PyfuncLanguageModel:
    """What mlflow.pyfunc.load_model returns: ``predict(DataFrame with a prompt column)`` -> texts."""

    def __init__(self, model: nn.Module, lm: LanguageModelConfig):
        self.model, self.lm = model, lm

    def predict(self, data, params=None):
        prompts = list(data["prompt"]) if hasattr(data, "columns") else list(data)
        new_tokens = int((params or {}).get("new_tokens", self.lm.sample_tokens))
        return [generate(self.model, str(prompt), new_tokens, self.lm.seq_len) for prompt in prompts]


def _load_pyfunc(path: str) -> PyfuncLanguageModel:
    """MLflow's pyfunc entry point (loader_module ml.lm)."""
    return PyfuncLanguageModel(*load_lm_files(path))
