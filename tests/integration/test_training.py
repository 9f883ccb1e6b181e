"""Training on the gold feature table: the model learns; Horovod and TorchDistributor with two
processes reach what one process reaches; the MLflow run holds what it should; the quality gate
refuses; scoring writes one prediction per feature row."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakehouse.bronze import run_bronze_ingest
from lakehouse.cli import main
from lakehouse.config import load_config
from lakehouse.generator import TelemetryGenerator, generate_batch
from lakehouse.gold import run_gold_tables
from lakehouse.silver import run_silver_refine
from lakehouse.tables import read_table, resolve_table
from ml.run import CHAMPION, run_training, tracking_uri
from tests.conftest import CONF_DIR

pytestmark = pytest.mark.slow
ONCE = {"availableNow": True}
EPOCHS = 12


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    """A feature table from 15,000 generated readings, and one local training run on it."""
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path_factory.mktemp("training") / "data")
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=11), landing, "telemetry", "t", 11, 15000, 4)
    assert run_bronze_ingest(spark, config, "telemetry", ONCE) == 0
    assert run_silver_refine(spark, config, "telemetry", ONCE) == 0
    assert run_gold_tables(spark, config, list(config.gold), ONCE) == 0
    local = run_training(spark, config, "local", 1, gpu=False, force=False, epochs=EPOCHS)
    return config, local


def test_the_model_learns_and_the_run_is_tracked(trained):
    import mlflow
    from mlflow.tracking import MlflowClient

    config, local = trained
    rmse = local.final["val_rmse"]
    assert rmse < 0.6 * local.baseline_rmse, (rmse, local.baseline_rmse)  # clearly below predicting the mean

    mlflow.set_tracking_uri(tracking_uri(config))
    client = MlflowClient()
    run = client.get_run(local.run_id)
    assert {"learning_rate", "batch_size", "epochs", "processes", "backend", "model_shape", "seed"} <= set(run.data.params)
    assert run.data.params["backend"] == "local" and run.data.params["epochs"] == str(EPOCHS)
    losses = client.get_metric_history(local.run_id, "train_loss")
    assert len(losses) >= 10 and losses[-1].value < losses[0].value
    assert len(client.get_metric_history(local.run_id, "val_rmse")) == EPOCHS
    tags = run.data.tags
    assert "gold.telemetry_features@v" in tags["input_tables"] and "gold.telemetry_minute@v" in tags["input_tables"]
    assert len(tags["git_commit"]) == 40 and 0.9 < float(tags["silver_quality_pass_rate"]) <= 1.0
    champion = client.get_model_version_by_alias(config.training.registered_model, CHAMPION)
    assert champion.run_id == local.run_id and local.champion
    loaded = mlflow.pytorch.load_model(f"models:/{config.training.registered_model}@{CHAMPION}")
    assert type(loaded).__name__ == "MLPRegressor"  # pickled, not a pt2 GraphModule


def test_horovod_and_torch_distributor_reach_the_local_loss(spark, trained):
    """Same seed, same data. Two processes average gradients over two batches of 128 rows (one
    step sees 256 rows) and shuffle per process, so they do not follow the local run step for
    step: the tolerance is 15% of the local validation RMSE. Horovod and TorchDistributor split,
    shuffle and average identically, so they agree to within 2%."""
    config, local = trained
    horovod = run_training(spark, config, "horovod", 2, gpu=False, force=False, epochs=EPOCHS)
    distributor = run_training(spark, config, "torch-distributor", 2, gpu=False, force=False, epochs=EPOCHS)
    for summary in (horovod, distributor):
        assert summary.final["val_rmse"] < 0.6 * summary.baseline_rmse
        assert summary.final["val_rmse"] == pytest.approx(local.final["val_rmse"], rel=0.15)
    assert horovod.final["val_rmse"] == pytest.approx(distributor.final["val_rmse"], rel=0.02)


def test_scoring_writes_one_prediction_per_row(spark, trained, capsys):
    config, _ = trained
    args = ["--env", "test", "--data-dir", str(config.storage.data_dir)]
    assert main([*args, "score"]) == 0
    predictions = read_table(spark, resolve_table(config, "gold.predictions"))
    features = read_table(spark, resolve_table(config, "gold.telemetry_features"))
    assert predictions.count() == features.count()
    assert predictions.select("host", "minute").distinct().count() == features.count()
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(config))
    champion = MlflowClient().get_model_version_by_alias(config.training.registered_model, CHAMPION)
    assert {r.model_version for r in predictions.select("model_version").distinct().collect()} == {str(champion.version)}
    assert predictions.where("prediction IS NULL").count() == 0


def test_quality_gate_and_gpu_refusals(trained, capsys):
    config, _ = trained
    args = ["--env", "test", "--data-dir", str(config.storage.data_dir)]
    assert main([*args, "--set", "training.min_quality_pass_rate=0.9999", "train"]) == 3
    assert "training refused" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main([*args, "train", "--gpu"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
