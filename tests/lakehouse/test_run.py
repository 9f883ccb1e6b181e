"""`lakehouse run`: the flows it picks, and one triggered run of the whole graph, inputs first."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakehouse.cli import main
from lakehouse.config import ConfigError
from lakehouse.errors import EXIT_CONFIG, UsageError
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.reconcile import reconcile
from lakehouse.runner import pipeline_flows, run_flows
from lakehouse.tables import read_table, resolve_table, table_exists

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
    assert main([*data, "run", "--trigger", "2s"]) == EXIT_CONFIG
    assert "--once" in capsys.readouterr().err
    assert not Path(config.storage.data_dir).exists()  # nothing written


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
