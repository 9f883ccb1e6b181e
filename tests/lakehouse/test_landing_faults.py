"""Landing files as the real world lands them: odd modification times, bad and changed files, raw bytes.

Each test lands its own small set by hand, runs bronze (and silver where it matters) in the shared
session, and checks the tables: bronze rows and bytes, ops.bad_files, ops.ingested_files, and what
status and reconcile say.
"""

from __future__ import annotations

import gzip
import os
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse import landing
from lakehouse.bronze import ensure_source_bronze_table
from lakehouse.cli import main
from lakehouse.config import load_config
from lakehouse.failpoints import FAILPOINTS_ENV
from lakehouse.landing import BAD_FILES_TABLE, INGESTED_FILES_TABLE, look_at
from lakehouse.reconcile import reconcile
from lakehouse.runner import run_flow
from lakehouse.status import collect_status
from lakehouse.table_reader import DirectReader, SparkReader
from lakehouse.tables import bronze_table, read_table, resolve_table
from tests.conftest import CONF_DIR
from tests.faults import land, lines, reading

pytestmark = pytest.mark.slow

ONCE = {"availableNow": True}


def _ingest(spark, config) -> int:
    return run_flow(spark, config, "bronze.telemetry", ONCE)


def _bronze(spark, config) -> dict[tuple[str, int], bytes]:
    rows = read_table(spark, bronze_table(config, "telemetry")).collect()
    return {(Path(r._source_file).name, r._source_line): bytes(r.value) for r in rows}


def _bad_files(spark, config) -> dict[str, str]:
    return {Path(r.path).name: r.reason for r in read_table(spark, resolve_table(config, BAD_FILES_TABLE)).collect()}


def test_a_future_stamped_file_hides_no_later_file(spark, config):
    land(config, "future.jsonl", lines(reading(1)), mtime=datetime(2099, 1, 1, tzinfo=timezone.utc))
    assert _ingest(spark, config) == 0
    land(config, "normal-1.jsonl", lines(reading(2), reading(3)))
    assert _ingest(spark, config) == 0
    land(config, "normal-2.jsonl", lines(reading(4)))
    assert _ingest(spark, config) == 0
    assert sorted(name for name, _ in _bronze(spark, config)) == [
        "future.jsonl", "normal-1.jsonl", "normal-1.jsonl", "normal-2.jsonl"]
    (status,) = collect_status(SparkReader(spark, config), config)
    assert status.backlog_files == 0


def test_a_backfill_landed_with_its_old_modification_times_is_read(spark, config):
    land(config, "today.jsonl", lines(*[reading(i) for i in range(5)]))
    assert _ingest(spark, config) == 0
    month_ago = datetime.now(timezone.utc) - timedelta(days=30)
    for day in range(3):  # as cp -p or rsync -t would land an archive
        land(config, f"archive-{day}.jsonl", lines(reading(100 + day)), mtime=month_ago + timedelta(days=day))
    assert _ingest(spark, config) == 0
    files = {name for name, _ in _bronze(spark, config)}
    assert files == {"today.jsonl", "archive-0.jsonl", "archive-1.jsonl", "archive-2.jsonl"}
    (status,) = collect_status(SparkReader(spark, config), config)
    assert status.backlog_files == 0


def test_bad_files_are_recorded_and_skipped_and_the_stream_goes_on(spark, tmp_path, monkeypatch, capsys):
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data",
                         overrides=["sources.telemetry.max_file_bytes=50000"])
    random.seed(5)
    land(config, "random.jsonl.gz", bytes(random.getrandbits(8) for _ in range(600)))
    whole = gzip.compress(lines(*[reading(i) for i in range(200)]))
    land(config, "truncated.jsonl.gz", whole[: len(whole) // 2])
    land(config, "good.jsonl.gz", gzip.compress(lines(reading(300), reading(301))))
    # A valid gzip header over a broken deflate stream: Python's zlib fails with zlib.error, not OSError.
    land(config, "scrambled.jsonl.gz", whole[:10] + b" not a deflate stream " + whole[40:80])
    land(config, "huge.jsonl", lines(*[reading(1000 + i) for i in range(300)]))  # > 50 kB
    land(config, "bomb.jsonl.gz", gzip.compress(lines(*[reading(2000)] * 400)))  # < 1 kB, inflates to > 50 kB
    land(config, "doomed.jsonl", lines(reading(500)))
    land(config, "empty.jsonl", b"")
    # The batch is planned (its files are in the checkpoint's log), then the job dies before reading;
    # a file of the batch disappears meanwhile: the restart redoes the batch and finds it gone.
    monkeypatch.setenv(FAILPOINTS_ENV, "bronze.read@0")
    assert _ingest(spark, config) == 1
    Path(config.landing_path("telemetry"), "doomed.jsonl").unlink()
    monkeypatch.delenv(FAILPOINTS_ENV)
    capsys.readouterr()
    assert _ingest(spark, config) == 0
    out = capsys.readouterr().out
    assert "skipped bad file" in out and "random.jsonl.gz: corrupt" in out

    land(config, "after.jsonl", lines(*[reading(600 + i) for i in range(100)]))
    assert _ingest(spark, config) == 0
    bronze = _bronze(spark, config)
    assert sorted({name for name, _ in bronze}) == ["after.jsonl", "good.jsonl.gz"]
    assert sum(1 for name, _ in bronze if name == "after.jsonl") == 100
    assert _bad_files(spark, config) == {"random.jsonl.gz": "corrupt", "truncated.jsonl.gz": "corrupt",
                                         "scrambled.jsonl.gz": "corrupt", "huge.jsonl": "too_large", "bomb.jsonl.gz": "too_large",
                                         "doomed.jsonl": "missing"}
    bad = {Path(r.path).name: r for r in read_table(spark, resolve_table(config, BAD_FILES_TABLE)).collect()}
    assert bad["huge.jsonl"].size > 50000 and "max_file_bytes" in bad["huge.jsonl"].detail
    assert bad["bomb.jsonl.gz"].size < 1000 and "decompress" in bad["bomb.jsonl.gz"].detail
    assert "GZIP" in bad["random.jsonl.gz"].detail.upper() and bad["doomed.jsonl"].size is None
    ingested = {Path(r.path).name: r.lines for r in read_table(spark, resolve_table(config, INGESTED_FILES_TABLE)).collect()}
    assert ingested == {"good.jsonl.gz": 2, "empty.jsonl": 0, "after.jsonl": 100}

    (status,) = collect_status(SparkReader(spark, config), config)  # before refine: the bronze query only
    assert status.bad_files == 6 and status.backlog_files == 0
    assert run_flow(spark, config, "silver.telemetry", ONCE) == 0
    report = reconcile(spark, config, "telemetry")
    assert report.holds, report.describe()
    capsys.readouterr()
    assert main(["--env", "test", "--data-dir", str(config.storage.data_dir), "--set",
                 "sources.telemetry.max_file_bytes=50000", "reconcile", "--source", "telemetry"]) == 0
    out = capsys.readouterr().out
    for name in ("random.jsonl.gz: corrupt", "truncated.jsonl.gz: corrupt", "huge.jsonl: too_large",
                 "bomb.jsonl.gz: too_large", "doomed.jsonl: missing"):
        assert name in out


@pytest.mark.parametrize("crash_at", ["bronze.bad_files", "bronze.ingested_files", "bronze.done"])
def test_a_batch_redone_after_its_bronze_commit_decides_as_before(spark, config, monkeypatch, crash_at):
    """The job dies after bronze took the batch's lines; before the restart a file that was read
    is deleted. The redone batch counts that file from bronze: nothing is doubled or lost, and
    every file is in exactly one of ops.ingested_files and ops.bad_files, once."""
    land(config, "a.jsonl", lines(reading(1), reading(2)))
    read_then_deleted = land(config, "b.jsonl", lines(reading(3), reading(4), reading(5)))
    random.seed(9)
    land(config, "noise.jsonl.gz", bytes(random.getrandbits(8) for _ in range(300)))
    monkeypatch.setenv(FAILPOINTS_ENV, f"{crash_at}@0")
    assert _ingest(spark, config) == 1
    read_then_deleted.unlink()
    monkeypatch.delenv(FAILPOINTS_ENV)
    assert _ingest(spark, config) == 0
    bronze = read_table(spark, bronze_table(config, "telemetry"))
    assert bronze.count() == 5 and bronze.select("_source_file", "_source_line").distinct().count() == 5
    ingested = [(Path(r.path).name, r.lines)
                for r in read_table(spark, resolve_table(config, INGESTED_FILES_TABLE)).collect()]
    assert sorted(ingested) == [("a.jsonl", 2), ("b.jsonl", 3)]
    bad = [(Path(r.path).name, r.reason) for r in read_table(spark, resolve_table(config, BAD_FILES_TABLE)).collect()]
    assert bad == [("noise.jsonl.gz", "corrupt")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file_is_a_bad_file(spark, config):
    unreadable = land(config, "secret.jsonl", lines(reading(1)))
    unreadable.chmod(0)
    land(config, "fine.jsonl", lines(reading(2)))
    assert _ingest(spark, config) == 0
    assert _bad_files(spark, config) == {"secret.jsonl": "unreadable"}
    assert {name for name, _ in _bronze(spark, config)} == {"fine.jsonl"}


def test_a_failed_append_that_is_no_file_s_fault_fails_the_batch_and_blames_no_file(spark, config, monkeypatch):
    """The line reader fails a batch's read on a file it cannot read; each file is then read alone
    to find it. When every file reads, the failure was not a file's: the batch fails (and is
    redone), and no file is recorded as bad."""
    land(config, "a.jsonl", lines(reading(1), reading(2)))
    land(config, "b.jsonl", lines(reading(3)))
    monkeypatch.setenv(FAILPOINTS_ENV, "bronze.append=raise-once")
    assert _ingest(spark, config) == 1
    monkeypatch.delenv(FAILPOINTS_ENV)
    assert _bad_files(spark, config) == {} and _bronze(spark, config) == {}
    assert _ingest(spark, config) == 0
    assert sorted(_bronze(spark, config)) == [("a.jsonl", 1), ("a.jsonl", 2), ("b.jsonl", 1)]
    assert _bad_files(spark, config) == {}


@pytest.mark.parametrize("on_driver", [False, True], ids=["spark", "driver"])
def test_a_file_gone_before_the_read_is_planned_is_missing_and_the_others_land(spark, tmp_path, monkeypatch, on_driver):
    """A file deleted between being looked at and being read fails the whole read when Spark plans
    it (PATH_NOT_FOUND, which ignoreMissingFiles does not cover): each file is then read alone,
    the gone one is a bad file ("missing"), and the others are appended. Read on the driver
    (lakehouse/landing_arrow.py), the gone file is left out of the commit, then read alone."""
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data",
                         overrides=[f"sources.telemetry.read_on_driver={str(on_driver).lower()}"])
    ensure_source_bronze_table(spark, config, "telemetry")
    kept = land(config, "kept.jsonl", lines(reading(1), reading(2)))
    gone = land(config, "gone.jsonl.gz", gzip.compress(lines(reading(3))))

    def look_then_lose(*args, **kwargs):
        looked = look_at(*args, **kwargs)
        gone.unlink()
        return looked

    monkeypatch.setattr(landing, "look_at", look_then_lose)
    files, _ = landing.ingest_files(spark, config, "telemetry", [kept.as_uri(), gone.as_uri()], "test", 0, None,
                                    str(tmp_path / "checkpoint"))
    assert [(Path(f.uri).name, f.reason, f.lines) for f in files] == [("kept.jsonl", None, 2), ("gone.jsonl.gz", "missing", None)]
    assert any(words in files[1].detail for words in ("No such file", "PATH_NOT_FOUND"))
    assert sorted(_bronze(spark, config)) == [("kept.jsonl", 1), ("kept.jsonl", 2)]


def test_a_file_changed_after_ingest_is_reported_by_status_and_reconcile(spark, config, capsys):
    appended = land(config, "grows.jsonl", lines(reading(1), reading(2)))
    land(config, "steady.jsonl", lines(reading(3)))
    assert _ingest(spark, config) == 0
    assert run_flow(spark, config, "silver.telemetry", ONCE) == 0
    with open(appended, "ab") as fh:
        fh.write(lines(reading(4)))
    assert _ingest(spark, config) == 0  # the path was taken in once: its new line is not read
    assert len(_bronze(spark, config)) == 3

    for reader in (SparkReader(spark, config), DirectReader(config)):  # Spark, and delta-rs without a JVM
        status = next(s for s in collect_status(reader, config) if s.query_name == "bronze_telemetry")
        assert [Path(p).name for p in status.changed_files] == ["grows.jsonl"], reader.engine
    report = reconcile(spark, config, "telemetry")
    assert report.holds and [Path(c.path).name for c in report.changed_files] == ["grows.jsonl"]
    capsys.readouterr()
    data = ["--env", "test", "--data-dir", str(config.storage.data_dir)]
    assert main([*data, "reconcile", "--source", "telemetry"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: 1 landing file(s) changed" in out and "grows.jsonl" in out and "steady.jsonl" not in out
    assert main([*data, "status"]) == 0
    assert "grows.jsonl" in capsys.readouterr().out


def test_bronze_keeps_every_byte_and_silver_names_what_is_wrong(spark, config):
    not_utf8 = b'{"event_id": "e000002", "host": "dc1-r01-h000", "note": "caf\xe9"}'
    bom = b"\xef\xbb\xbf" + lines(reading(1), reading(3))  # a byte-order mark before the first record
    duplicate = b'{"event_id": "e000004", "event_id": "e000005", "host": "dc1-r01-h000"}'
    land(config, "bom.jsonl", bom)
    land(config, "odd.jsonl", lines(not_utf8, duplicate, reading(6)))
    land(config, "crlf.jsonl", lines(reading(7)).replace(b"\n", b"\r\n"))
    assert _ingest(spark, config) == 0

    bronze = _bronze(spark, config)
    assert bronze[("odd.jsonl", 1)] == not_utf8  # byte for byte, not U+FFFD
    assert bronze[("bom.jsonl", 1)].startswith(b"\xef\xbb\xbf")  # bronze keeps the file's bytes
    assert bronze[("crlf.jsonl", 1)].endswith(b"\r")
    assert run_flow(spark, config, "silver.telemetry", ONCE) == 0
    silver = {r.event_id for r in read_table(spark, resolve_table(config, "silver.telemetry")).collect()}
    assert silver == {"e000001", "e000003", "e000006", "e000007"}  # the BOM is not part of record 1
    quarantine = read_table(spark, resolve_table(config, "silver.telemetry_quarantine"))
    reasons = {(Path(r._source_file).name, r._source_line): r.reasons[0] for r in quarantine.collect()}
    assert reasons == {("odd.jsonl", 1): "not_utf8", ("odd.jsonl", 2): "duplicate_field"}
    assert reconcile(spark, config, "telemetry").holds
    # the quarantined text of the non-UTF-8 line is readable; its exact bytes stay in bronze
    assert quarantine.where(F.col("_source_line") == 1).first().value.endswith("caf\ufffd\"}")
