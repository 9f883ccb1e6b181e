"""Landing files -> bronze rows: one row per line, its raw bytes, its file and its line number.

lakehouse.landing decides which files a micro-batch reads; this module reads them in a Spark job
(on one machine, lakehouse.landing_arrow reads them on the driver, the same rows). Every row is
``value`` (the line's bytes without its "\\n"; a "\\r" before it stays), ``_source_file``,
``_source_line`` (1-based) and ``_ingested_at``. Bytes that are not UTF-8 are kept as they are.
Two readers, by the file's name:

- **Plain files: Spark's line reader** (``lineSep`` "\\n", which neither decodes nor splits on
  "\\r"). Each file is made one input partition of its own (:data:`ONE_FILE_PER_PARTITION`, set
  around the write by :func:`one_file_per_partition`), so a row's position in its partition is its
  line number (``monotonically_increasing_id`` counts rows per input partition). The partitions
  are then merged into a few per core (``coalesce``: no shuffle, and the numbers were taken
  before), so a batch writes a few large files, not one per landing file. The read is strict:
  a file that fails part-way would otherwise leave its first lines behind.
- **Compressed files** (:data:`COMPRESSED_SUFFIXES`) and files that start with a UTF-8
  byte-order mark: read whole, then split (:func:`with_lines`). A corrupt or truncated archive
  must give no line at all, and the line reader would keep the lines before the damage; and
  Hadoop's line reader drops a byte-order mark, which bronze keeps. A file the whole-file read
  cannot take is skipped (lakehouse.landing reads it again alone to name the error).

The line reader costs about 0.6x the whole-file split for plain text (bench/RESULTS.md, issue 16).
How many lines each file gave comes from the same pass (:class:`LineRead`).
"""

from __future__ import annotations

import bz2
import gzip
import re
import zlib
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import datetime

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from lakehouse import fs
from lakehouse.tables import session_conf

# Suffixes Hadoop's codecs decompress by default (the line reader would too, part-way on damage).
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".deflate", ".lz4", ".snappy", ".zst")
# Those Python reads too, as a stream (``open``) or whole (``decompress``), concatenated members
# included: the inflated-size check (:func:`inflated_size`), the read on the driver (landing_arrow).
PYTHON_CODECS = {".gz": gzip, ".bz2": bz2}

# Spark packs small files into one input partition and splits large ones; with a split size and an
# open cost this large, every file is one partition of its own (FilePartition.getFilePartitions),
# and no partition count limit merges them again.
_HUGE_BYTES = 1 << 50
ONE_FILE_PER_PARTITION = {
    "spark.sql.files.maxPartitionBytes": _HUGE_BYTES,
    "spark.sql.files.openCostInBytes": _HUGE_BYTES,
    "spark.sql.files.maxPartitionNum": 2**31 - 1,
}
_ROW_BITS = 33  # monotonically_increasing_id: the partition index above, the row within it below
_ROW_MASK = (1 << _ROW_BITS) - 1

_GLOB = re.compile(r"([\\\[\]{}*?])")


def load_path(uri: str) -> str:
    """A path for ``DataFrameReader.load``: the URI's path unquoted, glob characters escaped
    (``load`` expands globs, so a file named ``x[1].jsonl`` would otherwise not be found)."""
    readable = fs.canonical(uri)
    if fs.local_path(uri) is not None:
        readable = "file:" + readable
    return _GLOB.sub(r"\\\1", readable)


UTF8_BOM = b"\xef\xbb\xbf"
# Merged partitions of one read at most (each costs an aggregate in the read's observation).
MAX_MERGED_PARTITIONS = 64


def is_compressed(uri: str) -> bool:
    return uri.lower().endswith(COMPRESSED_SUFFIXES)


_CHUNK = 1 << 20


def inflated_size(uri: str, limit: int) -> int | None:
    """Bytes a compressed local landing file decompresses to, counted without holding them and
    only up to just past ``limit``. None when the file is not local, not compressed by a suffix
    counted here (.gz, .bz2), or corrupt (the read names it then). Other codecs (.deflate, .zst,
    .lz4, .snappy) are bounded by their size on disk only."""
    path = fs.local_path(uri)
    codec = PYTHON_CODECS.get(path.suffix.lower()) if path is not None else None
    if codec is None:
        return None
    total = 0
    try:
        with codec.open(path, "rb") as stream:
            while total <= limit:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, ValueError, zlib.error):  # zlib.error: a broken deflate stream
        return None
    return total


def must_read_whole(spark: SparkSession, uri: str) -> bool:
    """Whether a landing file is read whole: compressed, or starting with a UTF-8 byte-order mark
    (its first three bytes are looked at: lakehouse.landing.look_at does it with the file's stat),
    or its start could not be looked at (then the whole-file read is the safe one)."""
    return is_compressed(uri) or fs.head(spark, uri, len(UTF8_BOM)) in (UTF8_BOM, None)


@contextmanager
def one_file_per_partition(spark: SparkSession):
    """Around the command that writes a :class:`LineRead`'s rows, on the calling query's own
    session (a streaming query's batches run in a clone of its own): each file one input
    partition, which the line numbers depend on."""
    with session_conf(spark, ONE_FILE_PER_PARTITION):
        yield


def read_whole_files(spark: SparkSession, uris: list[str], strict: bool = False) -> DataFrame:
    """One row per readable file: ``value`` (its bytes, decompressed) and ``_metadata``.

    A file that cannot be read is left out rather than failing the read (Spark's
    ignoreCorruptFiles / ignoreMissingFiles), unless ``strict``: then the read fails with its error.
    """
    skip = str(not strict).lower()
    return (
        spark.read.format("text").option("wholetext", True)
        .option("ignoreCorruptFiles", skip).option("ignoreMissingFiles", skip)
        .load([load_path(uri) for uri in uris])
    )


def ingest_time(at: datetime | None) -> Column:
    """``_ingested_at``: the batch's time, one for every row of a read (given: a literal, which the
    batch's freshness measurement then takes exactly; else the write's ``current_timestamp``)."""
    return F.current_timestamp() if at is None else F.lit(at).cast("timestamp")


def with_lines(files: DataFrame, file_path: Column, observation: Observation | None = None,
               ingested_at: datetime | None = None) -> DataFrame:
    """One row per line of each whole-file row (``value`` holds the file's bytes, as text or binary).

    Lines end at "\\n"; a "\\r" before it stays in the line, so the line is stored as received.
    A final "\\n" ends the last line rather than starting an empty one; an empty file has no lines.
    ``observation`` (optional) receives ``files``: per file its path (``file``) and ``lines``.

    The bytes are split exactly: the file is decoded as ISO-8859-1 (one character per byte, any
    byte valid), split on "\\n", and each line encoded back, so bytes that are not UTF-8 are
    kept as they are. Cost matters here (every landed byte passes through): the text is split
    once, and the empty piece after a final "\\n" is dropped from the array, not by trimming
    the text (which walks and copies each file again). Nothing after the explode refers back to
    the array, or the optimizer would re-split the file once per line.
    """
    text = F.decode(F.col("value").cast("binary"), "ISO-8859-1")
    pieces, ends_with_newline = F.col("_pieces"), F.col("_ends_with_newline")
    whole_lines = F.when(ends_with_newline, F.slice(pieces, 1, F.size(pieces) - 1)).otherwise(pieces)
    split = files.select(
        file_path.alias("_source_file"),
        F.when(text == "", F.array().cast("array<string>")).otherwise(F.split(text, "\n", -1)).alias("_pieces"),
        text.endswith("\n").alias("_ends_with_newline"),
    ).select("_source_file", whole_lines.alias("_lines"))
    if observation is not None:
        per_file = F.struct(F.col("_source_file").alias("file"), F.size("_lines").cast("long").alias("lines"))
        split = split.observe(observation, F.collect_list(per_file).alias("files"))
    return (
        split.select("_source_file", F.posexplode("_lines").alias("_position", "_line"))
        .select(
            F.encode("_line", "ISO-8859-1").alias("value"),
            "_source_file",
            (F.col("_position") + 1).cast("long").alias("_source_line"),
            ingest_time(ingested_at).alias("_ingested_at"),
        )
    )


def line_reader(spark: SparkSession, uris: list[str], strict: bool = False) -> DataFrame:
    """Spark's line reader over plain files: one row per line (``value``, raw bytes). A missing
    file is skipped (it gives no rows) unless ``strict``; any other error fails the read."""
    return (spark.read.format("text").option("lineSep", "\n")
            .option("ignoreMissingFiles", str(not strict).lower()).option("ignoreCorruptFiles", "false")
            .load([load_path(uri) for uri in uris]))


def plain_lines(read: DataFrame, observation: Observation, partitions: int,
                ingested_at: datetime | None = None, also: Sequence[Column] = ()) -> DataFrame:
    """Bronze rows of a :func:`line_reader` read, in ``partitions`` partitions; needs
    :func:`one_file_per_partition` around the command. ``observation`` receives where each file's
    rows start (``firsts``: file, position) and where each merged partition's end (``lasts``),
    positions in the merged partitions: :func:`plain_line_counts` turns them into lines per file;
    and the aggregates ``also`` over the bronze rows (each observation is a step every row passes
    through: one costs less than two)."""
    numbered = read.select(
        F.col("value").cast("binary").alias("value"),
        F.col("_metadata.file_path").alias("_source_file"),
        (F.monotonically_increasing_id().bitwiseAND(_ROW_MASK) + 1).alias("_source_line"),
        ingest_time(ingested_at).alias("_ingested_at"),
    )
    # The position after merging, counted anew in each merged partition: files follow one another
    # there, so a file's lines run from its first row to the next file's first row.
    merged = numbered.coalesce(partitions).withColumn("_at", F.monotonically_increasing_id())
    partition = F.shiftright("_at", _ROW_BITS)
    first = F.struct(F.col("_source_file").alias("file"), F.col("_at").alias("at"))
    return merged.observe(  # the aliases are LINE_METRICS
        observation,
        F.collect_list(F.when(F.col("_source_line") == 1, first)).alias("firsts"),
        F.array(*[F.max(F.when(partition == p, F.col("_at"))) for p in range(partitions)]).alias("lasts"),
        F.count(F.lit(1)).alias("rows"),
        *also,
    ).drop("_at")


LINE_METRICS = ("firsts", "lasts", "rows")  # plain_lines' own aggregates in its observation, beside ``also``


class LineCountError(RuntimeError):
    """The line reader's input partitions are not one per file (checked before the write), or its
    rows do not add up per file (after it)."""


def plain_line_counts(metrics: dict) -> dict[str, int]:
    """Lines per file (as ``_metadata.file_path`` names it) from :func:`plain_lines`' observation."""
    firsts = sorted((row["at"], row["file"]) for row in metrics["firsts"])
    ends = {p: last + 1 for p, last in enumerate(metrics["lasts"]) if last is not None}
    counts: dict[str, int] = {}
    for i, (at, file) in enumerate(firsts):
        following = firsts[i + 1][0] if i + 1 < len(firsts) else None
        same_partition = following is not None and following >> _ROW_BITS == at >> _ROW_BITS
        end = following if same_partition else ends[at >> _ROW_BITS]
        counts[file] = counts.get(file, 0) + end - at
    if len(counts) != len(firsts) or sum(counts.values()) != metrics["rows"]:
        raise LineCountError(f"line counts do not add up: {len(firsts)} first lines for {len(counts)} files, "
                             f"{sum(counts.values())} lines counted of {metrics['rows']} rows")
    return counts


class LineRead:
    """The rows of one read of landing files (``rows``: plain files by the line reader, compressed
    ones whole and split), and, once they have been written, the lines each file gave."""

    def __init__(self, spark: SparkSession, uris: list[str], name: str, strict: bool = False,
                 whole: set[str] | frozenset[str] = frozenset(), ingested_at: datetime | None = None,
                 also: Sequence[Column] = ()):
        """``whole``: files to read whole besides the compressed ones (see :func:`must_read_whole`);
        ``ingested_at``: every row's ``_ingested_at`` (default: the write's time); ``also``:
        aggregates observed over the rows (:meth:`observed`), in the line counts' observation
        when every file is read by the line reader."""
        plain = [uri for uri in uris if uri not in whole and not is_compressed(uri)]
        whole = [uri for uri in uris if uri in whole or is_compressed(uri)]
        self._plain = Observation(f"{name}-lines") if plain else None
        self._whole = Observation(f"{name}-whole") if whole else None
        self._read = line_reader(spark, plain, strict) if plain else None
        self._files = len(plain)
        self._also_with_lines = bool(also) and not whole
        parts = []
        if plain:
            partitions = max(1, min(len(plain), spark.sparkContext.defaultParallelism, MAX_MERGED_PARTITIONS))
            parts.append(plain_lines(self._read, self._plain, partitions, ingested_at,
                                     also if self._also_with_lines else ()))
        if whole:
            parts.append(with_lines(read_whole_files(spark, whole, strict), F.col("_metadata.file_path"),
                                    self._whole, ingested_at))
        self.rows = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
        self._also = Observation(f"{name}-also") if also and not self._also_with_lines else None
        if self._also is not None:
            self.rows = self.rows.observe(self._also, *also)

    def observed(self) -> dict:
        """The ``also`` aggregates' values, by alias, once the rows have been written."""
        if self._also_with_lines:
            return {k: v for k, v in self._plain.get.items() if k not in LINE_METRICS}
        return self._also.get if self._also is not None else {}

    def check_partitions(self) -> None:
        """Inside :func:`one_file_per_partition`, before the write: the line reader's input
        partitions are one per file (planned only, no job), or the line numbers would be wrong."""
        if self._read is not None and (planned := self._read.rdd.getNumPartitions()) != self._files:
            raise LineCountError(f"the line reader planned {planned} input partitions for {self._files} files, "
                                 "not one per file: line numbers would be wrong")

    def counts(self) -> dict[str, int]:
        """Lines per file read, by canonical path (a file skipped by the read is not there)."""
        counted = {} if self._plain is None else plain_line_counts(self._plain.get)
        if self._whole is not None:
            counted.update({row["file"]: row["lines"] for row in self._whole.get["files"]})
        return {fs.canonical(file): lines for file, lines in counted.items()}


def read_error(spark: SparkSession, uri: str, whole: bool) -> Exception | None:
    """The error reading one file alone, strictly, gives (None: it reads), without writing anything."""
    try:  # a missing file fails already when the read is made
        read = read_whole_files(spark, [uri], strict=True) if whole else line_reader(spark, [uri], strict=True)
        read.write.format("noop").mode("overwrite").save()
    except Exception as exc:  # the error is the answer
        return exc
    return None
