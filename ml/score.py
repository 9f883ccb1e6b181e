"""`lakehouse score`: the registered model's champion scores the feature table into gold.predictions.

The model is loaded as ``models:/<name>@champion`` into a Spark UDF (MLflow's pyfunc), so rows
are scored on the executors. The feature table is read at one version, and gold.predictions is
replaced by one commit: one prediction per feature row, with the model version that made it and
the input version it read (also in the commit's user metadata).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ml.data import FLOAT32_MAX
from ml.run import CHAMPION, quiet_mlflow, tracking_uri

PREDICTIONS_TABLE = "gold.predictions"


class NoChampion(RuntimeError):
    """No model version carries the champion alias yet."""


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

    from lakehouse.tables import last_commit, read_table, resolve_table, save_to

    training = config.training
    mlflow.set_tracking_uri(tracking_uri(config))
    name = training.registered_model
    try:
        champion = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except Exception as exc:  # MLflow raises when the model or the alias does not exist
        raise NoChampion(f"no version of model '{name}' is the {CHAMPION} yet: run `lakehouse train` first") from exc

    source = resolve_table(config, training.table)
    version = last_commit(spark, source).version
    features = read_table(spark, source, version=version)
    predict = mlflow.pyfunc.spark_udf(spark, f"models:/{name}@{CHAMPION}", result_type="double", env_manager="local")
    # Every column that is neither a feature nor the label identifies the row (host, rack, minute, ...).
    identifying = [c for c in features.columns if c not in training.features and c != training.label]
    # A row whose features the model cannot take (NaN, infinite, beyond float32) gets no prediction.
    representable = F.lit(True)
    for name in training.features:
        value = F.col(name).cast("double")
        representable = representable & value.isNotNull() & ~F.isnan(value) & (F.abs(value) <= FLOAT32_MAX)
    prediction = predict(*[F.col(c).cast("float").alias(c) for c in training.features])
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
    save_to(writer, target)
    commit = last_commit(spark, target)  # the overwrite's own metrics: no second scan to count rows
    return ScoreSummary(name, str(champion.version), f"{training.table}@v{version}",
                        int(commit.operationMetrics["numOutputRows"]), commit.version)
