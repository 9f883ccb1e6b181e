"""LakehouseConfig.gold_order: gold tables that read other gold tables are built after them, on
configurations with chains and diamonds of gold tables; a cycle is refused when the
configuration loads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lakehouse.config import ConfigError, GoldCycle, GoldTableConfig, load_config


def _with_gold(conf: Path, tables: dict[str, list[str]], keep_project_tables: bool = False):
    """The copied configuration with these batch gold tables (name -> inputs), loaded."""
    folder = conf / "base" / "gold"
    if not keep_project_tables:
        for path in folder.glob("*.yml"):
            path.unlink()
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
    assert config.gold_order() == ["c_start", "b_middle", "a_end"]
    assert config.gold_order(["a_end", "c_start", "b_middle"]) == ["c_start", "b_middle", "a_end"]
    assert config.gold_order(["a_end", "b_middle"]) == ["b_middle", "a_end"]


def test_only_the_named_tables_are_ordered(conf_copy):
    config = _with_gold(conf_copy, CHAIN)
    assert config.gold_order(["a_end"]) == ["a_end"]  # its inputs are not added
    assert config.gold_order([]) == []
    assert config.gold_order(["b_middle", "b_middle", "c_start"]) == ["c_start", "b_middle"]  # each once


def test_a_diamond_builds_its_base_once_and_its_top_last(conf_copy):
    config = _with_gold(conf_copy, {
        "top": ["gold.left", "gold.right"], "left": ["gold.base"], "right": ["gold.base", "silver.telemetry"],
        "base": ["silver.telemetry"], "apart": ["bronze.telemetry"]})
    order = config.gold_order()
    assert sorted(order) == ["apart", "base", "left", "right", "top"]
    assert _before(order, "base", "left") and _before(order, "base", "right")
    assert _before(order, "left", "top") and _before(order, "right", "top")
    assert order == ["apart", "base", "left", "right", "top"]  # depth first, in the files' order
    assert config.gold_order(["top", "right", "left"]) == ["left", "right", "top"]  # top's inputs, as it lists them
    assert config.gold_order(["right", "top", "left"]) == ["right", "left", "top"]


def test_independent_tables_keep_the_order_they_are_named_in(conf_copy):
    config = _with_gold(conf_copy, {"x": ["silver.telemetry"], "y": ["silver.telemetry"], "z": ["silver.telemetry"]})
    assert config.gold_order(["z", "x", "y"]) == ["z", "x", "y"]
    assert config.gold_order(["y", "z"]) == ["y", "z"]


def test_the_project_tables_next_to_added_ones(conf_copy):
    config = _with_gold(conf_copy, {"host_daily": ["gold.telemetry_features", "gold.telemetry_minute"]},
                        keep_project_tables=True)
    order = config.gold_order()
    assert sorted(order) == ["host_daily", "telemetry_features", "telemetry_minute"]
    assert _before(order, "telemetry_minute", "telemetry_features") and order[-1] == "host_daily"


def test_an_unknown_name_is_a_configuration_error(conf_copy):
    config = _with_gold(conf_copy, {"x": ["silver.telemetry"]})
    with pytest.raises(ConfigError, match=r"gold\.nope: no such gold table \(configured: x\)"):
        config.gold_order(["x", "nope"])


@pytest.mark.parametrize("tables,cycle", [
    ({"p": ["gold.q"], "q": ["gold.p"]}, "p -> q -> p"),
    ({"p": ["gold.q"], "q": ["gold.r"], "r": ["gold.p", "silver.telemetry"]}, "p -> q -> r -> p"),
    ({"entry": ["gold.p"], "p": ["gold.q"], "q": ["gold.p"]}, "entry -> p -> q -> p"),
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


def test_gold_order_itself_raises_goldcycle_on_a_cycle(conf_copy):
    config = _with_gold(conf_copy, {"x": ["silver.telemetry"]})
    sql = "SELECT 1"
    cyclic = replace(config, gold={"a": GoldTableConfig("batch", ["gold.b"], sql), "b": GoldTableConfig("batch", ["gold.c"], sql),
                                   "c": GoldTableConfig("batch", ["gold.a"], sql), "d": GoldTableConfig("batch", ["gold.a"], sql)})
    with pytest.raises(GoldCycle) as error:
        cyclic.gold_order()
    assert error.value.tables == ("a", "b", "c", "a")
    with pytest.raises(GoldCycle) as error:
        cyclic.gold_order(["d", "c", "b", "a"])
    assert error.value.tables == ("d", "a", "b", "c", "a")
    # A cycle only through tables not named is not one among those named.
    assert cyclic.gold_order(["d", "a"]) == ["a", "d"]
