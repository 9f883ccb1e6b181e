"""Training on the gold feature table: the model learns; Horovod and TorchDistributor with two
processes reach what one process reaches; the MLflow run holds what it should; the quality gate
refuses; scoring writes one prediction per feature row."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from lakehouse.cli import main
from lakehouse.tables import read_table, resolve_table
from ml.run import run_training
from ml.tracking import CHAMPION, tracking_uri
from tests.conftest import TRAINED_EPOCHS as EPOCHS

pytestmark = pytest.mark.slow
ONCE = {"availableNow": True}


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


def _champion_files(config):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(config))
    client = MlflowClient()
    name = config.training.registered_model
    champion = client.get_model_version_by_alias(name, CHAMPION)
    location = client.get_model_version_download_uri(name, champion.version)
    return client, champion, Path(mlflow.artifacts.download_artifacts(artifact_uri=location))


def test_the_model_is_weights_and_architecture_and_loads_back_with_the_same_predictions(spark, trained):
    """No pickle in the model's files; MLflow's pyfunc (loader ml.model), the safe reader and
    gold.predictions all give the trained model's predictions."""
    import mlflow
    import numpy as np
    import torch

    from ml.model import load_model_files
    from ml.tracking import MODEL_FILES

    config, _ = trained
    _, _, files = _champion_files(config)
    assert sorted(p.name for p in (files / "data" / MODEL_FILES).iterdir()) == ["architecture.json", "state_dict.pt"]
    assert not list(files.rglob("*.pkl"))
    model, features = load_model_files(files / "data" / MODEL_FILES)
    assert features == config.training.features
    rows = read_table(spark, resolve_table(config, "gold.telemetry_features")).orderBy("host", "minute").limit(50).toPandas()
    with torch.no_grad():
        expected = model(torch.tensor(rows[features].to_numpy(dtype="float32"))).numpy()
    pyfunc = mlflow.pyfunc.load_model(f"models:/{config.training.registered_model}@{CHAMPION}")
    np.testing.assert_allclose(pyfunc.predict(rows[features].astype("float32")), expected, rtol=1e-6)
    assert main(["--env", "test", "--data-dir", str(config.storage.data_dir), "score"]) == 0
    scored = read_table(spark, resolve_table(config, "gold.predictions")).orderBy("host", "minute").limit(50).toPandas()
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected, rtol=1e-5)


class _Planted:
    """Unpickling this calls open(marker, "w"): the marker file shows the pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_score_runs_no_code_from_the_artifact_store(spark, trained, tmp_path, capsys):
    """A planted pickle in place of the weights is refused unread; a version whose files lie
    outside the registry's artifact store is not loaded."""
    import shutil

    import torch

    from ml.tracking import MODEL_FILES

    config, _ = trained
    client, champion, files = _champion_files(config)
    location = client.get_model_version_download_uri(config.training.registered_model, champion.version)
    planted_at = Path(location.removeprefix("file://")).parent / "planted"
    shutil.copytree(files, planted_at)
    marker = tmp_path / "pickle-ran"
    torch.save({"net.0.weight": _Planted(marker)}, planted_at / "data" / MODEL_FILES / "state_dict.pt")
    outside = tmp_path / "elsewhere"
    shutil.copytree(files, outside)
    for name, source in (("planted_model", planted_at.as_uri()), ("outside_model", outside.as_uri())):
        client.create_registered_model(name)
        version = client.create_model_version(name, source, run_id=champion.run_id)
        client.set_registered_model_alias(name, CHAMPION, version.version)
        capsys.readouterr()
        code = main(["--env", "test", "--data-dir", str(config.storage.data_dir),
                     "--set", f"training.registered_model={name}", "score"])
        err = capsys.readouterr().err
        assert code == 1, err
        assert ("not a plain state dict" in err) if name == "planted_model" else ("outside the artifact store" in err)
    assert not marker.exists()


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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_the_run_shows_in_the_mlflow_ui_in_a_real_browser(trained, monkeypatch, capsys):
    """`mlflow server` on the project's store; headless Chromium (Debian's, via chromedriver) opens
    the experiment and the run; the run, its parameters and the loss chart are on screen."""
    import subprocess
    import sys
    import time
    import urllib.request

    import mlflow
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    config, local = trained
    mlflow.set_tracking_uri(tracking_uri(config))
    experiment = mlflow.get_experiment_by_name(config.training.experiment.replace("{env}", config.env))
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen([str(mlflow_bin), "server", "--backend-store-uri", tracking_uri(config),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    driver = None
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow server did not come up") from None
                time.sleep(1)

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        wait = WebDriverWait(driver, 60)

        driver.get(f"{base}/#/experiments/{experiment.experiment_id}")
        wait.until(EC.presence_of_element_located((By.XPATH, f"//*[contains(text(), '{experiment.name}')]")))
        driver.save_screenshot(str(artifacts / "mlflow_experiment.png"))

        driver.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{local.run_id}")
        wait.until(EC.presence_of_element_located((By.XPATH, "//*[contains(text(), 'learning_rate')]")))
        page = driver.find_element(By.TAG_NAME, "body").text
        assert "learning_rate" in page and "batch_size" in page and str(EPOCHS) in page
        driver.save_screenshot(str(artifacts / "mlflow_run.png"))

        driver.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{local.run_id}/model-metrics")
        wait.until(EC.presence_of_element_located((By.XPATH, "//*[contains(text(), 'train_loss')]")))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".js-plotly-plot, canvas, svg.main-svg")))
        time.sleep(2)  # let the chart draw before the screenshot
        driver.save_screenshot(str(artifacts / "mlflow_loss_chart.png"))
        assert (artifacts / "mlflow_loss_chart.png").stat().st_size > 10_000

        # A run tracked through the server with credentials in $MLFLOW_TRACKING_URI: they reach
        # MLflow as its username and password variables, and no output, parameter or tag holds them.
        import ml.tracking

        for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setattr(ml.tracking, "_ENVIRONMENT_TRACKING_URI", f"http://bob:hunter2@127.0.0.1:{port}")
        capsys.readouterr()
        assert main(["--env", "test", "--data-dir", str(config.storage.data_dir), "train", "--epochs", "1"]) == 0
        printed = capsys.readouterr()
        assert "hunter2" not in printed.out + printed.err and "bob" not in printed.out
        run_id = re.search(r"^run (\w+) in experiment", printed.out, re.M).group(1)
        mlflow.set_tracking_uri(base)
        tracked = mlflow.get_run(run_id)
        assert tracked.data.params["epochs"] == "1"
        assert not [v for v in [*tracked.data.params.values(), *tracked.data.tags.values()] if "hunter2" in v]
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "hunter2"
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
