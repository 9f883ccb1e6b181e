"""Configuration checks that need Spark: run once a job's session exists, before the job creates
any table, checkpoint or directory.

- A gold table's SQL must parse (Spark's own parser) and read only the views of its declared
  inputs (and its own CTEs).
- A suite's regexes, and an entity's text masks, must compile as Java regular expressions (what
  Spark's ``rlike`` and ``regexp_replace`` run); an entity's derived columns must parse.
- A gold table's ``transform`` must load and take its ``options``.
- An entity's declared column types must match the silver table that already exists.

Each problem raises :class:`~lakehouse.config.ConfigError` naming the file and the key, which the
CLI prints on one line (exit 2). lakehouse/config/ checks everything else when it loads.
"""

from __future__ import annotations

import inspect

from pyspark.sql import SparkSession

from lakehouse.config import ConfigError, LakehouseConfig, view_name
from lakehouse.config.values import load_import_name
from lakehouse.sql_plans import parsed_expression, parsed_plan, relations_read, writing_node
from lakehouse.suites import read_suite_file, regexes


def conf_file(config: LakehouseConfig, section: str, name: str) -> str:
    """The file that defines ``<section>/<name>.yml`` (LakehouseConfig.conf_file)."""
    return str(config.conf_file(f"{section}/{name}.yml"))


def transform_function(config: LakehouseConfig, name: str):
    """The function a gold table's ``transform`` names; a ConfigError naming the key when it
    cannot be imported or is not a function."""
    spec = config.gold_table(name).transform
    try:
        function = load_import_name(spec)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(conf_file(config, "gold", name), f"gold.{name}.transform",
                          f"cannot load {spec}: {exc}") from None
    if not callable(function):
        raise ConfigError(conf_file(config, "gold", name), f"gold.{name}.transform", f"{spec} is not a function")
    try:  # called as fn(spark, frames_by_table, **options) (lakehouse/gold.py)
        inspect.signature(function).bind(None, {}, **config.gold_table(name).options)
    except TypeError as exc:
        raise ConfigError(conf_file(config, "gold", name), f"gold.{name}.options",
                          f"{spec} does not take these options: {exc}") from None
    except ValueError:
        pass  # no signature to check (a builtin): the build says
    return function


def check_gold_sql(spark: SparkSession, config: LakehouseConfig, names: list[str]) -> None:
    """Each gold table's SQL is a query over its inputs alone; a transform names a function."""
    for name in names:
        gold = config.gold_table(name)
        if gold.transform is not None:
            transform_function(config, name)
            continue
        origin, key = conf_file(config, "gold", name), f"gold.{name}.sql"
        try:
            plan = parsed_plan(spark, gold.sql)
        except ValueError as exc:
            raise ConfigError(origin, key, f"does not parse: {str(exc).splitlines()[0]}") from None
        not_query = writing_node(plan)
        if not_query:
            raise ConfigError(origin, key, f"is not a query (Spark parses it as {not_query}): a gold table is a SELECT")
        read, defined = relations_read(plan)
        views = {view_name(table) for table in gold.inputs}
        unknown = sorted(read - views - defined)
        if unknown:
            raise ConfigError(origin, key, f"reads {', '.join(unknown)}, not among its inputs (an input is read "
                                           f"by its view name: {', '.join(sorted(views))}); declare it in inputs")


def _jvm_error(exc) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "invalid")


def check_suite_regexes(spark: SparkSession, config: LakehouseConfig, entity_name: str) -> None:
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    path = config.suite_path(config.entity(entity_name).suite)
    pattern = spark._jvm.java.util.regex.Pattern
    for key, regex in regexes(read_suite_file(path)):
        try:
            pattern.compile(regex)
        except (Py4JJavaError, PySparkException) as exc:  # PatternSyntaxException, as pyspark raises it
            raise ConfigError(str(path), key, f"{regex!r} is not a Java regular expression (what Spark's rlike "
                                              f"runs): {_jvm_error(exc)}") from None


def check_text_prep(spark: SparkSession, config: LakehouseConfig, entity_name: str) -> None:
    """The entity's text masks are Java regular expressions and its derived columns parse as
    Spark SQL expressions (lakehouse/text_prep.py runs them on every row)."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    entity, origin = config.entity(entity_name), conf_file(config, "entities", entity_name)
    pattern = spark._jvm.java.util.regex.Pattern
    for name, regex in (entity.text.mask.items() if entity.text else ()):
        try:
            pattern.compile(regex)
        except (Py4JJavaError, PySparkException) as exc:
            raise ConfigError(origin, f"entities.{entity_name}.text.mask.{name}",
                              f"{regex!r} is not a Java regular expression: {_jvm_error(exc)}") from None
    for name, derived in entity.derived.items():
        try:
            parsed_expression(spark, derived.sql)  # resolved against the row when silver runs
        except ValueError as exc:
            raise ConfigError(origin, f"entities.{entity_name}.derived.{name}.sql",
                              f"does not parse: {str(exc).splitlines()[0]}") from None


def check_silver_columns(spark: SparkSession, config: LakehouseConfig, entity_name: str) -> None:
    """The silver table, when it exists, holds each declared column with the declared type."""
    from lakehouse.silver_tables import silver_schema
    from lakehouse.tables import read_table, resolve_table, table_exists

    ref = resolve_table(config, f"silver.{entity_name}")
    if not table_exists(spark, ref):
        return
    held = {field.name: field.dataType for field in read_table(spark, ref).schema.fields}
    declared = config.entity(entity_name).columns
    for field in silver_schema(config.entity(entity_name)).fields:
        if field.name in declared and field.name in held and held[field.name] != field.dataType:
            raise ConfigError(
                conf_file(config, "entities", entity_name), f"entities.{entity_name}.columns.{field.name}",
                f"declared {declared[field.name]}, but the existing silver.{entity_name} holds it as "
                f"{held[field.name].simpleString()}: declare it as before, or rebuild silver (move silver.{entity_name}, "
                f"silver.{entity_name}_quarantine and the silver_{entity_name} checkpoint away, then refine again)")


def check_entity(spark: SparkSession, config: LakehouseConfig, entity_name: str) -> None:
    check_suite_regexes(spark, config, entity_name)
    check_text_prep(spark, config, entity_name)
    check_silver_columns(spark, config, entity_name)
