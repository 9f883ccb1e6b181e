"""Exit codes, and the one base class of the errors the project raises on purpose.

Exit codes of every command and job: 0 done, 1 the job failed (or a check did not hold),
2 bad configuration or usage, 3 training refused by the quality gate.

Each :class:`LakehouseError` carries its exit code and how the command reports it, so
``lakehouse.cli.main`` maps every error in one place. An error raised inside a streaming query's
micro-batch reaches the job as Spark's StreamingQueryException; :func:`raised_in_batch` keeps the
Python error itself so the job can report it as raised (lakehouse/streaming.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_QUALITY = 0, 1, 2, 3


class LakehouseError(Exception):
    """An error whose message states the whole story: the command prints one line and exits
    with :attr:`exit_code`, no traceback."""

    exit_code = EXIT_FAILED
    # How the command names what happened: "{command} failed", "configuration error", ...
    heading = "{command} failed"
    whole_message = False  # False: the first non-empty line only (a Spark message can be long)

    def report(self, command: str) -> str:
        """The line the command prints (before redaction), after ``lakehouse: ``."""
        lines = [line.rstrip() for line in str(self).splitlines() if line.strip()] or [type(self).__name__]
        text = str(self) if self.whole_message else lines[0]
        return f"{self.heading.format(command=command)}: {text}"


class JobError(LakehouseError, RuntimeError):
    """A job cannot go on, for a reason its message states in full (exit 1)."""


class ConfigError(LakehouseError, ValueError):
    """A configuration problem, located by the file (or option) and the dotted key (exit 2)."""

    exit_code = EXIT_CONFIG
    heading = "configuration error"
    whole_message = True

    def __init__(self, origin: str, key: str, message: str):
        super().__init__(f"{origin}: {key}: {message}")
        self.origin = origin
        self.key = key
        self.message = message


class UsageError(LakehouseError):
    """A command asked for something it cannot do with these options (exit 2); the message is the
    whole line."""

    exit_code = EXIT_CONFIG
    heading = ""
    whole_message = True

    def report(self, command: str) -> str:
        return str(self)


# -- errors raised inside a micro-batch ----------------------------------------------------
# query id -> the LakehouseError a foreachBatch function raised. With classic PySpark (a driver
# JVM started by this process, as here and under spark-submit) foreachBatch functions run in the
# driver's Python process, so the job that started the query finds the error object here; where
# they do not (Spark Connect), the job reports Spark's own first line instead.
_raised: dict[str, LakehouseError] = {}


def batch_query_id(batch) -> str:
    """The id of the streaming query a micro-batch belongs to (Spark's query.id, stable for one
    checkpoint), from inside its foreachBatch function."""
    return str(batch.sparkSession.sparkContext.getLocalProperty("sql.streaming.queryId"))


def raised_in_batch(function: Callable) -> Callable:
    """Wrap a foreachBatch function: a LakehouseError it raises is kept for :func:`batch_error`."""

    @functools.wraps(function)
    def call(batch, batch_id: int):
        try:
            return function(batch, batch_id)
        except LakehouseError as exc:
            _raised[batch_query_id(batch)] = exc
            raise

    return call


def batch_error(query_id: str) -> LakehouseError | None:
    """The LakehouseError a micro-batch of the query raised (taken: asked once)."""
    return _raised.pop(str(query_id), None)
