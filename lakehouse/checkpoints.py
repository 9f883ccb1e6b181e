"""What a streaming query's checkpoint holds, read without Spark's private classes.

A checkpoint directory has ``offsets/<batch>`` (what each micro-batch was planned to read,
written before it runs), ``commits/<batch>`` (written once it is done) and, for a file source,
``sources/<n>/<log batch>[.compact]``: the landing files each source batch took, as JSON lines
after a ``v1`` header (Spark's FileStreamSourceLog format). The project adds
``lakehouse/plans/<batch>.json``: the decisions of a micro-batch fixed before its first write
(:class:`BatchPlans`), so that a batch redone after a crash decides exactly as before.

The log readers here read local (and ``file:``) checkpoints; :func:`planned_files` and
:class:`BatchPlans` also read remote ones through the session's Hadoop file system.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from lakehouse import fs


def local_dir(location: str) -> Path | None:
    """A local directory for a plain path or file: URI; None for remote storage."""
    return fs.local_path(location)


def logged_batches(checkpoint: str, log: str, spark=None) -> list[int]:
    """Batch ids with an entry in a query's ``offsets`` (planned) or ``commits`` (done) log, in order.

    A checkpoint on remote storage is read through ``spark``'s Hadoop file system; without
    ``spark``, it has no entries (only local and file: checkpoints are read then)."""
    if spark is None and local_dir(checkpoint) is None:
        return []
    return sorted(int(name) for name in fs.list_names(spark, f"{checkpoint.rstrip('/')}/{log}") if name.isdigit())


def redone_batch(checkpoint: str, spark=None) -> int | None:
    """The batch a query started now on ``checkpoint`` runs again first, or None: the last planned
    batch (``offsets``) when it has no ``commits`` entry (it may have written some of its output
    before a crash), else none (a new checkpoint, or one whose every planned batch finished).
    Read before the query starts; only that batch needs the replay checks (tables.append_once)."""
    planned = logged_batches(checkpoint, "offsets", spark)
    done = logged_batches(checkpoint, "commits", spark)
    if planned and (not done or done[-1] < planned[-1]):
        return planned[-1]
    return None


def _offsets_entry(checkpoint: str, batch_id: int, spark=None) -> list[str]:
    """The lines of ``offsets/<batch_id>``: "v1", the batch's metadata, then one line per source."""
    location = f"{checkpoint.rstrip('/')}/offsets/{batch_id}"
    local = local_dir(location)
    if local is not None:
        return local.read_text().splitlines()
    data = fs.read_bytes(spark, location)
    if data is None:
        raise FileNotFoundError(location)
    return data.decode("utf-8").splitlines()


def planned_source_offsets(checkpoint: str, batch_id: int, spark=None) -> list[str]:
    """The offsets entry of ``batch_id``: one JSON text per source of the query, in source order."""
    return _offsets_entry(checkpoint, batch_id, spark)[2:]


def batch_planned_ms(checkpoint: str, batch_id: int, spark=None) -> int:
    """When Spark planned ``batch_id`` (its offsets entry's batchTimestampMs, the driver's clock)."""
    return int(json.loads(_offsets_entry(checkpoint, batch_id, spark)[1])["batchTimestampMs"])


def _log_entries(lines) -> list[dict]:
    return [json.loads(line) for line in (raw.strip() for raw in lines) if line.startswith("{")]


def _read_source_log(path: Path) -> list[dict]:
    """Entries of one file of a file source's log (``<checkpoint>/sources/0/<n>[.compact]``)."""
    with open(path, encoding="utf-8") as fh:
        return _log_entries(fh)


def _tail_entries(path: Path, batch_id: int, chunk: int = 1 << 16) -> list[dict]:
    """The entries of ``batch_id`` in a compacted log file, read from its end.

    A compact file holds every file the source ever took, oldest batch first; the newest batch's
    entries are its last lines, so reading backwards stops after a few kilobytes instead of
    parsing the whole history."""
    found: list[dict] = []
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        position = fh.tell()
        pending = b""
        while position > 0:
            step = min(chunk, position)
            position -= step
            fh.seek(position)
            block = fh.read(step) + pending
            lines = block.split(b"\n")
            pending = lines.pop(0) if position > 0 else b""  # possibly a partial line
            for line in reversed(lines):
                if not line.strip().startswith(b"{"):
                    continue
                entry = json.loads(line)
                if entry.get("batchId") == batch_id:
                    found.append(entry)
                elif entry.get("batchId", batch_id) < batch_id:
                    return list(reversed(found))
    return list(reversed(found))


def files_in_batch(checkpoint: str, batch_id: int, source_index: int = 0) -> int | None:
    """How many input files the file source planned for ``batch_id`` (None when unknown)."""
    local = local_dir(checkpoint)
    if local is None:
        return None
    log_dir = local / "sources" / str(source_index)
    if (log_dir / str(batch_id)).is_file():
        return sum(1 for e in _read_source_log(log_dir / str(batch_id)) if e.get("batchId") == batch_id)
    if (log_dir / f"{batch_id}.compact").is_file():
        return len(_tail_entries(log_dir / f"{batch_id}.compact", batch_id))
    return None


def _source_log_offset(checkpoint: str, batch_id: int, spark) -> int | None:
    """The file source's log batch that query batch ``batch_id`` reads up to (its ``logOffset``)."""
    try:
        lines = planned_source_offsets(checkpoint, batch_id, spark)
    except FileNotFoundError:
        return None
    offset = json.loads(lines[0]) if lines and lines[0].strip().startswith("{") else {}
    return offset.get("logOffset")


def planned_files(spark, checkpoint: str, batch_id: int, source_index: int = 0) -> list[dict]:
    """The landing files a file source planned for query batch ``batch_id``: its log entries
    (``path`` as a URI, ``timestamp`` the modification time seen when listed, ``batchId``).

    The batch reads the source's log batches after the previous query batch's ``logOffset``
    up to its own; normally exactly one."""
    end = _source_log_offset(checkpoint, batch_id, spark)
    if end is None:
        raise FileNotFoundError(f"{checkpoint}: no offsets entry for batch {batch_id}")
    start = _source_log_offset(checkpoint, batch_id - 1, spark) if batch_id > 0 else -1
    if start is None:  # the previous entry was purged: one log batch per query batch
        start = end - 1
    log = f"{checkpoint.rstrip('/')}/sources/{source_index}"
    entries: list[dict] = []
    for log_batch in range(start + 1, end + 1):
        entries.extend(_source_log_batch(spark, log, log_batch))
    return entries


def _source_log_batch(spark, log: str, log_batch: int) -> list[dict]:
    local = local_dir(log)
    if local is not None:
        if (local / str(log_batch)).is_file():
            return _read_source_log(local / str(log_batch))
        if (local / f"{log_batch}.compact").is_file():
            return _tail_entries(local / f"{log_batch}.compact", log_batch)
        raise FileNotFoundError(f"{log}: no entry for source batch {log_batch}")
    for name in (str(log_batch), f"{log_batch}.compact"):
        data = fs.read_bytes(spark, f"{log}/{name}")
        if data is not None:
            return [e for e in _log_entries(data.decode("utf-8").splitlines()) if e.get("batchId") == log_batch]
    raise FileNotFoundError(f"{log}: no entry for source batch {log_batch}")


def _source_log_files(checkpoint: str, source_index: int, up_to: int | None = None) -> set[str]:
    """The files in a local file source's log (up to its log batch ``up_to``), as local paths."""
    local = local_dir(checkpoint)
    log_dir = local / "sources" / str(source_index) if local is not None else None
    if log_dir is None or not log_dir.is_dir():
        return set()
    files = set()
    for path in log_dir.iterdir():
        if not path.name.startswith("."):
            files.update(fs.canonical(e["path"]) for e in _read_source_log(path)
                         if up_to is None or e.get("batchId", up_to + 1) <= up_to)
    return files


def processed_files(checkpoint: str, source_index: int = 0) -> set[str]:
    """Every landing file the query has taken in (planned, committed or not), as local paths."""
    return _source_log_files(checkpoint, source_index)


def committed_source_files(checkpoint: str, source_index: int = 0) -> set[str]:
    """The landing files of the micro-batches the query has committed, as local paths: every
    entry of the file source's log up to the log batch its newest committed batch read to.
    (A file planned for a batch not yet committed is not among them: a restart redoes that
    batch, and reads it again.)"""
    done = logged_batches(checkpoint, "commits")
    end = _source_log_offset(checkpoint, done[-1], None) if done else None
    return set() if end is None else _source_log_files(checkpoint, source_index, up_to=end)


def reader_offsets(spark, checkpoint: str, table_id: str) -> list[dict]:
    """Where a restart of the streaming query would read the Delta table ``table_id`` (its
    DESCRIBE DETAIL id) from: the offsets (``reservoirVersion``, ``isStartingVersion``) of its
    newest committed batch, where the next batch starts, or before any commit those of its first
    batch. Empty when the query does not read the table."""
    committed = logged_batches(checkpoint, "commits", spark)
    start = committed[-1] if committed else min(logged_batches(checkpoint, "offsets", spark), default=None)
    if start is None:
        return []
    offsets = [json.loads(line) for line in planned_source_offsets(checkpoint, start, spark) if line.strip().startswith("{")]
    return [o for o in offsets if o.get("reservoirId") == table_id and "reservoirVersion" in o]


def landed_files(landing: str) -> list[str]:
    """Data files in a local landing directory (hidden and ``_`` names are not data)."""
    root = local_dir(landing)
    if root is None or not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
        found.extend(
            os.path.abspath(os.path.join(dirpath, f))
            for f in filenames
            if not f.startswith((".", "_"))
        )
    return found


class BatchPlans:
    """Decisions of each micro-batch, fixed before its first write and kept in the checkpoint.

    A batch that crashed half-way is redone after a restart. Its writes are idempotent, but
    its decisions must be the same too: a cut-off read from a table the first attempt already
    wrote to would judge rows differently. :meth:`plan` returns the plan recorded for the batch,
    or makes one with ``decide()`` and records it (atomically) before returning it.
    """

    def __init__(self, spark, checkpoint: str, retain: int = 100):
        self.spark = spark
        self.folder = f"{checkpoint.rstrip('/')}/lakehouse/plans"
        self.retain = retain  # as many as Spark keeps of its own offsets log

    def _location(self, batch_id: int) -> str:
        return f"{self.folder}/{batch_id}.json"

    def recorded(self, batch_id: int) -> dict | None:
        data = fs.read_bytes(self.spark, self._location(batch_id))
        return None if data is None else json.loads(data)

    def plan(self, batch_id: int, decide: Callable[[], dict]) -> dict:
        recorded = self.recorded(batch_id)
        if recorded is not None:
            return recorded
        plan = decide()
        fs.write_atomic(self.spark, self._location(batch_id), json.dumps(plan, sort_keys=True).encode("utf-8"))
        if batch_id >= self.retain:
            fs.delete(self.spark, self._location(batch_id - self.retain))
        return plan
