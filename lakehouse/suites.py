"""Expectation suite files (Great Expectations 1.x JSON under ``conf/<layer>/expectations/``),
checked when the configuration loads, before any job starts.

Every expectation needs a policy in ``meta.policy`` (warn, drop or fail) and may only name
columns its entity declares (or silver's own ``_``-columns). The four row-level types
(:data:`ROW_LEVEL`), which silver evaluates itself, have their arguments checked here: bounds are
finite numbers, a value set is a non-empty list, a regex is a string (it is compiled as the Java
regex Spark runs once a session exists: lakehouse/preflight.py). Any other type must be one GX
knows, with arguments GX accepts; GX is imported only for those. lakehouse/quality.py loads the
checked suite with GX's own API.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lakehouse.errors import EXIT_CONFIG, LakehouseError

POLICIES = ("warn", "drop", "fail")

ROW_LEVEL = (
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex",
    "expect_column_value_lengths_to_be_between",  # in characters, as GX counts them
)
REGEX_KINDS = ("expect_column_values_to_match_regex", "expect_column_values_to_not_match_regex")
BOUNDED_KINDS = ("expect_column_values_to_be_between", "expect_column_value_lengths_to_be_between")

# Columns of every silver table besides the entity's declared ones (lakehouse/silver_tables.py).
SILVER_METADATA_COLUMNS = ("_rescued", "_source_file", "_source_line", "_ingested_at")

_COLUMN_ARGUMENTS = ("column", "column_A", "column_B")
_COLUMN_LIST_ARGUMENTS = ("column_list",)


class SuiteError(LakehouseError, ValueError):
    """A suite file that cannot be read or that fails the checks below (exit 2)."""

    exit_code = EXIT_CONFIG
    heading = "configuration error"
    whole_message = True


def checked_suite(path: Path) -> dict:
    """The suite's JSON after the checks of :func:`suite_problems` (without the entity's
    columns, which load_config checks); raises SuiteError naming the file and the key."""
    try:
        data = read_suite_file(path)
    except ValueError as exc:
        raise SuiteError(f"{path}: {exc}") from exc
    for key, message in suite_problems(data)[:1]:
        raise SuiteError(f"{path}: {key}: {message}")
    return data


def read_suite_file(path: Path) -> dict:
    """The suite's JSON; raises ValueError with the reason when it is not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the suite: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise ValueError("a suite is a JSON object with an 'expectations' list")
    return data


def regexes(data: dict) -> list[tuple[str, str]]:
    """(key, pattern) of every regex a suite's row-level rules will run."""
    found = []
    for index, expectation in enumerate(data.get("expectations") or []):
        if isinstance(expectation, dict) and expectation.get("type") in REGEX_KINDS:
            pattern = (expectation.get("kwargs") or {}).get("regex")
            if isinstance(pattern, str):
                found.append((f"expectations[{index}].kwargs.regex", pattern))
    return found


def suite_problems(data: dict, columns: set[str] | None = None) -> list[tuple[str, str]]:
    """(key, message) for what is wrong with a suite; ``columns``: the names it may refer to."""
    expectations = data.get("expectations")
    if not isinstance(expectations, list):
        return [("expectations", "expected a list of expectations")]
    problems = []
    for index, expectation in enumerate(expectations):
        key = f"expectations[{index}]"
        if not isinstance(expectation, dict):
            problems.append((key, "expected an object with type, kwargs and meta"))
            continue
        kind = expectation.get("type")
        if not isinstance(kind, str) or not kind:
            problems.append((f"{key}.type", "missing the expectation type"))
            continue
        meta = expectation.get("meta") or {}
        policy = meta.get("policy") if isinstance(meta, dict) else None
        if policy not in POLICIES:
            problems.append((f"{key}.meta.policy", f"must be one of {', '.join(POLICIES)}, got {policy!r}"))
        kwargs = expectation.get("kwargs")
        if not isinstance(kwargs, dict):
            problems.append((f"{key}.kwargs", "expected an object"))
            continue
        problems += [(f"{key}.kwargs.{name}", message) for name, message in _column_problems(kwargs, columns)]
        if kind in ROW_LEVEL:
            problems += [(f"{key}.kwargs.{name}", message) for name, message in _row_rule_problems(kind, kwargs)]
        else:
            problems += [(f"{key}.{name}", message) for name, message in _gx_problems(kind, kwargs)]
    return problems


def _column_problems(kwargs: dict, columns: set[str] | None) -> list[tuple[str, str]]:
    named = [(name, kwargs[name]) for name in _COLUMN_ARGUMENTS if name in kwargs]
    for name in _COLUMN_LIST_ARGUMENTS:
        if isinstance(kwargs.get(name), list):
            named += [(f"{name}[{i}]", column) for i, column in enumerate(kwargs[name])]
    problems = []
    for name, column in named:
        if not isinstance(column, str):
            problems.append((name, f"expected a column name, got {column!r}"))
        elif columns is not None and column not in columns and column not in SILVER_METADATA_COLUMNS:
            problems.append((name, f"'{column}' is not a declared column of the entity "
                                   f"(declared: {', '.join(sorted(columns))})"))
    return problems


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _row_rule_problems(kind: str, kwargs: dict) -> list[tuple[str, str]]:
    problems = []
    if not isinstance(kwargs.get("column"), str):
        problems.append(("column", "a row-level expectation needs a column"))
    mostly = kwargs.get("mostly")
    if mostly is not None and not (_number(mostly) and 0.0 <= mostly <= 1.0):
        problems.append(("mostly", f"must be a number from 0 to 1, got {mostly!r}"))
    if kind in BOUNDED_KINDS:
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        for name, value in (("min_value", low), ("max_value", high)):
            if value is not None and not (_number(value) and math.isfinite(value)):
                problems.append((name, f"must be a finite number, got {value!r}"))
        if low is None and high is None:
            problems.append(("min_value", "set min_value, max_value or both"))
        elif _number(low) and _number(high) and low > high:
            problems.append(("max_value", f"is below min_value ({high!r} < {low!r})"))
    elif kind == "expect_column_values_to_be_in_set":
        values = kwargs.get("value_set")
        if not isinstance(values, list) or not values:
            problems.append(("value_set", f"must be a non-empty list, got {values!r}"))
    elif kind in REGEX_KINDS:
        if not isinstance(kwargs.get("regex"), str) or not kwargs.get("regex"):
            problems.append(("regex", f"must be a non-empty string, got {kwargs.get('regex')!r}"))
    return problems


def _gx_problems(kind: str, kwargs: dict) -> list[tuple[str, str]]:
    """An expectation silver does not evaluate row by row: GX must know it and take its arguments."""
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    from great_expectations.expectations.registry import get_expectation_impl

    try:
        implementation = get_expectation_impl(kind)
    except Exception:  # GX raises its ExpectationNotFoundError (a plain exception type in 1.x)
        return [("type", f"unknown expectation type '{kind}': silver evaluates {', '.join(ROW_LEVEL)} row "
                         "by row, and Great Expectations has no expectation of that name")]
    try:
        implementation(**kwargs)
    except Exception as exc:  # pydantic's ValidationError or GX's own: a bad argument
        first = str(exc).strip().splitlines()
        return [("kwargs", f"Great Expectations refuses the arguments of {kind}: "
                           f"{' '.join(line.strip() for line in first[:3])}")]
    return []
