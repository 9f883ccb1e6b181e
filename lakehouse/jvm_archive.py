"""Make the driver JVM's class archive (Java's application class-data sharing, AppCDS): the
classes a pipeline run loads (Spark, Delta, Hadoop, Scala), parsed and verified once and mapped
from a file by every later JVM. A local job's JVM starts and runs its first jobs 5-7 s sooner on
two cores (bench/RESULTS.md, "The driver JVM's class archive").

``make install`` runs ``python -m lakehouse.jvm_archive``: a small bronze -> silver -> gold run
in a JVM started with ``-XX:ArchiveClassesAtExit``, which writes the classes it loaded as it exits
(about 200 MB, at lakehouse.session.class_archive(), in the user's cache directory).
lakehouse.session starts each driver JVM it launches with the archive when it exists
(lakehouse.session.with_class_archive says when it leaves it out).
"""

from __future__ import annotations

import argparse
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
from lakehouse.local_fs import local_fs_jar
from lakehouse.processes import start_time, still_running
from lakehouse.runner import run_flow, run_flows
from lakehouse.session import DRIVER_OPTIONS, build_session, class_archive, class_archive_sources

# The run that fills the archive: every layer once, on a few generated lines.
ARCHIVE_RUN_LINES = 300
# The JVM that writes the archive says only what went wrong (it warns of every class it skips).
DUMP_LOGGING = "-Xlog:cds=error -Xlog:cds+dynamic=error"


def make_archive(force: bool = False, out=print) -> Path:
    """Run a small pipeline in a JVM that writes its loaded classes to the archive as it exits,
    unless the archive exists (``force``: make it again); one process at a time (another waits,
    then finds it made). Returns its path. Needs a process without a JVM of its own yet."""
    if SparkContext._gateway is not None or "PYSPARK_GATEWAY_PORT" in os.environ:
        raise RuntimeError("this process runs a JVM already (its options are fixed): run python -m lakehouse.jvm_archive")
    local_fs_jar()  # made first: the class path the archive is made for, and so its name, include it
    archive = class_archive()
    with one_at_a_time(archive.with_suffix(".lock"), "waiting for another process making the JVM class archive"):
        if archive.is_file() and not force:
            out(f"JVM class archive: {archive} (made before; --force makes it again)")
            return archive
        started = time.monotonic()
        out("making the JVM class archive (a small pipeline run, once; about a minute) ...")
        partial = archive.with_name(f".{archive.name}.{os.getpid()}")
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):  # the run's own lines (and the JVM's): shown if it fails
                _run_and_dump(partial)
            archive.with_suffix(".for").write_text("\n".join(class_archive_sources()) + "\n")
            os.replace(partial, archive)
        except BaseException:
            out(said.getvalue()[-3000:])
            raise
        finally:
            partial.unlink(missing_ok=True)
        _remove_orphans(archive)
    out(f"JVM class archive: {archive} ({archive.stat().st_size / 2**20:.0f} MiB, made in {time.monotonic() - started:.0f} s)")
    return archive


def _remove_orphans(current: Path) -> None:
    """Archives (200 MB each) no JVM will map any more: made for a pyspark folder that is gone (a
    removed checkout's .venv) or for the one ``current`` is now made for (an older Java or
    pyspark there); and what a make killed before its end left (``.driver-*.jsa.<pid>``)."""
    pyspark_dir = class_archive_sources()[1]
    for made_for in current.parent.glob("driver-*.for"):
        try:
            lines = made_for.read_text().splitlines()
            if made_for.stem != current.stem and len(lines) > 1 and (lines[1] == pyspark_dir or not Path(lines[1]).is_dir()):
                for suffix in (".jsa", ".lock", ".for"):
                    made_for.with_suffix(suffix).unlink(missing_ok=True)
        except OSError:
            continue  # another process removed it first
    for partial in current.parent.glob(".driver-*.jsa.*"):
        pid = partial.suffix.lstrip(".")
        if pid.isdigit() and not still_running(int(pid), start_time(int(pid))):
            partial.unlink(missing_ok=True)


def _run_and_dump(partial: Path) -> None:
    """The pipeline run, then the JVM's exit, which writes ``partial``; on a failure the JVM is
    killed before it writes anything."""
    with tempfile.TemporaryDirectory(prefix="lakehouse-jvm-archive-") as folder:
        base = load_config("test", data_dir=Path(folder) / "data")
        options = f"{base.spark.conf.get(DRIVER_OPTIONS, '')} -XX:ArchiveClassesAtExit={partial} {DUMP_LOGGING}".strip()
        config = load_config("test", data_dir=Path(folder) / "data", overrides=[f"spark.conf.{DRIVER_OPTIONS}={options}"])
        landing = Path(config.landing_path("telemetry"))
        landing.mkdir(parents=True)
        generator = TelemetryGenerator.from_config(config.generator, seed=1)
        generate_batch(generator, landing, "telemetry", "archive", 1, ARCHIVE_RUN_LINES, 2)
        spark = build_session(config, app_name="lakehouse-jvm-archive")
        gateway = SparkContext._gateway
        try:
            once = {"availableNow": True}
            codes = [run_flow(spark, config, "bronze.telemetry", once), run_flow(spark, config, "silver.telemetry", once),
                     run_flows(spark, config, [f"gold.{name}" for name in config.gold], once)]
            if any(codes):
                raise RuntimeError(f"the archive's pipeline run failed (exit codes {codes})")
            spark.stop()
            gateway.shutdown()
            gateway.proc.stdin.close()  # the JVM exits when its stdin closes, and writes the archive
            if gateway.proc.wait(timeout=600) != 0 or not partial.is_file():
                raise RuntimeError(f"the JVM wrote no class archive (exit code {gateway.proc.returncode})")
        finally:
            if gateway.proc.poll() is None:
                gateway.proc.kill()
                gateway.proc.wait()
            SparkContext._gateway = SparkContext._jvm = SparkContext._active_spark_context = None


def main(argv: list[str] | None = None) -> int:
    """``python -m lakehouse.jvm_archive [--force]``: make the archive (make install runs it). A
    failure is reported and exits 0: jobs run without the archive, only slower to start."""
    parser = argparse.ArgumentParser(prog="python -m lakehouse.jvm_archive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="make it again even if it exists")
    args = parser.parse_args(argv)
    try:
        make_archive(force=args.force)
    except Exception as exc:  # noqa: BLE001 - an optimisation must never fail the install
        print(f"JVM class archive not made ({type(exc).__name__}: {exc}); jobs start without it", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
