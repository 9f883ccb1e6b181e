"""A generator run: the records of lakehouse.generator written as landing files, or published to a
Kafka topic, and the manifest that says exactly what was written and which faults it holds.

Files are written under a hidden temporary name and renamed into place, so a streaming reader
never sees half a file. `lakehouse generate` and the demo write through here.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lakehouse.generator import (
    FILE_FAULTS,
    LINE_FAULTS,
    MESSAGE_FAULTS,
    RUN_ID,
    GeneratedLine,
    TelemetryGenerator,
)

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
    # The generator's line-level fault kinds (each generator's LINE_FAULTS).
    line_faults: tuple[str, ...] = LINE_FAULTS

    def __post_init__(self) -> None:
        if not RUN_ID.match(self.run_id):
            raise ValueError(f"run id {self.run_id!r} is not a plain name (letters, digits, '.', '_', '-')")

    @property
    def total_lines(self) -> int:
        return sum(f["lines"] for f in self.files) + sum(p["messages"] for p in self.partitions.values())

    def fault_counts(self) -> dict[str, int]:
        counts = Counter(f["kind"] for f in self.faults)
        kinds = tuple(self.line_faults) + (MESSAGE_FAULTS if self.sink == "kafka" else FILE_FAULTS)
        return {kind: counts.get(kind, 0) for kind in kinds}

    def to_json(self) -> dict:
        data = asdict(self)
        data["total_lines"] = self.total_lines
        data["valid_lines"] = self.total_lines - sum(
            1 for f in self.faults if f["kind"] in tuple(self.line_faults) + MESSAGE_FAULTS
        )
        data["partitions"] = {str(p): stats for p, stats in sorted(self.partitions.items())}
        data["fault_counts"] = self.fault_counts()
        return data

    def write(self, landing_dir: Path) -> Path:
        # "_" keeps Spark's file source from reading the manifest as data.
        path = landing_dir / "_manifests" / f"{self.run_id}.json"
        _atomic_write(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path


def _atomic_write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(text.encode("utf-8") if isinstance(text, str) else text)
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
    path = landing_dir / name
    _atomic_write(path, b"".join(line.data() + b"\n" for line in generated))
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
    manifest = Manifest(source, run_id, seed, generator.fault_rate, line_faults=generator.LINE_FAULTS)
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
    stop: threading.Event | None = None,
) -> Manifest:
    """Land a file every ``file_seconds`` holding ``rate * file_seconds`` lines, for ``duration``
    seconds (0: until SIGINT/SIGTERM, or ``stop`` is set). The manifest is rewritten after every file."""
    manifest = Manifest(source, run_id, seed, generator.fault_rate, line_faults=generator.LINE_FAULTS)
    lines_per_file = max(1, round(rate * file_seconds))

    def land_one(index: int) -> None:
        write_file(generator, manifest, landing_dir, f"{source}-{run_id}-{index:05d}.jsonl", lines_per_file)
        if generator.fault_rate > 0 and generator.rng.random() < generator.fault_rate:
            write_empty_file(manifest, landing_dir, f"{source}-{run_id}-{index:05d}-empty.jsonl")

    run_paced(land_one, manifest, landing_dir, file_seconds, duration, progress, stop)
    return manifest


def run_paced(step, manifest: Manifest, landing_dir: Path, every_seconds: float, duration: float,
              progress=None, stop: threading.Event | None = None) -> None:
    """Call ``step(index)`` every ``every_seconds`` for ``duration`` seconds (0: until ``stop`` is
    set or, without one, SIGINT or SIGTERM), rewriting the manifest after each step and once more
    at the end. With ``stop`` it installs no signal handler (it may run in a thread)."""
    previous = {}
    if stop is None:
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        started = time.monotonic()
        index = 0
        while not stop.is_set() and (duration <= 0 or time.monotonic() - started < duration):
            step(index)
            manifest.write(landing_dir)
            index += 1
            if progress:
                progress(index, manifest.total_lines)
            stop.wait(max(0.0, started + index * every_seconds - time.monotonic()))
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
    sent = [(publisher.send(line.data(), line.event_id.encode() if line.event_id else None), line)
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
    manifest = Manifest(source, run_id, seed, generator.fault_rate, sink="kafka", topic=publisher.topic,
                        line_faults=generator.LINE_FAULTS)
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
                       progress=None, stop: threading.Event | None = None) -> Manifest:
    """Publish ``rate`` messages a second, a chunk every ``chunk_seconds``, for ``duration`` seconds
    (0: until SIGINT/SIGTERM). The manifest is rewritten after every chunk."""
    manifest = Manifest(source, run_id, seed, generator.fault_rate, sink="kafka", topic=publisher.topic,
                        line_faults=generator.LINE_FAULTS)
    per_chunk = max(1, round(rate * chunk_seconds))

    def publish_one(index: int) -> None:
        empty = generator.fault_rate > 0 and generator.rng.random() < generator.fault_rate
        publish_messages(generator, manifest, publisher, per_chunk, empty_message=empty)

    run_paced(publish_one, manifest, landing_dir, chunk_seconds, duration, progress, stop)
    return manifest


def print_manifest(manifest: Manifest, landing_dir: Path) -> None:
    """What a run wrote (or published) and which faults it injected, and where its manifest is."""
    if manifest.sink == "kafka":
        spread = ", ".join(f"{p}: {s['messages']:,}" for p, s in sorted(manifest.partitions.items()))
        print(f"published {manifest.total_lines:,} messages to {manifest.topic} (by partition {spread})")
    else:
        print(f"wrote {manifest.total_lines:,} lines in {len(manifest.files)} files to {landing_dir}")
    faults = ", ".join(f"{kind} {n}" for kind, n in manifest.fault_counts().items())
    print(f"injected: {faults}")
    print(f"manifest: {landing_dir / '_manifests' / (manifest.run_id + '.json')}")


def generator_for(config, source_name: str, seed: int | None = None, fault_rate: float | None = None,
                  start_time: str | None = None):
    """The generator a source's ``generator`` names (telemetry readings or chat messages), with the
    configured clock and settings; seed, fault rate and start time may be overridden."""
    from dataclasses import replace

    from lakehouse.chat_generator import ChatGenerator
    from lakehouse.generator import TelemetryGenerator

    kinds = {"telemetry": TelemetryGenerator, "chat": ChatGenerator}
    settings = config.generator if start_time is None else replace(config.generator, start_time=start_time)
    return kinds[config.source(source_name).generator].from_config(settings, seed=seed, fault_rate=fault_rate)
