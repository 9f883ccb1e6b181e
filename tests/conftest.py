"""Shared fixtures: one Spark session for the whole run, and a fresh test configuration per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lakehouse.config import LakehouseConfig, load_config

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """The one in-process Spark session (local[2], Delta), shared by every test that needs it."""
    from lakehouse.session import build_session

    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path_factory.mktemp("session"))
    session = build_session(config)
    yield session
    session.stop()


@pytest.fixture
def config(tmp_path) -> LakehouseConfig:
    """The test environment's configuration with its own data directory."""
    return load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data")


@pytest.fixture
def subprocess_env() -> dict:
    """Environment for child jobs: this interpreter for Spark's Python, the repo's conf."""
    env = dict(os.environ)
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["LAKEHOUSE_CONF_DIR"] = str(CONF_DIR)
    env.pop("LAKEHOUSE_ENV", None)
    return env
