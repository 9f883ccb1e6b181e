"""`lakehouse train`: the driver side of a training run.

quality gate -> pin the feature table's version -> run ``ml.train.train_process`` on the chosen
backend -> log the run to MLflow (parameters, loss curve, validation metrics, throughput, input
versions and quality, the model) -> register the model, and move the alias ``champion`` to it
when it beats the current champion's validation RMSE.
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from lakehouse.errors import EXIT_CONFIG, EXIT_QUALITY, LakehouseError
from lakehouse.failpoints import failpoint
from lakehouse.pipeline import TRAIN, Pipeline
from lakehouse.redaction import redact_tree
from ml.data import Snapshot, count_unusable, pin_snapshot, usable_rows
from ml.train import TrainResult, TrainSpec, train_process

BACKENDS = ("local", "horovod", "torch-distributor")
CHAMPION = "champion"
MODEL_FILES = "model_files"  # the logged model's data directory: ml.model's weights and architecture


class TrainingRefused(LakehouseError, RuntimeError):
    """The quality gate: the input's recent quality is below the configured threshold (exit 3)."""

    exit_code = EXIT_QUALITY
    heading = "training refused"
    whole_message = True


class BackendError(LakehouseError, RuntimeError):
    """A backend cannot run here as asked (no free task slots, no GPU, Horovod not built): exit 2."""

    exit_code = EXIT_CONFIG
    heading = "train"
    whole_message = True


@dataclass
class RunSummary:
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
    registered_model: str = ""

    def describe(self) -> list[str]:
        """The run in a few lines, as `lakehouse train` and the demo print them."""
        final = self.final
        lines = [
            f"run {self.run_id} in experiment {self.experiment}",
            f"validation RMSE {final.get('val_rmse', float('nan')):.3f} W (predicting the mean: "
            f"{self.baseline_rmse:.3f} W), MAE {final.get('val_mae', float('nan')):.3f} W, "
            f"{self.samples_per_s:,.0f} samples/s",
        ]
        if self.refused_rows:
            lines.append(f"{self.refused_rows:,} rows not trained on: a feature or the label is not finite in float32")
        lines.append(f"registered {self.registered_model} version {self.model_version}"
                     + (" -> alias champion" if self.champion else f" (not the champion: {self.not_champion_because})"))
        return lines


# -- inputs ---------------------------------------------------------------------------------


def quality_pass_rate(spark, config, entities: list[str], window: int) -> float | None:
    """Share of records the entities' last ``window`` silver batches kept (not quarantined)."""
    from pyspark.sql import functions as F

    from lakehouse.silver_tables import SILVER_BATCHES_TABLE
    from lakehouse.tables import read_table, resolve_table, table_exists

    ref = resolve_table(config, SILVER_BATCHES_TABLE)
    if not entities or not table_exists(spark, ref):
        return None
    batches = read_table(spark, ref).where(F.col("entity").isin(entities))
    skipped = F.coalesce(F.col("skipped"), F.lit(0)) if "skipped" in batches.columns else F.lit(0)
    recent = batches.withColumn("records", F.col("bronze_rows") - skipped).orderBy(F.desc("recorded_at")).limit(window)
    row = recent.agg(F.sum("records").alias("records"), F.sum("quarantined").alias("quarantined")).first()
    if not row["records"]:
        return None
    return 1.0 - row["quarantined"] / row["records"]


def check_rows(spark, config, snapshot: Snapshot, force: bool) -> dict[str, int]:
    """Refuse (TrainingRefused) a snapshot with more rows not finite in float32 than
    training.max_refused_fraction allows; the processes leave such rows out either way."""
    from lakehouse.tables import read_table, resolve_table

    training = config.training
    table = read_table(spark, resolve_table(config, snapshot.table), version=snapshot.version)
    counts = count_unusable(table, list(training.features), training.label)
    share = counts["refused"] / counts["rows"] if counts["rows"] else 0.0
    if counts["refused"]:
        print(f"{snapshot.table}@v{snapshot.version}: {counts['refused']:,} of {counts['rows']:,} rows have a feature "
              "or label that is NaN, infinite or beyond float32: not trained on", flush=True)
    if share > training.max_refused_fraction and not force:
        raise TrainingRefused(
            f"{snapshot.table}@v{snapshot.version}: {share:.2%} of its rows are not finite, above "
            f"training.max_refused_fraction {training.max_refused_fraction:.2%}: fix the feed, or pass --force")
    return counts


# -- backends -------------------------------------------------------------------------------


def check_backend(spark, backend: str, num_proc: int, gpu: bool) -> None:
    if backend == "local" and num_proc != 1:
        raise BackendError("the local backend runs one process: drop --num-proc or pick horovod/torch-distributor")
    if gpu:
        import torch

        if not torch.cuda.is_available():
            raise BackendError("--gpu: no CUDA device is visible to this driver (torch.cuda.is_available() is False)")
    if backend == "horovod":
        try:
            import horovod.spark  # noqa: F401
            import horovod.torch  # noqa: F401
        except ImportError as exc:
            raise BackendError(f"Horovod is not installed ({exc}): run `make install` (it builds Horovod)") from exc
    if backend in ("horovod", "torch-distributor"):
        # Both run one Spark task per process and wait for all of them: with fewer free slots
        # TorchDistributor retries for about ten minutes and Horovod waits for its start timeout.
        slots = spark.sparkContext.defaultParallelism
        if slots < num_proc:
            raise BackendError(f"--num-proc {num_proc} needs {num_proc} free Spark task slots; "
                               f"this cluster has {slots} (e.g. --set spark.master=local[{num_proc}])")


@contextmanager
def _signal_handlers_kept():
    """Put back this process's SIGINT and SIGTERM handlers afterwards. Horovod's Gloo launcher
    (horovod.runner.gloo_run.launch_gloo -> register_shutdown_event) replaces them with handlers
    that only set an event, and leaves them there: the driver would then outlive every later
    SIGTERM and Ctrl-C, while its Spark JVM (in the same process group) does not."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():  # where Horovod could set them
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)


def run_backend(spark, spec: TrainSpec, backend: str, num_proc: int) -> TrainResult:
    if backend == "local":
        return train_process(spec)
    if backend == "horovod":
        import horovod.spark

        from lakehouse.session import loopback_interface

        # A local master: the processes talk over the loopback only (Horovod's services and Gloo).
        nics = {loopback_interface()} if spark.sparkContext.master.startswith("local") else None
        with _signal_handlers_kept():
            results = horovod.spark.run(train_process, args=(spec,), num_proc=num_proc, use_gloo=True,
                                        use_mpi=False, verbose=1, start_timeout=600, nics=nics)
        return next(r for r in results if r is not None)
    from pyspark.ml.torch.distributor import TorchDistributor

    # local_mode=False: the processes run as Spark tasks on the executors (a barrier job).
    return TorchDistributor(num_processes=num_proc, local_mode=False, use_gpu=spec.gpu).run(train_process, spec)


# -- MLflow ---------------------------------------------------------------------------------


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


def log_run(config, spec: TrainSpec, result: TrainResult, backend: str, pass_rate: float | None) -> RunSummary:
    quiet_mlflow()  # no usage reports from jobs
    import mlflow
    from mlflow.tracking import MlflowClient

    from ml.model import MLPRegressor

    training = config.training
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    experiment = training.experiment.replace("{env}", config.env)
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(experiment) is None:
        # A local store keeps the models beside its database, not in ./mlruns of whatever directory
        # the job started in.
        artifacts = (Path(config.storage.data_dir) / "mlflow-artifacts" / experiment).absolute().as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    model = MLPRegressor(len(spec.features), spec.hidden, spec.dropout)
    model.load_state_dict(result.state_dict)
    model.eval()
    snapshot = spec.snapshot
    inputs = {snapshot.table: snapshot.version, **snapshot.inputs}
    client = MlflowClient()
    with mlflow.start_run(run_name=f"{backend}-x{result.processes}-{snapshot.table}@v{snapshot.version}") as run:
        mlflow.log_params(redact_tree({
            "learning_rate": spec.learning_rate, "batch_size": spec.batch_size, "epochs": spec.epochs,
            "processes": result.processes, "backend": backend, "optimizer": spec.optimizer,
            "model_shape": f"{len(spec.features)}->{'->'.join(map(str, spec.hidden))}->1", "seed": spec.seed,
            "features": ",".join(spec.features), "label": spec.label, "gpu": spec.gpu,
            "train_rows": result.train_rows, "validation_rows": result.validation_rows,
        }))
        mlflow.set_tags({
            "git_commit": git_commit(),
            "input_tables": ",".join(f"{name}@v{version}" for name, version in inputs.items()),
            "training_table": snapshot.table, "training_table_version": str(snapshot.version),
            "silver_quality_pass_rate": "unknown" if pass_rate is None else f"{pass_rate:.4f}",
        })
        _log_metrics(client, run.info.run_id, result)
        info = _log_model(model, spec)
    version = mlflow.register_model(info.model_uri, training.registered_model)
    final = result.epochs[-1] if result.epochs else {}
    refused = promote(config, client, uri, training.registered_model, version.version,
                      final.get("val_rmse", float("nan")), result.validation_rows)
    if refused:
        client.set_model_version_tag(training.registered_model, version.version, "not_champion_because", refused)
    return RunSummary(run.info.run_id, experiment, uri, version.version, refused is None, final,
                      result.baseline_rmse, result.samples_per_s, refused, result.refused_rows,
                      config.training.registered_model)


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


def promote(config, client, uri: str, name: str, version: str, val_rmse: float, validation_rows: int) -> str | None:
    """Make ``version`` the champion when it may be one (validation rows, a finite metric) and
    beats the current champion's val_rmse: a compare-and-set under :func:`promotion_lock`.
    Returns None when it did, else why not."""
    if validation_rows == 0:
        return "it had no validation rows"
    if not math.isfinite(val_rmse):
        return f"its validation RMSE is {val_rmse} (not finite)"
    with promotion_lock(config, uri, name):
        return _promote_if_better(client, name, version, val_rmse)


def _promote_if_better(client, name: str, version: str, val_rmse: float) -> str | None:
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no champion yet (MLflow raises when the alias is not set)
        current = None
    failpoint("train.promote")
    if current is not None:
        best = client.get_run(current.run_id).data.metrics.get("val_rmse", float("nan"))
        if math.isfinite(best) and val_rmse >= best:  # a champion with no finite metric is replaced
            return f"the champion (version {current.version}) has a lower validation RMSE, {best:.4f}"
    client.set_registered_model_alias(name, CHAMPION, version)
    return None


# -- the command ----------------------------------------------------------------------------


def run_training(spark, config, backend: str, num_proc: int, gpu: bool, force: bool,
                 version: int | None = None, epochs: int | None = None) -> RunSummary:
    training = config.training
    if training is None:
        raise BackendError("no training section in the configuration (conf/<env>/training.yml)")
    check_backend(spark, backend, num_proc, gpu)
    # the entities the feature table is built from, through gold tables' declared inputs
    entities = sorted(flow.name for flow in Pipeline(config).upstream(TRAIN) if flow.kind == "silver")
    pass_rate = quality_pass_rate(spark, config, entities, training.quality_window_batches)
    if pass_rate is not None and pass_rate < training.min_quality_pass_rate and not force:
        raise TrainingRefused(
            f"the last {training.quality_window_batches} silver batches of {', '.join(entities)} kept "
            f"{pass_rate:.1%} of their records, below training.min_quality_pass_rate "
            f"{training.min_quality_pass_rate:.1%}: fix the feed, or pass --force")
    snapshot: Snapshot = pin_snapshot(spark, config, training.table, version)
    check_rows(spark, config, snapshot, force)
    print(f"training on {snapshot.table}@v{snapshot.version} ({snapshot.rows:,} rows, {len(snapshot.files)} files)"
          f" with {backend} x{num_proc}{' on GPU' if gpu else ''}", flush=True)
    spec = TrainSpec(
        snapshot=snapshot, features=list(training.features), label=training.label,
        split_key=list(training.split_key), validation_fraction=training.validation_fraction,
        hidden=list(training.model.hidden), dropout=training.model.dropout, optimizer=training.optimizer,
        learning_rate=training.learning_rate, batch_size=training.batch_size,
        epochs=epochs or training.epochs, seed=training.seed, log_every_steps=training.log_every_steps,
        backend=backend, gpu=gpu,
    )
    result = run_backend(spark, spec, backend, num_proc)
    for epoch in result.epochs:
        print(f"  epoch {epoch['epoch'] + 1}/{spec.epochs}: val_rmse {epoch['val_rmse']:.3f}, "
              f"val_mae {epoch['val_mae']:.3f}", flush=True)
    return log_run(config, spec, result, backend, pass_rate)

