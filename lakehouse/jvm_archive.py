"""Make the driver JVM's class archive (Java's application class-data sharing, AppCDS): the
classes a pipeline run loads (Spark, Delta, Hadoop, Scala), parsed and verified once and mapped
from a file by every later JVM. A local job's JVM starts and runs its first jobs 5-7 s sooner on
two cores (bench/RESULTS.md, "The driver JVM's class archive").

``make install`` runs ``python -m lakehouse.jvm_archive``: a small bronze -> silver -> gold run
in a JVM started with ``-XX:ArchiveClassesAtExit``, which writes the classes it loaded as it exits
(about 200 MB, at lakehouse.session.class_archive(), in the user's cache directory).
lakehouse.session starts each driver JVM it launches with the archive when it exists
(lakehouse.session.with_class_archive, which says when it does not).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from pyspark import SparkContext

from lakehouse.config import load_config
from lakehouse.fs import one_at_a_time
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.runner import run_flow, run_flows
from lakehouse.session import CDS_QUIET, DRIVER_OPTIONS, build_session, class_archive, class_archive_sources

# The run that fills the archive: every layer once, on a few generated lines.
ARCHIVE_RUN_LINES = 300


def make_archive(out=print) -> Path:
    """Run a small pipeline in a JVM that writes its loaded classes to the archive at exit, unless
    the archive exists; one process at a time (another waits, then finds it made). Returns its path."""
    archive = class_archive()
    with one_at_a_time(archive.with_suffix(".lock")):
        if archive.is_file():
            out(f"JVM class archive: {archive} (made before)")
            return archive
        started = time.monotonic()
        out("making the JVM class archive (a small pipeline run, once; about a minute) ...")
        partial = archive.with_name(f".{archive.name}.{os.getpid()}")
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):  # the run's own lines: shown only when it fails
                _run_and_dump(partial)
        except Exception:
            out(said.getvalue()[-3000:])
            raise
        if not partial.is_file():
            raise RuntimeError("the JVM wrote no class archive at exit")
        os.replace(partial, archive)
        archive.with_suffix(".for").write_text("\n".join(class_archive_sources()) + "\n")
        _remove_orphans(archive.parent)
    out(f"JVM class archive: {archive} ({archive.stat().st_size / 2**20:.0f} MiB, made in {time.monotonic() - started:.0f} s)")
    return archive


def _remove_orphans(folder: Path) -> None:
    """Archives made for a pyspark installation that is gone (a removed checkout's .venv): 200 MB each."""
    for made_for in folder.glob("driver-*.for"):
        lines = made_for.read_text().splitlines()
        if len(lines) > 1 and not Path(lines[1]).is_dir():
            for suffix in (".jsa", ".lock", ".for"):
                made_for.with_suffix(suffix).unlink(missing_ok=True)


def _run_and_dump(partial: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="lakehouse-jvm-archive-") as folder:
        base = load_config("test", data_dir=Path(folder) / "data")
        options = f"{base.spark.conf.get(DRIVER_OPTIONS, '')} -XX:ArchiveClassesAtExit={partial} {CDS_QUIET}".strip()
        config = load_config("test", data_dir=Path(folder) / "data", overrides=[f"spark.conf.{DRIVER_OPTIONS}={options}"])
        landing = Path(config.landing_path("telemetry"))
        landing.mkdir(parents=True)
        generator = TelemetryGenerator.from_config(config.generator, seed=1)
        generate_batch(generator, landing, "telemetry", "archive", 1, ARCHIVE_RUN_LINES, 2)
        spark = build_session(config, app_name="lakehouse-jvm-archive")
        once = {"availableNow": True}
        codes = [run_flow(spark, config, "bronze.telemetry", once), run_flow(spark, config, "silver.telemetry", once),
                 run_flows(spark, config, [f"gold.{name}" for name in config.gold], once)]
        spark.stop()
        if any(codes):
            raise RuntimeError(f"the archive's pipeline run failed (exit codes {codes})")
        # The JVM writes the archive as it exits, which it does when its stdin closes.
        gateway = SparkContext._gateway
        gateway.shutdown()
        gateway.proc.stdin.close()
        gateway.proc.wait(timeout=600)
        SparkContext._gateway = SparkContext._jvm = None


def main() -> int:
    """``python -m lakehouse.jvm_archive``: make the archive (make install runs it). A failure is
    reported and exits 0: jobs run without the archive, only slower to start."""
    try:
        make_archive()
    except Exception as exc:  # noqa: BLE001 - an optimisation must never fail the install
        print(f"JVM class archive not made ({type(exc).__name__}: {exc}); jobs start without it", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
