"""Gold's build order from the pipeline graph: gold tables that read other gold tables are built
after them, on configurations with chains and diamonds of gold tables; a cycle is refused when the
configuration loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakehouse.config import ConfigError, load_config
from lakehouse.graph import CycleError, inputs_first
from lakehouse.pipeline import Pipeline


def gold_order(config, names=None) -> list[str]:
    """The named gold tables (default: all), inputs first, as `lakehouse gold` builds them."""
    pipeline = Pipeline(config)
    flows = [pipeline.gold(name) for name in (config.gold if names is None else names)]
    return [flow.name for flow in pipeline.inputs_first(flows)]


def _with_gold(conf: Path, tables: dict[str, list[str]], keep_project_tables: bool = False):
    """The copied configuration with these batch gold tables (name -> inputs), loaded."""
    folder = conf / "base" / "gold"
    if not keep_project_tables:
        for path in folder.glob("*.yml"):
            path.unlink()
        (conf / "base" / "training.yml").unlink()  # it trains on gold.telemetry_features, gone here
    for name, inputs in tables.items():
        views = ", ".join(table.replace(".", "_") for table in inputs)
        (folder / f"{name}.yml").write_text(
            f"mode: batch\ninputs: [{', '.join(inputs)}]\nsql: SELECT * FROM {views}\n")
    return load_config("test", conf_dir=conf, data_dir=conf.parent / "data")


def _before(order: list[str], first: str, then: str) -> bool:
    return order.index(first) < order.index(then)


CHAIN = {"a_end": ["gold.b_middle"], "b_middle": ["gold.c_start"], "c_start": ["silver.telemetry"]}


def test_a_chain_is_built_from_its_start(conf_copy):
    config = _with_gold(conf_copy, CHAIN)
    # The files (and so config.gold) list the end first: the order comes from the inputs.
    assert list(config.gold) == ["a_end", "b_middle", "c_start"]
    assert gold_order(config) == ["c_start", "b_middle", "a_end"]
    assert gold_order(config, ["a_end", "c_start", "b_middle"]) == ["c_start", "b_middle", "a_end"]
    assert gold_order(config, ["a_end", "b_middle"]) == ["b_middle", "a_end"]


def test_only_the_named_tables_are_ordered(conf_copy):
    config = _with_gold(conf_copy, CHAIN)
    assert gold_order(config, ["a_end"]) == ["a_end"]  # its inputs are not added
    assert gold_order(config, []) == []
    assert gold_order(config, ["b_middle", "b_middle", "c_start"]) == ["c_start", "b_middle"]  # each once


def test_a_diamond_builds_its_base_once_and_its_top_last(conf_copy):
    config = _with_gold(conf_copy, {
        "top": ["gold.left", "gold.right"], "left": ["gold.base"], "right": ["gold.base", "silver.telemetry"],
        "base": ["silver.telemetry"], "apart": ["bronze.telemetry"]})
    order = gold_order(config)
    assert sorted(order) == ["apart", "base", "left", "right", "top"]
    assert _before(order, "base", "left") and _before(order, "base", "right")
    assert _before(order, "left", "top") and _before(order, "right", "top")
    assert order == ["apart", "base", "left", "right", "top"]  # depth first, in the files' order
    assert gold_order(config, ["top", "right", "left"]) == ["left", "right", "top"]  # top's inputs, as it lists them
    assert gold_order(config, ["right", "top", "left"]) == ["right", "left", "top"]


def test_independent_tables_keep_the_order_they_are_named_in(conf_copy):
    config = _with_gold(conf_copy, {"x": ["silver.telemetry"], "y": ["silver.telemetry"], "z": ["silver.telemetry"]})
    assert gold_order(config, ["z", "x", "y"]) == ["z", "x", "y"]
    assert gold_order(config, ["y", "z"]) == ["y", "z"]


def test_the_project_tables_next_to_added_ones(conf_copy):
    config = _with_gold(conf_copy, {"host_daily": ["gold.telemetry_features", "gold.telemetry_minute"]},
                        keep_project_tables=True)
    order = gold_order(config)
    assert sorted(order) == ["host_daily", "telemetry_features", "telemetry_minute"]
    assert _before(order, "telemetry_minute", "telemetry_features") and order[-1] == "host_daily"


def test_an_unknown_name_is_a_configuration_error(conf_copy):
    config = _with_gold(conf_copy, {"x": ["silver.telemetry"]})
    with pytest.raises(ConfigError, match=r"gold\.nope: no such gold table \(configured: x\)"):
        gold_order(config, ["x", "nope"])


@pytest.mark.parametrize("tables,cycle", [
    ({"p": ["gold.q"], "q": ["gold.p"]}, "p -> q -> p"),
    ({"p": ["gold.q"], "q": ["gold.r"], "r": ["gold.p", "silver.telemetry"]}, "p -> q -> r -> p"),
    ({"entry": ["gold.p"], "p": ["gold.q"], "q": ["gold.p"]}, "p -> q -> p"),  # the cycle, not the way in
])
def test_a_cycle_is_refused_when_the_configuration_loads(conf_copy, tables, cycle):
    with pytest.raises(ConfigError) as error:
        _with_gold(conf_copy, tables)
    assert f"gold tables read each other in a cycle: {cycle}" in error.value.message
    first = cycle.split(" -> ")[0]
    assert error.value.key == f"gold.{first}.inputs"
    assert error.value.origin.endswith(f"{first}.yml")  # the file to fix


def test_a_table_reading_itself_is_refused(conf_copy):
    with pytest.raises(ConfigError, match="a gold table cannot read itself") as error:
        _with_gold(conf_copy, {"loop": ["gold.loop"]})
    assert error.value.key == "gold.loop.inputs"


def test_the_order_itself_names_the_cycle():
    reads = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    with pytest.raises(CycleError) as error:
        inputs_first(reads)
    assert error.value.nodes == ("a", "b", "c", "a")
    with pytest.raises(CycleError) as error:
        inputs_first(reads, ["d", "c", "b", "a"])
    assert error.value.nodes == ("a", "b", "c", "a")
    # A cycle only through nodes not named is still one: the order cannot be made.
    with pytest.raises(CycleError):
        inputs_first(reads, ["d"])
