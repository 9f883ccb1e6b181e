"""The driver's helpers that need no Spark and no MLflow server: which silver entities a training
table comes from, where a tracking store keeps its lock, when a model becomes the champion
(against a stand-in registry), and which artifact locations scoring trusts."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

import ml.run
import ml.tracking
from lakehouse.pipeline import TRAIN, Pipeline
from ml.score import _within
from ml.tracking import CHAMPION, _local_store, promote, tracking_uri


def test_training_reads_silver_through_gold_inputs(config):
    """The entities whose quality gates training: upstream of the feature table, through gold."""
    upstream = Pipeline(config).upstream(TRAIN)
    assert [flow.name for flow in upstream if flow.kind == "silver"] == ["telemetry"]
    assert [flow.id for flow in upstream if flow.kind == "gold"] == ["gold.telemetry_minute", "gold.telemetry_features"]


@pytest.mark.parametrize("uri,store", [
    ("sqlite:///mlflow.db", Path(".")),
    ("sqlite:///runs/mlflow.db", Path("runs")),
    ("sqlite:////srv/ml/mlflow.db", Path("/srv/ml")),
    ("sqlite:////srv/my%20ml/mlflow.db", Path("/srv/my ml")),
    ("sqlite:///:memory:", None),
    ("file:///srv/mlruns", Path("/srv/mlruns")),
    ("/srv/mlruns", Path("/srv/mlruns")),
    ("http://mlflow.example:5000", None),
    ("databricks://my-profile", None),
])
def test_the_local_store_of_a_tracking_uri(uri, store):
    assert _local_store(uri) == store


def test_the_databricks_tracking_uri_is_not_a_local_store():
    assert _local_store("databricks") is None


def test_tracking_uri_defaults_to_sqlite_in_the_data_dir(config, monkeypatch):
    monkeypatch.setattr(ml.tracking, "_ENVIRONMENT_TRACKING_URI", None)
    assert tracking_uri(config) == f"sqlite:///{(Path(config.storage.data_dir) / 'mlflow.db').absolute()}"
    monkeypatch.setattr(ml.tracking, "_ENVIRONMENT_TRACKING_URI", "http://from-env:5000")
    assert tracking_uri(config) == "http://from-env:5000"


def test_tracking_uri_moves_credentials_out_of_the_uri(config, monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "placeholder")  # recorded, so the test leaves the variables as it found them
        monkeypatch.delenv(name)
    configured = replace(config, training=replace(config.training, tracking_uri="https://ann:p%40ss@mlflow.example/api"))
    uri = tracking_uri(configured)
    assert uri == "https://mlflow.example/api"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ann" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"


# -- promotion, against a stand-in for MlflowClient -----------------------------------------


class _Registry:
    def __init__(self, champion_rmse: float | None = None, metrics: dict | None = None):
        self.aliases: dict[str, str] = {}
        self.champion = None
        if champion_rmse is not None or metrics is not None:
            self.champion = SimpleNamespace(version="3", run_id="run-3")
            self.metrics = metrics if metrics is not None else {"val_rmse": champion_rmse}

    def get_model_version_by_alias(self, name, alias):
        assert alias == CHAMPION
        if self.champion is None:
            raise RuntimeError("RESOURCE_DOES_NOT_EXIST: alias champion not found")
        return self.champion

    def get_run(self, run_id):
        assert run_id == "run-3"
        return SimpleNamespace(data=SimpleNamespace(metrics=self.metrics))

    def set_registered_model_alias(self, name, alias, version):
        self.aliases[alias] = version


def _promote(config, registry, val_rmse, validation_rows=10):
    uri = f"sqlite:///{config.storage.data_dir / 'mlflow.db'}"
    return promote(config, registry, uri, "model", "4", val_rmse, validation_rows)


def test_the_first_model_becomes_the_champion(config):
    registry = _Registry()
    assert _promote(config, registry, 2.5) is None and registry.aliases == {CHAMPION: "4"}
    assert (Path(config.storage.data_dir) / ".locks" / "champion-model.lock").exists()  # beside the sqlite file


@pytest.mark.parametrize("champion,new,wins", [(2.0, 1.5, True), (2.0, 2.0, False), (2.0, 2.5, False)])
def test_a_model_must_beat_the_champion_strictly(config, champion, new, wins):
    registry = _Registry(champion)
    refused = _promote(config, registry, new)
    if wins:
        assert refused is None and registry.aliases == {CHAMPION: "4"}
    else:
        assert refused == "the champion (version 3) has a lower validation RMSE, 2.0000" and registry.aliases == {}


@pytest.mark.parametrize("metrics", [{"val_rmse": math.nan}, {}])
def test_a_champion_without_a_finite_metric_is_replaced(config, metrics):
    registry = _Registry(metrics=metrics)
    assert _promote(config, registry, 100.0) is None and registry.aliases == {CHAMPION: "4"}


@pytest.mark.parametrize("val_rmse,rows,why", [
    (1.0, 0, "it had no validation rows"),
    (math.nan, 10, "its validation RMSE is nan (not finite)"),
    (math.inf, 10, "its validation RMSE is inf (not finite)"),
])
def test_a_model_without_a_usable_metric_never_becomes_the_champion(config, val_rmse, rows, why):
    registry = _Registry()  # even with no champion at all
    assert _promote(config, registry, val_rmse, rows) == why and registry.aliases == {}


# -- which artifact locations scoring trusts ------------------------------------------------


def test_locations_inside_the_artifact_root_are_trusted(tmp_path):
    root = tmp_path / "artifacts"
    (root / "1" / "model").mkdir(parents=True)
    assert _within((root / "1" / "model").as_uri(), root.as_uri())
    assert _within(root.as_uri(), root.as_uri())
    assert _within((root / "1").as_uri(), root.as_uri() + "/")
    assert _within(str(root / "1"), str(root))  # plain paths are file URIs
    assert _within("s3://bucket/mlflow/1/model", "s3://bucket/mlflow")


@pytest.mark.parametrize("location", [
    "{root}/../elsewhere/model",
    "{root}/1/%2E%2E/%2E%2E/elsewhere",
    "{root}-sibling/model",
    "{other}/model",
])
def test_locations_outside_the_artifact_root_are_not(tmp_path, location):
    root = (tmp_path / "artifacts").as_uri()
    other = (tmp_path / "other").as_uri()
    assert not _within(location.format(root=root, other=other), root)


def test_a_link_out_of_the_artifact_root_is_not_trusted(tmp_path):
    root, outside = tmp_path / "artifacts", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert not _within((root / "link" / "model").as_uri(), root.as_uri())


@pytest.mark.parametrize("location,root", [
    ("s3://bucket/mlflow/../secret/model", "s3://bucket/mlflow"),
    ("s3://other-bucket/mlflow/1", "s3://bucket/mlflow"),
    ("s3://bucket/mlflow-old/1", "s3://bucket/mlflow"),
    ("file:///srv/mlflow/1", "s3://bucket/mlflow"),
    ("http://attacker/srv/mlflow/1", "file:///srv/mlflow"),
])
def test_other_schemes_buckets_and_prefixes_are_not_trusted(location, root):
    assert not _within(location, root)
