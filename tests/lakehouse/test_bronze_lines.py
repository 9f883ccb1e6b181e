"""Landing files into bronze lines: positions exact, every byte kept, by either reader."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from pyspark.sql import Observation
from pyspark.sql import functions as F

from lakehouse.landing_lines import (
    LineCountError,
    LineRead,
    must_read_whole,
    one_file_per_partition,
    read_whole_files,
    with_lines,
)


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


TRICKY = {  # file name -> bytes: what the split above must get right, as files
    "f1.jsonl": b'{"a":1}\n{"a":2\n\n{"a":3}\n',
    "f2.jsonl": b"x\r\ny",
    "f4.jsonl": b"\n",
    "f5.jsonl": b"a\n\nb\r\n\n",
    "f6.jsonl": "é😀\rx".encode(),
    "f7.jsonl": b'{"a":1}\n\xff\xfe\x00{"b":2}\n\x80',
    "bom.jsonl": b'\xef\xbb\xbf{"a":1}\n{"a":2}\n',  # Hadoop's line reader would drop the mark
    "long.jsonl": b"".join(b"line %d\n" % i for i in range(1, 5001)),
    "packed.jsonl.gz": gzip.compress(b"one\ntwo\n"),
}


def test_the_line_reader_gives_what_the_whole_file_split_gives(spark, tmp_path):
    """Plain files by the line reader (several files to a merged partition), the byte-order-mark
    and compressed files whole: the same rows, bytes and line numbers as splitting each file whole,
    and the lines per file from the same pass."""
    uris = []
    for name, data in TRICKY.items():
        (tmp_path / name).write_bytes(data)
        uris.append((tmp_path / name).as_uri())
    whole = {uri for uri in uris if must_read_whole(spark, uri)}
    assert {Path(uri).name for uri in whole} == {"bom.jsonl", "packed.jsonl.gz"}
    read = LineRead(spark, uris, "tricky", whole=whole)
    with one_file_per_partition(spark):
        read.check_partitions()
        rows = read.rows.select("_source_file", "_source_line", "value").collect()
    got = sorted((Path(r[0]).name, r[1], bytes(r[2])) for r in rows)
    reference = with_lines(read_whole_files(spark, uris), F.col("_metadata.file_path")).collect()
    assert got == sorted((Path(r._source_file).name, r._source_line, bytes(r.value)) for r in reference)
    assert ("bom.jsonl", 1, b'\xef\xbb\xbf{"a":1}') in got and ("long.jsonl", 5000, b"line 5000") in got
    assert {Path(f).name: n for f, n in read.counts().items()} == {
        "f1.jsonl": 4, "f2.jsonl": 2, "f4.jsonl": 1, "f5.jsonl": 4, "f6.jsonl": 1, "f7.jsonl": 3,
        "bom.jsonl": 2, "long.jsonl": 5000, "packed.jsonl.gz": 2}


def test_the_line_reader_refuses_to_number_files_sharing_a_partition(spark, tmp_path):
    """Without one input partition per file, Spark packs small files together and the positions
    would not be line numbers: the check before the write says so instead."""
    uris = []
    for n in range(4):
        (tmp_path / f"small-{n}.jsonl").write_bytes(b"a\nb\n")
        uris.append((tmp_path / f"small-{n}.jsonl").as_uri())
    with pytest.raises(LineCountError, match="not one per file"):
        LineRead(spark, uris, "packed").check_partitions()


@pytest.mark.parametrize("with_archive", [False, True], ids=["line-reader-only", "with-an-archive"])
def test_aggregates_observed_beside_the_line_counts_cover_every_row(spark, tmp_path, with_archive):
    """``also``: aggregates over the read's rows, in the line counts' own observation when every
    file goes through the line reader, in one of their own over all rows when some are read whole."""
    names = [name for name in TRICKY if with_archive or not name.endswith((".gz", "bom.jsonl"))]
    uris = []
    for name in names:
        (tmp_path / name).write_bytes(TRICKY[name])
        uris.append((tmp_path / name).as_uri())
    whole = {uri for uri in uris if must_read_whole(spark, uri)}
    read = LineRead(spark, uris, f"also-{with_archive}", whole=whole,
                    also=[F.count(F.lit(1)).alias("n"), F.max("_source_line").alias("top")])
    assert (read._also is None) is not with_archive  # noqa: SLF001 - one observation, where it can be
    with one_file_per_partition(spark):
        read.rows.write.format("noop").mode("overwrite").save()
    assert read.observed() == {"n": sum(read.counts().values()), "top": 5000}
    assert sum(read.counts().values()) == (5019 if with_archive else 5015)
