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
            ("f5", "a\n\nb\r\n\n"),  # empty lines between and at the end
            ("f6", "é😀\rx"),  # multi-byte text, a lone CR is not a line end
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
        ("f5", 1, "a"),
        ("f5", 2, ""),
        ("f5", 3, "b\r"),
        ("f5", 4, ""),
        ("f6", 1, "é😀\rx"),
    ]
