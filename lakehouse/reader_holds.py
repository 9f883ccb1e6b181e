"""What the streaming readers of a Delta table still need, so that VACUUM leaves it alone.

A silver flow reads bronze with Delta's streaming source; a streaming gold table reads silver's
change feed. On a restart each reads from the version its checkpoint holds
(lakehouse/checkpoints.py, :func:`reader_offsets`), and VACUUM must not have deleted a file
those versions name. lakehouse/maintenance.py asks :func:`reader_holds` before it vacuums.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import unquote

from pyspark.sql import SparkSession

from lakehouse import fs
from lakehouse.checkpoints import reader_offsets
from lakehouse.pipeline import Pipeline
from lakehouse.tables import TableRef, last_commit, read_table


def reader_holds(spark: SparkSession, pipeline: Pipeline, ref: TableRef, table_id: str, location: str,
                 retention_s: float) -> int | None:
    """How many files the table's streaming readers (a silver flow reading bronze, a gold flow
    reading silver's change feed) would read on a restart that were removed long enough ago for
    VACUUM to delete them (now or within a margin, for the time the VACUUM itself takes); None
    when a reader starts before the oldest commit left in the log (unknown: hold everything).

    A reader needs what the versions from its checkpoint's on add, write to the change feed or
    remove with dataChange (the change feed reads those), and, still in its first snapshot,
    that snapshot's files; the removals of all of these are in the same versions. Deletion
    vector files count as data files (a MERGE on a table with deletion vectors replaces a
    file's vector and keeps the file); a reader still in its first snapshot holds every removed
    vector (that snapshot's vectors are not listed here). A file added again after its removal
    is not removed. ``table_id`` and ``location``: the table's, from DESCRIBE DETAIL."""
    offsets = [o for flow in pipeline.flows.values() if flow.streaming and ref.name in flow.inputs
               for o in reader_offsets(spark, flow.checkpoint, table_id)]
    if not offsets:
        return 0
    root = location.rstrip("/")

    def canonical(path: str) -> str:
        path = unquote(path)
        return fs.canonical(path if "://" in path or path.startswith("/") else f"{root}/{path}")

    def files(entry: dict) -> list[tuple[str, bool]]:
        """(path, is a deletion vector) of a file action's data file and deletion vector."""
        vector = deletion_vector_path(entry.get("deletionVector") or {})
        return [(canonical(entry["path"]), False)] + ([(canonical(vector), True)] if vector else [])

    needed: set[str] = set()
    removed: dict[str, int] = {}  # path -> when it was removed (ms)
    starting = False
    for offset in offsets:
        if offset.get("isStartingVersion"):
            starting = True
            snapshot = read_table(spark, ref, version=int(offset["reservoirVersion"]))
            needed.update(fs.canonical(path) for path in snapshot.inputFiles())
    latest = last_commit(spark, ref).version
    for version in range(min(int(o["reservoirVersion"]) for o in offsets), latest + 1):
        data = fs.read_bytes(spark, f"{root}/_delta_log/{version:020d}.json")
        if data is None:
            return None
        actions = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        for action in actions:
            if "remove" in action:
                for path, vector in files(action["remove"]):
                    removed[path] = int(action["remove"].get("deletionTimestamp") or 0)
                    if action["remove"].get("dataChange", True) or (vector and starting):
                        needed.add(path)
        for action in actions:  # after the commit's removes: a file it keeps (a new vector) is not removed
            for kind in ("add", "cdc"):
                for path, _ in files(action[kind]) if kind in action else ():
                    needed.add(path)
                    removed.pop(path, None)
    margin_s = min(600.0, retention_s / 2)
    cutoff_ms = (time.time() - retention_s + margin_s) * 1000
    return sum(1 for path in needed if path in removed and removed[path] < cutoff_ms)


Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def deletion_vector_path(descriptor: dict) -> str | None:
    """The file of a deletion vector descriptor (Delta protocol, "Deletion Vector Descriptor
    Schema"): for storageType ``u``, ``<prefix>/deletion_vector_<uuid>.bin`` relative to the
    table root, where ``pathOrInlineDv`` is the prefix followed by the UUID's 16 bytes in Z85 (20
    characters); for ``p``, the absolute path given; None for an inline vector (``i``) or none."""
    kind, value = descriptor.get("storageType"), descriptor.get("pathOrInlineDv") or ""
    if kind == "p":
        return value
    if kind != "u" or len(value) < 20:
        return None
    prefix, encoded = value[:-20], value[-20:]
    raw = b""
    for start in range(0, 20, 5):  # Z85: five characters, base 85, are four bytes, big-endian
        number = 0
        for char in encoded[start:start + 5]:
            number = number * 85 + Z85.index(char)
        raw += number.to_bytes(4, "big")
    name = f"deletion_vector_{uuid.UUID(bytes=raw)}.bin"
    return f"{prefix}/{name}" if prefix else name
