"""The ``lakehouse`` commands that look at the pipeline: status, sql and ui.

``status`` and ``ui`` read the tables without a JVM where they can (lakehouse/table_reader.py);
``sql`` runs Spark SQL, or DuckDB's with ``--engine duckdb``.
"""

from __future__ import annotations

import json
import sys

from lakehouse.config import LakehouseConfig
from lakehouse.errors import EXIT_FAILED, EXIT_OK, UsageError
from lakehouse.redaction import error_summary, redact_text


def start_spark(config: LakehouseConfig):
    from lakehouse.session import start_job_session  # pyspark's JVM starts only for a command that needs it

    return start_job_session(config)


def cmd_status(config: LakehouseConfig, args) -> int:
    from lakehouse.status import (
        collect_freshness,
        collect_growth,
        collect_status,
        format_freshness,
        format_growth,
        format_status,
    )
    from lakehouse.table_reader import open_reader

    reader = open_reader(config, args.engine, lambda: start_spark(config))
    statuses, freshness = collect_status(reader, config), collect_freshness(reader, config)
    growth = collect_growth(reader, config)
    if args.json:
        print(json.dumps({"queries": [s.as_dict() for s in statuses],
                          "freshness": [t.as_dict() for t in freshness],
                          "tables": [t.as_dict() for t in growth]}, indent=2))
    else:
        print(format_status(statuses) + "\n\n" + format_freshness(freshness) + "\n\n" + format_growth(growth))
    return EXIT_OK


def cmd_sql(config: LakehouseConfig, args) -> int:
    from pyspark.errors import PySparkException

    from lakehouse.sql_plans import parsed_plan, writing_node
    from lakehouse.tables import register_local_tables

    if args.engine == "duckdb":
        if args.write:
            raise UsageError("sql: --engine duckdb is read-only; writes go through Spark (drop --engine)")
        return _sql_duckdb(config, args)
    spark = start_spark(config)
    if not args.write:
        try:
            writes = writing_node(parsed_plan(spark, args.query))
        except ValueError as exc:  # it does not parse: Spark's message, caret and all
            print(f"lakehouse: sql failed: {redact_text(str(exc))}", file=sys.stderr)
            return EXIT_FAILED
        if writes:
            raise UsageError(f"sql: refused: the statement is not a query (Spark parses it as {writes}); "
                             "`lakehouse sql` is read-only unless given --write")
    register_local_tables(spark, config)
    try:
        df = spark.sql(args.query)
        rows = df.limit(args.limit + 1).collect()
    except PySparkException as exc:  # Spark's whole message: what is wrong, and where
        print(f"lakehouse: sql failed: {error_summary(exc, lines=20)}", file=sys.stderr)
        return EXIT_FAILED
    return _print_rows(df.columns, [row.asDict(recursive=True) for row in rows], args)


def _print_rows(columns: list[str], records: list[dict], args) -> int:
    """At most --limit of a query's rows (it fetched one more, to know), as a table or JSON lines."""
    from lakehouse.formatting import format_rows

    shown = records[: args.limit]
    if args.json:
        for record in shown:
            print(json.dumps(record, default=str))
    else:
        print(format_rows(columns, [list(record.values()) for record in shown]))
    if len(records) > args.limit:
        print(f"(first {args.limit} rows shown; use --limit)", file=sys.stderr)
    return EXIT_OK


def _sql_duckdb(config: LakehouseConfig, args) -> int:
    """`lakehouse sql --engine duckdb`: the query in DuckDB over every table by its name, no JVM."""
    import duckdb

    from lakehouse.table_reader import DirectReader, ReaderError

    reader = DirectReader(config)
    try:
        reader.register_all()
        result = reader.db.sql(args.query)
        if result is None:  # a statement, not a query (DuckDB's own settings, a CREATE VIEW, ...)
            raise UsageError("sql: --engine duckdb runs queries only (SELECT, DESCRIBE, SHOW, EXPLAIN)")
        columns, rows = result.columns, result.limit(args.limit + 1).fetchall()
    except (duckdb.Error, ReaderError) as exc:
        print(f"lakehouse: sql failed: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    return _print_rows(columns, [dict(zip(columns, row, strict=True)) for row in rows], args)


def cmd_ui(config: LakehouseConfig, args) -> int:
    from lakehouse.table_reader import direct_reads_possible
    from lakehouse.ui import serve

    why_not = direct_reads_possible(config)
    if why_not is not None:
        raise UsageError(f"ui: reads the tables without Spark, which it cannot here: {why_not}")
    if args.refresh <= 0 or not 0 < args.port < 65536:
        raise UsageError("ui needs --refresh > 0 and a --port between 1 and 65535")
    serve(config, args.port, args.refresh, args.mlflow_url)
    return EXIT_OK
