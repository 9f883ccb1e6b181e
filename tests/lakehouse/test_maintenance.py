"""Table maintenance (lakehouse/maintenance.py): compaction, VACUUM, ops retention, landing clean-up,
and maintenance inside the always-on run beside a live silver writer."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from xml.etree import ElementTree

import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from lakehouse import fs
from lakehouse.app import PipelineApp, ScheduledMaintenance
from lakehouse.cli import main
from lakehouse.config import load_config
from lakehouse.failpoints import FAILPOINTS_ENV
from lakehouse.freshness import FRESHNESS_SCHEMA, FRESHNESS_TABLE
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.maintained_tables import maintained_tables
from lakehouse.maintenance import Maintainer
from lakehouse.maintenance_steps import MAINTENANCE_TABLE, Step, recent_cleanups
from lakehouse.pipeline import Pipeline
from lakehouse.reader_holds import deletion_vector_path
from lakehouse.reconcile import reconcile
from lakehouse.runner import pipeline_flows, run_flows
from lakehouse.session import FLOW_POOL_WEIGHT, MAINTENANCE_POOL, scheduler_pools_file, session_settings
from lakehouse.silver_tables import ensure_silver_tables, silver_schema
from lakehouse.table_create import create_table_if_missing
from lakehouse.tables import (
    WaitStopped,
    delta_table,
    is_conflict,
    read_table,
    resolve_table,
    retry_on_conflict,
    table_size,
    writing,
)
from tests.conftest import CONF_DIR, REPO
from tests.lakehouse.test_run import _run_while, _wait
from tests.processes import Lander

ONCE = {"availableNow": True}


def _checksum(spark, config, table: str, version: int | None = None) -> tuple[int, str]:
    """Rows and a digest of the table's sorted rows (at a version)."""
    df = read_table(spark, resolve_table(config, table), version=version)
    rows = sorted(str(tuple(row)) for row in df.select(*sorted(df.columns)).collect())
    return len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _many_small_batches(spark, config, files: int, seed: int = 3, records: int = 400) -> Path:
    """``files`` landed files taken in one per micro-batch through every flow (small files everywhere)."""
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True, exist_ok=True)
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=seed, fault_rate=0.05), landing, "telemetry",
                   f"m{seed}", seed, records, files)
    assert run_flows(spark, config, pipeline_flows(config)[0], ONCE) == 0
    return landing


def test_retry_on_conflict_redoes_only_conflicts():
    calls = []

    def conflicting_twice():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("[DELTA_CONCURRENT_DELETE_READ] ConcurrentDeleteReadException: a file was removed")
        return "done"

    retried = []
    assert retry_on_conflict(conflicting_twice, 5, on_retry=lambda a, e: retried.append(a), first_delay=0.0) == ("done", 3)
    assert retried == [1, 2]
    assert is_conflict(RuntimeError("DELTA_METADATA_CHANGED")) and not is_conflict(ValueError("bad value"))
    with pytest.raises(ValueError):
        retry_on_conflict(lambda: (_ for _ in ()).throw(ValueError("bad value")), 5, first_delay=0.0)
    calls.clear()
    with pytest.raises(RuntimeError, match="DELTA_CONCURRENT"):
        retry_on_conflict(conflicting_twice, 2, first_delay=0.0)  # the last conflict is raised


def test_a_deletion_vector_file_is_found_where_delta_wrote_it(spark, tmp_path):
    """reader_holds counts deletion vectors as files: their paths decode from the log's descriptors."""
    table = tmp_path / "dv"
    spark.sql(f"CREATE TABLE delta.`{table}` (id BIGINT) USING delta TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    spark.range(1000).coalesce(1).write.format("delta").mode("append").save(str(table))
    spark.sql(f"DELETE FROM delta.`{table}` WHERE id % 10 = 0")
    actions = [json.loads(line) for commit in sorted((table / "_delta_log").glob("*.json"))
               for line in commit.read_text().splitlines()]
    vectors = [a["add"]["deletionVector"] for a in actions if a.get("add", {}).get("deletionVector")]
    assert [v["storageType"] for v in vectors] == ["u"]
    on_disk = {p.relative_to(table).as_posix() for p in table.rglob("deletion_vector_*.bin")}
    assert {deletion_vector_path(v) for v in vectors} == on_disk and len(on_disk) == 1
    assert deletion_vector_path({"storageType": "i", "pathOrInlineDv": "wi5b=000010000siXQKl0rr91000f55c8Xg0"}) is None


def test_silver_compacts_into_files_of_at_most_silver_file_mib(spark, tmp_path):
    """A MERGE rewrites each file one of its keys is in: silver's compaction keeps files small."""
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data", overrides=["maintenance.silver_file_mib=1"])
    ensure_silver_tables(spark, config, "telemetry")
    ref = resolve_table(config, "silver.telemetry")
    columns = [(F.expr("uuid()") if field.dataType == StringType() else F.lit(None)).cast(field.dataType).alias(field.name)
               for field in silver_schema(config.entity("telemetry")).fields]
    spark.range(30000).select(*columns).repartition(40).write.format("delta").mode("append").save(ref.path)
    before = read_table(spark, ref)
    total = sum(os.path.getsize(fs.local_path(f)) for f in before.inputFiles())
    assert total > 3 * 1048576  # more than three files' worth

    step = Maintainer(spark, config).compact(ref)
    files = [os.path.getsize(fs.local_path(f)) for f in read_table(spark, ref).inputFiles()]
    assert (step.outcome, step.files_before, step.files_after) == ("done", 40, len(files))
    assert 3 <= len(files) < 40 and max(files) <= 1.5 * 1048576
    assert read_table(spark, ref).count() == 30000
    assert spark.conf.get("spark.databricks.delta.optimize.maxFileSize", None) is None  # set for the step only


def test_a_file_of_file_mib_is_left_alone_by_compaction(spark, tmp_path):
    """Other tables compact into files of at most maintenance.file_mib, and a file that size is
    not rewritten again: a pass rewrites only the new small files (Delta's 1 GiB default would
    rewrite the whole table every pass)."""
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data", overrides=["maintenance.file_mib=1"])
    ref = resolve_table(config, "bronze.telemetry")
    rows = spark.range(60000).select(F.expr("uuid()").alias("value"))
    rows.coalesce(1).write.format("delta").save(ref.path)  # one file over 1 MiB
    (large,) = read_table(spark, ref).inputFiles()
    assert os.path.getsize(fs.local_path(large)) > 1048576
    rows.limit(3000).repartition(20).write.format("delta").mode("append").save(ref.path)

    step = Maintainer(spark, config).compact(ref)
    after = read_table(spark, ref).inputFiles()
    assert (step.outcome, step.files_before) == ("done", 21)
    assert large in after and len(after) == step.files_after < 21  # the large file kept, the small ones packed
    def size(files) -> int:
        return sum(os.path.getsize(fs.local_path(f)) for f in files)

    assert (step.bytes_before, step.bytes_after) == (size(read_table(spark, ref, version=1).inputFiles()), size(after))
    assert read_table(spark, ref).count() == 63000


def test_vacuum_runs_only_when_a_file_nothing_reads_is_past_the_retention(spark, tmp_path):
    """The vacuum step lists the table's directory first: when every file older than the
    retention is one the newest version reads, VACUUM is not run (no commit, nothing deleted);
    an old stray file makes it run, and VACUUM deletes that file only."""
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data")
    ref = resolve_table(config, "bronze.telemetry")
    for start in (0, 10):
        spark.range(start, start + 10).write.format("delta").mode("append").save(ref.path)
    week_ago = time.time() - 8 * 86400  # past Delta's default retention of 7 days
    data_files = list(Path(ref.path).glob("*.parquet"))
    for path in data_files:
        os.utime(path, (week_ago, week_ago))
    stray = Path(ref.path) / "part-00000-stray.snappy.parquet"  # a failed write's file: no commit names it
    stray.write_bytes(b"PAR1")
    version = table_size(spark, ref).version

    for dry_run in (True, False):
        step = Maintainer(spark, config, dry_run=dry_run).vacuum(ref)
        assert step.outcome == "nothing to do" and "no unreferenced files" in step.detail, step
    assert table_size(spark, ref).version == version and stray.exists()  # no VACUUM commits

    os.utime(stray, (week_ago, week_ago))
    assert Maintainer(spark, config, dry_run=True).vacuum(ref).outcome == "done" and stray.exists()
    step = Maintainer(spark, config).vacuum(ref)
    assert (step.outcome, step.files_before, step.files_after) == ("done", len(data_files) + 1, len(data_files)), step
    assert not stray.exists() and all(path.exists() for path in data_files)
    assert table_size(spark, ref).version > version and read_table(spark, ref).count() == 20


def test_the_run_cleans_up_a_table_at_most_every_cleanup_every(spark, config, monkeypatch):
    """In the run, retention and VACUUM run on a table once per maintenance.cleanup_every (compaction
    every pass); a skipped vacuum is tried again at the next pass; `maintain` (no record) always runs them."""
    ref = resolve_table(config, FRESHNESS_TABLE)
    create_table_if_missing(spark, ref, FRESHNESS_SCHEMA)
    monkeypatch.setattr(Maintainer, "tables", lambda self, names=None: [ref])
    cleaned, lines = {}, []

    def actions(cleaned, **kwargs) -> list[str]:
        return [s.action for s in Maintainer(spark, config, cleaned=cleaned, out=lines.append, **kwargs).run()]

    assert actions(cleaned) == ["retention", "compact", "vacuum"]
    assert list(cleaned) == [ref.name]
    assert actions(cleaned) == ["compact"]
    assert lines[-1] == ("retention and vacuum of 1 table(s) wait: cleaned up less than "
                         "maintenance.cleanup_every (1 day) ago")
    cleaned[ref.name] -= 86400.0  # a day has passed
    assert actions(cleaned) == ["retention", "compact", "vacuum"]
    assert actions(None) == ["retention", "compact", "vacuum"]  # lakehouse maintain
    # A restarted run reads the last clean-up from ops.maintenance: not due again at once.
    restarted = ScheduledMaintenance(spark, config)._cleaned_before()
    assert list(restarted) == [ref.name] and 0 <= time.monotonic() - restarted[ref.name] < 600
    assert actions(restarted) == ["compact"]

    # A reader whose checkpoint is older than the log, with nothing to delete: nothing to do, clean.
    monkeypatch.setattr("lakehouse.maintenance.reader_holds", lambda *args: None)
    cleaned.clear()
    assert actions(cleaned) == ["retention", "compact", "vacuum"] and list(cleaned) == [ref.name]
    monkeypatch.setattr(Maintainer, "vacuum", lambda self, r: Step(r.name, "vacuum", outcome="skipped"))
    cleaned.clear()
    assert actions(cleaned) == ["retention", "compact", "vacuum"] and not cleaned  # a reader held files
    assert ScheduledMaintenance(spark, config)._cleaned_before() == {}  # due again after a restart too


def test_a_restart_finds_each_whole_clean_up_in_ops_maintenance(spark, config):
    """recent_cleanups reads the rows a pass records: a table's clean-up counts from its retention
    step when that and the vacuum after it succeeded and nothing failed since; in any time zone."""
    zone = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"  # pyspark hands back naive local times
    time.tzset()
    try:
        now = datetime.now(timezone.utc)
        at = lambda minutes: now - timedelta(minutes=minutes)  # noqa: E731
        Maintainer(spark, config)._record([
            Step("a", "retention", at(10)), Step("a", "compact", at(9.5)), Step("a", "vacuum", at(9)),
            Step("b", "retention", at(8), outcome="failed"), Step("b", "vacuum", at(7)),
            Step("c", "vacuum", at(6), outcome="nothing to do"),  # no retention step (not an ops log)
            Step("d", "retention", at(20)), Step("d", "vacuum", at(19)), Step("d", "vacuum", at(5), outcome="skipped"),
            Step("e", "retention", at(3000)), Step("e", "vacuum", at(2999)),  # two days ago
            Step("f", "vacuum", at(3)), Step("f", "retention", at(3)),  # one instant: retention first
            Step("g", "retention", at(1445)), Step("g", "vacuum", at(1435)),  # its pass began over a day ago
        ])
        assert recent_cleanups(spark, config, 86400.0) == {"a": at(10), "c": at(6), "f": at(3)}
    finally:
        if zone is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = zone
        time.tzset()


def test_a_wait_for_a_writer_lock_ends_on_stop(config):
    """Maintenance waiting for silver's lock (a MERGE holds it) gives up when the run stops."""
    ref, stop = resolve_table(config, "silver.telemetry"), threading.Event()
    with writing(ref):  # the MERGE
        waiter = ThreadPoolExecutor(1).submit(lambda: writing(ref, stop=stop).__enter__())
        time.sleep(1.0)
        assert not waiter.done()
        stop.set()
        with pytest.raises(WaitStopped, match="silver.telemetry"):
            waiter.result(timeout=10)
    with writing(ref, stop=stop):  # a free lock is taken whatever the stop
        pass


def test_a_stop_cancels_a_maintenance_step_that_runs_long(spark, config, monkeypatch, capsys):
    """The run's stop waits STOP_WAIT_SECONDS for the step in progress, then cancels its Spark
    jobs: the pass ends, its row says stopped, and the shared session's cores are free again."""
    began = []

    def long_retention_step(self, ref):  # a step whose Spark job runs far longer than the stop waits
        began.append(ref.name)
        self.spark.sparkContext.parallelize(range(2), 2).foreach(lambda _: time.sleep(300))

    monkeypatch.setattr(Maintainer, "tables", lambda self, names=None: [resolve_table(config, "ops.freshness")])
    monkeypatch.setattr(Maintainer, "trim", long_retention_step)
    monkeypatch.setattr(ScheduledMaintenance, "STOP_WAIT_SECONDS", 1.0)
    scheduled = ScheduledMaintenance(spark, config)  # interval: 1 hour (conf/base)
    scheduled.next_at = 0.0
    scheduled.poll()
    _wait(lambda: began and spark.sparkContext.statusTracker().getJobIdsForGroup(scheduled.job_group),
          "the pass's job", 60)
    scheduled.stop()
    assert not scheduled.busy
    assert "cancelling its Spark jobs" in capsys.readouterr().out
    (steps,) = scheduled.passes
    assert [(s.table_name, s.action, s.outcome) for s in steps] == [("ops.freshness", "retention", "stopped")]
    rows = read_table(spark, resolve_table(config, MAINTENANCE_TABLE)).select("table_name", "action", "outcome").collect()
    assert [tuple(row) for row in rows] == [("ops.freshness", "retention", "stopped")]
    assert spark.range(10).count() == 10  # the session goes on


@pytest.mark.slow
def test_maintain_compacts_each_table_and_keeps_contents_and_its_versions(spark, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data", overrides=[
        "sources.telemetry.max_files_per_trigger=1", "maintenance.compact_min_files=3"])
    _many_small_batches(spark, config, files=6)
    tables = [ref.name for ref in Maintainer(spark, config).tables()]
    before = {name: table_size(spark, resolve_table(config, name)) for name in tables}
    contents = {name: _checksum(spark, config, name) for name in tables}
    bronze = resolve_table(config, "bronze.telemetry")
    # Time travel after the compaction: the first two versions, one in the middle, the last.
    last = before[bronze.name].version
    bronze_versions = {v: _checksum(spark, config, bronze.name, v) for v in sorted({0, 1, last // 2, last})}
    small = [name for name in tables if before[name].files >= 3]
    # ops.ingested_files is not among them: a query journals its batches' rows and appends them together.
    assert {"bronze.telemetry", "ops.stream_progress"} <= set(small), before

    # A dry run changes nothing, and says what it would do (two tables: each step costs as much as
    # in a real pass, a VACUUM's dry run about a second a table).
    assert main(["--env", "test", "--data-dir", str(config.storage.data_dir), "--set", "maintenance.compact_min_files=3",
                 "maintain", "--dry-run", "--table", "bronze.telemetry", "--table", "ops.stream_progress"]) == 0
    out = capsys.readouterr().out
    assert "bronze.telemetry: compact: would be done" in out and "(dry run: nothing changes)" in out
    assert "ops.stream_progress: retention: nothing to do" in out and "2 table(s)" in out
    assert {name: table_size(spark, resolve_table(config, name)) for name in tables} == before
    assert not Path(resolve_table(config, MAINTENANCE_TABLE).path).exists()

    steps = Maintainer(spark, config).run()
    assert not [s for s in steps if s.outcome == "failed"], steps
    for name in small:
        after = table_size(spark, resolve_table(config, name))
        assert after.files < before[name].files, (name, before[name], after)
    for name in tables:
        assert _checksum(spark, config, name) == contents[name], name  # the same rows, compacted
    for version, checksum in bronze_versions.items():  # time travel (7-day retention)
        assert _checksum(spark, config, bronze.name, version) == checksum, version
    recorded = read_table(spark, resolve_table(config, MAINTENANCE_TABLE))
    compacted = {r["table_name"]: r for r in recorded.where("action = 'compact' AND outcome = 'done'").collect()}
    assert set(small) <= set(compacted)
    assert all(r["files_after"] < r["files_before"] and r["bytes_after"] > 0 for r in compacted.values())
    for name in tables:  # from the session's defaults when made, else set by the settings step
        props = delta_table(spark, resolve_table(config, name)).detail().first()["properties"]
        assert props["delta.deletedFileRetentionDuration"] == "interval 604800 seconds", name
        assert props["delta.logRetentionDuration"] == "interval 2592000 seconds", name
    assert reconcile(spark, config, "telemetry").holds


@pytest.mark.slow
def test_vacuum_waits_for_a_reader_behind_and_removes_what_nothing_needs(spark, tmp_path, monkeypatch):
    """A 1-second retention: VACUUM may remove any file a version older than a second used, but not
    one that a streaming reader's checkpoint (gold reading silver's change feed) still needs."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data", overrides=[
        "sources.telemetry.max_files_per_trigger=1", "maintenance.compact_min_files=2",
        "maintenance.deleted_file_retention=1s"])
    landing = _many_small_batches(spark, config, files=2, seed=4)
    # More silver commits that gold has not read: its checkpoint stays behind.
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=6, fault_rate=0.0), landing, "telemetry",
                   "m6", 6, 300, 3)
    behind = [flow for flow in pipeline_flows(config)[0] if flow.kind != "gold"]
    assert run_flows(spark, config, behind, ONCE) == 0
    silver = resolve_table(config, "silver.telemetry")
    maintainer = Maintainer(spark, config)
    maintainer.run(["silver.telemetry"])  # settings, and compaction: silver's files become tombstones
    time.sleep(1.5)
    (step,) = [s for s in maintainer.run(["silver.telemetry"]) if s.action == "vacuum"]
    assert step.outcome == "skipped" and "streaming reader" in step.detail, step

    # Bronze's reader (silver) is at the newest version: its compacted files go.
    steps = maintainer.run(["bronze.telemetry"])
    time.sleep(1.5)
    steps += maintainer.run(["bronze.telemetry"])
    assert [s for s in steps if s.action == "vacuum" and s.outcome == "done" and s.files_after < s.files_before], steps
    assert not [s for s in steps if s.action == "vacuum" and s.outcome == "skipped"], steps

    # The reader behind still reads everything it needs, and then silver can be vacuumed.
    gold = [flow for flow in pipeline_flows(config)[0] if flow.kind == "gold"]
    assert run_flows(spark, config, gold, ONCE) == 0
    recomputed = (read_table(spark, silver).groupBy("host", F.window("event_time", "1 minute").start.alias("minute"))
                  .count())
    minutes = read_table(spark, resolve_table(config, "gold.telemetry_minute"))
    newest = minutes.agg(F.max("minute")).first()[0]
    closed = recomputed.where(F.col("minute") <= F.lit(newest)).select("host", "minute", "count")
    assert sorted(closed.collect()) == sorted(minutes.select("host", "minute", F.col("readings").alias("count")).collect())
    time.sleep(1.5)
    (step,) = [s for s in maintainer.run(["silver.telemetry"]) if s.action == "vacuum"]
    assert step.outcome == "done" and step.files_after < step.files_before, step
    latest = table_size(spark, silver).version
    assert read_table(spark, silver, version=latest).count() == read_table(spark, silver).count()


@pytest.mark.slow
def test_ops_retention_deletes_only_rows_older_than_it(spark, config, monkeypatch):
    from lakehouse.progress import STREAM_PROGRESS_SCHEMA, STREAM_PROGRESS_TABLE
    from lakehouse.tables import append_to_table

    ref = resolve_table(config, STREAM_PROGRESS_TABLE)
    create_table_if_missing(spark, ref, STREAM_PROGRESS_SCHEMA)
    now = datetime.utcnow()
    rows = [("q", "id", "run", i, now - timedelta(days=age), 1, 1, 1.0, None, "", "{}")
            for i, age in enumerate([0, 1, 29, 31, 400])]
    append_to_table(spark.createDataFrame(rows, STREAM_PROGRESS_SCHEMA), ref)
    (step,) = [s for s in Maintainer(spark, config).run([STREAM_PROGRESS_TABLE]) if s.action == "retention"]
    assert step.outcome == "done" and "2 rows older than 30 days" in step.detail
    assert sorted(r["batch_id"] for r in read_table(spark, ref).collect()) == [0, 1, 2]


@pytest.mark.slow
def test_archive_moves_only_committed_files_and_a_kill_mid_move_loses_and_doubles_nothing(
        spark, tmp_path, monkeypatch, subprocess_env):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    overrides = ["sources.telemetry.after_ingest=archive", "sources.telemetry.max_files_per_trigger=2"]
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data", overrides=overrides)
    landing = Path(config.landing_path("telemetry"))
    archive = Path(config.archive_path("telemetry"))
    landing.mkdir(parents=True)
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=2, fault_rate=0.05), landing, "telemetry",
                   "a2", 2, 600, 6)
    bronze_flow = [flow for flow in pipeline_flows(config)[0] if flow.id == "bronze.telemetry"]
    assert run_flows(spark, config, bronze_flow, ONCE) == 0
    ingested = {p.name for p in landing.glob("*.jsonl")}
    lines = {p.name: p.read_bytes().count(b"\n") for p in landing.glob("*.jsonl")}
    # Files landed after the run: the backlog, which maintenance must leave alone.
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=3, fault_rate=0.0), landing, "telemetry",
                   "b3", 3, 200, 2)
    backlog = {p.name for p in landing.glob("*.jsonl")} - ingested
    assert len(backlog) == 2

    # kill -9 in the middle of the moves (after two of them), then maintain again.
    env = {**subprocess_env, FAILPOINTS_ENV: "maintenance.archive@2=kill"}
    sets = [arg for item in overrides for arg in ("--set", item)]
    killed = subprocess.run([sys.executable, "-m", "lakehouse.cli", "--env", "test", "--data-dir",
                             str(config.storage.data_dir), *sets, "maintain"],
                            cwd=REPO, env=env, capture_output=True, timeout=300, start_new_session=True)
    assert killed.returncode == -9, killed.stdout.decode()[-2000:]
    assert len(list(archive.rglob("*.jsonl"))) == 2
    steps = Maintainer(spark, config).run()
    (step,) = [s for s in steps if s.action == "archive"]
    assert step.outcome == "done", step
    assert {p.name for p in archive.rglob("*.jsonl")} == ingested  # every ingested file, once
    assert {p.name for p in landing.glob("*.jsonl")} == backlog  # the backlog stays
    assert all(p.read_bytes().count(b"\n") == lines[p.name] for p in archive.rglob("*.jsonl"))

    # The stream goes on: the backlog is taken in, nothing twice, nothing lost.
    assert run_flows(spark, config, bronze_flow, ONCE) == 0
    expected = sum(lines.values()) + sum(p.read_bytes().count(b"\n") for p in landing.glob("*.jsonl"))
    bronze = read_table(spark, resolve_table(config, "bronze.telemetry"))
    assert bronze.count() == expected
    assert bronze.select("_source_file", "_source_line").distinct().count() == expected
    Maintainer(spark, config).run()
    assert {p.name for p in archive.rglob("*.jsonl")} == ingested | backlog
    assert not list(landing.glob("*.jsonl"))


@pytest.mark.slow
def test_maintenance_in_the_run_compacts_silver_while_it_commits(spark, tmp_path, monkeypatch, capsys):
    """The run maintains every few seconds while files keep landing; a second maintainer in the
    same JVM that does not take the writer lock (as another application would not) races silver's
    MERGE: whichever commit loses is redone, and no stream fails."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    overrides = ["maintenance.interval=3s", "maintenance.compact_min_files=2"]
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data", overrides=overrides)
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=12, fault_rate=0.05), landing, "telemetry",
                   "s12", 12, 600, 2)
    # Bronze and silver only (the pass has fewer tables to go through), silver in two files already.
    flows = pipeline_flows(config, ["bronze.telemetry", "silver.telemetry"])[0]
    one_file_a_batch = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data",
                                   overrides=[*overrides, "sources.telemetry.max_files_per_trigger=1"])
    assert run_flows(spark, one_file_a_batch, flows, ONCE) == 0
    app = PipelineApp(spark, config, flows, {"processingTime": "1 second"})
    # Every table cleaned up just now (as a restarted run finds in ops.maintenance): the passes
    # compact only. Clean-up in the run: test_the_run_cleans_up_a_table_at_most_every_cleanup_every.
    app.maintenance.cleaned = dict.fromkeys(maintained_tables(config), time.monotonic())
    lander = Lander(config, interval=1.0, lines=30, fault_rate=0.05)
    silver = resolve_table(config, "silver.telemetry")
    foreign = Maintainer(spark, config, out=lambda line: print(f"foreign: {line}", flush=True))
    monkeypatch.setattr(foreign, "_rewrites_files", lambda ref: False)  # no lock: another application's view
    foreign_steps, run_steps = [], []
    attempt = Maintainer._attempt

    def noting_the_runs_steps(self, *args):  # each step of the run's passes as it ends
        step = attempt(self, *args)
        if step is not None and self is not foreign:
            run_steps.append(step)
        return step

    monkeypatch.setattr(Maintainer, "_attempt", noting_the_runs_steps)

    def maintain_while_it_runs() -> None:
        lander.start()
        # Not the end of the pass: with the streams busy, the tables after silver take most of a minute.
        _wait(lambda: any(s.table_name == silver.name and s.action == "compact" and s.outcome == "done"
                          for s in run_steps), "a compaction of silver by the run", timeout=300)
        # New batches' files since, for the foreign compaction to race the MERGE over.
        _wait(lambda: table_size(spark, silver).files >= 2, "silver files written after the compaction", timeout=120)
        foreign_steps.extend(s for s in foreign.run([silver.name]) if s.action == "compact")
        lander.halt.set()
        lander.join()

    assert _run_while(app, maintain_while_it_runs) == 0
    assert {run.state for run in app.runs.values()} <= {"stopped", "idle"}
    assert all(run.restarts == 0 for run in app.runs.values())  # no stream failed
    assert not [s for s in run_steps if s.outcome == "failed"]
    assert app.maintenance.passes  # the pass the stop ended returned its steps (one that raised would not)
    assert all(s.outcome in ("done", "nothing to do") for s in foreign_steps), foreign_steps
    # Every landed line in bronze once; reconciliation exact; silver one row per key.
    assert run_flows(spark, config, flows, ONCE) == 0
    lines = sum(p.read_bytes().count(b"\n") for p in landing.glob("*.jsonl"))
    assert read_table(spark, resolve_table(config, "bronze.telemetry")).count() == lines
    report = reconcile(spark, config, "telemetry")
    assert report.holds, report.describe()
    rows = read_table(spark, silver)
    assert rows.count() == rows.select("event_id").distinct().count()
    out = capsys.readouterr().out
    assert "maintenance: silver.telemetry: compact: done" in out and "maintenance: the pass failed" not in out
    recorded = read_table(spark, resolve_table(config, MAINTENANCE_TABLE))
    assert recorded.where(f"table_name = '{silver.name}' AND action = 'compact' AND outcome = 'done'").count() >= 1
    assert os.environ.get(FAILPOINTS_ENV) is None


def test_maintenance_gets_a_quarter_of_a_flows_share_of_the_cores(spark, config):
    """The session's FAIR pools (spark.scheduler.allocation.file): each flow's of weight
    FLOW_POOL_WEIGHT, maintenance's of 1, so a free core goes to a waiting flow first."""
    scheduler = spark.sparkContext._jsc.sc()
    pools = {flow_id: scheduler.getPoolForName(flow_id) for flow_id in Pipeline(config).flows}
    weights = {name: pool.get().weight() for name, pool in pools.items() if pool.isDefined()}
    assert weights == dict.fromkeys(Pipeline(config).flows, FLOW_POOL_WEIGHT)
    path = session_settings(config)["spark.scheduler.allocation.file"]
    assert path == scheduler_pools_file(config)
    pools = {pool.get("name"): int(pool.findtext("weight")) for pool in ElementTree.parse(path).getroot()}
    assert pools == {**dict.fromkeys(Pipeline(config).flows, FLOW_POOL_WEIGHT), MAINTENANCE_POOL: 1}
