"""Telemetry generator for the flagship source: JSON-lines files of data-centre machine readings.

Each host has a load that drifts (persistent, so the next minute is predictable from this one);
its power draw rises with CPU, GPU and memory load, its fans follow the load with a lag, its
inlet temperature rises with power, and its exhaust temperature rises with power and falls with
fan speed. A fault rate injects the bad input a real feed has; the manifest records each one.

Files are written under a hidden temporary name and renamed into place, so a streaming reader
never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
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
    text: str
    kind: str  # "valid" or one of LINE_FAULTS
    event_id: str | None
    detail: str = ""


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
    def from_config(cls, generator: "GeneratorConfig", seed: int | None = None,
                    fault_rate: float | None = None) -> "TelemetryGenerator":
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


# -- landing files and the manifest ---------------------------------------------------------


@dataclass
class Manifest:
    """Exactly what a generator run wrote: every file with its line count (or, published to
    Kafka, every partition with its message count and offsets), and every fault."""

    source: str
    run_id: str
    seed: int
    fault_rate: float
    files: list[dict] = field(default_factory=list)  # {"file", "lines"}
    # Kafka: {"file", "line", ...} becomes {"topic", "partition", "offset", ...}
    faults: list[dict] = field(default_factory=list)  # {"file", "line", "kind", "event_id", "detail"}
    sink: str = "files"
    topic: str | None = None
    partitions: dict[int, dict] = field(default_factory=dict)  # {"messages", "first_offset", "last_offset"}

    def __post_init__(self) -> None:
        if not RUN_ID.match(self.run_id):
            raise ValueError(f"run id {self.run_id!r} is not a plain name (letters, digits, '.', '_', '-')")

    @property
    def total_lines(self) -> int:
        return sum(f["lines"] for f in self.files) + sum(p["messages"] for p in self.partitions.values())

    def fault_counts(self) -> dict[str, int]:
        counts = Counter(f["kind"] for f in self.faults)
        kinds = LINE_FAULTS + (MESSAGE_FAULTS if self.sink == "kafka" else FILE_FAULTS)
        return {kind: counts.get(kind, 0) for kind in kinds}

    def to_json(self) -> dict:
        data = asdict(self)
        data["total_lines"] = self.total_lines
        data["valid_lines"] = self.total_lines - sum(
            1 for f in self.faults if f["kind"] in LINE_FAULTS + MESSAGE_FAULTS
        )
        data["partitions"] = {str(p): stats for p, stats in sorted(self.partitions.items())}
        data["fault_counts"] = self.fault_counts()
        return data

    def write(self, landing_dir: Path) -> Path:
        # "_" keeps Spark's file source from reading the manifest as data.
        path = landing_dir / "_manifests" / f"{self.run_id}.json"
        _atomic_write(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_file(
    generator: TelemetryGenerator,
    manifest: Manifest,
    landing_dir: Path,
    name: str,
    lines: int,
) -> Path:
    """Write one landing file of ``lines`` generated lines and record it in ``manifest``."""
    generated = [generator.next_line() for _ in range(lines)]
    text = "".join(line.text + "\n" for line in generated)
    path = landing_dir / name
    _atomic_write(path, text)
    manifest.files.append({"file": name, "lines": lines})
    for number, line in enumerate(generated, start=1):
        if line.kind != "valid":
            manifest.faults.append(
                {"file": name, "line": number, "kind": line.kind, "event_id": line.event_id,
                 "detail": line.detail}
            )
    return path


def write_empty_file(manifest: Manifest, landing_dir: Path, name: str) -> Path:
    path = landing_dir / name
    _atomic_write(path, "")
    manifest.files.append({"file": name, "lines": 0})
    manifest.faults.append({"file": name, "line": 0, "kind": "empty_file", "event_id": None,
                            "detail": ""})
    return path


def generate_batch(
    generator: TelemetryGenerator,
    landing_dir: Path,
    source: str,
    run_id: str,
    seed: int,
    records: int,
    files: int,
    progress=None,
) -> Manifest:
    """Write ``records`` lines over ``files`` files (plus injected empty files) and a manifest."""
    if files > records:
        raise ValueError(f"files ({files}) cannot exceed records ({records})")
    manifest = Manifest(source, run_id, seed, generator.fault_rate)
    empty_files = max(1, round(files * generator.fault_rate)) if generator.fault_rate > 0 else 0
    empty_at = set(generator.rng.sample(range(files), min(empty_files, files)))
    per_file, extra = divmod(records, files)
    for index in range(files):
        name = f"{source}-{run_id}-{index:05d}.jsonl"
        write_file(generator, manifest, landing_dir, name, per_file + (1 if index < extra else 0))
        if index in empty_at:
            write_empty_file(manifest, landing_dir, f"{source}-{run_id}-{index:05d}-empty.jsonl")
        if progress:
            progress(index + 1, files)
    manifest.write(landing_dir)
    return manifest


def generate_continuous(
    generator: TelemetryGenerator,
    landing_dir: Path,
    source: str,
    run_id: str,
    seed: int,
    rate: float,
    duration: float,
    file_seconds: float = 1.0,
    progress=None,
) -> Manifest:
    """Land a file every ``file_seconds`` holding ``rate * file_seconds`` lines, for ``duration``
    seconds (0: until SIGINT/SIGTERM). The manifest is rewritten after every file."""
    manifest = Manifest(source, run_id, seed, generator.fault_rate)
    lines_per_file = max(1, round(rate * file_seconds))

    def land_one(index: int) -> None:
        write_file(generator, manifest, landing_dir, f"{source}-{run_id}-{index:05d}.jsonl", lines_per_file)
        if generator.fault_rate > 0 and generator.rng.random() < generator.fault_rate:
            write_empty_file(manifest, landing_dir, f"{source}-{run_id}-{index:05d}-empty.jsonl")

    run_paced(land_one, manifest, landing_dir, file_seconds, duration, progress)
    return manifest


def run_paced(step, manifest: Manifest, landing_dir: Path, every_seconds: float, duration: float,
              progress=None) -> None:
    """Call ``step(index)`` every ``every_seconds`` for ``duration`` seconds (0: until SIGINT or
    SIGTERM), rewriting the manifest after each step and once more at the end."""
    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        started = time.monotonic()
        index = 0
        while not stop["now"] and (duration <= 0 or time.monotonic() - started < duration):
            step(index)
            manifest.write(landing_dir)
            index += 1
            if progress:
                progress(index, manifest.total_lines)
            next_at = started + index * every_seconds
            while not stop["now"] and time.monotonic() < next_at:
                time.sleep(min(0.1, max(0.0, next_at - time.monotonic())))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    manifest.write(landing_dir)


# -- publishing to Kafka --------------------------------------------------------------------


def publish_messages(generator: TelemetryGenerator, manifest: Manifest, publisher, count: int,
                     empty_message: bool = False) -> None:
    """Publish ``count`` generated lines (each one message value; key: its event id) and, if
    ``empty_message``, one message with an empty value; wait for the broker's acknowledgements
    and record every message's partition and offset in ``manifest``."""
    generated = [generator.next_line() for _ in range(count)]
    sent = [(publisher.send(line.text.encode("utf-8"), line.event_id.encode() if line.event_id else None), line)
            for line in generated]
    if empty_message:
        sent.append((publisher.send(b""), GeneratedLine("", "empty_message", None)))
    publisher.flush()
    for index, line in sent:
        partition, offset = publisher.delivered[index]
        stats = manifest.partitions.setdefault(partition, {"messages": 0, "first_offset": offset, "last_offset": offset})
        stats["messages"] += 1
        stats["first_offset"] = min(stats["first_offset"], offset)
        stats["last_offset"] = max(stats["last_offset"], offset)
        if line.kind != "valid":
            manifest.faults.append({"topic": publisher.topic, "partition": partition, "offset": offset,
                                    "kind": line.kind, "event_id": line.event_id, "detail": line.detail})


def publish_batch(generator: TelemetryGenerator, publisher, landing_dir: Path, source: str, run_id: str,
                  seed: int, records: int, progress=None) -> Manifest:
    """Publish ``records`` generated messages (plus injected empty ones) and write the manifest."""
    manifest = Manifest(source, run_id, seed, generator.fault_rate, sink="kafka", topic=publisher.topic)
    chunk = 5000
    chunks = -(-records // chunk)  # ceil
    # As many empty messages as generate_batch writes empty files for as many files as chunks.
    empties = max(1, round(chunks * generator.fault_rate)) if generator.fault_rate > 0 else 0
    done = 0
    for index in range(chunks):
        count = min(chunk, records - done)
        publish_messages(generator, manifest, publisher, count, empty_message=index < empties)
        manifest.write(landing_dir)  # what is acknowledged so far, should a later chunk fail
        done += count
        if progress:
            progress(done, records)
    manifest.write(landing_dir)
    return manifest


def publish_continuous(generator: TelemetryGenerator, publisher, landing_dir: Path, source: str, run_id: str,
                       seed: int, rate: float, duration: float, chunk_seconds: float = 1.0,
                       progress=None) -> Manifest:
    """Publish ``rate`` messages a second, a chunk every ``chunk_seconds``, for ``duration`` seconds
    (0: until SIGINT/SIGTERM). The manifest is rewritten after every chunk."""
    manifest = Manifest(source, run_id, seed, generator.fault_rate, sink="kafka", topic=publisher.topic)
    per_chunk = max(1, round(rate * chunk_seconds))

    def publish_one(index: int) -> None:
        empty = generator.fault_rate > 0 and generator.rng.random() < generator.fault_rate
        publish_messages(generator, manifest, publisher, per_chunk, empty_message=empty)

    run_paced(publish_one, manifest, landing_dir, chunk_seconds, duration, progress)
    return manifest
