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


def test_fused_results_equal_gx_results_on_the_same_rows(spark, config, tmp_path):
    """The one-pass results silver writes (quality.validation: fused) are what GX itself reports."""
    from pyspark.sql import functions as F

    from lakehouse.generator import TelemetryGenerator
    from lakehouse.generator_runs import generate_batch
    from lakehouse.landing_lines import with_lines
    from lakehouse.parse import parse_records
    from lakehouse.quality import BatchValidator, rule_metric_columns, rule_results

    suite_json = json.loads(config.suite_path("telemetry").read_text())
    # mostly: 0.99 on one rule, and a rule most rows pass and some fail with mostly, so both
    # success outcomes and GX's two denominators (all rows / non-null values) are exercised.
    suite_json["expectations"][11]["kwargs"]["mostly"] = 0.99  # between(cpu_util)
    suite_json["expectations"].append({"type": "expect_column_values_to_be_in_set", "meta": {"policy": "warn"},
                                       "kwargs": {"column": "rack", "value_set": ["r01", "r02", "r03"], "mostly": 0.5}})
    # The kinds a text feed adds (the chat scenario): regex exclusion and string lengths.
    suite_json["expectations"] += [
        {"type": "expect_column_values_to_not_match_regex", "meta": {"policy": "warn"},
         "kwargs": {"column": "host", "regex": "h00[0-4]$", "mostly": 0.5}},
        {"type": "expect_column_value_lengths_to_be_between", "meta": {"policy": "warn"},
         "kwargs": {"column": "host", "min_value": 1, "max_value": 11}},
    ]
    assert suite_json["expectations"][6]["kwargs"] == {"column": "gpu_util"}
    suite_json["expectations"][6]["kwargs"]["mostly"] = 0.2  # not_null(gpu_util)
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(suite_json))
    suite = load_suite(path)
    rules = row_rules(suite)

    landing = tmp_path / "landing"
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=5, fault_rate=0.2), landing, "t", "f", 5, 1500, 2)
    bronze = with_lines(spark.read.format("text").option("wholetext", True).load(str(landing)), F.col("_metadata.file_path"))
    entity = config.entity("telemetry")
    checked = with_rule_results(parse_records(bronze, entity), rules).cache()

    metrics = checked.agg(*[c.alias(n) for n, c in rule_metric_columns(rules).items()]).first()
    fused = {r["expectation"]: r for r in rule_results(rules, metrics, checked.count())}
    gx_results = {r["expectation"]: r for r in BatchValidator(suite, "t").validate(checked.select(*entity.columns))}
    checked.unpersist()
    assert set(fused) == set(gx_results) and len(fused) == len(suite.expectations)
    assert {r["success"] for r in fused.values()} == {True, False}
    assert any(r["unexpected_count"] for r in fused.values() if r["success"])  # mostly let a rule pass
    for name, expected in gx_results.items():
        assert fused[name] == expected, name
