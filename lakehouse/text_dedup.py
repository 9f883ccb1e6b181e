"""Near-duplicate text found with MinHash and locality-sensitive hashing, on Spark: the chat
scenario's ``gold.chat_near_duplicates`` (a batch gold table's ``transform``, lakehouse/gold.py).

1. Each text of at least ``min_chars`` characters (lower case, white space collapsed) becomes
   the set of its ``shingle``-character substrings, hashed; its signature is the minimum of
   ``bands * rows`` random hash functions over that set (numpy, in a vectorised Arrow UDF),
   cut into ``bands`` bands of ``rows`` values, each band hashed to one number.
2. Texts that agree on a whole band share a bucket: a pair of Jaccard similarity s shares one
   with probability 1 - (1 - s^rows)^bands. In each bucket, in ``order``, a text is a candidate
   with the bucket's earliest text and with the text just before it: a star and a chain, so
   candidates grow with the texts, not with the square of a bucket's size (a bucket of a
   thousand near-identical texts gives two thousand candidates, not half a million). The price:
   a similar pair that is never earliest-and-member nor neighbours in any shared bucket is not
   compared (on the generated feed at 200,000 messages, 39,569 near duplicates found where
   comparing all pairs of a bucket found 43,003; bench/RESULTS.md).
3. A candidate pair is kept when the Jaccard similarity of the two shingle sets, computed
   exactly, is at least ``threshold`` (each task keeps the shingle hashes of the texts it has
   seen, least recently used out past ``JACCARD_CACHE_BYTES``: a text is in many pairs).
4. In ``order`` (the earliest first), a text similar to an earlier text that stays is removed,
   and that text recorded as its nearest kept one (the most similar of its kept pairs; ties to
   the earliest).
   Step 4 runs on the driver over the pairs of step 3, whose number grows with the near
   duplicates, not with the table.

One row per removed text: its key, the kept text's key (``kept_<key>``) and their similarity.
Deterministic for the same rows and ``seed``, so a rebuild after a crash gives the same table.
Next stop: gold.chat_documents leaves these messages out.
"""

from __future__ import annotations

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StructField, StructType

from lakehouse.text_prep import matched_text


def near_duplicates(spark: SparkSession, inputs: dict[str, DataFrame], *, input: str | None = None,
                    key: list[str], order: str, column: str = "text", shingle: int = 5, bands: int = 16,
                    rows: int = 8, threshold: float = 0.7, min_chars: int = 80, seed: int = 1) -> DataFrame:
    """The removed texts of ``inputs[input]`` (module doc), with their nearest kept text."""
    if shingle < 1 or bands < 1 or rows < 1 or not 0.0 < threshold <= 1.0:
        raise ValueError("near_duplicates needs shingle, bands, rows >= 1 and 0 < threshold <= 1")
    texts = inputs[input] if input else next(iter(inputs.values()))  # default: the one input
    matched = matched_text(F.col(column))
    keyed = texts.where(F.char_length(matched) >= min_chars).select(
        F.struct(*[F.col(k) for k in key]).alias("_key"), F.col(order).alias("_order"), matched.alias("_text"))
    # Computed once, kept on disk (one long a band), read by both sides of the band join.
    banded = keyed.select("_key", "_order", band_hashes(shingle, bands, rows, seed)("_text").alias("_bands")) \
        .localCheckpoint(storageLevel=StorageLevel.DISK_ONLY)
    exploded = banded.select("_key", "_order", F.posexplode("_bands").alias("_band", "_hash"))
    # In each band bucket (the texts that agree on one band), in order: each text is a candidate
    # with the bucket's earliest text and with the one just before it (a star and a chain:
    # candidates grow with the texts, not with the square of a bucket's size).
    bucket = Window.partitionBy("_band", "_hash").orderBy(F.col("_order").asc_nulls_last(), "_key")
    linked = exploded.select("_key", F.first("_key").over(bucket).alias("_first"),
                             F.lag("_key").over(bucket).alias("_previous"))
    candidates = (linked.select(F.explode(F.array_distinct(F.array("_first", "_previous"))).alias("_other"), "_key")
                  .where(F.col("_other").isNotNull() & (F.col("_other") != F.col("_key")))
                  .select(F.least("_other", "_key").alias("_a"), F.greatest("_other", "_key").alias("_b"))
                  .distinct())
    side = {s: keyed.select(F.col("_key").alias(f"_{s}"), F.col("_order").alias(f"_order_{s}"),
                            F.col("_text").alias(f"_text_{s}")) for s in ("a", "b")}
    scored = candidates.join(side["a"], "_a").join(side["b"], "_b").select(
        "_a", "_b", "_order_a", "_order_b", jaccard(shingle)("_text_a", "_text_b").alias("_similarity"))
    pairs = scored.where(F.col("_similarity") >= threshold).collect()
    banded.unpersist()
    removed = resolve(pairs)
    key_type = texts.select(F.struct(*[F.col(k) for k in key])).schema[0].dataType
    schema = StructType([*key_type.fields, *[StructField(f"kept_{f.name}", f.dataType) for f in key_type.fields],
                         StructField("similarity", DoubleType())])
    rows_out = [(*gone, *kept, similarity) for gone, (kept, similarity) in sorted(removed.items())]
    return spark.createDataFrame(rows_out, schema)


def resolve(pairs) -> dict[tuple, tuple[tuple, float]]:
    """Step 4 of the module doc: removed key -> (nearest kept key, similarity)."""
    rank, similar = {}, {}
    for pair in pairs:
        a, b = tuple(pair["_a"]), tuple(pair["_b"])
        rank[a], rank[b] = (_sortable(pair["_order_a"]), a), (_sortable(pair["_order_b"]), b)
        similar.setdefault(a, []).append((b, pair["_similarity"]))
        similar.setdefault(b, []).append((a, pair["_similarity"]))
    removed: dict[tuple, tuple[tuple, float]] = {}
    for text in sorted(rank, key=rank.get):
        earlier_kept = [(other, s) for other, s in similar[text] if rank[other] < rank[text] and other not in removed]
        if earlier_kept:
            removed[text] = min(earlier_kept, key=lambda item: (-item[1], rank[item[0]]))
    return removed


def _sortable(value):
    return (value is None, value)


def band_hashes(shingle: int, bands: int, rows: int, seed: int):
    """An Arrow UDF: each text's MinHash signature (``bands * rows`` values) cut into ``bands``
    bands, each hashed to one long."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 64, size=bands * rows, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 1 << 64, size=bands * rows, dtype=np.uint64, endpoint=False)
    mix = rng.integers(0, 1 << 64, size=rows, dtype=np.uint64, endpoint=False) | np.uint64(1)

    @F.arrow_udf("array<long>")
    def band(texts):
        out = [((minhash(text, shingle, a, b).reshape(bands, rows).astype(np.uint64) * mix).sum(axis=1))
               .view(np.int64).tolist() for text in texts.to_pylist()]
        return pa.array(out, type=pa.list_(pa.int64()))

    return band


JACCARD_CACHE_BYTES = 256 << 20  # shingle hashes a task keeps (about 1 KiB a chat message)


def jaccard(shingle: int):
    """An Arrow UDF: the Jaccard similarity of two texts' sets of hashed shingles."""
    from collections import OrderedDict

    import pyarrow as pa

    seen: OrderedDict = OrderedDict()  # in each task, across its Arrow batches: a text is in many pairs
    held = [0]  # bytes of shingle hashes in seen

    def hashed(text):
        found = seen.get(text)
        if found is not None:
            seen.move_to_end(text)  # least recently used goes first
            return found
        found = seen[text] = shingle_hashes(text, shingle)
        held[0] += found.nbytes
        while held[0] > JACCARD_CACHE_BYTES:
            held[0] -= seen.popitem(last=False)[1].nbytes
        return found

    @F.arrow_udf("double")
    def similarity(left, right):
        out = []

        for x, y in zip(left.to_pylist(), right.to_pylist(), strict=True):
            hx, hy = hashed(x), hashed(y)
            shared = len(np.intersect1d(hx, hy, assume_unique=True))
            out.append(shared / (len(hx) + len(hy) - shared))
        return pa.array(out, type=pa.float64())

    return similarity


def shingle_hashes(text: str, shingle: int) -> np.ndarray:
    """The distinct 64-bit polynomial hashes of a text's ``shingle``-code-point substrings (a
    text shorter than one shingle: the text padded with zeros, one shingle)."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(points) < shingle:
        points = np.concatenate([points, np.zeros(shingle - len(points), dtype=np.uint64)])
    count = len(points) - shingle + 1
    h = np.zeros(count, dtype=np.uint64)
    for offset in range(shingle):  # overflow wraps: a hash modulo 2^64
        h = h * np.uint64(1_000_003) + points[offset:offset + count]
    return np.unique(h)


def minhash(text: str, shingle: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The signature of one text: for each (a, b), min over its shingle hashes h of the top 32
    bits of (a*h + b) mod 2^64 (multiply-shift hashing, a odd)."""
    values = np.multiply.outer(a, shingle_hashes(text, shingle))  # one buffer, updated in place
    values += b[:, None]
    return values.min(axis=1) >> np.uint64(32)  # the shift keeps the order: the minimum first, then shifted
