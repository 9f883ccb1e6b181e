"""Backlog accounting against a file source's checkpoint log, with relative and absolute paths."""

from __future__ import annotations

import json
from pathlib import Path

from lakehouse.checkpoints import (
    committed_source_files,
    files_in_batch,
    landed_files,
    processed_files,
    reader_offsets,
    redone_batch,
)


def _source_log(checkpoint: Path, name: str, entries: list[tuple[str, int]]) -> None:
    log = checkpoint / "sources" / "0"
    log.mkdir(parents=True, exist_ok=True)
    lines = ["v1"] + [json.dumps({"path": p, "timestamp": 0, "batchId": b}) for p, b in entries]
    (log / name).write_text("\n".join(lines) + "\n")


def test_backlog_matches_uris_in_the_log_with_relative_landing_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    landing = Path("data/landing/telemetry")
    landing.mkdir(parents=True)
    for name in ("a.jsonl", "b.jsonl", "c.jsonl", ".d.jsonl.tmp"):
        (landing / name).write_text("{}\n")
    (landing / "_manifests").mkdir()
    (landing / "_manifests" / "run.json").write_text("{}")
    absolute = (tmp_path / landing).as_posix()
    _source_log(Path("data/checkpoints/q"), "0", [(f"file://{absolute}/a.jsonl", 0)])
    _source_log(Path("data/checkpoints/q"), "1", [(f"file://{absolute}/b.jsonl", 1)])

    done = processed_files("data/checkpoints/q")
    pending = [f for f in landed_files(str(landing)) if f not in done]
    assert [Path(f).name for f in pending] == ["c.jsonl"]


def test_files_in_batch_reads_plain_and_compacted_logs(tmp_path):
    _source_log(tmp_path, "8", [("file:///x/1", 8), ("file:///x/2", 8)])
    _source_log(tmp_path, "9.compact", [("file:///x/0", 7), ("file:///x/3", 9), ("file:///x/4", 9), ("file:///x/5", 9)])
    assert files_in_batch(str(tmp_path), 8) == 2
    assert files_in_batch(str(tmp_path), 9) == 3
    assert files_in_batch(str(tmp_path), 10) is None


def test_planned_files_follow_the_offsets_log_to_the_source_batches(tmp_path):
    from lakehouse.checkpoints import planned_files

    def offsets(batch: int, log_offset: int) -> None:
        folder = tmp_path / "offsets"
        folder.mkdir(exist_ok=True)
        (folder / str(batch)).write_text('v1\n{"batchWatermarkMs":0}\n' + json.dumps({"logOffset": log_offset}) + "\n")

    _source_log(tmp_path, "0", [("file:///x/a%20b", 0)])
    _source_log(tmp_path, "1", [("file:///x/c", 1), ("file:///x/d", 1)])
    # a compacted log: every earlier entry first, the newest batch's entries last
    _source_log(tmp_path, "2.compact", [("file:///x/a%20b", 0), ("file:///x/c", 1), ("file:///x/d", 1),
                                        ("file:///x/e", 2)])
    _source_log(tmp_path, "3", [("file:///x/f", 3)])
    offsets(0, 0)
    offsets(1, 1)
    offsets(2, 3)  # one query batch that read two source batches (2 and 3)
    paths = lambda batch: [e["path"] for e in planned_files(None, str(tmp_path), batch)]  # noqa: E731
    assert paths(0) == ["file:///x/a%20b"]
    assert paths(1) == ["file:///x/c", "file:///x/d"]
    assert paths(2) == ["file:///x/e", "file:///x/f"]


def test_batch_plans_are_made_once_and_read_back(tmp_path):
    from lakehouse.checkpoints import BatchPlans

    made = []
    plans = BatchPlans(None, str(tmp_path), retain=2)
    first = plans.plan(0, lambda: made.append(1) or {"cutoff": 5})
    again = BatchPlans(None, str(tmp_path)).plan(0, lambda: made.append(2) or {"cutoff": 9})  # after a restart
    assert first == again == {"cutoff": 5} and made == [1]
    for batch in (1, 2, 3):
        plans.plan(batch, lambda: {"cutoff": 0})
    assert sorted(p.name for p in (tmp_path / "lakehouse" / "plans").iterdir()) == ["2.json", "3.json"]


def _offsets(checkpoint: Path, batch: int, *sources: dict) -> None:
    folder = checkpoint / "offsets"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["v1", json.dumps({"batchWatermarkMs": 0, "batchTimestampMs": 0}), *map(json.dumps, sources)]
    (folder / str(batch)).write_text("\n".join(lines))


def _commit(checkpoint: Path, batch: int) -> None:
    (checkpoint / "commits").mkdir(parents=True, exist_ok=True)
    (checkpoint / "commits" / str(batch)).write_text("v1\n{}")


def test_committed_source_files_leave_out_a_planned_batch_not_yet_committed(tmp_path):
    checkpoint = tmp_path / "cp"
    _source_log(checkpoint, "0", [("file:///l/a.jsonl", 0)])
    _source_log(checkpoint, "1", [("file:///l/b.jsonl", 1)])
    _source_log(checkpoint, "2", [("file:///l/c.jsonl", 2)])  # planned for batch 2, not committed
    for batch in range(3):
        _offsets(checkpoint, batch, {"logOffset": batch})
    assert committed_source_files(str(checkpoint)) == set()
    _commit(checkpoint, 0)
    _commit(checkpoint, 1)
    assert committed_source_files(str(checkpoint)) == {"/l/a.jsonl", "/l/b.jsonl"}


def test_a_reader_restarts_from_its_newest_committed_batch_or_its_first_planned_one(tmp_path):
    checkpoint, table, other = tmp_path / "cp", "table-id", "other-id"
    _offsets(checkpoint, 0, {"reservoirId": table, "reservoirVersion": 3, "index": -1, "isStartingVersion": True},
             {"reservoirId": other, "reservoirVersion": 9, "index": -1})
    assert reader_offsets(None, str(checkpoint), table) == [
        {"reservoirId": table, "reservoirVersion": 3, "index": -1, "isStartingVersion": True}]
    _commit(checkpoint, 0)
    _offsets(checkpoint, 1, {"reservoirId": table, "reservoirVersion": 7, "index": -1},
             {"reservoirId": other, "reservoirVersion": 12, "index": -1})  # planned, not committed
    assert [o["reservoirVersion"] for o in reader_offsets(None, str(checkpoint), table)] == [3]
    _commit(checkpoint, 1)
    assert [o["reservoirVersion"] for o in reader_offsets(None, str(checkpoint), table)] == [7]
    assert reader_offsets(None, str(checkpoint), "not-read") == []
    assert reader_offsets(None, str(tmp_path / "none"), table) == []


def test_only_a_planned_batch_without_its_commit_is_redone(tmp_path):
    """The replay checks are for the batch a restart runs again: planned (offsets) and not done (commits)."""
    checkpoint = tmp_path / "checkpoint"
    assert redone_batch(str(checkpoint)) is None  # a new query
    (checkpoint / "offsets").mkdir(parents=True)
    (checkpoint / "commits").mkdir()
    for batch in (0, 1, 2):
        (checkpoint / "offsets" / str(batch)).write_text("v1\n{}\n")
    for batch in (0, 1):
        (checkpoint / "commits" / str(batch)).write_text("v1\n{}\n")
    (checkpoint / "offsets" / ".2.crc").write_text("")  # Hadoop's checksum files are no batches
    assert redone_batch(str(checkpoint)) == 2  # planned, then the crash
    (checkpoint / "commits" / "2").write_text("v1\n{}\n")
    assert redone_batch(str(checkpoint)) is None  # every planned batch finished
