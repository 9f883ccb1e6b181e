"""ops.ingested_files through the checkpoint's journal (lakehouse/landing_journal.py): one commit
for a run's batches, and every file read appended exactly once whatever a crash left behind.
(A kill -9 after committed batches, before their rows were appended: tests/lakehouse/test_crash_recovery.py.)"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.config import load_config
from lakehouse.landing_journal import INGESTED_FILES_TABLE, IngestedJournal, journal, journaled_batches
from lakehouse.runner import run_flow
from lakehouse.tables import delta_table, read_table, resolve_table
from tests.conftest import CONF_DIR
from tests.faults import land, lines, reading

pytestmark = pytest.mark.slow

ONCE = {"availableNow": True}


@pytest.fixture
def one_file_per_batch(tmp_path):
    return load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data",
                       overrides=["sources.telemetry.max_files_per_trigger=1"])


def _ingested(spark, config) -> list[tuple[str, int]]:
    """(file, lines) of each ops.ingested_files row; with one file per batch, each in a batch of its own."""
    rows = read_table(spark, resolve_table(config, INGESTED_FILES_TABLE)).collect()
    assert len({r.batch_id for r in rows}) == len(rows), rows
    return sorted((Path(r.path).name, r.lines) for r in rows)


def _unflushed(monkeypatch):
    """Runs as if the process died after its batches committed, before any flush appended their rows."""
    monkeypatch.setattr(IngestedJournal, "append", lambda self, spark: 0)


def test_a_runs_batches_are_appended_in_one_commit_and_leave_no_journal(spark, one_file_per_batch):
    config = one_file_per_batch
    for n in range(3):
        land(config, f"f{n}.jsonl", lines(*[reading(10 * n + i) for i in range(n + 1)]))
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert _ingested(spark, config) == [("f0.jsonl", 1), ("f1.jsonl", 2), ("f2.jsonl", 3)]
    appends = [c for c in delta_table(spark, resolve_table(config, INGESTED_FILES_TABLE)).history().collect()
               if c["operation"] == "WRITE"]
    assert len(appends) == 1  # three batches, one commit
    assert journaled_batches(spark, config.checkpoint_path("bronze_telemetry")) == []


def test_rows_a_crash_left_in_the_checkpoint_are_appended_once_at_the_next_run(spark, one_file_per_batch, monkeypatch):
    config = one_file_per_batch
    checkpoint = config.checkpoint_path("bronze_telemetry")
    land(config, "a.jsonl", lines(reading(1)))
    land(config, "b.jsonl", lines(reading(2), reading(3)))
    with monkeypatch.context() as patched:
        _unflushed(patched)
        assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert journaled_batches(spark, checkpoint) == [0, 1]
    land(config, "c.jsonl", lines(reading(4)))
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert _ingested(spark, config) == [("a.jsonl", 1), ("b.jsonl", 2), ("c.jsonl", 1)]
    assert journaled_batches(spark, checkpoint) == []


def test_rows_appended_before_a_crash_kept_them_in_the_checkpoint_are_not_appended_again(spark, one_file_per_batch):
    """The crash came after the append's commit and before the journal's files were deleted."""
    config = one_file_per_batch
    checkpoint = config.checkpoint_path("bronze_telemetry")
    land(config, "a.jsonl", lines(reading(1)))
    land(config, "b.jsonl", lines(reading(2), reading(3)))
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    table = read_table(spark, resolve_table(config, INGESTED_FILES_TABLE))
    appended = [tuple(r) for r in table.where(F.col("batch_id") == 1).collect()]
    assert len(appended) == 1
    aware = [tuple(v.astimezone() if isinstance(v, datetime) else v for v in row) for row in appended]  # pyspark: local
    journal(spark, checkpoint, 1, aware)  # as the batch journaled them
    assert journaled_batches(spark, checkpoint) == [1]
    land(config, "c.jsonl", lines(reading(4)))
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert _ingested(spark, config) == [("a.jsonl", 1), ("b.jsonl", 2), ("c.jsonl", 1)]
    assert journaled_batches(spark, checkpoint) == []


def test_a_reset_checkpoints_rows_are_not_taken_for_those_of_its_earlier_batches(spark, one_file_per_batch, monkeypatch):
    """Batch ids start again at 0 on a new checkpoint, which reads the landing files again: rows
    left by its crash are appended although the table holds the same file in batch 0 of the old one."""
    config = one_file_per_batch
    land(config, "old.jsonl", lines(reading(1)))
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    shutil.rmtree(config.checkpoint_path("bronze_telemetry"))
    with monkeypatch.context() as patched:
        _unflushed(patched)
        assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    rows = read_table(spark, resolve_table(config, INGESTED_FILES_TABLE)).collect()
    assert [(Path(r.path).name, r.lines, r.batch_id) for r in rows] == [("old.jsonl", 1, 0)] * 2


def test_a_failed_deletion_neither_stops_the_stream_nor_appends_its_rows_twice(spark, one_file_per_batch, monkeypatch,
                                                                               capsys):
    config = one_file_per_batch
    checkpoint = config.checkpoint_path("bronze_telemetry")
    recorder = IngestedJournal(spark, config, "telemetry", checkpoint)  # started with nothing journaled
    land(config, "a.jsonl", lines(reading(1)))
    land(config, "b.jsonl", lines(reading(2), reading(3)))
    with monkeypatch.context() as patched:
        _unflushed(patched)
        assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0

    def fails(spark, location):
        raise OSError(f"passing storage error deleting {location}")

    with monkeypatch.context() as patched:
        patched.setattr("lakehouse.landing_journal.fs.delete", fails)
        assert recorder.flush(spark) == 0  # printed, not raised: the streams go on
    assert "ops.ingested_files not appended for source telemetry" in capsys.readouterr().err
    assert journaled_batches(spark, checkpoint) == [0, 1]  # appended, but still here
    assert recorder.append(spark) == 0  # the next flush finds them in the table
    assert _ingested(spark, config) == [("a.jsonl", 1), ("b.jsonl", 2)]
    assert journaled_batches(spark, checkpoint) == []


def test_reconcile_counts_the_files_whose_rows_wait_in_the_checkpoint(spark, one_file_per_batch, monkeypatch):
    from lakehouse.reconcile import reconcile

    config = one_file_per_batch
    land(config, "a.jsonl", lines(reading(1)))
    land(config, "b.jsonl", lines(reading(2), reading(3)))
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    land(config, "c.jsonl", lines(reading(4), reading(5), reading(6)))
    with monkeypatch.context() as patched:
        _unflushed(patched)  # c.jsonl's row waits in the checkpoint, as after a kill -9
        assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert len(_ingested(spark, config)) == 2
    assert reconcile(spark, config, "telemetry").landed == {"telemetry": (3, 6, 6)}


def test_a_redone_batch_an_earlier_release_recorded_in_the_table_is_not_journaled(spark, one_file_per_batch,
                                                                                    monkeypatch):
    """Before the journal, a batch appended its ops.ingested_files rows itself, in a commit marked
    with the batch: a crash before the checkpoint's commit, then an upgrade, redoes that batch."""
    import json as json_

    from lakehouse.failpoints import FAILPOINTS_ENV
    from lakehouse.landing_journal import INGESTED_FILES_SCHEMA, _read
    from lakehouse.tables import append_once, batch_marker, local_rows

    config = one_file_per_batch
    checkpoint = config.checkpoint_path("bronze_telemetry")
    land(config, "a.jsonl", lines(reading(1), reading(2)))
    monkeypatch.setenv(FAILPOINTS_ENV, "bronze.done@0")  # journaled, then the batch fails: not committed
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 1
    monkeypatch.delenv(FAILPOINTS_ENV)
    rows = _read(spark, checkpoint, 0)
    query_id = json_.loads(Path(checkpoint, "metadata").read_text())["id"]
    marker = batch_marker(f"bronze_telemetry-{query_id}", 0)
    assert append_once(local_rows(spark, rows, INGESTED_FILES_SCHEMA),
                       resolve_table(config, INGESTED_FILES_TABLE), marker)  # as the earlier release did
    Path(checkpoint, "lakehouse", "ingested", "0.json").unlink()
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert _ingested(spark, config) == [("a.jsonl", 2)]
    assert journaled_batches(spark, checkpoint) == []
