"""Gold: the streaming per-minute aggregates agree with silver, the feature table's label is the
next minute's power, and a second run appends new minutes without touching closed ones."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.config import ConfigError, duration_seconds, load_config
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.gold import GoldInputMissing
from lakehouse.pipeline import Pipeline
from lakehouse.runner import run_flow, run_flows
from lakehouse.tables import delta_table, read_table, resolve_table

pytestmark = pytest.mark.slow

ONCE = {"availableNow": True}


def _land_refine(spark, config, seed: int, records: int = 2400):
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True, exist_ok=True)
    generator = TelemetryGenerator.from_config(config.generator, seed=seed, fault_rate=0.05)
    generate_batch(generator, landing, "telemetry", f"g{seed}", seed, records, 3)
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert run_flow(spark, config, "silver.telemetry", ONCE) == 0


def _expected_minutes(spark, config):
    """Per host and minute from silver in batch, for the minutes the watermark has closed."""
    silver = read_table(spark, resolve_table(config, "silver.telemetry"))
    delay = duration_seconds(config.gold_table("telemetry_minute").watermark.delay)
    newest = silver.agg(F.max("event_time")).first()[0]
    minutes = silver.groupBy("host", F.window("event_time", "1 minute").start.alias("minute")).agg(
        F.count("*").alias("readings"), F.avg("power_w").alias("power_w"))
    cutoff = F.lit(newest) - F.expr(f"INTERVAL {int(delay)} SECONDS")
    closed = minutes.where(F.col("minute") + F.expr("INTERVAL 1 MINUTE") <= cutoff)
    return {(r.host, r.minute): (r.readings, round(r.power_w, 6)) for r in closed.collect()}


def _gold_minutes(spark, config):
    rows = read_table(spark, resolve_table(config, "gold.telemetry_minute")).collect()
    return {(r.host, r.minute): (r.readings, round(r.power_w, 6)) for r in rows}, len(rows)


def test_gold_tables_from_silver(spark, config):
    with pytest.raises(GoldInputMissing, match="lakehouse refine --entity telemetry"):
        run_flows(spark, config, ["gold.telemetry_minute"], ONCE)
    order = Pipeline(config).inputs_first(["gold.telemetry_features", "gold.telemetry_minute"])
    assert [flow.id for flow in order] == ["gold.telemetry_minute", "gold.telemetry_features"]

    _land_refine(spark, config, seed=31)
    config = dataclasses.replace(config, streaming=dataclasses.replace(config.streaming, state_partitions=3))
    shuffle = spark.conf.get("spark.sql.shuffle.partitions")
    assert run_flows(spark, config, [f"gold.{name}" for name in config.gold], ONCE) == 0
    # The new query's state in the partitions asked for, the session's own setting as it was.
    assert _state_partitions(config) == "3" and spark.conf.get("spark.sql.shuffle.partitions") == shuffle
    expected = _expected_minutes(spark, config)
    gold, rows = _gold_minutes(spark, config)
    assert len(expected) > 100 and rows == len(gold)  # one row per host and minute
    assert gold == expected

    # The feature table: label = the same host's power in the next minute; versions recorded.
    features = read_table(spark, resolve_table(config, "gold.telemetry_features")).collect()
    by_key = {(r.host, r.minute): r for r in features}
    pairs = [(k, (k[0], k[1] + timedelta(minutes=1))) for k in gold]
    with_next = [(k, n) for k, n in pairs if n in gold]
    assert len(features) == len(with_next) > 0
    for key, nxt in with_next:
        assert by_key[key].next_minute_power_w == pytest.approx(gold[nxt][1])
    commit = delta_table(spark, resolve_table(config, "gold.telemetry_features")).history(1).first()
    minute_version = delta_table(spark, resolve_table(config, "gold.telemetry_minute")).history(1).first().version
    assert json.loads(commit.userMetadata)["inputs"] == {"gold.telemetry_minute": minute_version}

    # A later stretch of events: new minutes are appended, closed ones stay as they were.
    later = dataclasses.replace(config.generator, start_time="2026-01-01T06:00:00Z")
    config2 = dataclasses.replace(config, generator=later,
                                  streaming=dataclasses.replace(config.streaming, state_partitions=5))
    _land_refine(spark, config2, seed=32)
    assert run_flows(spark, config2, ["gold.telemetry_minute"], ONCE) == 0
    assert _state_partitions(config2) == "3"  # the checkpoint keeps its first run's partitions
    gold2, rows2 = _gold_minutes(spark, config2)
    assert rows2 == len(gold2)  # still one row per host and minute
    assert {k: v for k, v in gold2.items() if k in gold} == gold
    # ... and the first stretch's last minutes, closed only by the second run's events, are there too
    assert gold2 == _expected_minutes(spark, config2)
    assert len(gold2) > len(gold) + 100


def _state_partitions(config) -> str:
    """The state partitions the gold query's latest micro-batch ran with (its checkpoint's offsets)."""
    offsets = Path(Pipeline(config).flows["gold.telemetry_minute"].checkpoint, "offsets")
    latest = max((p for p in offsets.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return json.loads(latest.read_text().splitlines()[1])["conf"]["spark.sql.shuffle.partitions"]


def test_gold_config_errors(tmp_path):
    conf = Path(__file__).resolve().parents[2] / "conf"
    with pytest.raises(ConfigError, match="gold.telemetry_minute.inputs: no such input table 'silver.nothing'"):
        load_config("test", conf_dir=conf, data_dir=tmp_path, overrides=["gold.telemetry_minute.inputs=[silver.nothing]"])
    with pytest.raises(ConfigError, match="gold.telemetry_features.watermark: only streaming"):
        load_config("test", conf_dir=conf, data_dir=tmp_path,
                    overrides=["gold.telemetry_features.watermark={column: minute, delay: 1 minute}"])
