"""`lakehouse score`: the registered model's champion scores the feature table into gold.predictions.

The champion's files are fetched from the registry's own artifact store (the artifact location of
the experiment its run belongs to; a version whose files lie anywhere else is refused) and read
as weights and architecture (ml/model.py: no pickle, nothing in them runs as code); a pandas UDF
scores the rows on the executors with those weights. The feature table is read at one version, and gold.predictions is
replaced by one commit: one prediction per feature row, with the model version that made it and
the input version it read (also in the commit's user metadata).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd  # at module level: pandas_udf reads the UDF's type hints from these globals

from lakehouse.errors import LakehouseError
from lakehouse.pipeline import PREDICTIONS_TABLE
from ml.data import not_representable
from ml.tracking import CHAMPION, quiet_mlflow, tracking_uri


class NoChampion(LakehouseError, RuntimeError):
    """No model version carries the champion alias yet (exit 1)."""

    heading = "score"
    whole_message = True


@dataclass
class ScoreSummary:
    model: str
    model_version: str
    input: str  # table@vN
    rows: int
    table_version: int


def score(spark, config) -> ScoreSummary:
    quiet_mlflow()
    import mlflow
    from mlflow.tracking import MlflowClient
    from pyspark.sql import functions as F

    from lakehouse.tables import last_commit, read_table, resolve_table, retry_on_conflict, save_to, writing

    training = config.training
    mlflow.set_tracking_uri(tracking_uri(config))
    name = training.model_name
    client = MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except Exception as exc:  # MLflow raises when the model or the alias does not exist
        raise NoChampion(f"no version of model '{name}' is the {CHAMPION} yet: run `lakehouse train` first") from exc

    model, model_features = load_champion(client, name, champion)
    if model_features != list(training.features):
        raise NoChampion(f"the champion (version {champion.version}) takes {', '.join(model_features)}; "
                         f"training.features are {', '.join(training.features)}: train a new model first")
    source = resolve_table(config, training.table)
    version = last_commit(spark, source).version
    features = read_table(spark, source, version=version)
    predict = predict_udf(model)
    # Every column that is neither a feature nor the label identifies the row (host, rack, minute, ...).
    identifying = [c for c in features.columns if c not in training.features and c != training.label]
    # A row whose features the model cannot take (NaN, infinite, beyond float32) gets no prediction.
    representable = F.lit(True)
    for column in training.features:
        representable = representable & ~not_representable(column)
    prediction = predict(*[F.col(c).cast("float") for c in training.features])
    predictions = features.select(
        *identifying,
        F.col(training.label).alias("actual"),
        F.when(representable, prediction).alias("prediction"),
        F.lit(name).alias("model_name"),
        F.lit(str(champion.version)).alias("model_version"),
        F.lit(f"{training.table}@v{version}").alias("input"),
        F.current_timestamp().alias("scored_at"),
    )
    target = resolve_table(config, PREDICTIONS_TABLE)
    metadata = {"model": name, "model_version": str(champion.version), "inputs": {training.table: version}}
    writer = (predictions.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
              .option("userMetadata", json.dumps(metadata)))
    with writing(target):  # maintenance in the same application waits (and the commit read next is this one)
        retry_on_conflict(lambda: save_to(writer, target), 4)  # lost to another application's commit: redone
        commit = last_commit(spark, target)  # the overwrite's own metrics: no second scan to count rows
    return ScoreSummary(name, str(champion.version), f"{training.table}@v{version}",
                        int(commit.operationMetrics["numOutputRows"]), commit.version)


class UntrustedModel(NoChampion):
    """The champion's files are not in the registry's own artifact store, or not a safe model."""


def load_champion(client, name: str, champion):
    """(model, feature names) of a model version, read from the registry's own artifact store."""
    import mlflow

    from ml.model import UnsafeModel, load_model_files
    from ml.tracking import MODEL_FILES

    location = client.get_model_version_download_uri(name, champion.version)
    root = None
    if champion.run_id:
        root = client.get_experiment(client.get_run(champion.run_id).info.experiment_id).artifact_location
    if root is None or not _within(location, root):
        raise UntrustedModel(f"version {champion.version} of '{name}' keeps its files at {location}, outside the "
                             f"artifact store of its run's experiment ({root or 'no run'}): not loaded")
    local = mlflow.artifacts.download_artifacts(artifact_uri=location)
    try:
        return load_model_files(f"{local}/data/{MODEL_FILES}")
    except UnsafeModel as exc:
        raise UntrustedModel(f"version {champion.version} of '{name}': {exc}") from exc


def _within(location: str, root: str) -> bool:
    """Whether the URI ``location`` lies inside ``root`` (same scheme and authority; the path
    decoded and normalised, local paths with links resolved)."""
    import os
    import posixpath
    from urllib.parse import unquote, urlparse

    where, base = urlparse(location), urlparse(root)
    if (where.scheme or "file") != (base.scheme or "file") or where.netloc != base.netloc:
        return False
    if (where.scheme or "file") == "file":
        path, top = os.path.realpath(unquote(where.path)), os.path.realpath(unquote(base.path))
    else:
        path, top = posixpath.normpath(unquote(where.path)), posixpath.normpath(unquote(base.path))
    return path == top or path.startswith(top.rstrip("/") + "/")


def predict_udf(model):
    """A pandas UDF: float feature columns -> the model's prediction (double), on the executors.
    It carries the weights as arrays (from this process), not a file to load."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    from ml.model import MLPRegressor

    weights = {key: tensor.numpy() for key, tensor in model.state_dict().items()}
    shape = model.shape

    @pandas_udf("double")
    def predict(features: pd.DataFrame) -> pd.Series:  # one struct column: the features, in order
        import torch

        net = MLPRegressor(*shape)
        net.load_state_dict({key: torch.from_numpy(value) for key, value in weights.items()})
        net.eval()
        with torch.no_grad():
            return pd.Series(net(torch.from_numpy(features.to_numpy(dtype="float32"))).numpy().astype("float64"))

    return lambda *columns: predict(F.struct(*columns))
