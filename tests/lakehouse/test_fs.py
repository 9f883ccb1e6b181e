"""lakehouse/fs.py: the user's cache directory, and the lock processes take to fill it one at a time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lakehouse.fs import one_at_a_time, user_cache

WAITER = """
import sys
from pathlib import Path
from lakehouse.fs import one_at_a_time
print("waiting", flush=True)
with one_at_a_time(Path(sys.argv[1]), "another holds it"):
    print("holding", flush=True)
"""


def test_the_cache_is_under_xdg_cache_home_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache("jars-x.txt") == tmp_path / "lakehouse" / "jars-x.txt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache().parts[-2:] == (".cache", "lakehouse")


def test_a_second_process_takes_the_lock_only_once_the_first_lets_go(tmp_path):
    lock = tmp_path / "made" / "by-the-lock" / "resolving.lock"  # its folders are made too
    with one_at_a_time(lock):
        waiter = subprocess.Popen([sys.executable, "-c", WAITER, str(lock)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert waiter.stdout.readline() == "waiting\n"
        assert waiter.stderr.readline() == f"another holds it (lock: {lock})\n"  # said once it must wait
        try:
            waiter.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass  # still blocked on the lock, as it must be
        assert waiter.returncode is None
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0 and out == "holding\n"
    with one_at_a_time(lock):  # released by the process's exit: taken again at once
        pass


def test_without_a_writable_folder_the_block_runs_unlocked(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ran = []
    with one_at_a_time(blocker / "resolving.lock"):  # its folder would be a file
        ran.append(True)
    assert ran == [True]
    # an error inside the block comes out as itself, not as raised while handling the OSError
    with pytest.raises(KeyError) as raised, one_at_a_time(blocker / "resolving.lock"):
        raise KeyError("mine")
    assert raised.value.__context__ is None
