#!/usr/bin/env python
"""`lakehouse` commands with the driver JVM's class archive against the same commands without it,
alternating, in one run.

    .venv/bin/python bench/jvm_start.py [--repeats 3]

Each command is a whole process, as a user runs it: `lakehouse sql "SELECT 1"` (the JVM, the
session and one query), then `lakehouse ingest --once` and `lakehouse refine --once` over 300
generated lines in a fresh data directory. "without" adds `-Xshare:auto` to the test overlay's
driver options, which keeps lakehouse.session from adding the archive (the JVM then maps only
the JDK's own classes, as any Spark application does). Needs the archive `make install` makes
(`python -m lakehouse.jvm_archive`). Prints one JSON line per figure; the best of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lakehouse.config import load_config  # noqa: E402
from lakehouse.session import DRIVER_OPTIONS, class_archive  # noqa: E402

LAKEHOUSE = [sys.executable, "-m", "lakehouse.cli"]


def emit(figure: str, value, **extra) -> None:
    print(json.dumps({"figure": figure, "value": value, **extra}), flush=True)


def timed(command: list[str], env: dict) -> float:
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    return seconds


def one_round(options: list[str], env: dict) -> dict[str, float]:
    """The three commands in a fresh data directory; seconds each."""
    with tempfile.TemporaryDirectory(prefix="bench-jvm-") as folder:
        common = [*LAKEHOUSE, "--env", "test", "--data-dir", folder, *options]
        subprocess.run([*common, "generate", "--records", "300", "--files", "2"], cwd=REPO, env=env,
                       capture_output=True, check=True)
        return {
            "sql": timed([*common, "sql", "SELECT 1 AS one"], env),
            "ingest": timed([*common, "ingest", "--source", "telemetry", "--once"], env),
            "refine": timed([*common, "refine", "--entity", "telemetry", "--once"], env),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not class_archive().is_file():
        sys.exit(f"no class archive at {class_archive()}: run `.venv/bin/python -m lakehouse.jvm_archive` first")
    env = {**os.environ, "LAKEHOUSE_CONF_DIR": str(REPO / "conf")}
    test_options = load_config("test", conf_dir=REPO / "conf").spark.conf.get(DRIVER_OPTIONS, "")
    sides = {"with the archive": [], "without": ["--set", f"spark.conf.{DRIVER_OPTIONS}={test_options} -Xshare:auto"]}
    emit("machine", platform.platform(), cpus=os.cpu_count(), python=platform.python_version(),
         date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    best: dict[str, dict[str, float]] = {side: {} for side in sides}
    for attempt in range(1, args.repeats + 1):
        for side, options in sides.items():  # alternating, so both see the machine alike
            for command, seconds in one_round(options, env).items():
                emit(f"lakehouse {command}, {side}", round(seconds, 2), unit="s", attempt=attempt)
                best[side][command] = min(seconds, best[side].get(command, float("inf")))
    for command in best["without"]:
        saved = best["without"][command] - best["with the archive"][command]
        emit(f"lakehouse {command}: seconds saved by the archive (best of each)", round(saved, 2), unit="s",
             ratio=round(best["with the archive"][command] / best["without"][command], 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
