"""One row per key of a refined micro-batch, the row silver keeps: the newest event time, ties to
the later bronze position (lakehouse.silver_tables.newest_of_its_key), without sorting the batch.

The key hashes and event times of the batch's kept rows come to the driver
(lakehouse.silver_keys.collect_keys, 24 bytes a row). A hash seen once is a key with one row,
kept as it is. Only the rows whose hash is seen more than once (resends and updates within the
batch: usually a few in a hundred) are sorted, by their key columns themselves, so a collision
of hashes costs a little sorting, never a row (the index's arrays would then count the two keys
as one: lakehouse/silver_keys.py puts that out of reach). The same arrays, one entry per key, are
what the key index needs (lakehouse/silver_merge.py).

The rows it returns are read more than once (Delta's MERGE reads its source twice, and does not
materialise it: lakehouse.silver_merge.SOURCE_MATERIALIZED), and the window over the repeated keys
runs again on each read. Every read picks the same rows only because the order is total: bronze
positions (file and line, or topic, partition and offset) are unique. Keep them so.

Why: the window over the whole batch was a shuffle and sort of every kept row, about 4 s of a
1M-row batch's 30 on two cores (bench/RESULTS.md, issue 16, seventh round). A batch of more
kept rows than the entity's ``key_index_max_keys`` (0: every batch) is sorted whole instead, so
the driver's memory stays bounded by the same setting as the index's.
Next stop: lakehouse.silver_merge writes the rows into silver.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse.config import EntityConfig
from lakehouse.silver_keys import H1, H2, collect_keys, hash_frame, key_columns, unique_keys
from lakehouse.silver_tables import newest_rows

Keys = tuple[np.ndarray, np.ndarray, np.ndarray]


def newest_per_key(rows: DataFrame, entity: EntityConfig, max_rows: int, rows_at_most: int) -> tuple[DataFrame, Keys | None]:
    """``rows``: the batch's rows that compete for silver (computed once: they are read twice or
    more). ``rows_at_most``: a bound on their number (the batch's kept rows). Returns the row each
    key keeps, and its keys as silver_keys' arrays (hash, hash, newest event time; one entry per
    key), or None for the keys when the batch was sorted whole (more than ``max_rows`` rows)."""
    if rows_at_most > max_rows or not max_rows:
        return newest_rows(rows, entity), None
    h1, h2, times = collect_keys(rows, entity)
    keys, entries = unique_keys(h1, h2, times)
    contested = entries > 1
    if not contested.any():
        return rows, keys
    hashes = F.broadcast(hash_frame(rows.sparkSession, keys[0][contested], keys[1][contested]))
    hashed = rows.select("*", *key_columns(entity)[:2])
    single = hashed.join(hashes, [H1, H2], "left_anti")
    newest = newest_rows(hashed.join(hashes, [H1, H2], "left_semi"), entity)
    return single.unionByName(newest).drop(H1, H2), keys
