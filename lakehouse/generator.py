"""Telemetry generator for the flagship source: JSON-lines files of data-centre machine readings.

Each host has a load that drifts (persistent, so the next minute is predictable from this one);
its power draw rises with CPU, GPU and memory load, its fans follow the load with a lag, its
inlet temperature rises with power, and its exhaust temperature rises with power and falls with
fan speed. A fault rate injects the bad input a real feed has; the manifest records each one.

lakehouse/generator_runs.py writes the records as landing files or Kafka messages, with the manifest.
"""

from __future__ import annotations

import json
import math
import random
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lakehouse.config import GeneratorConfig

# A run id names the run's files and manifest in the landing directory: a plain name only.
RUN_ID = re.compile(r"^(?!\.{1,2}\Z)[A-Za-z0-9._-]{1,100}\Z")

# Line-level faults, in the order the manifest lists them. "empty_file" is a file-level fault;
# "empty_message" its counterpart on Kafka (a message with an empty value).
LINE_FAULTS = (
    "malformed_json",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "duplicate_event_id",
    "late_event",
    "extra_field",
)
FILE_FAULTS = ("empty_file",)
MESSAGE_FAULTS = ("empty_message",)

# The telemetry record: field name -> JSON type. All are required.
TELEMETRY_FIELDS = {
    "event_id": "string",
    "host": "string",
    "rack": "string",
    "event_time": "timestamp",
    "cpu_util": "double",  # percent, 0..100
    "mem_util": "double",  # percent, 0..100
    "gpu_util": "double",  # percent, 0..100 (0 on hosts without GPUs)
    "power_w": "double",  # watts
    "fan_rpm": "double",
    "inlet_temp_c": "double",
    "exhaust_temp_c": "double",
}
NUMERIC_FIELDS = [name for name, kind in TELEMETRY_FIELDS.items() if kind == "double"]
EXTRA_FIELD = "firmware_version"
LATE_BY = timedelta(hours=3)


@dataclass
class GeneratedLine:
    text: str | bytes  # bytes: a line that is not valid UTF-8 (the chat feed's invalid_utf8)
    kind: str  # "valid" or one of the generator's LINE_FAULTS
    event_id: str | None  # what identifies the record (telemetry: event_id; chat: conversation/turn)
    detail: str = ""

    def data(self) -> bytes:
        return self.text.encode("utf-8") if isinstance(self.text, str) else self.text


@dataclass
class _Host:
    name: str
    rack: str
    has_gpu: bool
    base_load: float
    load: float
    gpu: float
    mem: float
    fan: float
    phase: float


class TelemetryGenerator:
    """Deterministic for a given seed: the same arguments give the same lines, byte for byte."""

    LINE_FAULTS = LINE_FAULTS

    def __init__(
        self,
        seed: int,
        hosts: int,
        racks: int,
        fault_rate: float,
        interval_seconds: float,
        start_time: str,
    ):
        self.rng = random.Random(seed)
        self.fault_rate = fault_rate
        self.step = timedelta(seconds=interval_seconds / hosts)
        self.clock = datetime.fromisoformat(start_time.replace("Z", "+00:00")).astimezone(timezone.utc)
        # False: a simulated clock from start_time, one step per reading (the same seed gives the
        # same bytes); True: each reading is stamped with the wall clock as it is made (a live feed).
        self.live = False
        self.rack_ambient = {f"r{r:02d}": self.rng.uniform(19.0, 25.0) for r in range(1, racks + 1)}
        self.hosts = []
        for h in range(hosts):
            rack = f"r{h % racks + 1:02d}"
            self.hosts.append(
                _Host(
                    name=f"dc1-{rack}-h{h:03d}",
                    rack=rack,
                    has_gpu=self.rng.random() < 0.5,
                    base_load=self.rng.uniform(20, 70),
                    load=self.rng.uniform(10, 90),
                    gpu=0.0,
                    mem=self.rng.uniform(20, 80),
                    fan=4000.0,
                    phase=self.rng.uniform(0, 2 * math.pi),
                )
            )
        self.next_host = 0
        self.valid_lines: list[tuple[str, str]] = []  # (text, event_id): candidates for duplicate_event_id

    @classmethod
    def from_config(cls, generator: GeneratorConfig, seed: int | None = None,
                    fault_rate: float | None = None) -> TelemetryGenerator:
        """A generator with the configured fleet and clock; seed and fault rate may be overridden."""
        return cls(
            generator.seed if seed is None else seed,
            generator.hosts,
            generator.racks,
            generator.fault_rate if fault_rate is None else fault_rate,
            generator.interval_seconds,
            generator.start_time,
        )

    # -- one physically plausible reading -------------------------------------------------
    def _reading(self) -> dict:
        host = self.hosts[self.next_host]
        self.next_host = (self.next_host + 1) % len(self.hosts)
        rng = self.rng
        if self.live:
            self.clock = datetime.now(timezone.utc)
        hours = self.clock.timestamp() / 3600.0
        daily = 15.0 * math.sin(2 * math.pi * hours / 24.0 + host.phase)
        # Load drifts slowly towards a daily pattern, so consecutive readings are correlated.
        host.load += 0.08 * (host.base_load + daily - host.load) + rng.gauss(0, 2.0)
        host.load = min(100.0, max(0.0, host.load))
        if host.has_gpu:
            if rng.random() < 0.02:  # a training job starts or ends
                host.gpu = rng.uniform(60, 100) if host.gpu < 30 else rng.uniform(0, 10)
            host.gpu = min(100.0, max(0.0, host.gpu + rng.gauss(0, 1.5)))
        host.mem = min(100.0, max(0.0, host.mem + 0.05 * (host.load - host.mem) + rng.gauss(0, 0.8)))
        power = 120.0 + 1.9 * host.load + 3.2 * host.gpu + 0.4 * host.mem + rng.gauss(0, 4.0)
        # Fans follow the heat load with a lag.
        fan_target = 2200.0 + 38.0 * host.load + 30.0 * host.gpu
        host.fan += 0.3 * (fan_target - host.fan) + rng.gauss(0, 40.0)
        host.fan = min(12000.0, max(1500.0, host.fan))
        inlet = self.rack_ambient[host.rack] + 0.006 * power + rng.gauss(0, 0.25)
        exhaust = inlet + 95.0 * power / host.fan + rng.gauss(0, 0.3)
        reading = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "host": host.name,
            "rack": host.rack,
            "event_time": self.clock.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "cpu_util": round(host.load, 2),
            "mem_util": round(host.mem, 2),
            "gpu_util": round(host.gpu, 2),
            "power_w": round(power, 1),
            "fan_rpm": round(host.fan, 0),
            "inlet_temp_c": round(inlet, 2),
            "exhaust_temp_c": round(exhaust, 2),
        }
        self.clock += self.step
        return reading

    # -- faults ---------------------------------------------------------------------------
    def _faulty(self, kind: str, rec: dict) -> GeneratedLine:
        rng = self.rng
        event_id = rec["event_id"]
        if kind == "malformed_json":
            text = json.dumps(rec)
            cut = rng.randint(1, len(text) - 2)  # a proper prefix of an object never parses
            return GeneratedLine(text[:cut], kind, event_id, f"truncated at {cut}")
        if kind == "missing_field":
            name = rng.choice(list(TELEMETRY_FIELDS))
            del rec[name]
            return GeneratedLine(json.dumps(rec), kind, rec.get("event_id"), name)
        if kind == "wrong_type":
            name = rng.choice(NUMERIC_FIELDS + ["event_time"])
            rec[name] = rng.choice(["n/a", "high", "12,5"]) if name != "event_time" else 1767225600
            return GeneratedLine(json.dumps(rec), kind, event_id, name)
        if kind == "out_of_range":
            name, value = rng.choice(
                [
                    ("cpu_util", round(rng.uniform(101, 400), 2)),
                    ("mem_util", -round(rng.uniform(1, 50), 2)),
                    ("power_w", -round(rng.uniform(1, 500), 1)),
                    ("inlet_temp_c", round(rng.uniform(90, 200), 2)),
                    ("fan_rpm", -round(rng.uniform(1, 1000), 0)),
                ]
            )
            rec[name] = value
            return GeneratedLine(json.dumps(rec), kind, event_id, name)
        if kind == "late_event":
            late = datetime.fromisoformat(rec["event_time"].replace("Z", "+00:00")) - LATE_BY
            rec["event_time"] = late.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            return GeneratedLine(json.dumps(rec), kind, event_id, f"{LATE_BY} behind")
        if kind == "extra_field":
            rec[EXTRA_FIELD] = f"{rng.randint(1, 3)}.{rng.randint(0, 9)}.{rng.randint(0, 20)}"
            return GeneratedLine(json.dumps(rec), kind, event_id, EXTRA_FIELD)
        raise ValueError(f"unknown fault kind {kind}")

    def next_line(self) -> GeneratedLine:
        if self.rng.random() < self.fault_rate:
            kind = self.rng.choice(LINE_FAULTS)
            if kind == "duplicate_event_id" and self.valid_lines:
                # An exact re-send of an earlier record, as an at-least-once producer would do.
                text, event_id = self.rng.choice(self.valid_lines)
                return GeneratedLine(text, kind, event_id, "re-sent")
            if kind != "duplicate_event_id":
                return self._faulty(kind, self._reading())
        reading = self._reading()
        text = json.dumps(reading)
        self.valid_lines.append((text, reading["event_id"]))
        if len(self.valid_lines) > 1000:
            self.valid_lines = self.valid_lines[-500:]
        return GeneratedLine(text, "valid", reading["event_id"])
