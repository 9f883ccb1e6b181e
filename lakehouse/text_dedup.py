"""Near-duplicate text found with MinHash and locality-sensitive hashing, on Spark: the chat
scenario's ``gold.chat_near_duplicates`` (a batch gold table's ``transform``, lakehouse/gold.py).

1. Each text of at least ``min_chars`` characters (lower case, white space collapsed) becomes
   the set of its ``shingle``-character substrings, hashed; its signature is the minimum of
   ``bands * rows`` random hash functions over that set (numpy, in a vectorised Arrow UDF).
   The share of equal signature positions of two texts estimates their Jaccard similarity.
2. The signature is cut into ``bands`` bands of ``rows`` values; texts that agree on a whole
   band are candidates (a pair of similarity s is one with probability 1 - (1 - s^rows)^bands).
3. A candidate pair is kept when its estimated similarity is at least ``threshold``.
4. In ``order`` (the earliest first), a text similar to an earlier text that stays is removed,
   and that text recorded as its nearest kept one (the most similar; ties to the earliest).
   Step 4 runs on the driver over the pairs of step 3, whose number grows with the near
   duplicates, not with the table.

One row per removed text: its key, the kept text's key (``kept_<key>``) and the estimated
similarity. Deterministic for the same rows and ``seed``, so a rebuild after a crash gives the
same table. Next stop: gold.chat_documents leaves these messages out.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StructField, StructType


def near_duplicates(spark: SparkSession, inputs: dict[str, DataFrame], *, input: str | None = None, key: list[str], order: str,
                    column: str = "text", shingle: int = 5, bands: int = 16, rows: int = 8,
                    threshold: float = 0.7, min_chars: int = 80, seed: int = 1) -> DataFrame:
    """The removed texts of ``inputs[input]`` (module doc), with their nearest kept text."""
    if shingle < 1 or bands < 1 or rows < 1 or not 0.0 < threshold <= 1.0:
        raise ValueError("near_duplicates needs shingle, bands, rows >= 1 and 0 < threshold <= 1")
    texts = inputs[input] if input else next(iter(inputs.values()))  # default: the one input
    matched = F.lower(F.regexp_replace(F.col(column), r"[\s\p{Z}]+", " "))
    keyed = texts.where(F.char_length(matched) >= min_chars).select(
        F.struct(*[F.col(k) for k in key]).alias("_key"), F.col(order).alias("_order"), matched.alias("_text"))
    signed = keyed.select("_key", "_order", signatures(shingle, bands * rows, seed)("_text").alias("_sig"))
    signed = signed.localCheckpoint()  # read by the band join twice, and computed once
    banded = signed.select("_key", F.posexplode(_band_hashes(F.col("_sig"), bands, rows)).alias("_band", "_hash"))
    left, right = banded.alias("a"), banded.alias("b")
    candidates = (left.join(right, (F.col("a._band") == F.col("b._band")) & (F.col("a._hash") == F.col("b._hash"))
                            & (F.col("a._key") < F.col("b._key")))
                  .select(F.col("a._key").alias("_a"), F.col("b._key").alias("_b")).distinct())
    sig_a = signed.select(F.col("_key").alias("_a"), F.col("_order").alias("_order_a"), F.col("_sig").alias("_sig_a"))
    sig_b = signed.select(F.col("_key").alias("_b"), F.col("_order").alias("_order_b"), F.col("_sig").alias("_sig_b"))
    scored = candidates.join(sig_a, "_a").join(sig_b, "_b").select(
        "_a", "_b", "_order_a", "_order_b", _agreement(F.col("_sig_a"), F.col("_sig_b")).alias("_similarity"))
    pairs = scored.where(F.col("_similarity") >= threshold).collect()
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


def signatures(shingle: int, permutations: int, seed: int):
    """An Arrow UDF: each text's MinHash signature (``permutations`` 32-bit values, as longs)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 64, size=permutations, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 1 << 64, size=permutations, dtype=np.uint64, endpoint=False)

    @F.arrow_udf("array<long>")
    def sign(texts):
        out = [minhash(text, shingle, a, b).tolist() for text in texts.to_pylist()]
        return pa.array(out, type=pa.list_(pa.int64()))

    return sign


def minhash(text: str, shingle: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The signature of one text: for each (a, b), min over its shingles h of the top 32 bits of
    (a*h + b) mod 2^64 (multiply-shift hashing, a odd); h is a polynomial hash of the shingle's
    code points."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(points) < shingle:
        points = np.concatenate([points, np.zeros(shingle - len(points), dtype=np.uint64)])
    count = len(points) - shingle + 1
    h = np.zeros(count, dtype=np.uint64)
    for offset in range(shingle):  # overflow wraps: a hash modulo 2^64
        h = h * np.uint64(1_000_003) + points[offset:offset + count]
    h = np.unique(h)
    return ((a[:, None] * h[None, :] + b[:, None]) >> np.uint64(32)).min(axis=1).astype(np.int64)


def _band_hashes(signature, bands: int, rows: int):
    return F.array(*[F.xxhash64(F.slice(signature, band * rows + 1, rows)) for band in range(bands)])


def _agreement(left, right):
    """The share of positions where two signatures agree: their estimated Jaccard similarity."""
    equal = F.zip_with(left, right, lambda x, y: F.when(x == y, 1).otherwise(0))
    return F.aggregate(equal, F.lit(0), lambda acc, x: acc + x) / F.size(left)
