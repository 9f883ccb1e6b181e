"""Backlog accounting against a file source's checkpoint log, with relative and absolute paths."""

from __future__ import annotations

import json
from pathlib import Path

from lakehouse.observability import files_in_batch, landed_files, processed_files


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
