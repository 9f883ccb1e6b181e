"""`lakehouse train --resume RUN_ID`: where a causal_lm run keeps its checkpoint, and what a
stopped run resumes from.

A run is created in MLflow before it trains (ml/tracking.py open_run) and its rank 0 saves a
checkpoint every ``training.lm.checkpoint_every_steps`` into :func:`checkpoint_dir`
(ml/lm_train.py). A run that did not finish (killed: still RUNNING; or FAILED) is
resumed in the same MLflow run, on the table version it started on, with as many processes, from
that checkpoint's step: the step count and the loss curve go on where they stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lakehouse.errors import EXIT_CONFIG, LakehouseError
from ml.spec import CHECKPOINT_FILE, resume_settings

CHECKPOINTS = "training-checkpoints"


class ResumeError(LakehouseError, RuntimeError):
    """The run cannot be resumed (unknown, finished, not a causal_lm run, no checkpoint): exit 2."""

    exit_code = EXIT_CONFIG
    heading = "train --resume"
    whole_message = True


@dataclass(frozen=True)
class ResumePoint:
    run_id: str
    version: int  # the training table's version the run started on
    epochs: int  # as the run was started with
    step: int  # the checkpoint's
    processes: int
    settings: dict  # resume_settings of the run as it started


def check_same_settings(point: ResumePoint, spec) -> None:
    """ResumeError naming each setting that differs from the run's own."""
    now = resume_settings(spec)
    changed = [f"training.{key} was {point.settings[key]!r}, is {now.get(key)!r}"
               for key in sorted(point.settings) if now.get(key) != point.settings[key]]
    if changed:
        raise ResumeError(f"run {point.run_id} started with other settings ({'; '.join(changed)}): resume it with "
                          "the same (--set) or start a new run")


def checkpoint_dir(config, run_id: str) -> Path:
    """``<checkpoint root>/training/<run id>``: beside the streaming queries' checkpoints, on storage
    every training process sees (a Unity Catalog volume on Databricks). A root given as a URI
    (s3://...) takes no file calls: then ``<data_dir>/training-checkpoints/<run id>``, which only
    processes on the driver's machine share."""
    root = config.checkpoint_root
    if "://" in root or root.startswith("dbfs:"):
        return (Path(config.storage.data_dir) / CHECKPOINTS / run_id).absolute()
    return (Path(root) / "training" / run_id).absolute()


def resume_point(config, run_id: str) -> ResumePoint:
    """What ``run_id`` resumes from; ResumeError when it cannot be."""
    import torch

    from ml.tracking import quiet_mlflow, tracking_uri

    quiet_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri(config)).get_run(run_id)
    except MlflowException as exc:
        raise ResumeError(f"no run {run_id} in {tracking_uri(config)}: {exc.message}") from None
    params, tags = run.data.params, run.data.tags
    if params.get("task") != "causal_lm":
        raise ResumeError(f"run {run_id} is a {params.get('task', 'regression')} run: only causal_lm runs "
                          "keep checkpoints to resume from")
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} finished: there is nothing to resume")
    path = checkpoint_dir(config, run_id) / CHECKPOINT_FILE
    if not path.exists():
        raise ResumeError(f"run {run_id} saved no checkpoint ({path}): start a new run")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return ResumePoint(run_id, int(tags["training_table_version"]), int(params["epochs"]), int(state["step"]),
                       int(state["processes"]), dict(state.get("settings", {})))


def end_run(config, run_id: str, status: str) -> None:
    """Mark the run ended (FAILED: ``--resume`` can still take it up). Best effort: the error that
    ended it matters more than one from the tracking server."""
    try:
        from mlflow.tracking import MlflowClient

        from ml.tracking import tracking_uri

        MlflowClient(tracking_uri(config)).set_terminated(run_id, status)
    except Exception:  # noqa: BLE001
        pass
