"""Training data: a gold feature table pinned at one Delta version, read in shards, one per process.

The driver pins the table (:func:`pin_snapshot`): the version, its Parquet files and their row
counts (from the files' footers: no rows are read on the driver). Each training process then
reads only the row groups that hold its contiguous slice of the rows (:func:`read_shard`), and
splits them into training and validation by a hash of the split key, so every process, backend
and rerun agrees on which row is which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from lakehouse.errors import JobError

HASH_BUCKETS = 10_000


class SnapshotError(JobError):
    """The feature table cannot be pinned for training (missing, empty, unreadable as Parquet)."""


@dataclass(frozen=True)
class Snapshot:
    table: str  # logical name, e.g. gold.telemetry_features
    version: int  # the Delta version every process reads
    files: list[tuple[str, int]]  # (file URI, rows), in a fixed order
    inputs: dict[str, int] = field(default_factory=dict)  # what that version was built from, if recorded

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.files)


def pin_snapshot(spark, config, table: str, version: int | None = None) -> Snapshot:
    """The table's files at ``version`` (default: the latest), with row counts from Parquet footers."""
    from lakehouse.tables import delta_table, read_table, resolve_table, table_exists

    ref = resolve_table(config, table)
    if not table_exists(spark, ref):
        raise SnapshotError(f"{table} does not exist yet: build it with `lakehouse gold --table {ref.table}`")
    delta = delta_table(spark, ref)
    metadata = {row.version: row.userMetadata for row in delta.history().select("version", "userMetadata").collect()}
    version = max(metadata) if version is None else version
    if version not in metadata:
        raise SnapshotError(f"{table} has no version {version}")
    properties = delta.detail().first()["properties"]
    if properties.get("delta.enableDeletionVectors") == "true":
        raise SnapshotError(f"{table} uses deletion vectors, which its Parquet files alone do not apply")
    uris = sorted(read_table(spark, ref, version=version).inputFiles())  # from the Delta log
    files = [(uri, _open(uri).metadata.num_rows) for uri in uris]
    inputs = {}
    if metadata[version]:
        try:
            inputs = json.loads(metadata[version]).get("inputs", {})
        except ValueError:
            pass  # metadata written by something else
    snapshot = Snapshot(table, int(version), files, inputs)
    if snapshot.rows == 0:
        raise SnapshotError(f"{table} version {version} has no rows")
    return snapshot


def _open(uri: str) -> pq.ParquetFile:
    filesystem, path = pafs.FileSystem.from_uri(uri)
    return pq.ParquetFile(filesystem.open_input_file(path))


def shard_bounds(total: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [start, end) of process ``rank`` of ``size``: contiguous, sizes differing by at most one."""
    return total * rank // size, total * (rank + 1) // size


def read_shard(snapshot: Snapshot, columns: list[str], rank: int, size: int) -> pd.DataFrame:
    """This process's rows: only the row groups that overlap its slice are read."""
    start, end = shard_bounds(snapshot.rows, rank, size)
    pieces, offset = [], 0
    for uri, rows in snapshot.files:
        lo, hi = max(start, offset), min(end, offset + rows)
        if lo < hi:
            parquet = _open(uri)
            groups, group_start, first = [], 0, None
            for i in range(parquet.num_row_groups):
                n = parquet.metadata.row_group(i).num_rows
                if group_start + n > lo - offset and group_start < hi - offset:
                    groups.append(i)
                    first = group_start if first is None else first
                group_start += n
            table = parquet.read_row_groups(groups, columns=columns)
            pieces.append(table.slice(lo - offset - first, hi - lo))
        offset += rows
    if not pieces:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    return pa.concat_tables(pieces).to_pandas()


def read_head(snapshot: Snapshot, columns: list[str], n: int = 5) -> pd.DataFrame:
    """The first ``n`` rows (an input example for the logged model)."""
    return read_shard(snapshot, columns, 0, max(1, snapshot.rows // max(n, 1))).head(n)


def validation_mask(frame: pd.DataFrame, split_key: list[str], fraction: float) -> np.ndarray:
    """True for validation rows: a fixed hash of the split key, the same in every process and run."""
    hashes = pd.util.hash_pandas_object(frame[split_key], index=False).to_numpy()
    return (hashes % HASH_BUCKETS) < int(round(fraction * HASH_BUCKETS))


# -- rows a model can learn from ------------------------------------------------------------
#
# A feature or label that is NaN, infinite, or beyond float32 (the model's precision: 1e300 is
# finite as a double and infinite as a float) would make the scaling, the loss and so the model
# NaN. Such rows are refused: counted, logged, and above training.max_refused_fraction the run
# stops. A row without a label (null: the last minute of a host has no next minute) is
# unlabelled, not refused. The same rule twice: in numpy for the training processes, in Spark
# SQL for the driver's check before any process starts.

FLOAT32_MAX = float(np.finfo(np.float32).max)


def usable_rows(frame: pd.DataFrame, features: list[str], label: str) -> tuple[np.ndarray, int, int]:
    """(mask of rows to train on, refused rows, unlabelled rows) of a shard."""
    x = frame[features].to_numpy(dtype=np.float64)
    y = frame[label].to_numpy(dtype=np.float64)
    unlabelled = np.isnan(y)  # Arrow nulls arrive as NaN
    representable = lambda a: np.isfinite(a) & (np.abs(a) <= FLOAT32_MAX)  # noqa: E731
    good = representable(x).all(axis=1) & representable(y)
    return good, int((~good & ~unlabelled).sum()), int(unlabelled.sum())


def not_representable(name: str):
    """Spark column: the value of ``name`` is null, NaN, infinite or beyond float32 (the rule of
    :func:`usable_rows`, for training's count and scoring)."""
    from pyspark.sql import functions as F

    value = F.col(name).cast("double")
    return value.isNull() | F.isnan(value) | (F.abs(value) > FLOAT32_MAX)


def count_unusable(table_df, features: list[str], label: str) -> dict[str, int]:
    """rows / refused / unlabelled of a Spark DataFrame, by the rule of :func:`usable_rows`."""
    from pyspark.sql import functions as F

    bad = not_representable
    unlabelled = F.col(label).isNull() | F.isnan(F.col(label).cast("double"))
    any_bad = bad(label)
    for name in features:
        any_bad = any_bad | bad(name)
    refused = ~unlabelled & any_bad
    row = table_df.agg(F.count(F.lit(1)).alias("rows"), F.count(F.when(refused, 1)).alias("refused"),
                       F.count(F.when(unlabelled, 1)).alias("unlabelled")).first()
    return {"rows": row["rows"], "refused": row["refused"], "unlabelled": row["unlabelled"]}
