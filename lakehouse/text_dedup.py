"""Near-duplicate text found with MinHash and locality-sensitive hashing, on Spark: the chat
scenario's ``gold.chat_near_duplicates`` (a batch gold table's ``transform``, lakehouse/gold.py).

1. Each text of at least ``min_chars`` characters (lower case, white space collapsed) becomes
   the set of its ``shingle``-character substrings, hashed (:func:`shingle_runs`); its signature
   is the minimum of ``bands * rows`` random hash functions over that set (numpy, for a whole
   Arrow batch of texts at once: :func:`signatures`), cut into ``bands`` bands of ``rows``
   values, each band hashed to one number: the text's bucket in that band.
2. Texts that share a bucket agree on a whole band: a pair of Jaccard similarity s does so
   with probability 1 - (1 - s^rows)^bands. In each bucket, in ``order``, a text is a candidate
   with the bucket's earliest text and with the text just before it: a star and a chain, so
   candidates grow with the texts, not with the square of a bucket's size (a bucket of a
   thousand near-identical texts gives two thousand candidates, not half a million). The price:
   a similar pair that is never earliest-and-member nor neighbours in any shared bucket is not
   compared (on the generated feed at 200,000 messages, about 92% of the near duplicates that
   comparing all pairs of a bucket finds; bench/RESULTS.md).
3. A candidate pair is kept when the Jaccard similarity of the two shingle sets, computed
   exactly (:func:`set_similarity`), is at least ``threshold`` (each Python worker keeps the
   sets of the texts it has seen: a text is in many pairs).
4. In ``order`` (the earliest first; of equal times, by key), a text similar to an
   earlier text that stays is removed, and that text recorded as its nearest kept one (the most
   similar of its kept pairs; ties to the earliest).
   Step 4 runs on the driver over the pairs of step 3, whose number grows with the near
   duplicates, not with the table.

Through steps 1-3 a text is known by a 64-bit hash of its key and ``seed`` (``_id``), not by the
key. One row per removed text: its key, the kept text's key (``kept_<key>``) and their
similarity. Deterministic for the same rows and ``seed``, so a rebuild after a crash gives the
same table. Next stop: gold.chat_documents leaves these messages out.
"""

from __future__ import annotations

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StructField, StructType

from lakehouse.session import redo_on_lost_checkpoint, release_checkpoint
from lakehouse.text_prep import matched_text


def near_duplicates(spark: SparkSession, inputs: dict[str, DataFrame], *, input: str | None = None,
                    key: list[str], order: str, column: str = "text", shingle: int = 5, bands: int = 16,
                    rows: int = 8, threshold: float = 0.7, min_chars: int = 80, seed: int = 1) -> DataFrame:
    """The removed texts of ``inputs[input]`` (module doc), with their nearest kept text."""
    if shingle < 1 or bands < 1 or rows < 1 or not 0.0 < threshold <= 1.0:
        raise ValueError("near_duplicates needs shingle, bands, rows >= 1 and 0 < threshold <= 1")
    texts = inputs[input] if input else next(iter(inputs.values()))  # default: the one input
    pairs = redo_on_lost_checkpoint(
        lambda attempt: similar_pairs(texts, key, order, column, shingle, bands, rows, threshold, min_chars, seed),
        BUILD_ATTEMPTS, "near_duplicates")
    removed = resolve(pairs, seed)
    key_type = texts.select(F.struct(*[F.col(k) for k in key])).schema[0].dataType
    schema = StructType([*key_type.fields, *[StructField(f"kept_{f.name}", f.dataType) for f in key_type.fields],
                         StructField("similarity", DoubleType())])
    rows_out = [(*gone, *kept, similarity) for gone, (kept, similarity)
                in sorted(removed.items(), key=lambda item: _sortable_key(item[0]))]
    return spark.createDataFrame(rows_out, schema)


BUILD_ATTEMPTS = 3


def similar_pairs(texts: DataFrame, key: list[str], order: str, column: str, shingle: int, bands: int, rows: int,
                  threshold: float, min_chars: int, seed: int) -> list:
    """Steps 1-3 of the module doc: the rows of the pairs of texts at least ``threshold`` similar
    (what :func:`resolve` takes). The texts as matched and their buckets are kept on the
    executors' disks while it runs (local checkpoints, without lineage: faster here than
    ``persist``, bench/RESULTS.md); a block of them lost fails it, and :func:`near_duplicates`
    runs it again."""
    matched = matched_text(F.col(column))
    # Each text is known by a 64-bit hash of its key (``_id``) through the shuffles: a long sorts,
    # joins and moves faster than the key itself. The texts as matched are computed once, for
    # the signatures and both sides of the pairs.
    keyed = texts.where(F.char_length(matched) >= min_chars).select(
        F.xxhash64(F.lit(seed), *[F.col(k) for k in key]).alias("_id"), F.struct(*[F.col(k) for k in key]).alias("_key"),
        F.col(order).alias("_order"), matched.alias("_text")).localCheckpoint(storageLevel=StorageLevel.DISK_ONLY)
    banded = None
    try:
        banded = keyed.select("_id", "_order", band_hashes(shingle, bands, rows, seed)("_text").alias("_buckets")) \
            .localCheckpoint(storageLevel=StorageLevel.DISK_ONLY)
        side = {s: keyed.select(*[F.col(c).alias(f"{c}_{s}") for c in ("_id", "_key", "_order", "_text")])
                for s in ("a", "b")}
        scored = candidate_pairs(banded).join(side["a"], F.col("_a") == F.col("_id_a")) \
            .join(side["b"], F.col("_b") == F.col("_id_b"))
        return scored.select("_key_a", "_key_b", "_order_a", "_order_b", "_id_a", "_id_b",
                             jaccard(shingle)("_text_a", "_text_b").alias("_similarity")) \
            .where(F.col("_similarity") >= threshold).collect()
    finally:
        for kept_rows in (banded, keyed):
            if kept_rows is not None:
                release_checkpoint(kept_rows, "near_duplicates")


def candidate_pairs(banded: DataFrame) -> DataFrame:
    """Step 2 of the module doc: the distinct pairs ``(_a, _b)`` (text ids, ``_a < _b``) to
    compare, from each text's ``_buckets``. In each band bucket (the texts that agree on one
    band), in order, a text is a candidate with the bucket's earliest text and with the one just
    before it (a star and a chain: candidates grow with the texts, not with the square of a
    bucket's size)."""
    bucket = Window.partitionBy("_bucket").orderBy(F.col("_order").asc_nulls_last(), "_id")
    linked = banded.select("_id", "_order", F.explode("_buckets").alias("_bucket")).select(
        "_id", F.first("_id").over(bucket).alias("_first"), F.lag("_id").over(bucket).alias("_previous"))
    return (linked.select(F.explode(F.array_distinct(F.array("_first", "_previous"))).alias("_other"), "_id")
            .where(F.col("_other").isNotNull() & (F.col("_other") != F.col("_id")))
            .select(F.least("_other", "_id").alias("_a"), F.greatest("_other", "_id").alias("_b"))
            .distinct())


def resolve(pairs, seed: int = 1) -> dict[tuple, tuple[tuple, float]]:
    """Step 4 of the module doc: removed key -> (nearest kept key, similarity), from the rows of
    the pairs kept in step 3 (``_key_a``, ``_id_a``, ``_order_a``, the same of ``b``, and
    ``_similarity``). Texts are ranked by (order, key). Two keys of one id in the pairs (about one
    chance in 10^9 at 200,000 texts) stop the build: another ``seed`` gives them different ids."""
    rank, similar, keys = {}, {}, {}
    for pair in pairs:
        for side, other in (("a", "b"), ("b", "a")):
            key, ident = tuple(pair[f"_key_{side}"]), pair[f"_id_{side}"]
            if keys.setdefault(ident, key) != key:
                raise ValueError(f"near_duplicates: keys {keys[ident]} and {key} have one id under seed {seed}; "
                                 "set another seed in the table's options")
            rank[key] = (_sortable(pair[f"_order_{side}"]), _sortable_key(key))
            similar.setdefault(key, []).append((tuple(pair[f"_key_{other}"]), pair["_similarity"]))
    removed: dict[tuple, tuple[tuple, float]] = {}
    for text in sorted(rank, key=rank.get):
        earlier_kept = [(other, s) for other, s in similar[text] if rank[other] < rank[text] and other not in removed]
        if earlier_kept:
            removed[text] = min(earlier_kept, key=lambda item: (-item[1], rank[item[0]]))
    return removed


def _sortable(value):
    return (value is None, value)


def _sortable_key(key: tuple) -> tuple:
    return tuple(_sortable(part) for part in key)  # a key may have null parts


def band_hashes(shingle: int, bands: int, rows: int, seed: int):
    """An Arrow UDF: each text's MinHash signature (``bands * rows`` values, :func:`signatures`)
    cut into ``bands`` bands, each hashed to one long (the bucket)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 32, size=bands * rows, dtype=np.uint32, endpoint=False) | np.uint32(1)
    b = rng.integers(0, 1 << 32, size=bands * rows, dtype=np.uint32, endpoint=False)
    # One multiplier per band and row: the same values in two bands make two buckets.
    mix = rng.integers(0, 1 << 64, size=(bands, rows), dtype=np.uint64, endpoint=False) | np.uint64(1)

    @F.arrow_udf("array<long>")
    def band(texts):
        signed = signatures(texts.to_pylist(), shingle, a, b).reshape(-1, bands, rows).astype(np.uint64)
        buckets = (signed * mix).sum(axis=2).view(np.int64).ravel()
        return pa.ListArray.from_arrays(np.arange(0, len(buckets) + 1, bands, dtype=np.int32), buckets)

    return band


JACCARD_CACHE_BYTES = 256 << 20  # shingle sets a Python worker keeps (about 1 KiB a chat message)


def jaccard(shingle: int):
    """An Arrow UDF: the Jaccard similarity of two texts' shingle sets (:func:`shingle_sets`),
    for a whole Arrow batch of pairs at once. A text is in many pairs, so each Python worker
    keeps the sets of the texts it has seen across its tasks (:class:`_SetCache`: the pairs
    reach a task in the order of one side; the other side's texts recur across tasks)."""
    import pyarrow as pa

    @F.arrow_udf("double")
    def similarity(left, right):
        lefts, rights = left.to_pylist(), right.to_pylist()
        sets = _SetCache.of(shingle).sets(lefts + rights)
        return pa.array(set_similarity([sets[x] for x in lefts], [sets[y] for y in rights]), type=pa.float64())

    return similarity


class _SetCache:
    """One Python worker's shingle sets by text, least recently used out past
    ``JACCARD_CACHE_BYTES``; one shingle size at a time."""

    _current: _SetCache | None = None

    def __init__(self, shingle: int):
        from collections import OrderedDict

        self.shingle, self.held, self.by_text = shingle, 0, OrderedDict()

    @classmethod
    def of(cls, shingle: int) -> _SetCache:
        if cls._current is None or cls._current.shingle != shingle:
            cls._current = cls(shingle)
        return cls._current

    def sets(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The shingle sets of ``texts``, the ones not kept made at once."""
        found, missing = {}, []
        for text in texts:
            if text not in found:
                found[text] = self.by_text.get(text)
                if found[text] is None:
                    missing.append(text)
                else:
                    self.by_text.move_to_end(text)
        for text, made in zip(missing, shingle_sets(missing, self.shingle), strict=True):
            found[text] = self.by_text[text] = made
            self.held += made.nbytes
        while self.held > JACCARD_CACHE_BYTES and self.by_text:
            self.held -= self.by_text.popitem(last=False)[1].nbytes
        return found


SET_BITS = 44  # a shingle set holds the top 44 bits of each 64-bit hash; the bits above: which text
SET_MASK = np.uint64((1 << SET_BITS) - 1)
SET_ITEMS = 1 << (64 - SET_BITS)  # texts (or pairs) tagged at once: the 20 bits above the values
SET_VALUES = 1 << 22  # about as many values at once (32 MiB of them), however long the texts


def shingle_sets(texts: list[str], shingle: int) -> list[np.ndarray]:
    """Each text's set of shingle hashes, sorted: the distinct top ``SET_BITS`` bits of the
    64-bit hashes of its ``shingle``-code-point substrings (:func:`shingle_runs`). Two shingles
    of a pair of 100-character messages share those bits by chance about once in 10^9 pairs
    (of 4,000-character ones, once in 10^6). Made for many texts at once: one sort of every
    hash tagged with its text. Each set is an array of its own (the cache drops them one by one)."""
    out: list[np.ndarray] = []
    for begin, end in _spans(np.array([len(text) for text in texts], dtype=np.int64)):
        part = texts[begin:end]
        hashes, firsts, ends = shingle_runs(part, shingle)
        owner = np.repeat(np.arange(len(part), dtype=np.uint64), ends - firsts)
        packed = np.sort((owner << np.uint64(SET_BITS)) | (hashes >> np.uint64(64 - SET_BITS)))
        packed = packed[np.concatenate([[True], packed[1:] != packed[:-1]])]  # np.unique: slower here
        bounds = np.searchsorted(packed >> np.uint64(SET_BITS), np.arange(len(part) + 1, dtype=np.uint64))
        values = packed & SET_MASK
        out.extend(values[bounds[i]:bounds[i + 1]].copy() for i in range(len(part)))
    return out


def set_similarity(lefts: list[np.ndarray], rights: list[np.ndarray]) -> np.ndarray:
    """The Jaccard similarity of each pair of shingle sets (each sorted, as :func:`shingle_sets`
    makes them), for many pairs at once: each pair's values tagged with the pair and the two
    sides merged; a value in both sides of a pair is one tagged value found twice."""
    out = np.empty(len(lefts), dtype=np.float64)
    sizes = [np.array([len(v) for v in side], dtype=np.int64) for side in (lefts, rights)]
    for begin, end in _spans(sizes[0] + sizes[1]):
        pair = np.arange(end - begin, dtype=np.uint64)
        tagged = [np.concatenate(side[begin:end]) | (np.repeat(pair, size[begin:end]) << np.uint64(SET_BITS))
                  for side, size in zip((lefts, rights), sizes, strict=True)]
        merged = np.sort(np.concatenate(tagged))
        twice = merged[1:][merged[1:] == merged[:-1]] >> np.uint64(SET_BITS)
        shared = np.bincount(twice.astype(np.int64), minlength=end - begin)
        out[begin:end] = shared / (sizes[0][begin:end] + sizes[1][begin:end] - shared)
    return out


def _spans(sizes: np.ndarray):
    """(begin, end) of runs of consecutive items, each of at most ``SET_ITEMS`` items and, past
    its first item, at most ``SET_VALUES`` values by ``sizes``."""
    ends = np.cumsum(sizes)
    begin = 0
    while begin < len(sizes):
        until = int(np.searchsorted(ends, (ends[begin - 1] if begin else 0) + SET_VALUES, side="right"))
        end = min(max(until, begin + 1), begin + SET_ITEMS)
        yield begin, end
        begin = end


SHINGLE_BASE = np.uint64(1_000_003)
MIX = ((30, np.uint64(0xBF58476D1CE4E5B9)), (27, np.uint64(0x94D049BB133111EB)))


def shingle_runs(texts: list[str], shingle: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 64-bit hash of every run of ``shingle`` code points of ``texts``, computed at once over
    the texts joined (a text shorter than one shingle padded with zeros to one), and where each
    text's hashes start and end in it. The hash: polynomial (overflow wraps), then mixed
    (SplitMix64's finaliser, a bijection) so that every bit depends on every code point."""
    padded = [text + "\0" * (shingle - len(text)) if len(text) < shingle else text for text in texts]
    lengths = np.array([len(text) for text in padded], dtype=np.int64)
    points = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    count = max(0, len(points) - shingle + 1)
    hashes = np.zeros(count, dtype=np.uint64)
    for offset in range(shingle):
        hashes = hashes * SHINGLE_BASE + points[offset:offset + count]
    # Keep the runs that lie within one text.
    text_of = np.repeat(np.arange(len(padded)), lengths)
    hashes = hashes[text_of[:count] == text_of[shingle - 1:]]
    for shift, multiplier in MIX:
        hashes ^= hashes >> np.uint64(shift)
        hashes *= multiplier
    hashes ^= hashes >> np.uint64(31)
    ends = np.cumsum(lengths - shingle + 1)
    return hashes, ends - (lengths - shingle + 1), ends


SIGNATURE_CHUNK = 1 << 20  # hash values computed at once: 4 MiB of uint32 (the fastest of 2^15..2^24 here)


def signatures(texts: list[str], shingle: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The MinHash signatures of ``texts`` (one row each): for each (a, b), the minimum over a
    text's shingle hashes h (:func:`shingle_runs`) of (a * fold(h) + b) mod 2^32, fold(h) the
    64-bit hash's two halves XORed (multiply-add hashing, a odd). Vectorised over the texts
    (repeated shingles do not change a minimum): the minima taken per text by
    ``np.minimum.reduceat``, in 32-bit arithmetic (about three times the speed of 64-bit)."""
    hashes, firsts, ends = shingle_runs(texts, shingle)
    folded = (hashes ^ (hashes >> np.uint64(32))).astype(np.uint32)
    out = np.empty((len(texts), len(a)), dtype=np.uint32)
    per_chunk = max(1, SIGNATURE_CHUNK // max(1, len(a)))
    done = 0
    while done < len(texts):  # the texts whose hashes fit one chunk (at least one text)
        until = max(done + 1, int(np.searchsorted(ends, firsts[done] + per_chunk, side="right")))
        values = np.multiply.outer(a, folded[firsts[done]:ends[until - 1]])
        values += b[:, None]
        out[done:until] = np.minimum.reduceat(values, firsts[done:until] - firsts[done], axis=1).T
        done = until
    return out
