"""The MLflow run's git_commit tag: the commit passed in ($LAKEHOUSE_GIT_COMMIT, which the bundle
sets to ${bundle.git.commit}), else `git rev-parse HEAD` of a checkout, else "unknown"."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ml import tracking

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_git_commit_prefers_the_commit_passed_in(monkeypatch, tmp_path):
    monkeypatch.setenv("LAKEHOUSE_GIT_COMMIT", COMMIT)
    assert tracking.git_commit() == COMMIT

    # Not given (unset or blank): the checkout's HEAD, as git tells it.
    monkeypatch.setenv("LAKEHOUSE_GIT_COMMIT", "  ")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(tracking.__file__).resolve().parent).stdout.strip()
    assert tracking.git_commit() == (head or "unknown")
    monkeypatch.delenv("LAKEHOUSE_GIT_COMMIT")
    assert tracking.git_commit() == (head or "unknown")

    # An installed wheel: no repository around the package, then no git at all.
    monkeypatch.setattr(tracking, "__file__", str(tmp_path / "site-packages" / "ml" / "tracking.py"))
    (tmp_path / "site-packages" / "ml").mkdir(parents=True)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert tracking.git_commit() == "unknown"
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert tracking.git_commit() == "unknown"
    monkeypatch.setenv("LAKEHOUSE_GIT_COMMIT", COMMIT)
    assert tracking.git_commit() == COMMIT
