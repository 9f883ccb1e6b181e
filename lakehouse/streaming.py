"""Running one streaming query as a job: triggers, progress reporting, graceful stop, clear failure.

lakehouse/runner.py starts every streaming flow through :func:`run_streaming_job`, which attaches
the progress recorder, prints each finished micro-batch, writes ``ops.stream_progress``, and turns
Ctrl-C / SIGTERM into a clean stop.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable

from pyspark.errors import StreamingQueryException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from lakehouse.config import LakehouseConfig, spark_interval
from lakehouse.errors import EXIT_FAILED, EXIT_OK, LakehouseError, batch_error
from lakehouse.progress import ProgressRecorder
from lakehouse.redaction import redact_text
from lakehouse.threads import Behind


def trigger_for(once: bool, interval: str | None, config: LakehouseConfig) -> dict:
    """``writeStream.trigger`` arguments: availableNow for ``--once``, else a processing-time interval."""
    if once:
        return {"availableNow": True}
    return {"processingTime": spark_interval(interval or config.streaming.trigger)}


def run_streaming_job(
    spark: SparkSession,
    config: LakehouseConfig,
    query_name: str,
    checkpoint: str,
    start: Callable[[], StreamingQuery],
    restart_once_if: Callable[[Exception], str | None] | None = None,
    last_flush: Behind | None = None,
) -> int:
    """Start the query with ``start()`` and run it until it finishes (availableNow) or is stopped.

    ``restart_once_if(error)``: for a failure known to leave the checkpoint consistent, the reason
    to restart the query once (printed) instead of failing; None to fail as usual.
    ``last_flush``: where the recorder's last flush (the last progress rows, freshness rows and
    ops.ingested_files rows: a few small commits) is handed once the query has ended, to be
    written in the background; the caller waits for it (``Behind.wait``). None: written before
    this returns. The ``done`` line is printed either way once the query has ended.
    """
    code, error, raised = _run_query(spark, config, query_name, checkpoint, start, last_flush)
    reason = restart_once_if(error) if error is not None and raised is None and restart_once_if else None
    if reason:
        print(f"{query_name}: {reason}; restarting the query from its checkpoint", flush=True)
        if last_flush is not None:  # the first query's rows are written before the second query flushes its own
            last_flush.wait(raising=False)
        code, error, raised = _run_query(spark, config, query_name, checkpoint, start, last_flush)
    if error is not None:
        print(f"lakehouse: {query_name} failed: {redact_text(failure_summary(error, raised))}", file=sys.stderr)
    return code


def _run_query(spark, config, query_name, checkpoint, start, last_flush: Behind | None) \
        -> tuple[int, StreamingQueryException | None, LakehouseError | None]:
    """Run the query once: (exit code, Spark's error, the project's own error a batch raised)."""
    recorder = ProgressRecorder(spark, config)
    recorder.watch(query_name, checkpoint)
    spark.streams.addListener(recorder)
    recorder.make_tables_beside()
    try:
        query = start()
    except BaseException:
        spark.streams.removeListener(recorder)
        raise

    stop_requested = threading.Event()
    stopped_by: list[str] = []  # what asked for the stop (printed: a stop nobody asked for is traceable)

    def on_sigterm(*_) -> None:
        stopped_by.append("SIGTERM")
        stop_requested.set()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    started = flushed_at = time.monotonic()
    records = 0
    try:
        while query.isActive:
            try:
                query.awaitTermination(1)
            except KeyboardInterrupt:
                stopped_by.append("SIGINT")
                stop_requested.set()
            if stop_requested.is_set() and query.isActive:
                print(f"{query_name}: stopping ({stopped_by[0] if stopped_by else 'asked'}); an unfinished batch is "
                      "redone on restart", flush=True)
                query.stop()
            records += print_finished_batches(recorder)
            # Progress rows are appended in groups: a Delta commit per micro-batch would compete
            # with the query itself for the same cores.
            if time.monotonic() - flushed_at >= config.streaming.progress_flush_seconds:
                recorder.flush()
                flushed_at = time.monotonic()
        query.awaitTermination()
    except StreamingQueryException as exc:
        return EXIT_FAILED, exc, batch_error(str(query.id))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        recorder.wait_terminated(str(query.id), timeout=30)
        records += print_finished_batches(recorder)
        spark.streams.removeListener(recorder)  # the query has ended: every batch's row is drained
        if last_flush is None:
            recorder.flush()
        else:
            last_flush.add(recorder.flush)
    print(f"{query_name}: done, {records:,} records in {time.monotonic() - started:.1f}s", flush=True)
    return EXIT_OK, None, None


def failure_summary(exc: Exception, raised: LakehouseError | None = None) -> str:
    """One line: the project's own error when a foreachBatch function raised one, else Spark's."""
    if raised is not None:
        return f"{type(raised).__name__}: {_first_line(raised)}"
    return _python_error_line(str(exc)) or _first_line(exc) or repr(exc)


def _python_error_line(text: str) -> str | None:
    """A Python error raised in a micro-batch reaches the driver as Spark's wrapper message around
    the Python traceback; the traceback's error line (``module.Error: message``) says what failed."""
    if "Traceback (most recent call last)" not in text:
        return None
    frames_then_error = text.split("Traceback (most recent call last)")[-1].splitlines()[1:]
    # the frames are indented; the first line that is not is the error
    return next((line.strip() for line in frames_then_error if line.strip() and not line[0].isspace()), None)


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an error's message (a Spark message may start with a blank one)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def print_finished_batches(recorder: ProgressRecorder) -> int:
    """Print the micro-batches that finished since the last call, each under its query's name;
    returns their records."""
    return print_batches(recorder.drain())


def print_batches(rows: list[dict]) -> int:
    """One plain line per finished micro-batch (progress rows), under its query's name; returns
    their records."""
    for row in rows:
        query_name = row["query_name"]
        files = f", {row['num_input_files']} files" if row["num_input_files"] is not None else ""
        print(f"{query_name}: batch {row['batch_id']}: {row['num_input_rows']:,} records{files}, "
              f"{row['batch_duration_ms'] / 1000:.1f}s", flush=True)
        for note in row.get("notes", ()):
            print(f"{query_name}: batch {row['batch_id']}: {note}", flush=True)
    return sum(row["num_input_rows"] for row in rows)
