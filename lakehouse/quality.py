"""Expectation suites (Great Expectations 1.x JSON under ``conf/``) and their row-level rules.

Each expectation carries a policy in its ``meta``: ``warn`` (keep the row, record the failure),
``drop`` (send the row to quarantine) or ``fail`` (stop the batch). Row-level expectations are
compiled here into Spark column predicates, so every row's fate is decided in the same pass that
parses it; the suite as a whole is also validated by GX on each micro-batch (silver refine).

Row-level semantics follow GX's: a null value passes every expectation except
``expect_column_values_to_not_be_null``; ``mostly`` applies to the batch, not to a row.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.suites import POLICIES, ROW_LEVEL, SuiteError, checked_suite

if TYPE_CHECKING:
    import great_expectations as gx

# Failed rule names per policy, as array<string> columns added by with_rule_results.
FAILED_COLUMNS = {policy: f"_failed_{policy}" for policy in POLICIES}


def _gx():
    """Great Expectations, imported when first needed (3 to 4 s): the row rules do without it."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no usage statistics: no route for them here
    import great_expectations

    return great_expectations


def expectation_name(expectation_type: str, column: str | None) -> str:
    """How results, quarantine reasons and Data Docs name an expectation: ``type(column)``."""
    return f"{expectation_type}({column})" if column else expectation_type


def detached_copy(suite: gx.ExpectationSuite) -> gx.ExpectationSuite:
    """The same suite without its id, to be added to another GX context."""
    data = suite.to_json_dict()
    data.pop("id", None)
    return _gx().ExpectationSuite(**data)


@dataclass(frozen=True)
class RowRule:
    name: str  # e.g. "expect_column_values_to_be_between(cpu_util)"
    column: str
    policy: str
    kind: str  # the expectation type, one of suites.ROW_LEVEL
    kwargs: dict  # its arguments, as in the suite

    def passes(self) -> Column:
        """True when the row meets the expectation (built when a session exists)."""
        return _predicate(self.kind, self.kwargs)


def load_suite(path: Path) -> gx.ExpectationSuite:
    """Load a suite with GX's own API (for GX's validation and Data Docs), after the checks of
    lakehouse/suites.py (which the configuration already ran, with the entity's columns)."""
    data = checked_suite(path)
    try:
        return _gx().ExpectationSuite(**data)
    except (ValueError, TypeError) as exc:
        raise SuiteError(f"{path}: not a loadable Great Expectations suite: {exc}") from exc


def _predicate(kind: str, kwargs: dict) -> Column:
    column = F.col(kwargs["column"])
    if kind == "expect_column_values_to_not_be_null":
        return column.isNotNull()
    if kind == "expect_column_value_lengths_to_be_between":
        return _between(F.char_length(column), kwargs)
    if kind == "expect_column_values_to_be_between":
        return _between(column, kwargs)
    if kind == "expect_column_values_to_be_in_set":
        return column.isNull() | column.isin(list(kwargs["value_set"]))
    if kind == "expect_column_values_to_match_regex":
        return column.isNull() | column.rlike(kwargs["regex"])
    if kind == "expect_column_values_to_not_match_regex":
        return column.isNull() | ~column.rlike(kwargs["regex"])
    raise ValueError(f"{kind} is not a row-level expectation")


def _between(column: Column, kwargs: dict) -> Column:
    """GX's between: bounds inclusive unless ``strict_min``/``strict_max``; a null passes."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    ok = F.lit(True)
    if low is not None:
        ok = ok & (column > low if kwargs.get("strict_min") else column >= low)
    if high is not None:
        ok = ok & (column < high if kwargs.get("strict_max") else column <= high)
    return column.isNull() | ok


def row_rules(suite) -> list[RowRule]:
    """The suite's row-level expectations (the suite as checked_suite reads it, or a GX suite);
    the others are validated per batch by GX only."""
    data = suite if isinstance(suite, dict) else suite.to_json_dict()
    return [
        RowRule(name=expectation_name(e["type"], e["kwargs"]["column"]), column=e["kwargs"]["column"],
                policy=e["meta"]["policy"], kind=e["type"], kwargs=dict(e["kwargs"]))
        for e in data["expectations"]
        if e["type"] in ROW_LEVEL
    ]


def names_where(conditions: list[tuple[Column, str]]) -> Column:
    """array<string> of the names whose condition is true, in order.

    Built from concatenated one-element arrays rather than a higher-order function (``filter``):
    Spark generates code for ``concat``/``when`` but interprets lambdas row by row, which cost
    more than the parse itself on a million rows.
    """
    empty = F.array().cast("array<string>")
    if not conditions:
        return empty
    return F.concat(*[F.when(condition, F.array(F.lit(name))).otherwise(empty) for condition, name in conditions])


def with_rule_results(df: DataFrame, rules: list[RowRule]) -> DataFrame:
    """Add ``_failed_warn``, ``_failed_drop``, ``_failed_fail``: the names of the rules each row fails."""
    return df.withColumns(rule_result_columns(rules))


def rule_result_columns(rules: list[RowRule]) -> dict[str, Column]:
    """:func:`with_rule_results`' columns."""
    return {
        column_name: names_where([(~F.coalesce(rule.passes(), F.lit(False)), rule.name)
                                  for rule in rules if rule.policy == policy])
        for policy, column_name in FAILED_COLUMNS.items()
    }


# -- per-expectation results of a micro-batch, from the same pass that decides each row -------
#
# GX computes each expectation's metrics with separate Spark jobs (a 3-expectation suite over 1M
# rows took 11.5 s where a count took 0.6 s). For row-level expectations the verdict of every row
# is already in the _failed_<policy> columns, so one aggregation over the batch yields what GX
# would report: element count, unexpected count, and success (``mostly`` included, with GX's
# denominators: all rows for not-null, non-null values otherwise). tests/lakehouse/test_quality.py
# checks these results against GX's own on the same rows. Expectations that are not row-level
# are left to GX (BatchValidator).


def _metric(index: int, kind: str) -> str:
    return f"_m{index}_{kind}"


def rule_metric_columns(rules: list[RowRule], where: Column | None = None) -> dict[str, Column]:
    """Aggregate expressions: per rule, its unexpected count and its column's non-null count,
    over the rows ``where`` selects (all by default)."""
    where = F.lit(True) if where is None else where
    columns = {}
    for i, rule in enumerate(rules):
        failed = F.array_contains(F.col(FAILED_COLUMNS[rule.policy]), rule.name)
        columns[_metric(i, "unexpected")] = F.count(F.when(where & failed, 1))
        columns[_metric(i, "nonnull")] = F.count(F.when(where, F.col(rule.column)))
    return columns


def rule_results(rules: list[RowRule], metrics, element_count: int) -> list[dict]:
    """GX-equivalent results of the row-level rules from the aggregated ``metrics`` row."""
    results = []
    for i, rule in enumerate(rules):
        unexpected = metrics[_metric(i, "unexpected")] or 0
        if rule.kind == "expect_column_values_to_not_be_null":
            denominator = element_count
        else:
            denominator = metrics[_metric(i, "nonnull")] or 0
        mostly = rule.kwargs.get("mostly") or 1.0
        success = denominator == 0 or (denominator - unexpected) / denominator >= mostly
        results.append({"expectation": rule.name, "policy": rule.policy, "success": bool(success),
                        "element_count": element_count, "unexpected_count": unexpected})
    return results


def results_rows(entity: str, suite_name: str, results: list[dict], batch_id: int, source_versions: str) -> list[tuple]:
    """QUALITY_RESULTS_SCHEMA rows."""
    now = datetime.now(timezone.utc)
    return [(entity, suite_name, r["expectation"], r["policy"], r["success"], r["element_count"],
             r["unexpected_count"], batch_id, source_versions, now) for r in results]


# -- whole-suite validation of each micro-batch, with GX itself ------------------------------

QUALITY_RESULTS_TABLE = "ops.quality_results"
QUALITY_RESULTS_SCHEMA = StructType(
    [
        StructField("entity", StringType()),
        StructField("suite", StringType()),
        StructField("expectation", StringType()),  # e.g. "expect_column_values_to_be_between(cpu_util)"
        StructField("policy", StringType()),
        StructField("success", BooleanType()),
        StructField("element_count", LongType()),
        StructField("unexpected_count", LongType()),
        StructField("batch_id", LongType()),
        StructField("source_versions", StringType()),  # e.g. "bronze.telemetry@12" when validated
        StructField("validated_at", TimestampType()),
    ]
)


class BatchValidator:
    """Validates DataFrames against one suite with GX (an ephemeral context, one Spark data source).

    The data source is created with ``persist=False`` (GX would otherwise cache every batch and
    never free it) and without ``spark_config`` (GX could restart the session under running queries).
    """

    def __init__(self, suite: gx.ExpectationSuite, entity: str, only: list | None = None):
        """``only``: validate just these expectations of the suite (by default all of them)."""
        if only is not None:
            data = detached_copy(suite).to_json_dict()
            data["expectations"] = [e.configuration.to_json_dict() for e in only]
            suite = _gx().ExpectationSuite(**data)
        context = _gx().get_context(mode="ephemeral")
        try:
            context.variables.progress_bars = {"globally": False, "metric_calculations": False}
        except Exception:  # progress bars are cosmetic; a changed GX API must not stop validation
            pass
        source = context.data_sources.add_spark(name=f"silver_{entity}", persist=False)
        asset = source.add_dataframe_asset(name=entity)
        self.batch_definition = asset.add_batch_definition_whole_dataframe("micro_batch")
        self.suite = context.suites.add(detached_copy(suite))
        self.entity = entity

    def validate(self, df: DataFrame) -> list[dict]:
        """GX's result for each expectation of the suite on ``df``."""
        result = self.batch_definition.get_batch(batch_parameters={"dataframe": df}).validate(self.suite)
        results = []
        for item in result.results:
            config = item.expectation_config
            details = item.result or {}
            results.append({"expectation": expectation_name(config.type, config.kwargs.get("column")),
                            "policy": (config.meta or {}).get("policy"), "success": bool(item.success),
                            "element_count": details.get("element_count"),
                            "unexpected_count": details.get("unexpected_count")})
        return results


def build_data_docs(spark, config) -> Path | None:
    """Build GX Data Docs (GX's own HTML site) from ``ops.quality_results``.

    A file-based GX project under ``<data_dir>/quality`` receives every entity's suite and one
    validation result per refined micro-batch, rebuilt from the stored rows; GX renders the site.
    Returns the site's index.html, or None when no batch has been validated yet.
    """
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    from lakehouse.tables import read_table, resolve_table, table_exists

    results_ref = resolve_table(config, QUALITY_RESULTS_TABLE)
    if not table_exists(spark, results_ref):
        return None
    rows = read_table(spark, results_ref).orderBy("entity", "batch_id", "expectation").collect()
    if not rows:
        return None
    context = _gx().get_context(mode="file", project_root_dir=str(Path(config.storage.data_dir, "quality")))
    suites = {}
    for name, entity in config.entities.items():
        suites[name] = context.suites.add_or_update(detached_copy(load_suite(config.suite_path(entity.suite))))
    by_batch: dict[tuple[str, int], list] = {}
    for row in rows:
        by_batch.setdefault((row["entity"], row["batch_id"]), []).append(row)
    for (entity, batch_id), batch_rows in by_batch.items():
        if entity not in suites:
            continue  # results of an entity no longer configured
        validated_at = batch_rows[0]["validated_at"].astimezone(timezone.utc)  # pyspark: a naive local time
        run = RunIdentifier(run_name=f"silver_{entity} batch {batch_id}", run_time=validated_at)
        validation = _validation_result(suites[entity], entity, batch_id, batch_rows, run)
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=suites[entity].name),
            run_id=run, batch_identifier=f"{entity}-batch-{batch_id}",
        )
        context.validation_results_store.set(key, validation)
    sites = context.build_data_docs()
    index = Path(next(iter(sites.values())).removeprefix("file://"))
    _render_offline(index.parent)
    return index


def _render_offline(site: Path) -> None:
    """Point the site's pages at local copies of what they load (lakehouse/data_docs_assets.py)."""
    from lakehouse.data_docs_assets import fetch_assets, localize_site

    try:
        assets = fetch_assets(out=lambda line: print(line, file=sys.stderr, flush=True))
    except Exception as exc:  # noqa: BLE001 - offline without the cache: the pages still work online
        print(f"lakehouse: Data Docs keep their CDN scripts (they need internet to render): the assets could not "
              f"be fetched ({type(exc).__name__}: {exc}); `make install` fetches them", file=sys.stderr, flush=True)
        return
    left = localize_site(site, assets)
    if left:
        print(f"lakehouse: Data Docs still load from outside: {', '.join(left)}", file=sys.stderr, flush=True)


def _validation_result(suite, entity: str, batch_id: int, batch_rows: list, run):
    """One micro-batch's stored result rows as GX's suite validation result (``run``: its
    RunIdentifier, the page's run name and time)."""
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    by_name = {expectation_name(e.expectation_type, getattr(e, "column", None)): e for e in suite.expectations}
    results = []
    for row in batch_rows:
        expectation = by_name.get(row["expectation"])
        if expectation is None:
            continue  # the suite changed since: the stored row has no expectation to render
        element, unexpected = row["element_count"] or 0, row["unexpected_count"] or 0
        results.append(ExpectationValidationResult(
            success=row["success"],
            expectation_config=ExpectationConfiguration(type=expectation.expectation_type,
                                                        kwargs=expectation.configuration.kwargs,
                                                        meta=expectation.meta),
            result={"element_count": element, "unexpected_count": unexpected,
                    "unexpected_percent": 100.0 * unexpected / element if element else 0.0},
        ))
    passed = sum(1 for r in results if r.success)
    return ExpectationSuiteValidationResult(
        success=passed == len(results),
        suite_name=suite.name,
        results=results,
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": 100.0 * passed / len(results) if results else 100.0,
        },
        meta={"entity": entity, "batch_id": batch_id, "source_versions": batch_rows[0]["source_versions"],
              # What GX's page shows as its Info: version, run name and time, and the batch.
              "great_expectations_version": _gx().__version__, "run_id": run.to_json_dict(),
              "validation_time": run.run_time.isoformat(),
              "batch_spec": {"data_asset_name": f"silver.{entity}", "batch_id": batch_id,
                             "bronze_versions": batch_rows[0]["source_versions"]}},
    )
