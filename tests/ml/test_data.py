"""ml.data without Spark where it can be: how the rows of a pinned snapshot are split between
training processes (contiguous slices, only the overlapping row groups read), which rows go to
validation (a fixed hash of the split key), and which rows a model can learn from; Spark only
for count_unusable, the driver's version of that last rule."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ml.data
from ml.data import (
    FLOAT32_MAX,
    HASH_BUCKETS,
    Snapshot,
    count_unusable,
    read_head,
    read_shard,
    shard_bounds,
    usable_rows,
    validation_mask,
)

# -- sharding -------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [0, 1, 2, 7, 10, 99, 1000])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_shards_tile_the_rows_in_order_with_sizes_differing_by_at_most_one(total, size):
    bounds = [shard_bounds(total, rank, size) for rank in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(bounds))  # contiguous, no overlap
    sizes = [end - start for start, end in bounds]
    assert sum(sizes) == total and max(sizes) - min(sizes) <= 1


def test_shard_bounds_of_small_tables():
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert [shard_bounds(2, r, 4) for r in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 2)]  # two empty shards


def _snapshot(tmp_path, sizes: list[int], row_group_size: int) -> tuple[Snapshot, pd.DataFrame]:
    """Parquet files of ``sizes`` rows (ids 0.. across them, in order), as a pinned snapshot."""
    files, start = [], 0
    for i, n in enumerate(sizes):
        ids = np.arange(start, start + n)
        table = pa.table({"id": ids, "x": ids * 0.5, "key": [f"k{j}" for j in ids]})
        path = tmp_path / f"part-{i:03d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        files.append((path.as_uri(), n))
        start += n
    everything = pd.DataFrame({"id": np.arange(start), "x": np.arange(start) * 0.5})
    return Snapshot("gold.t", 4, files), everything


def test_snapshot_rows_are_the_files_rows(tmp_path):
    snapshot, _ = _snapshot(tmp_path, [5, 0, 7], row_group_size=2)
    assert snapshot.rows == 12 and snapshot.inputs == {}


@pytest.mark.parametrize("size", [1, 2, 3, 5, 13])
def test_the_shards_together_are_the_table_once_in_order(tmp_path, size):
    snapshot, everything = _snapshot(tmp_path, [10, 3, 0, 17], row_group_size=4)
    shards = [read_shard(snapshot, ["id", "x"], rank, size) for rank in range(size)]
    for rank, shard in enumerate(shards):
        start, end = shard_bounds(snapshot.rows, rank, size)
        assert shard["id"].tolist() == list(range(start, end))
        assert list(shard.columns) == ["id", "x"]
    together = pd.concat(shards, ignore_index=True)
    pd.testing.assert_frame_equal(together, everything)


def test_a_shard_reads_only_the_row_groups_over_its_slice(tmp_path, monkeypatch):
    snapshot, _ = _snapshot(tmp_path, [20, 20], row_group_size=5)  # 4 row groups of 5 per file
    reads = []
    real_open = ml.data._open

    class Recording:
        def __init__(self, uri):
            self.uri, self.file = uri, real_open(uri)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def read_row_groups(self, groups, columns=None):
            reads.append((self.uri.rsplit("/", 1)[-1], list(groups)))
            return self.file.read_row_groups(groups, columns=columns)

    monkeypatch.setattr(ml.data, "_open", Recording)
    shard = read_shard(snapshot, ["id"], 1, 4)  # rows [10, 20): the second file is not opened
    assert shard["id"].tolist() == list(range(10, 20))
    assert reads == [("part-000.parquet", [2, 3])]
    reads.clear()
    shard = read_shard(snapshot, ["id"], 1, 3)  # rows [13, 26): across the file boundary
    assert shard["id"].tolist() == list(range(13, 26))
    assert reads == [("part-000.parquet", [2, 3]), ("part-001.parquet", [0, 1])]


def test_an_empty_shard_has_the_columns_and_no_rows(tmp_path):
    snapshot, _ = _snapshot(tmp_path, [2], row_group_size=10)
    shard = read_shard(snapshot, ["id", "x"], 0, 4)  # 2 rows for 4 processes: rank 0 gets none
    assert shard.empty and list(shard.columns) == ["id", "x"]


@pytest.mark.parametrize("rows,n", [(100, 5), (3, 5), (7, 1), (40, 20)])
def test_read_head_is_the_first_rows(tmp_path, rows, n):
    snapshot, _ = _snapshot(tmp_path, [rows], row_group_size=6)
    head = read_head(snapshot, ["id"], n)
    assert head["id"].tolist() == list(range(min(n, rows)))


# -- the validation split -------------------------------------------------------------------


def _keys(n: int) -> pd.DataFrame:
    return pd.DataFrame({"host": [f"h{i % 37:02d}" for i in range(n)],
                         "minute": pd.date_range("2026-03-01", periods=n, freq="min"),
                         "value": np.arange(n, dtype="float64")})


@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.5, 0.9])
def test_the_validation_share_is_close_to_the_fraction(fraction):
    mask = validation_mask(_keys(20_000), ["host", "minute"], fraction)
    assert mask.dtype == bool and len(mask) == 20_000
    assert abs(mask.mean() - fraction) < 0.015, mask.mean()


def test_a_zero_or_full_fraction_puts_everything_on_one_side():
    frame = _keys(500)
    assert not validation_mask(frame, ["host", "minute"], 0.0).any()
    assert validation_mask(frame, ["host", "minute"], 1.0).all()


def test_a_key_goes_to_the_same_side_whatever_else_is_in_the_frame():
    frame = _keys(3000)
    mask = pd.Series(validation_mask(frame, ["host", "minute"], 0.3), index=frame.index)
    # Shuffled, cut into shards, with another index and the other columns changed: each row's
    # side depends on its key alone.
    shuffled = frame.sample(frac=1.0, random_state=5)
    for start in range(0, len(shuffled), 750):
        part = shuffled.iloc[start:start + 750]
        moved = part.assign(value=-part["value"]).reset_index()
        sides = validation_mask(moved, ["host", "minute"], 0.3)
        assert (sides == mask.loc[moved["index"]].to_numpy()).all()


def test_rows_with_the_same_key_go_to_the_same_side():
    frame = pd.concat([_keys(400)] * 3, ignore_index=True)
    frame["value"] = np.arange(len(frame))
    mask = validation_mask(frame, ["host", "minute"], 0.5)
    by_key = pd.Series(mask).groupby([frame["host"], frame["minute"]]).nunique()
    assert (by_key == 1).all() and 0 < mask.sum() < len(mask)


def test_a_larger_fraction_only_adds_validation_rows():
    frame = _keys(5000)
    small, large = (validation_mask(frame, ["host", "minute"], f) for f in (0.1, 0.3))
    assert (large | ~small).all() and large.sum() > small.sum()  # small's validation rows stay there


def test_the_split_uses_every_column_of_the_key():
    frame = pd.DataFrame({"host": ["h1"] * 1000, "minute": pd.date_range("2026-01-01", periods=1000, freq="min")})
    by_host = validation_mask(frame, ["host"], 0.5)
    assert by_host.all() or not by_host.any()  # one host: one side
    both = validation_mask(frame, ["host", "minute"], 0.5)
    assert 0.4 < both.mean() < 0.6
    assert (validation_mask(frame, ["minute", "host"], 0.5) != both).any()  # the key's order is part of it


# The same keys, split by a fresh interpreter with another hash seed: nothing in the split comes
# from Python's per-process string hashing, so every process, backend and rerun agrees.
_SPLIT_SCRIPT = """
import pandas as pd
from ml.data import validation_mask
frame = pd.DataFrame({"host": [f"h{i % 7}" for i in range(64)],
                      "minute": pd.date_range("2026-03-01", periods=64, freq="min")})
print("".join("v" if v else "t" for v in validation_mask(frame, ["host", "minute"], 0.25)))
"""


def test_the_split_is_the_same_in_another_process_with_another_hash_seed():
    here = pd.DataFrame({"host": [f"h{i % 7}" for i in range(64)],
                         "minute": pd.date_range("2026-03-01", periods=64, freq="min")})
    expected = "".join("v" if v else "t" for v in validation_mask(here, ["host", "minute"], 0.25))
    assert 0 < expected.count("v") < 64
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _SPLIT_SCRIPT], capture_output=True, text=True, env=env,
                             timeout=120, check=True, cwd=os.getcwd()).stdout.strip()
        assert out == expected


def test_the_split_of_known_keys_does_not_change():
    """Fixed values: a change of the hash (or of HASH_BUCKETS) would move rows between a model's
    training and validation data across releases; this test says so first."""
    frame = pd.DataFrame({"host": ["h01", "h01", "h02", "h02", "h03", "h03", "h04", "h04"],
                          "minute": pd.to_datetime(["2026-03-01 00:00", "2026-03-01 00:01"] * 4)})
    assert HASH_BUCKETS == 10_000
    buckets = pd.util.hash_pandas_object(frame, index=False).to_numpy() % HASH_BUCKETS
    assert buckets.tolist() == [8634, 6157, 124, 747, 1499, 2364, 4020, 6163]
    assert validation_mask(frame, ["host", "minute"], 0.5).tolist() == [False, False, True, True, True, True, True, False]
    assert validation_mask(frame, ["host", "minute"], 0.2).tolist() == [False, False, True, True, True, False, False, False]


# -- rows a model can learn from ------------------------------------------------------------


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["a", "b", "y"], dtype="float64")


def test_usable_rows_refuses_non_finite_and_beyond_float32_values_and_counts_unlabelled():
    nan, inf = float("nan"), float("inf")
    frame = _frame([
        (1.0, 2.0, 3.0),  # usable
        (nan, 2.0, 3.0),  # refused: NaN feature
        (1.0, -inf, 3.0),  # refused: infinite feature
        (1e300, 2.0, 3.0),  # refused: finite as a double, infinite as a float
        (1.0, 2.0, inf),  # refused: infinite label
        (1.0, 2.0, -1e39),  # refused: label beyond float32
        (1.0, 2.0, nan),  # unlabelled, not refused
        (nan, 2.0, nan),  # unlabelled (and a bad feature): counted once, as unlabelled
        (FLOAT32_MAX, -FLOAT32_MAX, 0.0),  # the largest float32 values are usable
        (0.0, 0.0, -0.0),  # usable
    ])
    mask, refused, unlabelled = usable_rows(frame, ["a", "b"], "y")
    assert mask.tolist() == [True, False, False, False, False, False, False, False, True, True]
    assert (refused, unlabelled) == (5, 2)


def test_usable_rows_takes_nulls_from_arrow_and_integer_columns():
    table = pa.table({"a": pa.array([1, None, 3], pa.int64()), "b": [0.5, 0.5, 0.5],
                      "y": pa.array([1.0, 2.0, None])})
    mask, refused, unlabelled = usable_rows(table.to_pandas(), ["a", "b"], "y")
    assert mask.tolist() == [True, False, False] and (refused, unlabelled) == (1, 1)


def test_usable_rows_only_looks_at_the_named_columns():
    frame = _frame([(1.0, float("nan"), 2.0)])
    assert usable_rows(frame, ["a"], "y")[0].tolist() == [True]
    assert usable_rows(frame, ["a", "b"], "y")[0].tolist() == [False]


def test_spark_counts_unusable_rows_by_the_same_rule(spark):
    nan, inf = float("nan"), float("inf")
    rows = [(1.0, 2.0, 3.0), (nan, 2.0, 3.0), (None, 2.0, 3.0), (1.0, -inf, 3.0), (1e300, 2.0, 3.0),
            (1.0, 2.0, inf), (1.0, 2.0, nan), (1.0, 2.0, None), (None, 2.0, None), (FLOAT32_MAX, -FLOAT32_MAX, 0.0),
            (3.5e38, 0.0, 1.0)]
    frame = spark.createDataFrame(rows, "a double, b double, y double")
    counts = count_unusable(frame, ["a", "b"], "y")
    pandas = _frame([tuple(float("nan") if v is None else v for v in r) for r in rows])
    mask, refused, unlabelled = usable_rows(pandas, ["a", "b"], "y")
    assert counts == {"rows": 11, "refused": 6, "unlabelled": 3}
    assert (counts["refused"], counts["unlabelled"]) == (refused, unlabelled) and int(mask.sum()) == 2
