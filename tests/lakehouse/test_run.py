"""`lakehouse run`: the flows it picks, and one triggered run of the whole graph, inputs first."""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path

import pytest

from lakehouse import runner
from lakehouse.app import PipelineApp
from lakehouse.cli import main
from lakehouse.config import ConfigError, load_config
from lakehouse.errors import EXIT_CONFIG, UsageError
from lakehouse.failpoints import FAILPOINTS_ENV
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.reconcile import reconcile
from lakehouse.run_state import read_state
from lakehouse.runner import pipeline_flows, run_flows
from lakehouse.tables import last_commit, read_table, resolve_table, table_exists
from tests.conftest import CONF_DIR
from tests.lakehouse.test_freshness import check_freshness

ONCE = {"availableNow": True}


def test_every_flow_inputs_first_and_a_kafka_source_without_a_broker_left_out(config, monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    flows, skipped = pipeline_flows(config)
    ids = [flow.id for flow in flows]
    assert ids == ["bronze.telemetry", "silver.telemetry", "gold.telemetry_minute", "gold.telemetry_features"]
    assert len(skipped) == 1 and skipped[0].startswith("bronze.telemetry_kafka: left out")

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    ids = [flow.id for flow in pipeline_flows(config)[0]]
    assert ids.index("bronze.telemetry_kafka") < ids.index("silver.telemetry")


def test_only_runs_the_named_flows_inputs_first(config, monkeypatch):
    flows, skipped = pipeline_flows(config, ["gold.telemetry_features", "silver.telemetry", "gold.telemetry_minute"])
    assert [flow.id for flow in flows] == ["silver.telemetry", "gold.telemetry_minute", "gold.telemetry_features"]
    assert skipped == []
    with pytest.raises(UsageError, match="lakehouse train"):
        pipeline_flows(config, ["train"])
    with pytest.raises(ConfigError, match="no such flow"):
        pipeline_flows(config, ["silver.nope"])
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(UsageError, match="KAFKA_BOOTSTRAP_SERVERS"):
        pipeline_flows(config, ["bronze.telemetry_kafka"])  # named: an error, not left out


def test_the_command_refuses_before_spark_starts(config, capsys):
    data = ["--env", "test", "--data-dir", str(config.storage.data_dir)]
    assert main([*data, "run", "--once", "--only", "gold.nope"]) == EXIT_CONFIG
    assert "no such flow" in capsys.readouterr().err
    assert main([*data, "run", "--trigger", "soon"]) == EXIT_CONFIG
    assert "--trigger" in capsys.readouterr().err
    assert not Path(config.storage.data_dir).exists()  # nothing written


def test_each_flows_last_rows_are_written_behind_the_next_flow_and_their_error_raised_at_the_end(
        spark, config, monkeypatch, capsys):
    """run_flows hands each flow's last flush on and waits for them all: a flush that fails does
    not stop the next flow, and fails the run once every flow has run; after a failed flow, the
    flow's exit code is what returns and the flush's error is printed."""
    ran, codes = [], {}

    def flow_whose_flush_fails(spark, config, flow, trigger, last_flush=None):
        flow_id = getattr(flow, "id", flow)
        ran.append(flow_id)
        last_flush.add(lambda: ran.append(f"{flow_id} flushed") or _raise(OSError(f"flush of {flow_id}")))
        return codes.get(flow_id, 0)

    monkeypatch.setattr(runner, "run_flow", flow_whose_flush_fails)
    with pytest.raises(OSError, match="flush of bronze.telemetry"):
        run_flows(spark, config, ["silver.telemetry", "bronze.telemetry"], ONCE)
    assert ran[0] == "bronze.telemetry" and ran.index("silver.telemetry") > 0  # inputs first, both run
    assert set(ran[1:]) == {"silver.telemetry", "bronze.telemetry flushed", "silver.telemetry flushed"}
    assert ran.index("bronze.telemetry flushed") < ran.index("silver.telemetry flushed")  # one after another

    ran.clear()
    codes["bronze.telemetry"] = 3
    assert run_flows(spark, config, ["bronze.telemetry", "silver.telemetry"], ONCE) == 3
    assert ran == ["bronze.telemetry", "bronze.telemetry flushed"]  # the failed flow's rows written still
    assert "OSError: flush of bronze.telemetry" in capsys.readouterr().err


def _raise(exc: Exception):
    raise exc


@pytest.mark.slow
def test_one_triggered_run_builds_every_table_from_the_landed_files(spark, config, monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    generator = TelemetryGenerator.from_config(config.generator, seed=5, fault_rate=0.05)
    generate_batch(generator, landing, "telemetry", "r5", 5, 1200, 2)

    flows, _ = pipeline_flows(config)
    assert run_flows(spark, config, flows, ONCE) == 0

    bronze = read_table(spark, resolve_table(config, "bronze.telemetry")).count()
    assert bronze == sum(len(p.read_bytes().splitlines()) for p in landing.glob("*.jsonl"))
    report = reconcile(spark, config, "telemetry")
    assert report.holds, report.describe()
    for table in ("gold.telemetry_minute", "gold.telemetry_features"):
        assert read_table(spark, resolve_table(config, table)).count() > 0, table
    assert not table_exists(spark, resolve_table(config, "gold.predictions"))
    check_freshness(spark, config, [flow.id for flow in flows], complete=True)


def _lines(landing: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in landing.glob("*.jsonl"))


def _count(spark, config, table: str) -> int:
    """Rows of the table; -1 before its first commit (read while the application runs)."""
    from pyspark.errors import AnalysisException

    try:
        return read_table(spark, resolve_table(config, table)).count()
    except AnalysisException:
        return -1


def _wait(condition, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1.0)


def _app_over_landed_files(spark, conf_dir: Path, data: Path, overrides: list[str], seed: int, fault_rate: float,
                           records: int):
    """(config, landing, generator, app): ``records`` generated lines landed in two files, and the
    always-on application over every flow of that configuration, a 1-second trigger."""
    config = load_config("test", conf_dir=conf_dir, data_dir=data, overrides=overrides)
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    generator = TelemetryGenerator.from_config(config.generator, seed=seed, fault_rate=fault_rate)
    generate_batch(generator, landing, "telemetry", f"s{seed}", seed, records, 2)
    app = PipelineApp(spark, config, pipeline_flows(config)[0], {"processingTime": "1 second"})
    return config, landing, generator, app


def _run_while(app: PipelineApp, step) -> int:
    """Run the application while ``step()`` runs in a thread, then stop it; its exit code. An error
    in ``step`` fails the test (with its traceback) once the application has stopped."""
    failures: list[str] = []

    def step_then_stop() -> None:
        try:
            step()
        except BaseException:  # noqa: BLE001 - reported below
            failures.append(traceback.format_exc())
        finally:
            app.stop()

    helper = threading.Thread(target=step_then_stop, daemon=True)
    helper.start()
    code = app.run()
    helper.join(timeout=60)
    assert not failures, failures[0]
    return code


@pytest.mark.slow
def test_the_always_on_application_keeps_every_table_fresh_until_stopped(spark, tmp_path, monkeypatch, capsys):
    """Files land while it runs; silver's second batch fails once (a transient error): silver is
    restarted from its checkpoint and the tables end exact."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv(FAILPOINTS_ENV, "silver.merge@1=raise-once")
    config, landing, generator, app = _app_over_landed_files(
        spark, CONF_DIR, tmp_path / "data", ["gold.telemetry_features.refresh=0s", "run.backoff=1s"],
        seed=8, fault_rate=0.05, records=900)

    def feed() -> None:
        _wait(lambda: _count(spark, config, "gold.telemetry_features") > 0, "the first feature build")
        published = read_state(config)  # for `lakehouse ui` (lakehouse/run_state.py)
        assert published["live"] and published["flows"]["bronze.telemetry"]["state"] == "running", published
        generate_batch(generator, landing, "telemetry", "b9", 9, 900, 2)  # files landing while it runs
        _wait(lambda: _count(spark, config, "bronze.telemetry") == _lines(landing), "the new files in bronze")
        minute = resolve_table(config, "gold.telemetry_minute")
        before = last_commit(spark, minute).version
        _wait(lambda: last_commit(spark, minute).version > before, "gold minutes from the new files")

    assert _run_while(app, feed) == 0
    assert {run.state for run in app.runs.values()} == {"stopped"} | ({"idle"} & {r.state for r in app.runs.values()})
    assert not spark.streams.active  # every query stopped
    assert app.runs["silver.telemetry"].restarts == 1 and app.runs["bronze.telemetry"].restarts == 0
    published = read_state(config)
    assert not published["live"] and published["stopped"] and published["flows"]["silver.telemetry"]["restarts"] == 1
    assert {flow["state"] for flow in published["flows"].values()} <= {"stopped", "idle"}
    restarts = [line for line in capsys.readouterr().out.splitlines() if "restarting from its checkpoint" in line]
    assert len(restarts) == 1 and restarts[0].startswith("silver.telemetry: failed (") and "silver.merge" in restarts[0]
    report = reconcile(spark, config, "telemetry")
    assert report.holds, report.describe()
    assert _count(spark, config, "bronze.telemetry") == _lines(landing)
    check_freshness(spark, config, list(app.runs), complete=True)  # every commit, empty ones between


def _second_entity_and_a_failing_rule(conf: Path) -> Path:
    """The copy of conf/ made so that silver.telemetry has a `fail` rule every batch breaks (hosts
    outside rack r01) and a second entity, telemetry_all, reads the same bronze without it."""
    entities, suites = conf / "base" / "entities", conf / "base" / "expectations"
    (entities / "telemetry_all.yml").write_text(
        (entities / "telemetry.yml").read_text().replace("suite: telemetry ", "suite: telemetry_all "))
    suite = json.loads((suites / "telemetry.json").read_text())
    (suites / "telemetry_all.json").write_text(json.dumps({**suite, "name": "telemetry_all"}))
    suite["expectations"].append({"type": "expect_column_values_to_be_in_set", "meta": {"policy": "fail"},
                                  "kwargs": {"column": "rack", "value_set": ["r01"]}})
    (suites / "telemetry.json").write_text(json.dumps(suite))
    return conf


@pytest.mark.slow
def test_a_fail_expectation_stops_only_its_entity_and_what_reads_it(spark, tmp_path, conf_copy, monkeypatch, capsys):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    config, landing, generator, app = _app_over_landed_files(
        spark, _second_entity_and_a_failing_rule(conf_copy), tmp_path / "data", ["run.backoff=1s"],
        seed=12, fault_rate=0.0, records=600)

    def land_while_failed() -> None:
        _wait(lambda: app.runs["silver.telemetry"].state == "failed", "silver.telemetry to fail")
        generate_batch(generator, landing, "telemetry", "f2", 13, 600, 2)  # the others keep going
        _wait(lambda: _count(spark, config, "silver.telemetry_all") == _lines(landing), "the other entity")

    assert _run_while(app, land_while_failed) == 1  # a flow failed for good
    states = {flow_id: (run.state, run.restarts) for flow_id, run in app.runs.items()}
    assert states == {"bronze.telemetry": ("stopped", 0), "silver.telemetry": ("failed", 0),
                      "silver.telemetry_all": ("stopped", 0), "gold.telemetry_minute": ("stopped", 0),
                      "gold.telemetry_features": ("stopped", 0)}, states
    out, err = capsys.readouterr()
    assert ("lakehouse: silver.telemetry failed: ExpectationFailedError: batch 0 of silver.telemetry: expectation "
            "expect_column_values_to_be_in_set(rack) failed") in err, err
    assert "gold.telemetry_minute: stopping, it reads silver.telemetry" in out, out
    assert _count(spark, config, "silver.telemetry") == 0  # nothing committed by the failing batch
    assert _count(spark, config, "bronze.telemetry") == _lines(landing) == 1200
