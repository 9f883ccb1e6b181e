"""Errors carry their exit code (lakehouse/errors.py): main() maps them in one place, and an
error a micro-batch raises is reported as raised, without matching class names in Spark's text."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lakehouse import cli
from lakehouse.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_QUALITY,
    ConfigError,
    JobError,
    LakehouseError,
    batch_error,
    raised_in_batch,
)
from lakehouse.refine import ExpectationFailedError
from lakehouse.streaming import failure_summary
from ml.run import BackendError, TrainingRefused
from ml.score import NoChampion


def test_each_error_says_how_it_is_reported():
    assert JobError("first line\nsecond line").report("ingest") == "ingest failed: first line"
    assert ConfigError("conf/x.yml", "a.b", "bad").report("ingest") == "configuration error: conf/x.yml: a.b: bad"
    assert TrainingRefused("quality 0.5 < 0.9").report("train") == "training refused: quality 0.5 < 0.9"
    codes = {JobError: EXIT_FAILED, NoChampion: EXIT_FAILED, TrainingRefused: EXIT_QUALITY,
             BackendError: EXIT_CONFIG, ExpectationFailedError: EXIT_FAILED}
    assert {kind: kind.exit_code for kind in codes} == codes


@pytest.mark.parametrize("error, code, printed", [
    (TrainingRefused("below the gate"), EXIT_QUALITY, "lakehouse: training refused: below the gate"),
    (BackendError("no GPU"), EXIT_CONFIG, "lakehouse: train: no GPU"),
    (JobError("input missing\ndetails"), EXIT_FAILED, "lakehouse: config failed: input missing"),
    (ConfigError("--set", "x", "no such key"), EXIT_CONFIG, "lakehouse: configuration error: --set: x: no such key"),
])
def test_main_maps_every_project_error_to_its_exit_code(monkeypatch, capsys, error, code, printed):
    def handler(config, args):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "config", handler)
    assert cli.main(["--env", "test", "config"]) == code
    assert capsys.readouterr().err.strip() == printed


def test_main_redacts_what_an_error_says(monkeypatch, capsys):
    def handler(config, args):
        raise JobError("cannot reach https://bob:hunter2@mlflow.example/x")

    monkeypatch.setitem(cli.COMMANDS, "config", handler)
    assert cli.main(["--env", "test", "config"]) == EXIT_FAILED
    assert "hunter2" not in capsys.readouterr().err


def _batch(query_id: str):
    context = SimpleNamespace(getLocalProperty=lambda key: query_id if key == "sql.streaming.queryId" else None)
    return SimpleNamespace(sparkSession=SimpleNamespace(sparkContext=context))


def test_an_error_raised_in_a_batch_is_kept_for_the_job_that_runs_the_query():
    @raised_in_batch
    def process(batch, batch_id):
        raise ExpectationFailedError(f"batch {batch_id}: expectation x failed")

    with pytest.raises(ExpectationFailedError):
        process(_batch("q-1"), 7)
    raised = batch_error("q-1")
    assert isinstance(raised, ExpectationFailedError)
    assert batch_error("q-1") is None  # taken once
    spark_error = RuntimeError("[FOREACH_BATCH_USER_FUNCTION_ERROR] An error occurred ...\nTraceback ...")
    assert failure_summary(spark_error, raised) == "ExpectationFailedError: batch 7: expectation x failed"
    assert failure_summary(spark_error) == "[FOREACH_BATCH_USER_FUNCTION_ERROR] An error occurred ..."


def test_other_errors_in_a_batch_are_not_kept():
    @raised_in_batch
    def process(batch, batch_id):
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        process(_batch("q-2"), 0)
    assert batch_error("q-2") is None
    assert issubclass(ExpectationFailedError, LakehouseError)
