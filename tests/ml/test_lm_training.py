"""The chat scenario's language model, trained on gold.chat_tokens built from the generated feed:
held-out perplexity clearly below the untrained model's and a unigram model's, the run tracked in
MLflow (curve, lineage, samples, a model that generates), the champion by perplexity; Horovod and
TorchDistributor with two processes reach the local perplexity; a run killed with kill -9 at a
checkpoint is resumed by `lakehouse train --resume` and its step count and loss curve go on."""

from __future__ import annotations

import math
import shutil

import pytest

from lakehouse.cli import main
from lakehouse.config import load_config
from lakehouse.failpoints import FAILPOINTS_ENV
from lakehouse.runner import run_flow
from lakehouse.tables import resolve_table, table_exists
from ml.run import run_training
from ml.tracking import CHAMPION, tracking_uri
from tests.conftest import CONF_DIR
from tests.processes import start_job

pytestmark = pytest.mark.slow
ONCE = {"availableNow": True}
# A small model, for two cores: one epoch of about 90 steps of 16 sequences.
SMALL = ["training.lm.d_model=64", "training.lm.layers=2", "training.lm.heads=4", "training.epochs=1",
         "training.lm.checkpoint_every_steps=20", "training.lm.sample_tokens=40"]


@pytest.fixture(scope="module")
def chat_lm(spark, chat_refined, tmp_path_factory):
    """A copy of the chat feed's tables with its gold tables built, and one local run on them:
    (config, the run's summary)."""
    refined, _ = chat_refined
    data = tmp_path_factory.mktemp("chat_lm") / "data"
    # The gold tables test_chat_gold built there, if it ran first (deterministic builds: the same
    # rows as building them here); any it did not build are built here.
    shutil.copytree(refined.storage.data_dir / "tables", data / "tables")
    config = load_config("test", conf_dir=CONF_DIR, data_dir=data, overrides=SMALL, scenario="chat")
    for name in ("chat_near_duplicates", "chat_documents", "chat_tokens"):
        if not table_exists(spark, resolve_table(config, f"gold.{name}")):
            assert run_flow(spark, config, f"gold.{name}", ONCE) == 0, name
    return config, run_training(spark, config, "local", 1, gpu=False, force=False)


def _client(config):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(config))
    return MlflowClient()


def test_the_model_learns_and_the_run_is_tracked(chat_lm):
    import mlflow

    config, local = chat_lm
    figures, perplexity = local.figures, local.final["val_perplexity"]
    assert figures["untrained_perplexity"] > 150  # about the 259 tokens' uniform guess
    assert perplexity < 0.6 * figures["unigram_perplexity"] and perplexity < 0.2 * figures["untrained_perplexity"]

    client = _client(config)
    run = client.get_run(local.run_id)
    assert run.info.status == "FINISHED" and run.data.params["task"] == "causal_lm"
    assert run.data.params["d_model"] == "64" and run.data.params["seq_len"] == "256"
    tags = run.data.tags
    assert "gold.chat_tokens@v" in tags["input_tables"] and "gold.chat_documents@v" in tags["input_tables"]
    curve = client.get_metric_history(local.run_id, "val_perplexity")
    assert [m.step for m in sorted(curve, key=lambda m: m.step)][0] == 0 and len(curve) == 2  # untrained, 1 epoch
    losses = sorted(client.get_metric_history(local.run_id, "train_loss"), key=lambda m: m.step)
    assert len(losses) >= 10 and losses[-1].value < losses[0].value
    samples = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/samples.txt")
    for prompt in config.training.lm.sample_prompts:
        assert f"### prompt: {prompt!r}" in samples
    assert local.champion
    champion = client.get_model_version_by_alias(config.training.registered_model, CHAMPION)
    generated = mlflow.pyfunc.load_model(f"models:/{config.training.registered_model}@{CHAMPION}").predict(
        __import__("pandas").DataFrame({"prompt": ["<|user|> "]}), params={"new_tokens": 12})
    assert champion.run_id == local.run_id and isinstance(generated[0], str) and len(generated[0].encode()) <= 12


def test_horovod_and_torch_distributor_reach_the_local_perplexity(spark, chat_lm):
    """Two processes of 8 sequences take the local run's steps of 16 (one shard each, so other
    batches, in another order): the held-out loss (nats per token) is within 5% of the local
    run's, a perplexity within a factor of about 1.15 (at about 18, well below the unigram
    model's 35), and below the unigram model's."""
    config, local = chat_lm
    half = load_config("test", conf_dir=CONF_DIR, data_dir=config.storage.data_dir,
                       overrides=[*SMALL, "training.batch_size=8"], scenario="chat")
    local_loss = math.log(local.final["val_perplexity"])
    for backend in ("horovod", "torch-distributor"):
        summary = run_training(spark, half, backend, 2, gpu=False, force=False)
        assert math.log(summary.final["val_perplexity"]) == pytest.approx(local_loss, rel=0.05), backend
        assert summary.final["val_perplexity"] < local.figures["unigram_perplexity"], backend


def test_a_run_killed_at_a_checkpoint_resumes_where_it_stopped(spark, chat_lm, subprocess_env, capsys):
    config, local = chat_lm
    sets = [arg for item in SMALL for arg in ("--set", item)]
    job = start_job(config, {**subprocess_env, FAILPOINTS_ENV: "train.checkpoint@40=kill"}, "train.log",
                    "--scenario", "chat", *sets, "train")
    assert job.wait(timeout=600) == -9
    client = _client(config)
    experiment = client.get_experiment_by_name(config.training.experiment.replace("{env}", config.env))
    killed = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    assert len(killed) == 1 and not client.get_metric_history(killed[0].info.run_id, "train_loss")
    run_id = killed[0].info.run_id

    args = ["--env", "test", "--data-dir", str(config.storage.data_dir), "--scenario", "chat", *sets, "train"]
    assert main([*args, "--resume", run_id]) == 0
    assert f"resuming run {run_id} from step 40" in capsys.readouterr().out
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["resumed_from_step"] == 40
    steps = [m.step for m in sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)]
    unbroken = [m.step for m in sorted(client.get_metric_history(local.run_id, "train_loss"), key=lambda m: m.step)]
    assert steps == unbroken  # the curve from before the kill, then on from step 40 to the same last step
    final = run.data.metrics["val_perplexity"]
    assert final == pytest.approx(local.final["val_perplexity"], rel=1e-3)  # the same steps: the same model

    assert main([*args, "--resume", run_id]) == 2  # finished: nothing to resume
    assert "finished: there is nothing to resume" in capsys.readouterr().err
    assert table_exists(spark, resolve_table(config, "gold.chat_tokens"))
