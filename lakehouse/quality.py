"""Expectation suites (Great Expectations 1.x JSON under ``conf/``) and their row-level rules.

Each expectation carries a policy in its ``meta``: ``warn`` (keep the row, record the failure),
``drop`` (send the row to quarantine) or ``fail`` (stop the batch). Row-level expectations are
compiled here into Spark column predicates, so every row's fate is decided in the same pass that
parses it; the suite as a whole is also validated by GX on each micro-batch (silver refine).

Row-level semantics follow GX's: a null value passes every expectation except
``expect_column_values_to_not_be_null``; ``mostly`` applies to the batch, not to a row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import great_expectations as gx
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

POLICIES = ("warn", "drop", "fail")

# Failed rule names per policy, as array<string> columns added by with_rule_results.
FAILED_COLUMNS = {policy: f"_failed_{policy}" for policy in POLICIES}


class SuiteError(ValueError):
    """A suite file that GX cannot load, or an expectation without a valid policy."""


ROW_LEVEL = (
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_match_regex",
)


@dataclass(frozen=True)
class RowRule:
    name: str  # e.g. "expect_column_values_to_be_between(cpu_util)"
    column: str
    policy: str
    expectation: object  # the GX expectation it was compiled from

    def passes(self) -> Column:
        """True when the row meets the expectation (built when a session exists)."""
        return _predicate(self.expectation)


def load_suite(path: Path) -> gx.ExpectationSuite:
    """Load a suite with GX's own API and check every expectation's policy."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        suite = gx.ExpectationSuite(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise SuiteError(f"{path}: not a loadable Great Expectations suite: {exc}") from exc
    for index, expectation in enumerate(suite.expectations):
        policy = (expectation.meta or {}).get("policy")
        if policy not in POLICIES:
            raise SuiteError(
                f"{path}: expectations[{index}] ({expectation.expectation_type}): meta.policy must be "
                f"one of {', '.join(POLICIES)}, got {policy!r}"
            )
    return suite


def _predicate(expectation) -> Column:
    kind = expectation.expectation_type
    column = F.col(expectation.column)
    if kind == "expect_column_values_to_not_be_null":
        return column.isNotNull()
    if kind == "expect_column_values_to_be_between":
        low, high = expectation.min_value, expectation.max_value
        checks = []
        if low is not None:
            checks.append(column > low if getattr(expectation, "strict_min", False) else column >= low)
        if high is not None:
            checks.append(column < high if getattr(expectation, "strict_max", False) else column <= high)
        ok = F.lit(True)
        for check in checks:
            ok = ok & check
        return column.isNull() | ok
    if kind == "expect_column_values_to_be_in_set":
        return column.isNull() | column.isin(list(expectation.value_set))
    if kind == "expect_column_values_to_match_regex":
        return column.isNull() | column.rlike(expectation.regex)
    raise ValueError(f"{kind} is not a row-level expectation")


def row_rules(suite: gx.ExpectationSuite) -> list[RowRule]:
    """The suite's row-level expectations; the others are validated per batch by GX only."""
    return [
        RowRule(
            name=f"{e.expectation_type}({e.column})",
            column=e.column,
            policy=e.meta["policy"],
            expectation=e,
        )
        for e in suite.expectations
        if e.expectation_type in ROW_LEVEL
    ]


def with_rule_results(df: DataFrame, rules: list[RowRule]) -> DataFrame:
    """Add ``_failed_warn``, ``_failed_drop``, ``_failed_fail``: the names of the rules each row fails."""
    columns = {}
    for policy, column_name in FAILED_COLUMNS.items():
        names = [F.when(~F.coalesce(rule.passes(), F.lit(False)), F.lit(rule.name)) for rule in rules
                 if rule.policy == policy]
        columns[column_name] = (
            F.filter(F.array(*names), lambda name: name.isNotNull()) if names
            else F.array().cast("array<string>")
        )
    return df.withColumns(columns)
