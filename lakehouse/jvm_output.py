"""What the Spark JVM prints, kept to what a user needs: quiet by default, everything with --verbose.

A command that starts Spark here (pyspark launches the JVM through spark-submit) used to print,
before its own output, Ivy's dependency resolution on a machine whose cache lacks the jars
(about 60 lines: ":: loading settings ::", "found io.delta#...", "downloading ...", the
resolution report's module table), then Spark's start-up notices ("Using Spark's default log4j
profile", "Setting default log level", the NativeCodeLoader warning, the JVM's note on its
incubator modules); and while table maintenance runs, the line Delta's VACUUM prints for each
table, which maintenance's own report line says already. :func:`launch_gateway` starts the JVM with
its output through :class:`OutputFilter`, which drops those and passes every other line on:
errors, a failed resolution (its whole report), and whatever the Python workers print.

``lakehouse --verbose`` (or ``LAKEHOUSE_VERBOSE=1``) shows everything, and leaves Spark's log
level at WARN instead of ERROR (lakehouse/session.py). Under spark-submit or on Databricks the
launcher started the JVM first: its output is the launcher's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

from lakehouse.redaction import redact_text

VERBOSE_ENV = "LAKEHOUSE_VERBOSE"

# Spark's start-up notices: one line each.
NOTICES = re.compile(
    r"^(?:WARNING: Using incubator modules: jdk\.incubator\.vector"
    r"|Using Spark's default log4j profile: .*"
    r"|Setting default log level to .*"
    r"|To adjust logging level use sc\.setLogLevel\(newLevel\).*"
    r"|\S+ \S+ WARN NativeCodeLoader: Unable to load native-hadoop library.*"
    r"|\S+ \S+ WARN Utils: Your hostname, .* resolves to a loopback address.*"
    r"|\S+ \S+ WARN Utils: Set SPARK_LOCAL_IP if you need to bind to another address.*)$")
# Delta's VACUUM prints how many files it deleted to the console; maintenance reports the
# same step in a line of its own (lakehouse/maintenance.py).
DELTA_VACUUM_ECHO = re.compile(r"^Deleted \d+ files and directories in a total of \d+ directories\.\s*$")
# Ivy's resolution report: it starts with one of these lines and ends with the retrieve's line.
IVY_START = re.compile(r"^(?::: loading settings :: |Ivy Default Cache set to: )")
IVY_END = re.compile(r"^\s*\d+ artifacts copied, \d+ already retrieved")
# A report that failed is shown whole: Spark's own error follows it.
IVY_FAILED = re.compile(r"UNRESOLVED DEPENDENCIES|FAILED DOWNLOADS|SERVER ERROR|module not found|::::::::::")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")


class OutputFilter:
    """Line by line: what to show of the JVM's output (:meth:`feed` returns the lines to print)."""

    def __init__(self):
        self.ivy: list[str] | None = None  # the report being held back, while in it

    def feed(self, line: str) -> list[str]:
        """The lines to show now, each with any URI's user info and secret values redacted (a log
        line of the JVM may quote a path as the user wrote it: lakehouse.redaction)."""
        return [redact_text(shown) for shown in self._feed(line)]

    def _feed(self, line: str) -> list[str]:
        text = line.rstrip("\n")
        if self.ivy is not None:
            self.ivy.append(line)
            if IVY_END.match(text):
                held, self.ivy = self.ivy, None
                return held if any(IVY_FAILED.search(held_line) for held_line in held) else []
            return []
        if IVY_START.match(text):
            self.ivy = [line]
            return []
        return [] if NOTICES.match(text) or DELTA_VACUUM_ECHO.match(text) else [line]

    def end(self) -> list[str]:
        """At the stream's end: a report never finished (resolution failed mid-way) is shown whole."""
        held, self.ivy = self.ivy or [], None
        return [redact_text(shown) for shown in held]


def _write(name: str, line: str) -> None:
    """To this process's stdout or stderr as it is now (a test harness swaps them), else the original."""
    for out in (getattr(sys, name), getattr(sys, f"__{name}__")):
        try:
            out.write(line)
            out.flush()
            return
        except (OSError, ValueError, AttributeError):  # closed, or gone at exit
            continue


def _pump(stream, name: str) -> None:
    """Copy the JVM's ``stream`` to this process's ``name`` (stdout, stderr) through a filter,
    until the JVM closes it; it never stops reading before (a full pipe would block the JVM)."""
    lines = OutputFilter()
    try:
        for line in iter(stream.readline, ""):
            for shown in lines.feed(line):
                _write(name, shown)
    except (OSError, ValueError):  # the pipe closed under us at exit
        return
    for shown in lines.end():
        _write(name, shown)


def launch_gateway(conf):
    """pyspark's launch_gateway with the JVM's stdout and stderr through :class:`OutputFilter`
    (threads copy them to this process's; they end with the JVM)."""
    from pyspark import java_gateway

    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "errors": "replace", "bufsize": 1}
    pumps: list[threading.Thread] = []
    original = java_gateway.Popen

    def popen(*args, **kwargs):  # the pumps start with the process, before pyspark waits on its port
        process = original(*args, **kwargs)
        for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            pumps.append(threading.Thread(target=_pump, args=(stream, name), daemon=True, name="jvm-output"))
            pumps[-1].start()
        return process

    java_gateway.Popen = popen
    try:
        return java_gateway.launch_gateway(conf, popen_kwargs=streams)
    except Exception:
        for pump in pumps:  # the JVM exited: what it said (a failed resolution, say) before the error
            pump.join(timeout=10)
        raise
    finally:
        java_gateway.Popen = original
