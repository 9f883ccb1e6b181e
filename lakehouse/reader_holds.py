"""What the streaming readers of a Delta table still need, so that VACUUM leaves it alone.

A silver flow reads bronze with Delta's streaming source; a streaming gold table reads silver's
change feed. On a restart each reads from the version its checkpoint holds
(lakehouse/checkpoints.py, :func:`reader_offsets`), and VACUUM must not have deleted a file
those versions name. lakehouse/maintenance.py asks :func:`reader_holds` before it vacuums.
"""

from __future__ import annotations

import json
import time
from urllib.parse import unquote

from pyspark.sql import SparkSession

from lakehouse import fs
from lakehouse.checkpoints import reader_offsets
from lakehouse.pipeline import Pipeline
from lakehouse.tables import TableRef, delta_table, read_table, table_size


def reader_holds(spark: SparkSession, pipeline: Pipeline, ref: TableRef, retention_s: float) -> int | None:
    """How many files the table's streaming readers (a silver flow reading bronze, a gold flow
    reading silver's change feed) would read on a restart that were removed long enough ago for
    VACUUM to delete them (now or within a margin, for the time the VACUUM itself takes); None
    when a reader starts before the oldest commit left in the log (unknown: hold everything).

    A reader needs what the versions from its checkpoint's on add, write to the change feed or
    remove with dataChange (the change feed reads those), and, still in its first snapshot,
    that snapshot's files; the removals of all of these are in the same versions."""
    detail = delta_table(spark, ref).detail().select("id", "location").first()
    offsets = [o for flow in pipeline.flows.values() if flow.streaming and ref.name in flow.inputs
               for o in reader_offsets(spark, flow.checkpoint, detail["id"])]
    if not offsets:
        return 0
    root = detail["location"].rstrip("/")

    def canonical(path: str) -> str:
        path = unquote(path)
        return fs.canonical(path if "://" in path or path.startswith("/") else f"{root}/{path}")

    needed: set[str] = set()
    removed: dict[str, int] = {}  # path -> when it was removed (ms)
    for offset in offsets:
        if offset.get("isStartingVersion"):
            snapshot = read_table(spark, ref, version=int(offset["reservoirVersion"]))
            needed.update(fs.canonical(path) for path in snapshot.inputFiles())
    latest = table_size(spark, ref).version
    for version in range(min(int(o["reservoirVersion"]) for o in offsets), latest + 1):
        data = fs.read_bytes(spark, f"{root}/_delta_log/{version:020d}.json")
        if data is None:
            return None
        for line in data.decode("utf-8").splitlines():
            action = json.loads(line) if line.strip() else {}
            for kind in ("add", "cdc"):
                if kind in action:
                    needed.add(canonical(action[kind]["path"]))
            if "remove" in action:
                path = canonical(action["remove"]["path"])
                removed[path] = int(action["remove"].get("deletionTimestamp") or 0)
                if action["remove"].get("dataChange", True):
                    needed.add(path)
    margin_s = min(600.0, retention_s / 2)
    cutoff_ms = (time.time() - retention_s + margin_s) * 1000
    return sum(1 for path in needed if path in removed and removed[path] < cutoff_ms)
