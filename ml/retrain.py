"""Retraining inside `lakehouse run` (``training.retrain``), beside the streaming queries.

Every ``check_every`` the run asks :meth:`Retrainer.poll` whether a new model is due:

- the training table has gained at least ``min_new_rows`` rows since the version the champion
  was trained on (its run's ``training_table_version`` tag; no champion: since empty), or
- ``every`` has passed since the champion's run started.

A run the quality gate refuses, or whose model does not beat the champion, counts as an attempt:
the next one waits for ``min_new_rows`` more rows (or ``every``) past the version it tried.
The look and the training run in a thread of the run, whose Spark jobs go to a scheduler pool
of their own (``train``): the streaming queries keep their task slots and go on meanwhile.
Training is `lakehouse train`'s own (ml/run.py: the gate, the champion rule) on the version the
look found. The local backend uses no Spark task but trains in the driver's Python process,
beside the micro-batches' Python callbacks (PyTorch releases the GIL in its kernels, so they
slow, not stop); distributed backends take ``num_proc`` slots of the cluster. After a promotion,
`lakehouse score` follows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from pyspark.sql import functions as F

from lakehouse.config import LakehouseConfig, duration_seconds
from lakehouse.errors import LakehouseError
from lakehouse.redaction import redact_text
from lakehouse.tables import delta_table, last_commit, read_table, resolve_table, table_exists

POOL = "train"


@dataclass
class Attempt:
    started_s: float  # epoch seconds
    ended_s: float
    outcome: str  # "version 3 promoted, scored into gold.predictions v2", "TrainingRefused: ...", ...


@dataclass
class Champion:
    version: int | None  # the training table's version it was trained on
    started_s: float | None  # when its run started (epoch seconds)


def current_champion(config: LakehouseConfig) -> Champion:
    """What the champion was trained on, from its MLflow run (no champion: Champion(None, None)).
    Other MLflow errors (the server is down) are raised: no retraining is decided on them."""
    from ml.tracking import CHAMPION, quiet_mlflow, tracking_uri

    quiet_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(config))
    try:
        model = client.get_model_version_by_alias(config.training.model_name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return Champion(None, None)  # no such model, or no version holds the alias
        raise
    run = client.get_run(model.run_id)
    version = run.data.tags.get("training_table_version")
    return Champion(int(version) if version is not None else None, run.info.start_time / 1000)


class Retrainer:
    """Decides when to retrain and runs one training (then scoring) at a time, in a thread."""

    def __init__(self, spark, config: LakehouseConfig):
        self.spark, self.config = spark, config
        self.policy = config.training.retrain
        self.table = resolve_table(config, config.training.table)
        self.checked_at: float | None = None
        self.tried_version: int | None = None  # the table version of this run's last attempt
        self.tried_at: float | None = None
        self.thread: threading.Thread | None = None
        self.attempts: list[Attempt] = []  # each finished attempt: when, and what happened

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def poll(self) -> None:
        """Once per ``check_every``, look in a thread whether a training run is due, and run it
        (the look reads MLflow and Delta history: never on the run's own loop)."""
        now = time.monotonic()
        if self.busy or (self.checked_at is not None and now - self.checked_at < duration_seconds(self.policy.check_every)):
            return
        self.checked_at = now
        self.thread = threading.Thread(target=self._check_then_train, name="lakehouse-retrain", daemon=True)
        self.thread.start()

    def due(self) -> tuple[int, str] | None:
        """(the table version to train on, why) when a training run is due, else None."""
        if not table_exists(self.spark, self.table):
            return None
        version = last_commit(self.spark, self.table).version
        champion = current_champion(self.config)
        since = max(v for v in (champion.version, self.tried_version, -1) if v is not None)
        if version <= since:
            return None  # nothing new since the champion's version or the last attempt
        if self.policy.min_new_rows is not None:
            gained = self._rows(version, version) - (self._rows(since, version) if since >= 0 else 0)
            if gained >= self.policy.min_new_rows:
                base = f"v{since}" if since >= 0 else "nothing"
                return version, (f"{self.table.name} gained {gained:,} rows since {base} "
                                 f"(training.retrain.min_new_rows {self.policy.min_new_rows:,})")
        if self.policy.every is not None:
            last = max((t for t in (champion.started_s, self.tried_at) if t is not None), default=None)
            if last is None or time.time() - last >= duration_seconds(self.policy.every):
                return version, f"training.retrain.every {self.policy.every} has passed"
        return None

    def _rows(self, version: int, latest: int) -> int:
        """Rows of the table at ``version``, from that commit's own metrics (a feature table is
        rewritten whole by each build; the history is read back from ``latest`` to it, no
        further); read from the data when the commit does not say, and 0 when the version is no
        longer in the table's history (an old champion)."""
        commit = (delta_table(self.spark, self.table).history(latest - version + 1)
                  .where(F.col("version") == version).select("operation", "operationMetrics").first())
        if commit is None:
            return 0
        metrics = commit["operationMetrics"] or {}
        if commit["operation"] in ("WRITE", "CREATE OR REPLACE TABLE AS SELECT") and "numOutputRows" in metrics:
            return int(metrics["numOutputRows"])
        return read_table(self.spark, self.table, version=version).count()

    def _check_then_train(self) -> None:
        try:
            decided = self.due()
        except Exception as exc:  # noqa: BLE001 - looked at again at the next check
            print(f"train: could not tell whether to retrain: {type(exc).__name__}: "
                  f"{redact_text(str(exc).splitlines()[0] if str(exc) else '')}", flush=True)
            return
        if decided is not None:
            version, reason = decided
            print(f"train: retraining on {self.table.name}@v{version} ({reason}) with {self.policy.backend} "
                  f"x{self.policy.num_proc}; the streaming flows go on", flush=True)
            self._train(version)

    def _train(self, version: int) -> None:
        from ml.run import run_training
        from ml.score import score

        context = self.spark.sparkContext
        context.setLocalProperty("spark.scheduler.pool", POOL)  # this thread's jobs only
        self.tried_at, self.tried_version = time.time(), version
        try:
            summary = run_training(self.spark, self.config, self.policy.backend, self.policy.num_proc,
                                   gpu=False, force=False, version=version)
            for line in summary.describe():
                print(f"train: {line}", flush=True)
            outcome = f"version {summary.model_version}" + (" promoted" if summary.champion else " not promoted")
            if summary.champion and self.config.training.task == "regression":  # a language model scores nothing
                scored = score(self.spark, self.config)
                print(f"score: gold.predictions version {scored.table_version}, {scored.rows:,} rows by "
                      f"{scored.model} version {scored.model_version}", flush=True)
                outcome += f", scored into gold.predictions v{scored.table_version}"
        except LakehouseError as exc:  # the gate refused, no free slots, ...: the run goes on
            outcome = f"{type(exc).__name__}: {redact_text(str(exc))}"
            print(f"train: {outcome}", flush=True)
        except Exception as exc:  # noqa: BLE001 - a failed training never stops the streaming flows
            outcome = f"failed: {type(exc).__name__}: {redact_text(str(exc).splitlines()[0] if str(exc) else '')}"
            print(f"train: {outcome}", flush=True)
        finally:
            context.setLocalProperty("spark.scheduler.pool", None)
        self.attempts.append(Attempt(self.tried_at, time.time(), outcome))

    def wait(self) -> None:
        """Let a training run in progress finish (a stop of the run waits for it)."""
        if self.busy:
            print("train: waiting for the training run in progress to finish (Ctrl-C again abandons it)", flush=True)
            while self.thread.is_alive():
                self.thread.join(timeout=1)
