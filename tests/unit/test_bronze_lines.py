"""Splitting whole files into bronze lines: positions exact, bytes kept."""

from __future__ import annotations

from pyspark.sql import functions as F

from lakehouse.bronze import with_lines


def test_lines_keep_bytes_and_positions(spark):
    files = spark.createDataFrame(
        [
            ("f1", '{"a":1}\n{"a":2\n\n{"a":3}\n'),  # malformed line 2, empty line 3
            ("f2", "x\r\ny"),  # CRLF kept, last line without newline
            ("f3", ""),  # empty file: no lines
            ("f4", "\n"),  # one empty line
        ],
        "path string, value string",
    )
    rows = with_lines(files, F.col("path")).select("_source_file", "_source_line", "value").collect()
    assert sorted(tuple(r) for r in rows) == [
        ("f1", 1, '{"a":1}'),
        ("f1", 2, '{"a":2'),
        ("f1", 3, ""),
        ("f1", 4, '{"a":3}'),
        ("f2", 1, "x\r"),
        ("f2", 2, "y"),
        ("f4", 1, ""),
    ]
