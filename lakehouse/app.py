"""The pipeline as one always-on application: `lakehouse run` without ``--once``.

Every streaming flow (each source's bronze, each entity's silver, each streaming gold table)
runs as a concurrent query of one Spark application, each with its own checkpoint as when run
alone (lakehouse/runner.py starts it), and in a scheduler pool of its own (named by the flow's
id), so one busy flow cannot take every task slot from the others; table maintenance runs in
pool ``maintenance``, of a quarter of a flow's weight (lakehouse/session.py, scheduler_pools_file). A batch gold table is
rebuilt when one of its inputs has a new Delta version, at most every ``gold.<table>.refresh``.

A stop (SIGTERM, Ctrl-C, or :meth:`PipelineApp.stop`) lets each query finish the batch it is
in, then stops it; an unfinished batch is redone on restart, as for one flow. A query that fails
with a transient error (anything but the project's own errors, such as a ``fail`` expectation)
is restarted from its checkpoint after ``run.backoff`` (doubled each time), up to
``run.max_restarts``; the other flows keep running meanwhile. A flow that fails for good stops
with the flows that read it (the others go on) and makes the exit code 1. A full disk or a lost
Spark context stops the whole application with one line.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from lakehouse.config import LakehouseConfig, duration_seconds
from lakehouse.errors import EXIT_FAILED, EXIT_OK, batch_error
from lakehouse.maintenance import Maintainer
from lakehouse.maintenance_steps import Step, print_steps, recent_cleanups
from lakehouse.pipeline import Flow, Pipeline
from lakehouse.progress import ProgressRecorder
from lakehouse.redaction import redact_text
from lakehouse.run_report import IntervalReport
from lakehouse.run_state import PUBLISH_SECONDS, publish
from lakehouse.runner import RUNNERS, announce
from lakehouse.session import MAINTENANCE_POOL, SESSION_DEFAULTS
from lakehouse.streaming import failure_summary, print_batches
from lakehouse.tables import last_commit, resolve_table, table_exists

POLL_SECONDS = 1.0
BATCH_END_WAIT_SECONDS = 120.0  # a stop waits this long for a query's batch to end, then stops it anyway
MAX_BACKOFF_SECONDS = 300.0
# Failures no restart gets past: the whole application stops. Spark reports them only as Java
# exception text, so they are recognised by their messages.
FATAL_MESSAGES = {
    "No space left on device": "the disk is full",
    "SparkContext was shut down": "the Spark context is gone (a lost driver or cluster)",
    "Cannot call methods on a stopped SparkContext": "the Spark context is gone (a lost driver or cluster)",
}
LIVE = ("starting", "running", "waiting", "idle", "building")


@dataclass
class FlowRun:
    """One flow of the running application."""

    flow: Flow
    query: StreamingQuery | None = None
    state: str = "starting"  # running, waiting (to restart), stopped, failed; a batch flow: idle or building
    error: str | None = None
    restarts: int = 0
    restart_at: float = 0.0
    built_from: dict[str, int] = field(default_factory=dict)  # a batch flow: input -> version last built from
    checked_at: float | None = None  # a batch flow: when its inputs' versions were last looked at


class PipelineApp:
    def __init__(self, spark: SparkSession, config: LakehouseConfig, flows: list[Flow], trigger: dict,
                 terminal: bool | None = None):
        self.spark, self.config, self.trigger = spark, config, trigger
        self.pipeline = Pipeline(config)
        self.runs = {flow.id: FlowRun(flow) for flow in self.pipeline.inputs_first(flows)}
        self._stop = threading.Event()
        self.stopped_by: str | None = None
        # On a terminal one line per flow and interval (lakehouse/run_report.py), else one per batch.
        terminal = sys.stdout.isatty() if terminal is None else terminal
        self.report = IntervalReport(config, list(self.pipeline.inputs_first(flows)),
                                     duration_seconds(config.run.report_every)) if terminal else None
        # Table maintenance every maintenance.interval, in a thread beside the flows (lakehouse/maintenance.py).
        self.maintenance = ScheduledMaintenance(spark, config) if config.maintenance.interval else None
        self.retrainer = None
        if config.training is not None and config.training.retrain.enabled:
            from ml.retrain import Retrainer  # torch and MLflow load only when retraining is on

            self.retrainer = Retrainer(spark, config)

    def stop(self, why: str = "asked") -> None:
        """Ask every flow to stop after its current batch (thread-safe)."""
        self.stopped_by = self.stopped_by or why
        self._stop.set()

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """Start every flow and keep them running until stopped or none is left. Exit code."""
        recorder = self.recorder = ProgressRecorder(self.spark, self.config)
        self.spark.streams.addListener(recorder)
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda *_: self.stop("SIGTERM")) if in_main else None
        code = EXIT_OK
        try:
            for key, value in self.config.maintenance.table_properties().items():  # tables made from now on
                self.spark.conf.set(SESSION_DEFAULTS + key.removeprefix("delta."), value)
            if self.maintenance is not None:  # table settings before any stream writes (lakehouse/maintenance.py)
                Maintainer(self.spark, self.config, out=lambda line: print(f"maintenance: {line}", flush=True)).settle()
            recorder.make_tables_beside()
            for run in self.runs.values():
                if run.flow.streaming:
                    self._start(run, recorder)
            try:
                code = self._supervise(recorder)
            except Exception as exc:  # noqa: BLE001 - the queries must still be stopped, below
                first = next((line for line in str(exc).splitlines() if line.strip()), "")
                print(f"lakehouse run: stopping every flow: supervising them failed: {type(exc).__name__}: "
                      f"{redact_text(first)}", file=sys.stderr, flush=True)
                code = EXIT_FAILED
                self.stop("error")
            if self._stop.is_set():
                print(f"lakehouse run: stopping ({self.stopped_by}): each query finishes its batch", flush=True)
            if self.maintenance is not None:
                self.maintenance.stop()  # before the queries: a pass holding a writer lock delays a batch
            self._stop_queries()
            code = max(code, self._check_queries())
            if self.retrainer is not None:
                self.retrainer.wait()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            for run in self.runs.values():
                if run.query is not None:
                    recorder.wait_terminated(str(run.query.id), timeout=30)
            self._print_progress(recorder, final=True)
            recorder.flush()
            self.spark.streams.removeListener(recorder)
            self.publish_state(stopped=True)
        return code

    def _supervise(self, recorder: ProgressRecorder) -> int:
        """The loop: until stopped or no flow is left, mark ended queries, restart what is due,
        rebuild batch tables, retrain, maintain, print and record progress. Its exit code so far."""
        code, flushed, published = EXIT_OK, time.monotonic(), 0.0
        while not self._stop.is_set() and self._live():
            try:
                self._stop.wait(POLL_SECONDS)
            except KeyboardInterrupt:
                self.stop("SIGINT")
            code = max(code, self._check_queries())
            self._restart_due()
            self._rebuild_batch_tables()
            if self.retrainer is not None:
                self.retrainer.poll()
            if self.maintenance is not None:
                self.maintenance.poll()
            self._print_progress(recorder)
            if time.monotonic() - flushed >= self.config.streaming.progress_flush_seconds:
                recorder.flush()
                flushed = time.monotonic()
            if time.monotonic() - published >= PUBLISH_SECONDS:
                self.publish_state()
                published = time.monotonic()
        return code

    def publish_state(self, stopped: bool = False) -> None:
        """Each flow's state and last error for `lakehouse ui` (lakehouse/run_state.py)."""
        publish(self.config, {flow_id: {"state": run.state, "error": run.error, "restarts": run.restarts}
                              for flow_id, run in self.runs.items()}, stopped)

    def _print_progress(self, recorder: ProgressRecorder, final: bool = False) -> None:
        """A line per finished batch; on a terminal, a line per flow once per interval instead."""
        if self.report is None:
            print_batches(recorder.drain())
            return
        self.report.add(recorder.drain())
        if self.report.due() or final:
            for line in self.report.lines(recorder.resolve_freshness()):
                print(line, flush=True)

    def _live(self) -> bool:
        return any(run.state in LIVE for run in self.runs.values())

    def _start(self, run: FlowRun, recorder: ProgressRecorder) -> None:
        flow, layer = run.flow, RUNNERS[run.flow.kind]
        announce(self.config, flow)
        recorder.watch(flow.query_name, flow.checkpoint)
        context = self.spark.sparkContext
        # A query's jobs run in the pool of the thread that started it.
        context.setLocalProperty("spark.scheduler.pool", flow.id)
        try:
            run.query = layer.start(self.spark, self.config, flow, self.trigger)
        finally:
            context.setLocalProperty("spark.scheduler.pool", None)
        run.state = "running"

    def _check_queries(self) -> int:
        """Mark each query that has ended; a failed one stops the flows that read it."""
        code = EXIT_OK
        for run in self.runs.values():
            if run.query is None or run.state != "running" or run.query.isActive:
                continue
            error = run.query.exception()
            if error is None:
                run.state = "stopped"
                continue
            own = batch_error(str(run.query.id))  # the project's own error: no restart gets past it
            run.error = redact_text(failure_summary(error, own))
            fatal = next((why for text, why in FATAL_MESSAGES.items() if text in str(error)), None)
            if fatal:
                print(f"lakehouse run: stopping every flow: {fatal} ({run.flow.id}: {run.error})",
                      file=sys.stderr, flush=True)
                run.state, code = "failed", EXIT_FAILED
                self.stop("fatal")
                continue
            if own is None and run.restarts < self.config.run.max_restarts:
                delay = min(duration_seconds(self.config.run.backoff) * 2 ** run.restarts, MAX_BACKOFF_SECONDS)
                run.state, run.restart_at = "waiting", time.monotonic() + delay
                print(f"{run.flow.id}: failed ({run.error}); restarting from its checkpoint in {delay:.0f}s "
                      f"(restart {run.restarts + 1} of at most {self.config.run.max_restarts})", flush=True)
                continue
            run.state, code = "failed", EXIT_FAILED
            print(f"lakehouse: {run.flow.id} failed: {run.error}", file=sys.stderr, flush=True)
            readers = [self.runs[r.id] for r in self.pipeline.downstream(run.flow)
                       if r.id in self.runs and self.runs[r.id].state not in ("failed", "stopped")]
            for reader in readers:
                print(f"{reader.flow.id}: stopping, it reads {run.flow.id}", flush=True)
            self._stop_flows(readers)
        return code

    def _restart_due(self) -> None:
        for run in self.runs.values():
            if run.state == "waiting" and time.monotonic() >= run.restart_at:
                run.restarts += 1
                self._start(run, self.recorder)

    def _stop_flow(self, run: FlowRun) -> None:
        try:
            if run.query is not None and run.query.isActive:
                _after_current_batch(run.query)
        except Exception as exc:  # noqa: BLE001 - reported; the other flows are stopped all the same
            run.error = redact_text(failure_summary(exc))
            print(f"lakehouse: {run.flow.id}: stopping it failed: {run.error}", file=sys.stderr, flush=True)
        run.state = "stopped"

    def _stop_flows(self, runs: list[FlowRun]) -> None:
        """Stop these flows, each after its current batch, all at once: the wait is one batch, not
        one per flow. The order does not matter: flows meet only in Delta tables, and a reader
        whose input stops first just sees no new commits."""
        with ThreadPoolExecutor(max_workers=max(1, len(runs)), thread_name_prefix="stop") as pool:
            list(pool.map(self._stop_flow, runs))

    def _stop_queries(self) -> None:
        self._stop_flows([run for run in self.runs.values() if run.state in LIVE])

    # -- batch gold tables ------------------------------------------------------------------
    def _rebuild_batch_tables(self) -> None:
        """Rebuild each batch table whose inputs have new versions, at most every refresh."""
        for run in self.runs.values():
            flow = run.flow
            if flow.streaming or run.state in ("failed", "stopped"):
                continue
            # Inputs are looked at once per refresh (each look reads their Delta logs), not per poll.
            refresh = max(duration_seconds(self.config.gold_table(flow.name).refresh), POLL_SECONDS)
            if run.checked_at is not None and time.monotonic() - run.checked_at < refresh:
                continue
            run.checked_at = time.monotonic()
            versions = self._input_versions(flow)
            if versions is None or versions == run.built_from:
                run.state = "idle"
                continue
            run.state = "building"
            try:
                built = RUNNERS[flow.kind].build(self.spark, self.config, flow)
            except Exception as exc:  # noqa: BLE001 - one table's failure is reported; the other flows go on
                run.state, run.error = "failed", redact_text(failure_summary(exc))
                print(f"lakehouse: {flow.id} failed: {run.error}", file=sys.stderr, flush=True)
                continue
            print(f"{flow.id}: {built.describe()}", flush=True)
            run.built_from, run.state = built.inputs, "idle"

    def _input_versions(self, flow: Flow) -> dict[str, int] | None:
        """Each input's newest Delta version; None while an input does not exist yet."""
        versions = {}
        for table in flow.inputs:
            ref = resolve_table(self.config, table)
            if not table_exists(self.spark, ref):
                return None
            versions[ref.name] = last_commit(self.spark, ref).version
        return versions


class ScheduledMaintenance:
    """`lakehouse run`'s maintenance: a pass every ``maintenance.interval`` (the first one interval
    after the start), in a thread whose Spark jobs go to scheduler pool ``maintenance``, while
    the streams go on. A table's clean-up (retention, VACUUM) runs at most every
    ``maintenance.cleanup_every`` (:attr:`cleaned`): in the first pass, unless ops.maintenance
    shows one done within that time (a restarted run). One pass at a time; a stop ends a
    pass after the step it is in, and cancels that step's Spark jobs (its job group) when it
    takes longer than STOP_WAIT_SECONDS
    (an OPTIMIZE of a large table: cancelled, it commits nothing, and the files it wrote are
    VACUUM's). A step waiting for a table's writer lock stops waiting at once."""

    STOP_WAIT_SECONDS = 30.0

    def __init__(self, spark: SparkSession, config: LakehouseConfig):
        self.spark, self.config = spark, config
        self.every = duration_seconds(config.maintenance.interval)
        self.next_at = time.monotonic() + self.every
        self.halt = threading.Event()
        self.thread: threading.Thread | None = None
        self.passes: list[list[Step]] = []  # the steps of each finished pass
        self.cleaned: dict[str, float] | None = None  # table -> when its clean-up last completed (Maintainer)
        self.job_group = f"lakehouse-maintenance-{uuid.uuid4().hex[:8]}"

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def poll(self) -> None:
        if self.busy or self.halt.is_set() or time.monotonic() < self.next_at:
            return
        self.thread = threading.Thread(target=self._pass, name="lakehouse-maintenance", daemon=True)
        self.thread.start()

    def _pass(self) -> None:
        context = self.spark.sparkContext
        context.setLocalProperty("spark.scheduler.pool", MAINTENANCE_POOL)
        started = time.monotonic()
        try:
            print("maintenance: a pass over every table begins; the flows go on", flush=True)
            if self.cleaned is None:
                self.cleaned = self._cleaned_before()
            steps = Maintainer(self.spark, self.config, stop=self.halt, settings_step=False, job_group=self.job_group,
                               cleaned=self.cleaned,
                               out=lambda line: print(f"maintenance: {line}", flush=True)).run()
            self.passes.append(steps)
            print_steps(steps, dry_run=False, prefix="maintenance: pass done in "
                        f"{time.monotonic() - started:.0f}s:")
        except Exception as exc:  # noqa: BLE001 - a failed pass never stops the streaming flows
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            print(f"maintenance: the pass failed: {type(exc).__name__}: {redact_text(first)}", flush=True)
        finally:
            context.setLocalProperty("spark.scheduler.pool", None)
            self.next_at = time.monotonic() + self.every

    def _cleaned_before(self) -> dict[str, float]:
        """The clean-ups ops.maintenance shows within maintenance.cleanup_every, on the monotonic clock."""
        every = self.config.maintenance.cleanup_every
        if every is None:
            return {}
        now, wall = time.monotonic(), datetime.now(timezone.utc)
        try:
            done = recent_cleanups(self.spark, self.config, duration_seconds(every))
        except Exception as exc:  # noqa: BLE001 - an unreadable record means clean-up is due
            print(f"maintenance: ops.maintenance unreadable ({type(exc).__name__}); every table's clean-up is due",
                  flush=True)
            return {}
        return {name: now - max(0.0, (wall - at).total_seconds()) for name, at in done.items()}

    def stop(self) -> None:
        """End a pass in progress after its current step, and wait for it (cancelling the step's
        Spark jobs after STOP_WAIT_SECONDS)."""
        self.halt.set()
        if not self.busy:
            return
        print("maintenance: the pass in progress ends after its current step", flush=True)
        self.thread.join(self.STOP_WAIT_SECONDS)
        if self.busy:
            print(f"maintenance: its step runs longer than {self.STOP_WAIT_SECONDS:.0f}s; cancelling its Spark jobs",
                  flush=True)
        while self.busy:  # again each second: a step can start another job (an OPTIMIZE's next bin)
            self.spark.sparkContext.cancelJobGroup(self.job_group)
            self.thread.join(1.0)


def _after_current_batch(query: StreamingQuery) -> None:
    """Stop the query once the batch it is running now has finished (at most
    BATCH_END_WAIT_SECONDS). The next batch may have begun by then, when input keeps arriving:
    stopping interrupts it, and it is redone on restart like any unfinished batch."""
    deadline = time.monotonic() + BATCH_END_WAIT_SECONDS
    running = _last_batch_id(query)
    while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
        if _last_batch_id(query) != running:  # that batch's progress has come: it is done
            break
        time.sleep(0.1)
    query.stop()


def _last_batch_id(query: StreamingQuery) -> int | None:
    progress = query.lastProgress
    return progress["batchId"] if progress else None
