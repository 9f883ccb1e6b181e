"""Silver's key index: the keys ``silver.<entity>`` holds and the newest event time written for
each, kept in the driver by silver's query, so a micro-batch goes through Delta's MERGE only when
it holds a newer version of a key silver already has (lakehouse/silver_merge.py).

Why: a MERGE costs a micro-batch about 2.3 s on two cores whatever its size. Delta rebuilds
silver's state from its log for every new version, then joins the batch's keys with the key
column of every silver file, so the cost also grows with the table. An append of the same rows
costs a quarter of that and does not grow (bench/RESULTS.md, issue 16). With the index, each row
of a batch (one per key) is one of:
  - a key silver does not hold: appended, as the MERGE would insert it;
  - a key silver holds with an event time the row's is not newer than: left out, as the MERGE's
    update condition would leave it (a resend: the common duplicate);
  - a key silver holds with an older event time, or none: the whole batch goes through the MERGE.
Keys are compared by a 128-bit hash (two xxhash64 of the key columns). A collision would leave a
new row out, so it must be out of reach: about n^2 / 2^129 for n keys.

The index is built at the query's first batch (beside its parse), from silver as of one version, and
grows with each batch the query writes. Before each batch, a commit since then that is not this
query's and may add or change rows (anything but a compaction, a vacuum or a property change), or
a commit the log no longer holds, makes it build again. Silver has one writer, its query (as
lakehouse.batch_plan.NewestEventTime also assumes): a row written by another between that check and
the batch's append would not be seen by it. Past the entity's ``key_index_max_keys`` (24 bytes a
key once built; a build holds a few times that for a moment) the query drops the index and MERGEs
every batch.
"""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StructField, StructType

from lakehouse.config import EntityConfig
from lakehouse.tables import ROWS_UNCHANGED, TableRef, commits, last_commit, made_empty, read_table
from lakehouse.threads import in_background

NO_TIME = np.iinfo(np.int64).min  # a null event time, below every time
_SALT = "lakehouse-silver-keys"  # makes the second hash another function of the key


def key_columns(entity: EntityConfig) -> list[Column]:
    """:data:`H1`, :data:`H2` (the key's hash) and :data:`TIME` (the event time, microseconds) of a silver row."""
    keys = [F.col(f"`{name}`") for name in entity.keys]
    # xxhash64 skips a null value, so (a, null) would hash as (null, a): which parts are null is hashed too.
    parts = [*[key.isNull() for key in keys], *keys]
    return [F.xxhash64(*parts).alias(H1), F.xxhash64(F.lit(_SALT), *parts).alias(H2),
            F.unix_micros(F.col(f"`{entity.event_time}`").cast("timestamp")).alias(TIME)]


H1, H2, TIME = "__silver_key_h1", "__silver_key_h2", "__silver_key_time"  # apart from any column's name


def collect_keys(rows: DataFrame, entity: EntityConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows' key hashes and event times as arrays (one pass, Arrow to the driver)."""
    table = rows.select(*key_columns(entity)).toArrow()
    return table.column(H1).to_numpy(), table.column(H2).to_numpy(), table.column(TIME).fill_null(NO_TIME).to_numpy()


class SilverKeyIndex:
    """One query's index of silver's keys (see the module's docstring)."""

    def __init__(self, spark: SparkSession, ref: TableRef, entity: EntityConfig, max_keys: int):
        self.spark, self.ref, self.entity, self.max_keys = spark, ref, entity, max_keys
        self.version: int | None = None  # silver's version the index covers (None: not built)
        self.dropped = False  # over max_keys: the query MERGEs every batch
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._reading: Future | None = None  # a build in a thread (read_in_background)

    @property
    def size(self) -> int:
        """Entries held: each key once, but until the chunks are merged, once per chunk holding it."""
        return sum(len(chunk[0]) for chunk in self._chunks)

    def ready(self, own_marker: str) -> bool:
        """Whether the index covers silver as it is now (built or caught up first); False once dropped.
        ``own_marker``: a marker of this query's commits (``<app id>:<batch>``)."""
        if self._reading is not None:
            reading, self._reading = self._reading, None
            reading.result()  # re-raises what failed there
        if self.dropped:
            return False
        if self.version is None or self._changed_by_others(own_marker.rpartition(":")[0] + ":"):
            self.build()
        return not self.dropped

    def lookup(self, h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key: whether silver holds it, and the newest event time written for it (NO_TIME: none)."""
        found = np.zeros(len(h1), dtype=bool)
        times = np.full(len(h1), NO_TIME, dtype=np.int64)
        for chunk in self._chunks:
            in_chunk, chunk_times = _lookup(chunk, h1, h2)
            found |= in_chunk
            times = np.maximum(times, chunk_times)
        return found, times

    def add(self, h1: np.ndarray, h2: np.ndarray, times: np.ndarray) -> None:
        """Keys a commit of this query wrote (a key already held keeps the newer of its times)."""
        if self.dropped or not len(h1):
            return
        self._chunks.append(unique_keys(h1, h2, times)[0])
        if self.size > self.max_keys:
            self._drop()
        elif len(self._chunks) > _MAX_CHUNKS:
            self._chunks = [unique_keys(*(np.concatenate(parts) for parts in zip(*self._chunks, strict=True)))[0]]

    def read_in_background(self) -> None:
        """Start reading silver's keys in a thread, when the index has none yet (a query's first
        batch: its parse runs meanwhile); :meth:`ready` waits for them."""
        if self.version is None and not self.dropped and self._reading is None:
            self._reading = in_background(self.build, "silver-key-index")

    def build(self) -> None:
        """Read silver's keys as its latest version holds them (or drop the index: over ``max_keys``)."""
        commit = last_commit(self.spark, self.ref)
        version = commit["version"]
        if made_empty(commit):  # a silver just created holds no key: no scan (about 0.5 s)
            self._chunks, self.version = [], version
            return
        silver = read_table(self.spark, self.ref, version)
        rows = silver.count()
        if rows > self.max_keys:
            self._drop()
            return
        self._chunks = [unique_keys(*collect_keys(silver, self.entity))[0]] if rows else []
        self.version = version

    def _drop(self) -> None:
        name = self.ref.name if self.ref is not None else "silver"
        print(f"{name}: more than {self.max_keys:,} keys; every micro-batch is MERGEd from now on", flush=True)
        self.dropped, self._chunks, self.version = True, [], None

    def _changed_by_others(self, own_prefix: str) -> bool:
        """Whether a commit since the covered version may have changed rows and is not this query's,
        or is missing from the history (the log's clean-up removed it)."""
        later = []
        for commit in commits(self.spark, self.ref):
            if commit["version"] <= self.version:
                break
            later.append(commit)
        if sorted(row["version"] for row in later) != list(range(self.version + 1, self.version + 1 + len(later))):
            return True
        if any(not (row["userMetadata"] or "").startswith(own_prefix) and row["operation"] not in ROWS_UNCHANGED
               for row in later):
            return True
        self.version += len(later)
        return False


_MAX_CHUNKS = 16  # a batch's keys are a chunk of their own until this many, then all are merged


def unique_keys(h1: np.ndarray, h2: np.ndarray, times: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray],
                                                                           np.ndarray]:
    """The keys sorted by hash, each once, with its newest time; and how many entries each had."""
    # Sorted by the first hash alone (one key: a third of a three-key lexsort's time on 1M keys);
    # only the entries sharing a first hash (the same key, rarely a collision) are then sorted by
    # all three, in the places they hold.
    order = np.argsort(h1)
    first = h1[order]
    shared = np.flatnonzero(first[1:] == first[:-1])
    if len(shared):
        at = np.union1d(shared, shared + 1)
        some = order[at]
        order[at] = some[np.lexsort((times[some], h2[some], h1[some]))]
    h1, h2, times = h1[order], h2[order], times[order]
    last = np.ones(len(h1), dtype=bool)
    last[:-1] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
    ends = np.flatnonzero(last)
    return (h1[last], h2[last], times[last]), np.diff(ends, prepend=-1)


def hash_frame(spark: SparkSession, h1: np.ndarray, h2: np.ndarray) -> DataFrame:
    """Key hashes as a DataFrame of :data:`HASH_SCHEMA` (through Arrow: no row-by-row conversion)."""
    table = pa.table({H1: pa.array(h1, pa.int64()), H2: pa.array(h2, pa.int64())})
    return spark.createDataFrame(table, HASH_SCHEMA)


HASH_SCHEMA = StructType([StructField(H1, LongType(), False), StructField(H2, LongType(), False)])


def _lookup(chunk, h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys1, keys2, key_times = chunk
    low = np.searchsorted(keys1, h1, side="left")
    high = np.searchsorted(keys1, h1, side="right")
    found = np.zeros(len(h1), dtype=bool)
    times = np.full(len(h1), NO_TIME, dtype=np.int64)
    single = (high - low) == 1  # a first hash held once: the second decides
    at = low[single]
    found[single] = keys2[at] == h2[single]
    times[single] = np.where(found[single], key_times[at], NO_TIME)
    for i in np.nonzero(high - low > 1)[0]:  # a first hash shared by several keys: rare
        match = keys2[low[i]:high[i]] == h2[i]
        if match.any():
            found[i], times[i] = True, key_times[low[i]:high[i]][match].max()
    return found, times
