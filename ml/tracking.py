"""Tracking a training run in MLflow: where runs go, what a run logs, and the champion.

A run is opened before training (:func:`open_run`: its parameters, the input tables' versions and
the silver quality it was trained on), so a run killed half-way keeps its id for `--resume`.
After training, :func:`log_run` adds the loss curve and validation metrics and the model (weights
and architecture, no pickle); the registered version takes the alias ``champion`` when it beats
the current champion's validation RMSE, or held-out perplexity for the causal_lm task
(:func:`promote`, a compare-and-set under :func:`promotion_lock`). ml/run.py calls them; the
causal_lm task's own parts are in ml/lm_tracking.py.
"""

from __future__ import annotations

import fcntl
import math
import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from lakehouse.failpoints import failpoint
from lakehouse.redaction import redact_tree
from ml.data import usable_rows
from ml.train import TrainResult, TrainSpec

CHAMPION = "champion"
MODEL_FILES = "model_files"  # the logged model's data directory: ml.model's weights and architecture


@dataclass
class RunSummary:
    registered_model: str
    run_id: str
    experiment: str
    tracking_uri: str
    model_version: str
    champion: bool
    final: dict  # last epoch's validation metrics
    baseline_rmse: float
    samples_per_s: float
    not_champion_because: str | None = None  # why the champion alias did not move to this version
    refused_rows: int = 0  # feature rows not finite in float32: not trained on
    task: str = "regression"
    figures: dict = field(default_factory=dict)  # causal_lm: baseline perplexities, tokens/s (TrainResult)

    def describe(self) -> list[str]:
        """The run in a few lines, as `lakehouse train` and the demo print them."""
        final, figures = self.final, self.figures
        lines = [f"run {self.run_id} in experiment {self.experiment}"]
        if self.task == "causal_lm":
            lines.append(f"held-out perplexity {final.get('val_perplexity', float('nan')):.2f} (untrained: "
                         f"{figures.get('untrained_perplexity', float('nan')):.2f}, unigram: "
                         f"{figures.get('unigram_perplexity', float('nan')):.2f}), "
                         f"{figures.get('tokens_per_s', 0.0):,.0f} tokens/s")
        else:
            lines.append(f"validation RMSE {final.get('val_rmse', float('nan')):.3f} W (predicting the mean: "
                         f"{self.baseline_rmse:.3f} W), MAE {final.get('val_mae', float('nan')):.3f} W, "
                         f"{self.samples_per_s:,.0f} samples/s")
        if self.refused_rows:
            lines.append(f"{self.refused_rows:,} rows not trained on: a feature or the label is not finite in float32")
        lines.append(f"registered {self.registered_model} version {self.model_version}"
                     + (" -> alias champion" if self.champion else f" (not the champion: {self.not_champion_because})"))
        return lines


def quiet_mlflow() -> None:
    """No usage reports and no progress bars from jobs (set before mlflow is imported)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run at <URI>" lines


# $MLFLOW_TRACKING_URI as the job found it: mlflow.set_tracking_uri writes the variable itself (for
# subprocesses), which would otherwise make the first store used in a process everyone's default.
_ENVIRONMENT_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(config) -> str:
    """The tracking store: training.tracking_uri, else $MLFLOW_TRACKING_URI as the job found it,
    else a sqlite file in the data directory. Credentials in an http(s) URI's user info move to
    $MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD (MLflow's own way to pass them), so the
    URI that MLflow, the summary and every log line see carries none."""
    configured = config.training.tracking_uri or _ENVIRONMENT_TRACKING_URI
    if not configured:
        return f"sqlite:///{(Path(config.storage.data_dir) / 'mlflow.db').absolute()}"
    parsed = urlparse(configured)
    if parsed.scheme in ("http", "https") and "@" in parsed.netloc:
        userinfo, host = parsed.netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
        if password:
            os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
        return parsed._replace(netloc=host).geturl()
    return configured


GIT_COMMIT_ENV = "LAKEHOUSE_GIT_COMMIT"


def git_commit() -> str:
    """The commit the code came from, for the run's ``git_commit`` tag: ``$LAKEHOUSE_GIT_COMMIT``
    when set (the bundle sets it to ``${bundle.git.commit}``: an installed wheel has no .git), else
    ``git rev-parse HEAD`` beside this file (a checkout), else "unknown"."""
    given = os.environ.get(GIT_COMMIT_ENV, "").strip()
    if given:
        return given
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _experiment(config) -> tuple[str, str]:
    """(tracking URI, experiment name) of the configuration, both made current in mlflow."""
    import mlflow

    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    experiment = config.training.experiment.replace("{env}", config.env)
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(experiment) is None:
        # A local store keeps the models beside its database, not in ./mlruns of whatever directory
        # the job started in.
        artifacts = (Path(config.storage.data_dir) / "mlflow-artifacts" / experiment).absolute().as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    return uri, experiment


def open_run(config, spec: TrainSpec, backend: str, processes: int, pass_rate: float | None) -> str:
    """Create the run before training starts (so a run killed half-way can be resumed by its id):
    its parameters and lineage tags. Returns the run id."""
    quiet_mlflow()  # no usage reports from jobs
    import mlflow
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    _, experiment = _experiment(config)
    snapshot = spec.snapshot
    inputs = {snapshot.table: snapshot.version, **snapshot.inputs}
    params = {"learning_rate": spec.learning_rate, "batch_size": spec.batch_size, "epochs": spec.epochs,
              "processes": processes, "backend": backend, "optimizer": spec.optimizer, "seed": spec.seed,
              "gpu": spec.gpu, "task": spec.task}
    if spec.task == "causal_lm":
        from ml.lm_tracking import lm_params

        params.update(lm_params(spec))
    else:
        params.update({"model_shape": f"{len(spec.features)}->{'->'.join(map(str, spec.hidden))}->1",
                       "features": ",".join(spec.features), "label": spec.label})
    tags = {"git_commit": git_commit(),
            "input_tables": ",".join(f"{name}@v{version}" for name, version in inputs.items()),
            "training_table": snapshot.table, "training_table_version": str(snapshot.version),
            "silver_quality_pass_rate": "unknown" if pass_rate is None else f"{pass_rate:.4f}"}
    from mlflow.tracking.context.registry import resolve_tags

    client = MlflowClient()
    # with MLflow's own context tags (user, source, a Databricks job's), as mlflow.start_run adds them
    run = client.create_run(mlflow.get_experiment_by_name(experiment).experiment_id, tags=resolve_tags(tags),
                            run_name=f"{backend}-x{processes}-{snapshot.table}@v{snapshot.version}")
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in redact_tree(params).items()])
    return run.info.run_id  # RUNNING until log_run ends it (or the process dies: --resume)


def log_run(config, spec: TrainSpec, result: TrainResult, backend: str, run_id: str) -> RunSummary:
    """After training: the run's curves and figures, the model; register it, and make it the
    champion when it beats the current one (lower validation RMSE, or held-out perplexity)."""
    quiet_mlflow()
    import mlflow
    from mlflow.tracking import MlflowClient

    training = config.training
    uri, experiment = _experiment(config)
    client = MlflowClient()
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.log_params({"train_rows": result.train_rows, "validation_rows": result.validation_rows})
        if spec.task == "causal_lm":
            from ml.lm_tracking import log_lm

            info, metric = log_lm(client, run_id, spec, result), "val_perplexity"
        else:
            _log_metrics(client, run_id, result)
            info, metric = _log_model(_regression_model(spec, result), spec), "val_rmse"
    version = mlflow.register_model(info.model_uri, training.model_name)
    final = result.epochs[-1] if result.epochs else {}
    refused = promote(config, client, uri, training.model_name, version.version,
                      final.get(metric, float("nan")), result.validation_rows, metric=metric)
    if refused:
        client.set_model_version_tag(training.model_name, version.version, "not_champion_because", refused)
    return RunSummary(training.model_name, run.info.run_id, experiment, uri, version.version,
                      refused is None, final, result.baseline_rmse, result.samples_per_s, refused,
                      result.refused_rows, spec.task, dict(result.figures))


def _regression_model(spec: TrainSpec, result: TrainResult):
    from ml.model import MLPRegressor

    model = MLPRegressor(len(spec.features), spec.hidden, spec.dropout)
    model.load_state_dict(result.state_dict)
    return model.eval()


def _log_metrics(client, run_id: str, result: TrainResult) -> None:
    """The loss curve (per logged step), each epoch's validation metrics, and the run's figures."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("train_loss", loss, now, step) for step, loss in zip(result.steps, result.train_loss, strict=True)]
    for epoch in result.epochs:
        metrics += [Metric(name, float(epoch[name]), now, epoch["step"]) for name in ("val_loss", "val_rmse", "val_mae")]
    metrics += [Metric("samples_per_s", result.samples_per_s, now, 0),
                Metric("baseline_rmse", result.baseline_rmse, now, 0),
                Metric("refused_rows", result.refused_rows, now, 0),  # not finite: not trained on
                Metric("unlabelled_rows", result.unlabelled_rows, now, 0)]
    for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def _log_model(model, spec: TrainSpec):
    """Log the model to the active run: weights and architecture, no pickle (ml/model.py), as a
    pyfunc whose loader is ml.model, with a signature and an input example from the table."""
    import mlflow
    import pandas as pd
    import torch
    from mlflow.models import infer_signature

    from ml.data import read_head
    from ml.model import save_model_files

    head = read_head(spec.snapshot, [*spec.features, spec.label], n=20)
    example = head[usable_rows(head, spec.features, spec.label)[0]][spec.features].head(5).astype("float32")
    if example.empty:  # no usable row among the first ones: a neutral example of the right shape
        example = pd.DataFrame([[0.0] * len(spec.features)], columns=spec.features, dtype="float32")
    with torch.no_grad():
        predicted = model(torch.tensor(example.to_numpy())).numpy()
    with tempfile.TemporaryDirectory() as scratch:
        files = Path(scratch) / MODEL_FILES
        save_model_files(model, spec.features, files)
        return mlflow.pyfunc.log_model(
            name="model", loader_module="ml.model", data_path=str(files),
            signature=infer_signature(example, pd.Series(predicted, name=spec.label)), input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        )


@contextmanager
def promotion_lock(config, uri: str, model_name: str):
    """Held while a run compares itself with the champion and moves the alias: with it, promotion
    is a compare-and-set (MLflow has none), so two runs finishing together cannot both read the
    old champion and both win. A file lock beside a local (sqlite or file) store, else in the data
    directory; runs that share neither (two machines on one tracking server) are not ordered by it.
    """
    folder = (_local_store(uri) or Path(config.storage.data_dir)) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"champion-{model_name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _local_store(uri: str) -> Path | None:
    """The directory of a local tracking store: the sqlite file's folder, or a file store."""
    if uri in ("databricks", "databricks-uc"):  # MLflow's names for a workspace's tracking server
        return None
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":  # sqlite:///relative.db, sqlite:////absolute.db
        path = unquote(parsed.path[1:] if parsed.path.startswith("/") else parsed.path)
        return Path(path).parent if path and path != ":memory:" else None
    if parsed.scheme in ("file", "") and parsed.path:
        return Path(unquote(parsed.path))
    return None


METRIC_NAMES = {"val_rmse": "validation RMSE", "val_perplexity": "held-out perplexity"}  # lower is better


def promote(config, client, uri: str, name: str, version: str, value: float, validation_rows: int,
            metric: str = "val_rmse") -> str | None:
    """Make ``version`` the champion when it may be one (validation rows, a finite metric) and
    beats the current champion's ``metric`` (lower wins): a compare-and-set under
    :func:`promotion_lock`. Returns None when it did, else why not."""
    if validation_rows == 0:
        return "it had no validation rows"
    if not math.isfinite(value):
        return f"its {METRIC_NAMES[metric]} is {value} (not finite)"
    with promotion_lock(config, uri, name):
        return _promote_if_better(client, name, version, value, metric)


def _promote_if_better(client, name: str, version: str, value: float, metric: str) -> str | None:
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no champion yet (MLflow raises when the alias is not set)
        current = None
    failpoint("train.promote")
    if current is not None:
        best = client.get_run(current.run_id).data.metrics.get(metric, float("nan"))
        if math.isfinite(best) and value >= best:  # a champion with no finite metric is replaced
            return f"the champion (version {current.version}) has a lower {METRIC_NAMES[metric]}, {best:.4f}"
    client.set_registered_model_alias(name, CHAMPION, version)
    return None
