"""Pid files of the local services the project's scripts start (Kafka broker, Spark standalone
master and workers), and the check that a pid still names the process that was started.

A pid file left behind by a crash (or a reboot) may hold a pid the system has since given to
another process. Before a script signals it, :func:`started_process` checks that the process's
command line contains what the script started it with, and, where the system says when a process
started (Linux: ``/proc/<pid>/stat``), that it is the same process: otherwise the pid file is
stale and nothing is signalled. A stop that waits for the process to exit after SIGTERM asks
:func:`still_running` with the start time it saw, not just whether the pid exists: a service
that is not the stopping process's child is reaped by init as soon as it exits, its pid can then
be given to another process within the wait (pids wrap at 32,768 on many Linux systems), and the
SIGKILL after the wait would reach that one, or the process group it leads.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def command_line(pid: int) -> str | None:
    """The process's command line (arguments joined by spaces), or None when there is no such process."""
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.parent.is_dir():
        try:
            return proc.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            return None
    if not Path("/proc/self").is_dir():  # no /proc (macOS): ask ps
        result = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        return result.stdout.strip() or None
    return None


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command's name (field 3 first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def session_processes(session: int, name: str) -> list[int]:
    """Pids of the processes called ``name`` (``java``) in a process session (Linux /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        try:
            command = (entry / "comm").read_text().strip()
        except OSError:  # gone meanwhile
            continue
        if fields and command == name and int(fields[3]) == session:  # state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


def start_time(pid: int) -> str | None:
    """When the process started, in the system's clock ticks since boot (Linux), else None."""
    fields = _stat(pid)
    return fields[19] if fields else None  # field 22


def still_running(pid: int, started: str | None) -> bool:
    """Whether ``pid`` is still the process whose :func:`start_time` was ``started`` and has not
    exited: False for an exited one (also a zombie waiting to be reaped) and for another process
    that has since been given the pid. Without /proc, whether the pid exists."""
    if started is None:
        if Path("/proc/self/stat").is_file():
            return False  # /proc had no start time for it: it was gone already
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == started


def write_pid_file(path: Path, pid: int) -> None:
    """``<pid> <start time>`` (the start time where the system tells it)."""
    path.write_text(f"{pid} {start_time(pid) or ''}".strip() + "\n")


def started_process(path: Path, expect: str) -> int | None:
    """The pid in ``path`` when that process still runs and is the one started (its command line
    contains ``expect``, its start time is the recorded one); None for a missing or stale file."""
    try:
        fields = path.read_text().split()
        pid = int(fields[0])
    except (OSError, ValueError, IndexError):
        return None
    cmdline = command_line(pid)
    if not cmdline or expect not in cmdline:
        return None
    if len(fields) > 1 and start_time(pid) not in (None, fields[1]):
        return None  # the pid was given to another process since
    return pid
