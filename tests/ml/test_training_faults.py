"""Non-finite numbers never reach the model registry: a huge value is refused by training, a run
without validation rows or with a NaN metric is never champion, and promotion is a compare-and-set."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.cli import main
from lakehouse.config import load_config
from lakehouse.failpoints import FAILPOINTS_ENV
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.runner import run_flow, run_flows
from lakehouse.tables import read_table, resolve_table
from ml.run import run_training
from ml.score import score
from ml.tracking import CHAMPION, promote, quiet_mlflow, tracking_uri
from tests.conftest import CONF_DIR
from tests.faults import land, lines

pytestmark = pytest.mark.slow
ONCE = {"availableNow": True}


@pytest.fixture(scope="module")
def poisoned(spark, tmp_path_factory):
    """A feature table from 6,000 generated readings plus one whose exhaust_temp_c is 1e300."""
    data_dir = tmp_path_factory.mktemp("poisoned") / "data"
    config = load_config("test", conf_dir=CONF_DIR, data_dir=data_dir)
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=13), landing, "telemetry", "p", 13, 6000, 3)
    first = next(p for p in sorted(landing.glob("*.jsonl")) if p.stat().st_size)
    record = json.loads(first.read_text().splitlines()[100])
    record.update(event_id="poisoned-reading", exhaust_temp_c=1e300)  # finite as a double, inf as a float
    land(config, "poisoned.jsonl", lines(record))
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert run_flow(spark, config, "silver.telemetry", ONCE) == 0
    assert run_flows(spark, config, [f"gold.{name}" for name in config.gold], ONCE) == 0
    features = read_table(spark, resolve_table(config, "gold.telemetry_features"))
    assert features.where(F.col("exhaust_temp_c") > 1e200).count() == 1  # the warn rule kept it in silver
    return config, record


def _client(config):
    quiet_mlflow()
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(config))
    return MlflowClient()


def test_a_huge_value_is_refused_by_training_and_scoring_writes_no_nan(spark, poisoned):
    config, record = poisoned
    summary = run_training(spark, config, "local", 1, gpu=False, force=False, epochs=3)
    assert math.isfinite(summary.final["val_rmse"]) and summary.final["val_rmse"] < summary.baseline_rmse
    assert summary.champion and summary.refused_rows == 1
    client = _client(config)
    assert client.get_run(summary.run_id).data.metrics["refused_rows"] == 1
    assert client.get_model_version_by_alias(config.training.registered_model, CHAMPION).version == summary.model_version

    scored = score(spark, config)
    predictions = read_table(spark, resolve_table(config, "gold.predictions"))
    assert predictions.count() == scored.rows
    assert predictions.where(F.isnan("prediction")).count() == 0
    missing = predictions.where(F.col("prediction").isNull()).collect()
    assert [(r.host, r.minute.minute) for r in missing] == [(record["host"], int(record["event_time"][14:16]))]


def test_a_run_without_validation_rows_or_with_a_nan_metric_is_never_champion(spark, poisoned):
    config, _ = poisoned
    client = _client(config)
    name = config.training.registered_model
    # One split-key value for every row: all rows train, none validate.
    unsplit = load_config("test", conf_dir=CONF_DIR, data_dir=config.storage.data_dir,
                          overrides=["training.split_key=[rack]", "training.validation_fraction=0.01"])
    before = _champion_version(client, name)
    summary = run_training(spark, unsplit, "local", 1, gpu=False, force=False, epochs=1)
    assert client.get_run(summary.run_id).data.params["validation_rows"] == "0"
    assert not summary.champion and "no validation rows" in summary.not_champion_because
    assert _champion_version(client, name) == before
    tags = client.get_model_version(name, summary.model_version).tags
    assert "no validation rows" in tags["not_champion_because"]

    # A learning rate that makes the loss overflow: the validation metric is not finite.
    diverging = load_config("test", conf_dir=CONF_DIR, data_dir=config.storage.data_dir,
                            overrides=["training.learning_rate=1.0e+30", "training.optimizer=sgd"])
    summary = run_training(spark, diverging, "local", 1, gpu=False, force=False, epochs=1)
    assert not math.isfinite(summary.final["val_rmse"])
    assert not summary.champion and "not finite" in summary.not_champion_because
    assert _champion_version(client, name) == before


def _champion_version(client, name):
    try:
        return client.get_model_version_by_alias(name, CHAMPION).version
    except Exception:  # no such model or alias yet
        return None


def test_too_many_non_finite_rows_refuse_the_run(poisoned, capsys):
    config, _ = poisoned
    capsys.readouterr()
    code = main(["--env", "test", "--data-dir", str(config.storage.data_dir), "--set",
                 "training.max_refused_fraction=0", "train", "--epochs", "1"])
    assert code == 3
    assert "training.max_refused_fraction" in capsys.readouterr().err


def test_promotion_is_a_compare_and_set(tmp_path, monkeypatch):
    """Two runs finish together: the better one must end as champion, whichever reads first."""
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data")
    client = _client(config)
    import mlflow

    name = "cas_model"
    mlflow.set_experiment("compare-and-set")
    client.create_registered_model(name)
    versions = {}
    for label, rmse in (("better", 1.0), ("worse", 2.0)):
        with mlflow.start_run() as run:
            mlflow.log_metric("val_rmse", rmse)
        versions[label] = (client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id).version,
                           rmse)
    # Each run sleeps between reading the champion and moving the alias: without the lock both
    # would read "no champion", and the one moving the alias last (the worse) would win.
    monkeypatch.setenv(FAILPOINTS_ENV, "train.promote=sleep:1.5")
    outcome = {}

    def finish(label, delay):
        threading.Event().wait(delay)
        version, rmse = versions[label]
        outcome[label] = promote(config, _client(config), tracking_uri(config), name, version, rmse, 10)

    threads = [threading.Thread(target=finish, args=("better", 0.0)), threading.Thread(target=finish, args=("worse", 0.5))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _champion_version(client, name) == versions["better"][0]
    assert outcome["better"] is None and "lower validation RMSE" in outcome["worse"]
