"""Expectation suites load with GX's API; their row-level rules decide each row's failures."""

from __future__ import annotations

import json

import pytest

from lakehouse.quality import SuiteError, load_suite, row_rules, with_rule_results


def test_project_suite_loads_with_gx_and_every_expectation_has_a_policy(config):
    suite = load_suite(config.suite_path(config.entity("telemetry").suite))
    assert suite.name == "telemetry"
    assert {e.meta["policy"] for e in suite.expectations} <= {"warn", "drop", "fail"}
    assert len(row_rules(suite)) == len(suite.expectations)


def test_a_missing_policy_is_refused(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"name": "s", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}, "meta": {}}]}))
    with pytest.raises(SuiteError, match="meta.policy"):
        load_suite(path)


def test_rules_split_failures_by_policy_and_nulls_pass_range_rules(spark, tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"name": "s", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}, "meta": {"policy": "drop"}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "a", "min_value": 0, "max_value": 10},
         "meta": {"policy": "drop"}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "b", "value_set": ["x", "y"]},
         "meta": {"policy": "warn"}},
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "b", "regex": "^[a-z]$"},
         "meta": {"policy": "fail"}},
    ]}))
    rules = row_rules(load_suite(path))
    df = spark.createDataFrame([(1, 5.0, "x"), (2, 11.0, "z"), (3, None, "Q"), (4, 3.0, None)], "id int, a double, b string")
    rows = {r.id: r for r in with_rule_results(df, rules).collect()}
    between, not_null = "expect_column_values_to_be_between(a)", "expect_column_values_to_not_be_null(a)"
    assert (rows[1]._failed_drop, rows[1]._failed_warn, rows[1]._failed_fail) == ([], [], [])
    assert rows[2]._failed_drop == [between] and rows[2]._failed_warn == ["expect_column_values_to_be_in_set(b)"]
    assert rows[3]._failed_drop == [not_null]  # null passes the range rule, fails not-null
    assert rows[3]._failed_fail == ["expect_column_values_to_match_regex(b)"]
    assert (rows[4]._failed_drop, rows[4]._failed_warn, rows[4]._failed_fail) == ([], [], [])
