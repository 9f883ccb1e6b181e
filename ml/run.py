"""`lakehouse train`: the driver side of a training run.

quality gate -> pin the feature table's version -> run ``ml.train.train_process`` on the chosen
backend -> log the run to MLflow (parameters, loss curve, validation metrics, throughput, input
versions and quality, the model) -> register the model, and move the alias ``champion`` to it
when it beats the current champion's validation RMSE (the MLflow side: ml/tracking.py).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from lakehouse.errors import EXIT_CONFIG, EXIT_QUALITY, LakehouseError
from lakehouse.pipeline import TRAIN, Pipeline
from ml.data import Snapshot, count_unusable, pin_snapshot
from ml.resume import check_same_settings, checkpoint_dir, end_run, resume_point
from ml.tracking import RunSummary, log_run, open_run
from ml.train import TrainResult, TrainSpec, train_process

BACKENDS = ("local", "horovod", "torch-distributor")


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


# -- the command ----------------------------------------------------------------------------


def run_training(spark, config, backend: str, num_proc: int, gpu: bool, force: bool,
                 version: int | None = None, epochs: int | None = None, resume: str | None = None) -> RunSummary:
    """Train once (module doc); ``resume``: the id of a causal_lm run that stopped half-way, which
    then goes on from its checkpoint on the table version it started on."""
    training = config.training
    if training is None:
        raise BackendError("no training section in the configuration (conf/<env>/training.yml)")
    check_backend(spark, backend, num_proc, gpu)
    if training.task == "causal_lm":
        from ml.lm import check_code

        problem = check_code(training.lm)
        if problem:
            raise BackendError(problem)
    resumed = resume_point(config, resume) if resume else None
    if resumed and resumed.processes != num_proc:
        raise BackendError(f"run {resume} trained with {resumed.processes} processes: resume it with as many "
                           f"(--num-proc {resumed.processes})")
    pass_rate = quality_gate(spark, config, force) if resumed is None else None
    snapshot: Snapshot = pin_snapshot(spark, config, training.table, resumed.version if resumed else version)
    if training.task == "regression":
        check_rows(spark, config, snapshot, force)
    print(f"training {training.task} on {snapshot.table}@v{snapshot.version} ({snapshot.rows:,} rows, "
          f"{len(snapshot.files)} files) with {backend} x{num_proc}{' on GPU' if gpu else ''}", flush=True)
    spec = TrainSpec(
        snapshot=snapshot, features=list(training.features), label=training.label or "",
        split_key=list(training.split_key), validation_fraction=training.validation_fraction,
        hidden=list(training.model.hidden), dropout=training.model.dropout, optimizer=training.optimizer,
        learning_rate=training.learning_rate, batch_size=training.batch_size,
        epochs=resumed.epochs if resumed else (epochs or training.epochs), seed=training.seed,
        log_every_steps=training.log_every_steps, backend=backend, gpu=gpu, task=training.task, lm=training.lm,
    )
    if resumed:
        check_same_settings(resumed, spec)
    run_id = resumed.run_id if resumed else open_run(config, spec, backend, num_proc, pass_rate)
    spec.checkpoint_dir, spec.resume = str(checkpoint_dir(config, run_id)), resumed is not None
    if resumed:
        print(f"resuming run {run_id} from step {resumed.step}", flush=True)
    try:
        result = run_backend(spark, spec, backend, num_proc)
    except BaseException:
        end_run(config, run_id, "FAILED")  # resumable from its last checkpoint (causal_lm)
        raise
    for epoch in result.epochs:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in epoch.items() if k not in ("epoch", "step"))
        print(f"  epoch {epoch['epoch'] + 1}/{spec.epochs} (step {epoch['step']}): {figures}", flush=True)
    return log_run(config, spec, result, backend, run_id)


def quality_gate(spark, config, force: bool) -> float | None:
    """The silver pass rate of the entities the training table is built from (through the gold
    tables' declared inputs); TrainingRefused below training.min_quality_pass_rate."""
    training = config.training
    entities = sorted(flow.name for flow in Pipeline(config).upstream(TRAIN) if flow.kind == "silver")
    pass_rate = quality_pass_rate(spark, config, entities, training.quality_window_batches)
    if pass_rate is not None and pass_rate < training.min_quality_pass_rate and not force:
        raise TrainingRefused(
            f"the last {training.quality_window_batches} silver batches of {', '.join(entities)} kept "
            f"{pass_rate:.1%} of their records, below training.min_quality_pass_rate "
            f"{training.min_quality_pass_rate:.1%}: fix the feed, or pass --force")
    return pass_rate
