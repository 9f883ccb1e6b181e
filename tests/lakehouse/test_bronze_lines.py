"""Splitting whole files into bronze lines: positions exact, every byte kept."""

from __future__ import annotations

from pyspark.sql import Observation
from pyspark.sql import functions as F

from lakehouse.landing import with_lines


def test_lines_keep_bytes_and_positions(spark):
    files = spark.createDataFrame(
        [
            ("f1", b'{"a":1}\n{"a":2\n\n{"a":3}\n'),  # malformed line 2, empty line 3
            ("f2", b"x\r\ny"),  # CRLF kept, last line without newline
            ("f3", b""),  # empty file: no lines
            ("f4", b"\n"),  # one empty line
            ("f5", b"a\n\nb\r\n\n"),  # empty lines between and at the end
            ("f6", "é😀\rx".encode()),  # multi-byte text, a lone CR is not a line end
            ("f7", b'\xef\xbb\xbf{"a":1}\n\xff\xfe\x00{"b":2}\n\x80'),  # BOM, bytes that are not UTF-8
        ],
        "path string, value binary",
    )
    observed = Observation("files")
    rows = with_lines(files, F.col("path"), observed).select("_source_file", "_source_line", "value").collect()
    assert sorted((r[0], r[1], bytes(r[2])) for r in rows) == [
        ("f1", 1, b'{"a":1}'),
        ("f1", 2, b'{"a":2'),
        ("f1", 3, b""),
        ("f1", 4, b'{"a":3}'),
        ("f2", 1, b"x\r"),
        ("f2", 2, b"y"),
        ("f4", 1, b""),
        ("f5", 1, b"a"),
        ("f5", 2, b""),
        ("f5", 3, b"b\r"),
        ("f5", 4, b""),
        ("f6", 1, "é😀\rx".encode()),
        ("f7", 1, b'\xef\xbb\xbf{"a":1}'),
        ("f7", 2, b'\xff\xfe\x00{"b":2}'),
        ("f7", 3, b"\x80"),
    ]
    assert {r["file"]: r["lines"] for r in observed.get["files"]} == {
        "f1": 4, "f2": 2, "f3": 0, "f4": 1, "f5": 4, "f6": 1, "f7": 3}


def test_text_read_whole_files_keep_their_bytes(spark, tmp_path):
    """Spark's whole-text reader hands over the raw bytes; the split keeps them (not U+FFFD)."""
    landed = tmp_path / "x.jsonl"
    landed.write_bytes(b'{"a":"\xe9t\xe9"}\n\xc3\x28\n')  # Latin-1 text; an invalid UTF-8 pair
    files = spark.read.format("text").option("wholetext", True).load(str(landed))
    rows = with_lines(files, F.col("_metadata.file_path")).orderBy("_source_line").collect()
    assert [bytes(r.value) for r in rows] == [b'{"a":"\xe9t\xe9"}', b"\xc3\x28"]
