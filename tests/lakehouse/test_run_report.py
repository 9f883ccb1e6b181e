"""What `lakehouse run` prints on a terminal: one line per flow and interval."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

from lakehouse.freshness import Measured
from lakehouse.run_report import IntervalReport
from lakehouse.runner import pipeline_flows
from lakehouse.status import source_backlog


def _delta_progress(end: int, latest: int) -> str:
    offset = {"sourceVersion": 1, "reservoirId": "r", "index": -1, "isStartingVersion": False}
    return json.dumps({"sources": [{"description": "DeltaSource[file:/x]",
                                    "endOffset": {**offset, "reservoirVersion": end},
                                    "latestOffset": {**offset, "reservoirVersion": latest}}]})


def test_the_backlog_a_batch_left_comes_from_its_progress():
    kafka = {"description": "KafkaV2[Subscribe[t]]", "endOffset": json.dumps({"t": {"0": 5, "1": 7}}),
             "latestOffset": json.dumps({"t": {"0": 9, "1": 7}})}
    assert source_backlog(json.dumps({"sources": [kafka]})) == (4, "msgs")
    assert source_backlog(_delta_progress(4, 7)) == (3, "versions")
    files = {"description": "FileStreamSource[file:/x]", "endOffset": {"logOffset": 3},
             "metrics": {"numFilesOutstanding": "12"}}
    assert source_backlog(json.dumps({"sources": [files]})) == (12, "files")
    assert source_backlog(None) is None and source_backlog(json.dumps({"sources": []})) is None


def test_one_line_per_streaming_flow_with_rate_batch_time_backlog_and_freshness(config, monkeypatch, capsys):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    for name in ("a.jsonl", "b.jsonl", "c.jsonl", "_manifests"):  # three data files, none taken in yet
        (landing / name).write_text("{}\n") if name.endswith(".jsonl") else (landing / name).mkdir()
    flows, _ = pipeline_flows(config)
    report = IntervalReport(config, flows, every_seconds=10)
    batch = {"query_name": "silver_telemetry", "num_input_rows": 500, "batch_duration_ms": 2000,
             "progress_json": _delta_progress(4, 7), "notes": []}
    report.add([{**batch, "batch_id": 1}, {**batch, "batch_id": 2, "notes": ["skipped bad file x: corrupt (y)"]}])
    assert capsys.readouterr().out == "silver_telemetry: batch 2: skipped bad file x: corrupt (y)\n"
    commit = datetime(2026, 1, 1, 0, 1, tzinfo=timezone.utc)
    fresh = [Measured("silver.telemetry", "silver.telemetry", b, 500, {"event": (t - 9, t - p95, t - 1)}).row(b, commit)
             for b, p95, t in ((1, 4.0, commit.timestamp()), (2, 6.5, commit.timestamp()))]
    report.started = time.monotonic() - 10  # an interval of ten seconds
    lines = {line.split()[1]: line for line in report.lines(fresh)}

    assert set(lines) == {"bronze.telemetry", "silver.telemetry", "gold.telemetry_minute"}  # streaming flows
    silver = lines["silver.telemetry"]
    assert "100 rows/s" in silver and "2 batches of 2.0s" in silver and "backlog 3 versions" in silver, silver
    assert silver.endswith("p95 freshness 6.5s"), silver  # the worst batch of the interval
    bronze = lines["bronze.telemetry"]
    assert re.search(r" 0 rows/s", bronze) and "no batch" in bronze and "backlog 3 files" in bronze and bronze.endswith("-")
    again = report.lines([])  # the next interval starts empty
    assert again[1].split()[1] == "silver.telemetry" and "no batch" in again[1] and "backlog 3 versions" in again[1]
