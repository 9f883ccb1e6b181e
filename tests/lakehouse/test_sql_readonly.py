"""`lakehouse sql` runs queries; a statement that would change a table is refused unless --write."""

from __future__ import annotations

import pytest

from lakehouse.cli import main
from lakehouse.tables import bronze_table, read_table
from tests.faults import land, lines, reading

pytestmark = pytest.mark.slow


def _sql(config, capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--env", "test", "--data-dir", str(config.storage.data_dir), "sql", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sql_is_read_only_unless_asked(spark, config, capsys):
    land(config, "a.jsonl", lines(*[reading(i) for i in range(7)]))
    assert main(["--env", "test", "--data-dir", str(config.storage.data_dir), "ingest", "--source", "telemetry",
                 "--once"]) == 0
    bronze = bronze_table(config, "telemetry")
    for statement in ("DELETE FROM bronze.telemetry",
                      "/* cleanup */ delete   from bronze.telemetry where _source_line > 0",
                      "ALTER TABLE bronze.telemetry SET TBLPROPERTIES ('delta.appendOnly' = 'false')",
                      "DROP TABLE bronze.telemetry",
                      "INSERT INTO bronze.telemetry SELECT * FROM bronze.telemetry",
                      "WITH x AS (SELECT * FROM bronze.telemetry) INSERT INTO bronze.telemetry SELECT * FROM x",
                      "UPDATE bronze.telemetry SET _source_line = 0",
                      "OPTIMIZE bronze.telemetry", "VACUUM bronze.telemetry RETAIN 0 HOURS",
                      "CREATE TABLE t AS SELECT 1 AS x", "SET spark.sql.shuffle.partitions = 1"):
        code, _, err = _sql(config, capsys, statement)
        assert code == 2, (statement, err)
        assert "read-only unless given --write" in err, err
    assert read_table(spark, bronze).count() == 7

    for query in ("SELECT count(*) AS n FROM bronze.telemetry", "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
                  "DESCRIBE HISTORY bronze.telemetry", "EXPLAIN DELETE FROM bronze.telemetry"):
        code, out, err = _sql(config, capsys, query)
        assert code == 0, (query, err)
    assert "7" in _sql(config, capsys, "SELECT count(*) AS n FROM bronze.telemetry")[1]

    code, _, err = _sql(config, capsys, "--write", "ALTER TABLE bronze.telemetry SET TBLPROPERTIES ('team' = 'data')")
    assert code == 0, err
    assert read_table(spark, bronze).count() == 7


def test_a_failing_query_prints_sparks_message(spark, config, capsys):
    code, _, err = _sql(config, capsys, "SELEC 1")
    assert code == 1 and "PARSE_SYNTAX_ERROR" in err and "SELEC" in err
    code, _, err = _sql(config, capsys, "SELECT nope FROM (SELECT 1 AS a)")
    assert code == 1 and "UNRESOLVED_COLUMN" in err and "nope" in err
    code, _, err = _sql(config, capsys, "SELECT * FROM parquet.`file://bob:hunter2@localhost/nowhere`")
    assert code == 1 and "hunter2" not in err
