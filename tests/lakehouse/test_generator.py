"""The telemetry generator: deterministic, physically plausible, and its manifest is exact."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from lakehouse.generator import (
    EXTRA_FIELD,
    LINE_FAULTS,
    TELEMETRY_FIELDS,
    TelemetryGenerator,
)
from lakehouse.generator_runs import generate_batch, generate_continuous


def _generate(tmp_path: Path, seed=3, records=4000, files=8, fault_rate=0.1, run_id="t"):
    generator = TelemetryGenerator(seed, 12, 3, fault_rate, 10.0, "2026-01-01T00:00:00Z")
    return generate_batch(generator, tmp_path, "telemetry", run_id, seed, records, files)


def _lines(path: Path) -> list[str]:
    data = path.read_bytes().decode("utf-8")
    return data.split("\n")[:-1] if data else []


def test_same_seed_same_bytes(tmp_path):
    _generate(tmp_path / "a")
    _generate(tmp_path / "b")
    _generate(tmp_path / "c", seed=4)
    names = sorted(p.name for p in (tmp_path / "a").glob("*.jsonl"))
    assert names == sorted(p.name for p in (tmp_path / "b").glob("*.jsonl"))
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)
    assert (tmp_path / "a" / names[0]).read_bytes() != (tmp_path / "c" / names[0]).read_bytes()


def test_manifest_matches_the_files_exactly(tmp_path):
    manifest = _generate(tmp_path)
    on_disk = {p.name: len(_lines(p)) for p in tmp_path.glob("*.jsonl")}
    assert on_disk == {f["file"]: f["lines"] for f in manifest.files}
    assert sum(on_disk.values()) == manifest.total_lines == 4000
    saved = json.loads((tmp_path / "_manifests" / "t.json").read_text())
    assert saved["fault_counts"] == manifest.fault_counts()
    assert saved["valid_lines"] + sum(saved["fault_counts"][k] for k in LINE_FAULTS) == 4000
    # every kind of fault is injected at this size and rate, including empty files
    assert all(count > 0 for count in manifest.fault_counts().values()), manifest.fault_counts()
    assert any(p.stat().st_size == 0 for p in tmp_path.glob("*-empty.jsonl"))


def test_each_recorded_fault_is_what_it_says(tmp_path):
    manifest = _generate(tmp_path)
    lines = {p.name: _lines(p) for p in tmp_path.glob("*.jsonl")}
    faulty = {(f["file"], f["line"]): f for f in manifest.faults if f["kind"] in LINE_FAULTS}
    seen_ids = set()
    for name in sorted(lines):
        for number, text in enumerate(lines[name], start=1):
            fault = faulty.get((name, number))
            kind = fault["kind"] if fault else "valid"
            if kind == "malformed_json":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(text)
                continue
            record = json.loads(text)
            if kind == "missing_field":
                assert fault["detail"] not in record and len(record) == len(TELEMETRY_FIELDS) - 1
            elif kind == "wrong_type":
                value = record[fault["detail"]]
                assert isinstance(value, str) if fault["detail"] != "event_time" else isinstance(value, int)
            elif kind == "out_of_range":
                value = record[fault["detail"]]
                assert value < 0 or value > 85
            elif kind == "duplicate_event_id":
                assert record["event_id"] in seen_ids
            elif kind == "extra_field":
                assert EXTRA_FIELD in record
            else:
                assert set(record) == set(TELEMETRY_FIELDS)
                assert record["event_id"] not in seen_ids
                assert 0 <= record["cpu_util"] <= 100 and record["power_w"] > 0
            seen_ids.add(record.get("event_id"))


def test_physical_relations_hold(tmp_path):
    _generate(tmp_path, records=6000, fault_rate=0.0)
    rows = [json.loads(line) for p in sorted(tmp_path.glob("*.jsonl")) for line in _lines(p)]
    cols = {k: np.array([r[k] for r in rows], dtype=float) for k in TELEMETRY_FIELDS if TELEMETRY_FIELDS[k] == "double"}
    load = cols["cpu_util"] + cols["gpu_util"]
    assert np.corrcoef(load, cols["power_w"])[0, 1] > 0.8  # power rises with load
    assert np.corrcoef(cols["power_w"], cols["inlet_temp_c"])[0, 1] > 0.3  # temperature rises with power
    # at a given power, a faster fan means cooler exhaust: regress exhaust rise on power/fan
    rise = cols["exhaust_temp_c"] - cols["inlet_temp_c"]
    assert np.corrcoef(cols["power_w"] / cols["fan_rpm"], rise)[0, 1] > 0.9
    X = np.column_stack([np.ones_like(rise), cols["power_w"], cols["fan_rpm"]])
    coef = np.linalg.lstsq(X, rise, rcond=None)[0]
    assert coef[1] > 0 and coef[2] < 0


def test_continuous_mode_lands_files_at_a_rate_and_keeps_the_manifest_current(tmp_path):
    generator = TelemetryGenerator(1, 4, 2, 0.2, 10.0, "2026-01-01T00:00:00Z")
    manifest = generate_continuous(generator, tmp_path, "telemetry", "c", 1, rate=200, duration=1.2, file_seconds=0.3)
    data_files = sorted(p for p in tmp_path.glob("*.jsonl") if not p.name.endswith("-empty.jsonl"))
    assert 3 <= len(data_files) <= 5
    assert all(len(_lines(p)) == 60 for p in data_files)  # 200 records/s * 0.3 s per file
    saved = json.loads((tmp_path / "_manifests" / "c.json").read_text())
    assert saved["total_lines"] == manifest.total_lines == 60 * len(data_files)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_a_live_clock_stamps_each_reading_with_the_wall_clock(tmp_path):
    generator = TelemetryGenerator(2, 4, 2, 0.0, 10.0, "2026-01-01T00:00:00Z")
    generator.live = True
    before = datetime.now(timezone.utc)
    stop = threading.Event()
    landed = threading.Thread(target=generate_continuous, daemon=True,
                              args=(generator, tmp_path, "telemetry", "l", 2, 100, 0, 0.2), kwargs={"stop": stop})
    landed.start()  # a thread: it installs no signal handler, the stop event ends it
    time.sleep(0.7)
    stop.set()
    landed.join(timeout=5)
    after = datetime.now(timezone.utc)
    assert not landed.is_alive()
    times = [datetime.fromisoformat(json.loads(line)["event_time"].replace("Z", "+00:00"))
             for p in tmp_path.glob("*.jsonl") for line in _lines(p)]
    assert len(times) >= 40  # 20 lines a file, a file every 0.2 s
    assert all(before - timedelta(milliseconds=1) <= t <= after for t in times)
