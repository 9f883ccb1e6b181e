"""Bronze batches read on the driver (lakehouse/landing_arrow.py): the rows Spark's read gives,
statistics that hold, nothing left behind by a failed read, and Spark where the table asks more."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from lakehouse import landing_arrow
from lakehouse.bronze import ensure_source_bronze_table
from lakehouse.config import load_config
from lakehouse.failpoints import FAILPOINTS_ENV
from lakehouse.landing import INGESTED_FILES_TABLE, _now
from lakehouse.landing_arrow import DriverRead, LandingReadError, file_lines, read_file
from lakehouse.row_appends import commit_files
from lakehouse.runner import run_flow
from lakehouse.tables import bronze_table, read_table, resolve_table
from tests.conftest import CONF_DIR
from tests.faults import land, lines, reading
from tests.lakehouse.test_bronze_lines import TRICKY

ONCE = {"availableNow": True}

ODD = {  # besides TRICKY: names Spark's URIs quote, two gzip members, bzip2, CRLF only, a lone CR
    "a b.jsonl": lines(reading(1), reading(2)),
    "x[1]{2}.jsonl": lines(reading(3)),
    "é 100%.jsonl": b"\xe9t\xe9\n",
    "members.jsonl.gz": gzip.compress(b"one\ntwo") + gzip.compress(b"\nthree\n"),
    "packed.jsonl.bz2": bz2.compress(b"alpha\r\nbeta\r\n"),
    "crlf.jsonl": b"\r\n\r\n",
    "cr.jsonl": b"a\rb\r",
    "empty.jsonl": b"",
}


def _config(tmp_path: Path, name: str, on_driver: bool):
    return load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / name,
                       overrides=[f"sources.telemetry.read_on_driver={str(on_driver).lower()}"])


def _rows(spark, config) -> list[tuple[str, int, bytes]]:
    rows = read_table(spark, bronze_table(config, "telemetry")).collect()
    return sorted((r._source_file.rsplit("/", 1)[1], r._source_line, bytes(r.value)) for r in rows)


def _engines(config) -> list[str]:
    log = Path(bronze_table(config, "telemetry").path, "_delta_log")
    infos = [json.loads(line)["commitInfo"] for path in sorted(log.glob("*.json"))
             for line in path.read_text().splitlines() if line.startswith('{"commitInfo"')]
    return [info.get("engineInfo", "") for info in infos if info.get("operation") != "CREATE TABLE"]


def test_the_driver_read_lands_the_rows_sparks_read_lands(spark, tmp_path):
    """The same landing files through both readers: the same rows, bytes, file names (as
    ``_metadata.file_path`` spells them) and line numbers, and the same lines per file."""
    landed = {}
    for on_driver in (True, False):
        config = _config(tmp_path, f"driver-{on_driver}", on_driver)
        for name, data in {**TRICKY, **ODD}.items():
            land(config, name, data)
        assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
        files = {r.path: r.lines for r in read_table(spark, resolve_table(config, INGESTED_FILES_TABLE)).collect()}
        names = sorted(r._source_file.replace(str(tmp_path / f"driver-{on_driver}"), "")
                       for r in read_table(spark, bronze_table(config, "telemetry")).select("_source_file").distinct().collect())
        landed[on_driver] = (_rows(spark, config), names, {Path(p).name: n for p, n in files.items()})
        engines = _engines(config)
        assert engines and all(("delta-rs" in e) == on_driver for e in engines), engines
    assert landed[True] == landed[False]
    rows = landed[True][0]
    assert ("members.jsonl.gz", 3, b"three") in rows and ("packed.jsonl.bz2", 2, b"beta\r") in rows
    assert [r for r in rows if r[0] == "crlf.jsonl"] == [("crlf.jsonl", 1, b"\r"), ("crlf.jsonl", 2, b"\r")]
    assert [r for r in rows if r[0] == "cr.jsonl"] == [("cr.jsonl", 1, b"a\rb\r")]
    assert landed[True][2]["empty.jsonl"] == 0 and landed[True][2]["long.jsonl"] == 5000


def test_row_groups_and_files_split_a_batch_with_exact_statistics(spark, config, monkeypatch):
    """A batch written by two threads into several row groups: every row once, and each data
    file's statistics (rows, the provenance columns' least and greatest) are what its rows hold,
    so Spark's data skipping finds every row a filter asks for."""
    monkeypatch.setattr(landing_arrow, "_ROW_GROUP_BYTES", 2000)
    bronze = ensure_source_bronze_table(spark, config, "telemetry")
    uris = [land(config, f"f{n}.jsonl", lines(*[reading(100 * n + i) for i in range(20 + n)])).as_uri() for n in range(5)]
    read = DriverRead(spark, [(uri, uri.replace("file:///", "file:/")) for uri in uris],
                      _now(), every=4)
    files = read.write(bronze.path, threads=2)
    assert 1 <= len(files) <= 2 and commit_files(spark, bronze, files, landing_arrow.ROWS_SCHEMA, "test:0")
    assert sum(read.counts.values()) == sum(20 + n for n in range(5)) == sum(json.loads(f.stats)["numRecords"] for f in files)
    assert sum(pq.ParquetFile(Path(bronze.path, f.name)).metadata.num_row_groups for f in files) > len(files)
    table = read_table(spark, bronze)
    for f in files:
        stats = json.loads(f.stats)
        actual = table.where(F.col("_metadata.file_name") == f.name).agg(
            F.count(F.lit(1)), F.min("_source_file"), F.max("_source_file"), F.max("_source_line")).first()
        assert (actual[0], actual[1], actual[2], actual[3]) == (
            stats["numRecords"], stats["minValues"]["_source_file"], stats["maxValues"]["_source_file"],
            stats["maxValues"]["_source_line"])
    last = uris[-1].replace("file:///", "file:/")
    assert table.where((F.col("_source_file") == last) & (F.col("_source_line") == 24)).count() == 1
    ingested = table.select("_ingested_at").distinct().collect()
    assert len(ingested) == 1 and ingested[0][0].microsecond % 1000 == 0


def test_a_strict_read_that_fails_leaves_no_data_file(spark, config):
    """Strict (one file read alone to name its error): the error is raised and the files the
    other thread wrote are removed; not strict, the file is left out and named."""
    bronze = ensure_source_bronze_table(spark, config, "telemetry")
    kept = land(config, "kept.jsonl", lines(reading(1)))
    gone = Path(config.landing_path("telemetry"), "gone.jsonl")
    files = [(kept.as_uri(), "file:" + str(kept)), (gone.as_uri(), "file:" + str(gone))]
    with pytest.raises(LandingReadError, match="FileNotFoundError"):
        DriverRead(spark, files, _now(), every=16, strict=True).write(bronze.path, threads=2)
    assert list(Path(bronze.path).glob("*.parquet")) == []
    read = DriverRead(spark, files, _now(), every=16)
    written = read.write(bronze.path, threads=2)
    assert len(written) == 1 and read.counts == {str(kept): 1} and read.failed == {str(gone): "missing"}


def test_a_bronze_table_that_asks_more_of_a_writer_is_written_by_spark(spark, config):
    """A CHECK constraint (a writer feature this path does not enforce): the batch goes to Spark."""
    bronze = ensure_source_bronze_table(spark, config, "telemetry")
    spark.sql(f"ALTER TABLE delta.`{bronze.path}` ADD CONSTRAINT known_line CHECK (_source_line > 0)")
    land(config, "a.jsonl", lines(reading(1), reading(2)))
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert _rows(spark, config)[-1][:2] == ("a.jsonl", 2)
    assert _engines(config)[-1].startswith("Apache-Spark")


def test_lines_split_as_the_whole_file_split_does():
    assert file_lines(b"").to_pylist() == []
    assert file_lines(b"\n").to_pylist() == [b""]
    assert file_lines(b"a\n\nb\r\n\n").to_pylist() == [b"a", b"", b"b\r", b""]
    assert file_lines(b"x\r\ny").to_pylist() == [b"x\r", b"y"]
    assert file_lines(b"\xef\xbb\xbf\xff\n\x80").to_pylist() == [b"\xef\xbb\xbf\xff", b"\x80"]


def test_a_batch_that_fails_between_its_files_and_its_commit_leaves_nothing_and_is_redone_once(spark, config, monkeypatch):
    """The data files are written, then the commit fails: they are removed, the batch fails and
    is redone by the next run, and every line is in bronze once."""
    for n in range(3):
        land(config, f"f{n}.jsonl", lines(*[reading(10 * n + i) for i in range(4)]))
    monkeypatch.setenv(FAILPOINTS_ENV, "bronze.commit=raise-once")
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 1
    bronze = bronze_table(config, "telemetry")
    assert list(Path(bronze.path).glob("*.parquet")) == [] and read_table(spark, bronze).count() == 0
    monkeypatch.delenv(FAILPOINTS_ENV)
    assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    rows = _rows(spark, config)
    assert len(rows) == len(set(rows)) == 12 and _engines(config)[-1].startswith("delta-rs")


def test_bronze_checkpoints_written_by_delta_rs_serve_spark_and_silver(spark, config):
    """Bronze's log checkpoints at its interval are made by delta-rs once its commits are: Spark
    reads the table from them, filters by its statistics, and silver streams from it."""
    bronze = ensure_source_bronze_table(spark, config, "telemetry")
    spark.sql(f"ALTER TABLE delta.`{bronze.path}` SET TBLPROPERTIES ('delta.checkpointInterval' = '2')")
    for n in range(4):
        land(config, f"f{n}.jsonl", lines(*[reading(10 * n + i) for i in range(3)]))
        assert run_flow(spark, config, "bronze.telemetry", ONCE) == 0
    assert list(Path(bronze.path, "_delta_log").glob("*.checkpoint.parquet"))
    table = read_table(spark, bronze)
    assert table.count() == 12 and table.where(F.col("_source_file").endswith("/f2.jsonl")).count() == 3
    assert run_flow(spark, config, "silver.telemetry", ONCE) == 0
    assert read_table(spark, resolve_table(config, "silver.telemetry")).count() == 12


def test_read_errors_are_named_as_sparks_are(tmp_path):
    """The reasons lakehouse.landing.diagnosis gives Spark's errors, from Python's (root reads any
    file, so the unreadable case is built rather than met)."""
    assert LandingReadError("u", PermissionError(13, "Permission denied")).diagnosis() == (
        "unreadable", "PermissionError: Permission denied")
    assert LandingReadError("u", FileNotFoundError(2, "No such file or directory")).diagnosis()[0] == "missing"
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b"a\nb\n")[:-6])
    with pytest.raises(LandingReadError) as caught:
        read_file(broken.as_uri())
    assert caught.value.diagnosis()[0] == "corrupt" and "EOFError" in caught.value.diagnosis()[1]
