"""What a causal_lm run logs to MLflow beyond what every run logs (ml/tracking.py): the model's
size, the loss curve with held-out perplexity per epoch and its baselines (the untrained model,
a unigram model), tokens/s, sample generations from fixed prompts (``samples.txt``), and the
model (weights and architecture; a pyfunc that generates text from a ``prompt`` column)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ml.train import TrainResult, TrainSpec

LM_FILES = "lm_files"  # the logged model's data directory: ml.lm's weights and architecture
SAMPLES_FILE = "samples.txt"
SAMPLE_SEED = 1234


def lm_params(spec: TrainSpec) -> dict:
    lm = spec.lm
    size = ({"module": lm.module, "module_options": lm.module_options} if lm.module else
            {"d_model": lm.d_model, "layers": lm.layers, "heads": lm.heads, "dropout": lm.dropout})
    return {**size, "vocab_size": lm.vocab_size, "seq_len": lm.seq_len, "batch_fn": lm.batch_fn or "ml.lm:next_token_batch",
            "max_steps": lm.max_steps, "checkpoint_every_steps": lm.checkpoint_every_steps,
            "bf16": spec.gpu and lm.bf16}


def trained_model(spec: TrainSpec, result: TrainResult):
    from ml.lm import build_model

    model = build_model(spec.lm)
    model.load_state_dict(result.state_dict)
    return model.eval()


def sample_text(model, spec: TrainSpec) -> str:
    """The configured prompts and the model's continuations (seeded sampling: repeatable)."""
    from ml.lm import generate

    lm = spec.lm
    parts = []
    for prompt in lm.sample_prompts:
        continuation = generate(model, prompt, lm.sample_tokens, lm.seq_len, seed=SAMPLE_SEED)
        parts.append(f"### prompt: {prompt!r}\n{prompt}{continuation}\n")
    return "\n".join(parts)


def log_lm(client, run_id: str, spec: TrainSpec, result: TrainResult):
    """Metrics, samples and the model into the active run ``run_id``; returns the model's info."""
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("train_loss", loss, now, step) for step, loss in zip(result.steps, result.train_loss, strict=True)]
    for epoch in result.epochs:
        metrics += [Metric(name, float(epoch[name]), now, epoch["step"]) for name in ("val_loss", "val_perplexity")]
    untrained = result.figures.get("untrained_perplexity")
    if untrained is not None:  # the curve starts at the untrained model's perplexity, step 0
        metrics.append(Metric("val_perplexity", float(untrained), now, 0))
    for name in ("untrained_perplexity", "unigram_perplexity", "tokens_per_s", "resumed_from_step"):
        if name in result.figures:
            metrics.append(Metric(name, float(result.figures[name]), now, 0))
    metrics.append(Metric("samples_per_s", result.samples_per_s, now, 0))
    # what an attempt whose logging failed half-way logged: not twice
    logged = {(key, m.step) for key in client.get_run(run_id).data.metrics
              for m in client.get_metric_history(run_id, key)}
    metrics = [m for m in metrics if (m.key, m.step) not in logged]
    for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    model = trained_model(spec, result)
    if spec.lm.sample_prompts:
        mlflow.log_text(sample_text(model, spec), SAMPLES_FILE)
    return _log_model(model, spec)


def _log_model(model, spec: TrainSpec):
    import mlflow
    import pandas as pd
    import torch
    from mlflow.models import infer_signature

    from ml.lm import save_lm_files

    example = pd.DataFrame({"prompt": spec.lm.sample_prompts[:1] or ["<|user|> "]})
    with tempfile.TemporaryDirectory() as scratch:
        files = Path(scratch) / LM_FILES
        save_lm_files(model, spec.lm, files)
        return mlflow.pyfunc.log_model(
            name="model", loader_module="ml.lm", data_path=str(files),
            signature=infer_signature(example, pd.Series(["text"], name="generated"),
                                      params={"new_tokens": spec.lm.sample_tokens}), input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        )
