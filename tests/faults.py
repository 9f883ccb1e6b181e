"""Building landing sets by hand for the real-world fault tests: valid readings, files landed
atomically with any bytes and any modification time."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def reading(i: int, host: int = 0, seconds: float | None = None, **fields) -> dict:
    """A valid telemetry reading: event ``e<i>`` of host ``h<host>``, ``seconds`` (default 10*i) after START."""
    when = START + timedelta(seconds=10 * i if seconds is None else seconds)
    record = {
        "event_id": f"e{i:06d}", "host": f"dc1-r01-h{host:03d}", "rack": "r01",
        "event_time": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "cpu_util": 40.0 + i % 7, "mem_util": 50.0,
        "gpu_util": 10.0 + i % 5, "power_w": 300.0 + 3 * (i % 11), "fan_rpm": 5000.0, "inlet_temp_c": 22.0,
        "exhaust_temp_c": 30.0 + i % 3,
    }
    record.update(fields)
    return record


def lines(*records) -> bytes:
    """JSON lines; an item that is bytes or str is taken as one raw line."""
    out = []
    for record in records:
        if isinstance(record, bytes):
            out.append(record)
        elif isinstance(record, str):
            out.append(record.encode())
        else:
            out.append(json.dumps(record).encode())
    return b"\n".join(out) + b"\n"


def land(config, name: str, data: bytes, mtime: datetime | None = None, source: str = "telemetry") -> Path:
    """Write ``data`` under a temporary name, set its modification time, then rename it into place."""
    landing = Path(config.landing_path(source))
    landing.mkdir(parents=True, exist_ok=True)
    temporary = landing / f".{name}.tmp"
    temporary.write_bytes(data)
    if mtime is not None:
        os.utime(temporary, (mtime.timestamp(), mtime.timestamp()))
    final = landing / name
    os.replace(temporary, final)
    return final
