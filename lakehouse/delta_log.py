"""A Delta table's newest commits, read from its transaction log without a Spark job.

Delta's own history (``DeltaTable.history``, ``DESCRIBE HISTORY``) reads the commit files in a
Spark job (``spark.range`` over the versions), even for the last one: 0.15-0.3 s each on two
cores, and longer when its task waits for a core behind a running stage (bench/RESULTS.md,
issue 16). The pipeline asks for a few of the newest commits after nearly every batch: a
batch's commit version for ops.freshness, whether another writer changed silver, the versions a
batch read. :func:`log_commits` answers from the log's files themselves, as the Delta protocol
lays them out: ``_delta_log/<version, 20 digits>.json``, one action per line, the
``commitInfo`` action holding what history shows. Only the files it yields are read, newest
first, so a caller that stops after one reads one file.

lakehouse.tables.commits uses it for tables stored by path and falls back to Delta's history
where it returns None (a table named in a catalog, commits not yet written into the log).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime

from pyspark.sql import Row, SparkSession

from lakehouse import fs

# What a commit row holds, as DeltaTable.history names these columns.
COMMIT_COLUMNS = ("version", "timestamp", "operation", "operationParameters", "operationMetrics", "userMetadata")
CommitRow = Row(*COMMIT_COLUMNS)

# Log folder -> the newest version seen there: where the next look for the newest starts.
_newest_seen: dict[str, int] = {}
_lock = threading.Lock()


def _log(table_path: str) -> str:
    return f"{table_path.rstrip('/')}/_delta_log"


def _commit_file(log: str, version: int) -> str:
    return f"{log}/{version:020d}.json"


def _exists(spark: SparkSession, log: str, version: int) -> bool:
    return fs.stat(spark, _commit_file(log, version)) is not None


def newest_version(spark: SparkSession, table_path: str) -> int | None:
    """The table's newest version as its log files show it, or None (no commit file found).

    Versions are contiguous above the log's oldest kept file, so the newest is found by probing
    commit files upward from a version known to exist (the last one seen, else the last
    checkpoint's) in growing steps, then halving the gap: a few file looks, not a listing."""
    log = _log(table_path)
    with _lock:
        start = _newest_seen.get(log)
    if start is None or not _exists(spark, log, start):
        start = _checkpoint_version(spark, log)
        if start is None:
            start = 0 if _exists(spark, log, 0) else _listed_oldest(spark, log)
        if start is None:
            return None
    step = 1
    while _exists(spark, log, start + step):
        start, step = start + step, step * 2
    low, high = start, start + step  # low exists (or is the checkpoint's version), high does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _exists(spark, log, middle) else (low, middle)
    with _lock:
        _newest_seen[log] = low
    return low


def _checkpoint_version(spark: SparkSession, log: str) -> int | None:
    """The version ``_last_checkpoint`` names (every version after it has its commit file)."""
    data = fs.read_bytes(spark, f"{log}/_last_checkpoint")
    try:
        return int(json.loads(data)["version"]) if data else None
    except (ValueError, KeyError, TypeError):
        return None


def _listed_oldest(spark: SparkSession, log: str) -> int | None:
    """The oldest commit file's version, from a listing (a log without ``_last_checkpoint`` whose
    first commits were cleaned up)."""
    versions = [int(name[:-5]) for name in fs.list_names(spark, log) if name.endswith(".json") and name[:-5].isdigit()]
    return min(versions) if versions else None


def _commit_row(spark: SparkSession, log: str, version: int) -> Row | None:
    """The commit's history row, or None when its file is gone (cleaned up, or never written)."""
    location = _commit_file(log, version)
    status = fs.stat(spark, location)
    data = fs.read_bytes(spark, location) if status is not None else None
    if data is None:
        return None
    info = {}
    for line in data.splitlines():
        if line.startswith(b'{"commitInfo"'):
            info = json.loads(line)["commitInfo"]
            break
    # History's time: the in-commit timestamp where the table keeps one, else the file's time.
    millis = info.get("inCommitTimestamp") or status.mtime_ms
    return CommitRow(version, datetime.fromtimestamp(millis / 1000),  # naive local time, as pyspark collects one
                     info.get("operation"), _strings(info.get("operationParameters")),
                     _strings(info.get("operationMetrics")), info.get("userMetadata"))


def _strings(values: dict | None) -> dict | None:
    """A commit's parameters or metrics as history gives them: a map of strings."""
    if values is None:
        return None
    return {key: value if value is None or isinstance(value, str) else json.dumps(value) for key, value in values.items()}


def log_commits(spark: SparkSession, table_path: str) -> Iterator[Row] | None:
    """The table's commits newest first (rows of :data:`COMMIT_COLUMNS`, as ``DeltaTable.history``
    gives them), each read when the caller asks for it, back to the oldest the log keeps; None
    when the log cannot answer alone: no commit file, or commits staged outside it (coordinated
    commits keep them in ``_delta_log/_staged_commits`` until written into the log).

    Unlike history, times are each commit's own: Delta's history raises a time that is not later
    than the commit's before it (storage clocks that go back), which reading newest first cannot."""
    log = _log(table_path)
    if fs.list_names(spark, f"{log}/_staged_commits"):
        return None
    newest = newest_version(spark, table_path)
    if newest is None:
        return None

    def rows() -> Iterator[Row]:
        for version in range(newest, -1, -1):
            row = _commit_row(spark, log, version)
            if row is None:
                return  # the log's clean-up removed it, and every older one
            yield row

    return rows()
