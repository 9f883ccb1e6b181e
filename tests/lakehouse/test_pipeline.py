"""The pipeline graph (lakehouse/pipeline.py): flows, their query names and checkpoints, and the
orders and lineage the CLI, the demo, training and `status` take from it."""

from __future__ import annotations

import pytest

from lakehouse.config import ConfigError, load_config
from lakehouse.graph import CycleError, inputs_first
from lakehouse.pipeline import SCORE, TRAIN, Pipeline
from tests.conftest import CONF_DIR, edit_conf


def ids(flows) -> list[str]:
    return [flow.id for flow in flows]


def test_flows_of_the_test_configuration(config):
    pipeline = Pipeline(config)
    assert ids(pipeline.inputs_first()) == [
        "bronze.telemetry", "bronze.telemetry_kafka", "silver.telemetry", "gold.telemetry_minute",
        "gold.telemetry_features", TRAIN, SCORE,
    ]
    silver = pipeline.silver("telemetry")
    assert silver.reads == ("bronze.telemetry", "bronze.telemetry_kafka")
    assert silver.writes == ("silver.telemetry", "silver.telemetry_quarantine")
    assert silver.query_name == "silver_telemetry"
    assert silver.checkpoint == config.checkpoint_path("silver_telemetry")
    # a batch gold table runs once: no query, no checkpoint
    features = pipeline.gold("telemetry_features")
    assert not features.streaming and features.query_name is None and features.checkpoint is None
    assert pipeline.gold("telemetry_minute").query_name == "gold_telemetry_minute"
    assert pipeline.flow(SCORE).reads == ("gold.telemetry_features", TRAIN)
    assert pipeline.producer("silver.telemetry_quarantine").id == "silver.telemetry"
    assert pipeline.producer("ops.stream_progress") is None


def test_lineage_both_ways(config):
    pipeline = Pipeline(config)
    assert ids(pipeline.downstream("bronze.telemetry")) == [
        "silver.telemetry", "gold.telemetry_minute", "gold.telemetry_features", TRAIN, SCORE]
    assert ids(pipeline.upstream(TRAIN)) == [
        "bronze.telemetry", "bronze.telemetry_kafka", "silver.telemetry", "gold.telemetry_minute",
        "gold.telemetry_features"]
    assert ids(pipeline.reads("gold.telemetry_features")) == ["gold.telemetry_minute"]
    assert ids(pipeline.downstream(SCORE)) == []
    # a subset keeps inputs first whatever order it is asked in
    assert ids(pipeline.inputs_first(["gold.telemetry_features", "gold.telemetry_minute"])) == [
        "gold.telemetry_minute", "gold.telemetry_features"]


def test_a_diamond_of_gold_tables(conf_copy, tmp_path):
    """Two gold tables read the same one, a third reads both: each after all it reads."""
    gold = conf_copy / "base" / "gold"
    for name, inputs in (("left", "[gold.telemetry_minute]"), ("right", "[gold.telemetry_minute, silver.telemetry]"),
                         ("top", "[gold.right, gold.left]")):
        (gold / f"{name}.yml").write_text(f"mode: batch\ninputs: {inputs}\nsql: SELECT 1 AS one\n")
    config = load_config("test", conf_dir=conf_copy, data_dir=tmp_path / "data")
    order = ids(Pipeline(config).inputs_first())
    for before, after in (("gold.telemetry_minute", "gold.left"), ("gold.telemetry_minute", "gold.right"),
                          ("gold.left", "gold.top"), ("gold.right", "gold.top"), ("silver.telemetry", "gold.right")):
        assert order.index(before) < order.index(after), (before, after, order)
    assert set(ids(Pipeline(config).downstream("gold.left"))) == {"gold.top"}


def test_flows_the_graph_does_not_order_keep_the_configured_order(conf_copy, tmp_path):
    gold = conf_copy / "base" / "gold"
    for name in ("a_first", "b_second", "c_third"):  # independent tables, each reading silver
        (gold / f"{name}.yml").write_text("mode: batch\ninputs: [silver.telemetry]\nsql: SELECT 1 AS one\n")
    config = load_config("test", conf_dir=conf_copy, data_dir=tmp_path / "data")
    downstream = [f.id for f in Pipeline(config).downstream("bronze.telemetry") if f.kind == "gold"]
    assert downstream[:3] == ["gold.a_first", "gold.b_second", "gold.c_third"]
    upstream = [f.id for f in Pipeline(config).upstream("gold.telemetry_features")]
    assert upstream == ["bronze.telemetry", "bronze.telemetry_kafka", "silver.telemetry", "gold.telemetry_minute"]


def test_a_cycle_is_refused_when_the_configuration_loads(conf_copy, tmp_path):
    edit_conf(conf_copy / "base/gold/telemetry_minute.yml", "inputs: [silver.telemetry]", "inputs: [gold.telemetry_features]")
    with pytest.raises(ConfigError, match="gold tables read each other in a cycle: telemetry_features -> "
                                          "telemetry_minute -> telemetry_features"):
        load_config("test", conf_dir=conf_copy, data_dir=tmp_path / "data")


def test_unknown_flows_are_configuration_errors(config):
    pipeline = Pipeline(config)
    with pytest.raises(ConfigError, match="no such flow"):
        pipeline.flow("gold.nothing")
    with pytest.raises(ConfigError, match="no such entity"):
        pipeline.silver("nothing")


def test_inputs_first_keeps_the_given_order_where_free_and_names_a_cycle():
    reads = {"a": [], "b": ["a"], "c": [], "d": ["c", "b"]}
    assert inputs_first(reads) == ["a", "b", "c", "d"]
    assert inputs_first(reads, ["d", "a"]) == ["a", "d"]  # through b, which is not asked for
    with pytest.raises(CycleError) as err:
        inputs_first({"x": ["y"], "y": ["z"], "z": ["y"]})
    assert err.value.nodes == ("y", "z", "y")


def test_the_configuration_without_training_has_no_train_or_score(tmp_path):
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data")
    assert TRAIN in Pipeline(config).flows
    stripped = type(config)(**{**config.__dict__, "training": None})
    assert TRAIN not in Pipeline(stripped).flows and SCORE not in Pipeline(stripped).flows
