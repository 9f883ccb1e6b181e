"""Running steps of one job in threads of their own, each carrying the caller's Spark local
properties (its scheduler pool, job group and description): :func:`at_once` for independent
steps run together and waited for, :func:`in_background` for one step waited for later
(:func:`start_beside`: by a streaming query started meanwhile), :class:`Behind` for steps run one
after another while the caller goes on.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery
from pyspark.util import inheritable_thread_target

from lakehouse.redaction import redact_text


def _session() -> SparkSession | None:
    """The thread's active session, else the application's default one (a streaming query's
    foreachBatch runs in a thread with none active)."""
    try:
        return SparkSession.active()
    except Exception:  # noqa: BLE001 - no session at all: the steps need none from here
        return None


def _carrying(step: Callable[[], object]) -> Callable[[], object]:
    """``step``, to be run in another thread with this thread's local properties. They are copied
    now, for this step alone: steps that share one copy would set each other's SQL execution id."""
    # With the session named, its job tags are inherited too (and pyspark does not warn that they are not).
    session = _session()
    inherit = inheritable_thread_target(session) if session is not None else inheritable_thread_target
    if inherit is session:  # threads not pinned to JVM threads: nothing to inherit
        return step
    return inherit(step)


def at_once(*steps: Callable[[], object]) -> list:
    """Run independent steps (commits to different tables, say) in threads at once; their results,
    in order. A Delta commit is mostly the driver's round trips to the log, so a few of them take
    little longer together than one. Each thread's Spark jobs carry the caller's local properties.
    The first error is raised once every step has ended; any others are printed."""
    if len(steps) <= 1:
        return [step() for step in steps]
    with ThreadPoolExecutor(max_workers=len(steps), thread_name_prefix="at-once") as pool:
        futures = [pool.submit(_carrying(step)) for step in steps]
    errors = [future.exception() for future in futures if future.exception() is not None]
    for extra in errors[1:]:
        _print_beside(extra)
    if errors:
        raise errors[0]
    return [future.result() for future in futures]


def in_background(step: Callable[[], object], name: str) -> Future:
    """Start ``step`` in a thread of its own (a daemon, named ``name``) with this thread's local
    properties; its future, which holds its result or its error (whatever the thread raised, the
    setting of the properties included, so a wait on it always ends)."""
    target = _carrying(step)  # the properties are copied here, in the caller's thread
    future: Future = Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            future.set_result(target())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class Behind:
    """Steps run in the background one after another, each once the one before has ended, while
    the caller goes on; :meth:`wait` waits for them all. ``lakehouse run --once`` writes a flow's
    last progress rows (a second of small commits) while the next flow runs (lakehouse/runner.py)."""

    def __init__(self, name: str):
        self.name = name
        self._steps: list[Future] = []

    def add(self, step: Callable[[], object]) -> None:
        before = self._steps[-1] if self._steps else None

        def after_the_one_before() -> object:
            if before is not None:
                wait([before])  # its error is raised by wait(), not here
            return step()

        self._steps.append(in_background(after_the_one_before, f"{self.name}-{len(self._steps)}"))

    def wait(self, raising: bool = True) -> None:
        """Wait for every step; the first error is raised (``raising``; else printed, as the others are)."""
        steps, self._steps = self._steps, []
        errors = [error for error in (step.exception() for step in steps) if error is not None]
        for extra in errors[1 if raising else 0:]:
            _print_beside(extra)
        if errors and raising:
            raise errors[0]


class NotReadyError(RuntimeError):
    """What a flow's start made in the background (:func:`start_beside`) failed: a batch waiting
    for it fails with this; the start raises the original error."""


def await_ready(ready: Future) -> None:
    """In a micro-batch of a query started by :func:`start_beside`: wait for what it needs."""
    try:
        ready.result()
    except BaseException as exc:
        raise NotReadyError(f"the flow's start failed: {type(exc).__name__}") from exc


def start_beside(start: Callable[[], StreamingQuery], ready: Future) -> StreamingQuery:
    """Start a streaming query (``start()``) while ``ready`` is under way (what its batches need,
    its tables say, begun by :func:`in_background`; its batches begin with :func:`await_ready`),
    and return it once that has ended too: a flow's tables exist once it has started, whether or
    not a batch comes. If ``ready`` failed, the query is stopped and that error raised; if the
    start failed, its own error, once ``ready`` has ended (an error of ``ready``'s is printed)."""
    try:
        query = start()
    except BaseException:
        wait([ready])
        if ready.exception() is not None:
            _print_beside(ready.exception())
        raise
    try:
        ready.result()
    except BaseException:
        with contextlib.suppress(Exception):  # the error to raise is ready's, not the stop's
            query.stop()
        raise
    return query


def _print_beside(extra: BaseException) -> None:
    print(f"lakehouse: a step run beside another that failed failed too: {type(extra).__name__}: "
          f"{redact_text(str(extra).splitlines()[0] if str(extra) else '')}", file=sys.stderr, flush=True)
