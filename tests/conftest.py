"""Shared fixtures: one Spark session for the whole run, and a fresh test configuration per test."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse.config import LakehouseConfig, load_config

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"


@pytest.fixture(scope="session", autouse=True)
def _the_default_scenario():
    """Tests name a scenario where they want one: a $LAKEHOUSE_SCENARIO of the shell running
    them (the README exports it for the chat scenario) would change every other test's tables."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("LAKEHOUSE_SCENARIO", raising=False)
        yield


@pytest.fixture(scope="session", autouse=True)
def _spark_jvm_in_a_session_of_its_own():
    """The shared session's JVM in a session (so a process group) of its own. pyspark starts it in
    the test run's group, where a SIGTERM or SIGHUP sent to the group (a time limit's `kill 0`, a
    closed terminal) stops it; and as long as Horovod's handler swallowed pytest's own SIGTERM
    (see ml.run._signal_handlers_kept), the run went on without it, failing every later Spark
    test. Out of the group the JVM gets no such signal: pytest stops, and the JVM follows, as it
    exits when its stdin pipe from pytest closes (and when pytest is killed)."""
    import pyspark.java_gateway

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pyspark.java_gateway, "Popen", functools.partial(subprocess.Popen, start_new_session=True))
        yield


# The shared session's JVM lives for the whole suite (about half an hour), unlike the commands the
# tests start (seconds to minutes), which keep the test overlay's C1 compiler alone: for it, tiered
# compilation (C2 for its hot code) pays for itself. With it and the parallel collector (the dev
# overlay's), the whole suite took 32:35 against 39:04 (bench/RESULTS.md, thirteenth round). The
# code cache is tiered compilation's default (240 MiB), the size the test overlay asks of C1.
SHARED_JVM_OPTIONS = "-XX:+UseParallelGC"


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """The one in-process Spark session (local[2], Delta), shared by every test that needs it."""
    from lakehouse.session import DRIVER_OPTIONS, build_session

    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path_factory.mktemp("session"))
    config.spark.conf[DRIVER_OPTIONS] = SHARED_JVM_OPTIONS
    session = build_session(config)
    yield session
    session.stop()


@pytest.fixture
def conf_copy(tmp_path) -> Path:
    """A copy of the repository's conf/ to edit (bad-configuration tests)."""
    target = tmp_path / "conf"
    shutil.copytree(CONF_DIR, target)
    return target


def edit_conf(path: Path, old: str, new: str) -> None:
    """Replace the first ``old`` in a copied configuration file (which must hold it)."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def config(tmp_path) -> LakehouseConfig:
    """The test environment's configuration with its own data directory."""
    return load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data")


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """mlflow.set_tracking_uri writes $MLFLOW_TRACKING_URI (for subprocesses): keep one test's store
    from becoming the next one's default, in this process and in the jobs it starts."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def subprocess_env() -> dict:
    """Environment for child jobs: this interpreter for Spark's Python, the repo's conf."""
    env = dict(os.environ)
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["LAKEHOUSE_CONF_DIR"] = str(CONF_DIR)
    env.pop("LAKEHOUSE_ENV", None)
    env.pop("LAKEHOUSE_SCENARIO", None)
    env.pop("MLFLOW_TRACKING_URI", None)  # each job's store is the one of its --data-dir
    return env


TRAINED_EPOCHS = 12


@pytest.fixture(scope="session")
def trained(spark, tmp_path_factory):
    """A feature table from 15,000 generated readings, and one local training run on it (its
    champion): (config, the run's summary). Shared by the training tests and the operations page's."""
    from lakehouse.generator import TelemetryGenerator
    from lakehouse.generator_runs import generate_batch
    from lakehouse.runner import run_flow, run_flows
    from ml.run import run_training

    once = {"availableNow": True}
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path_factory.mktemp("training") / "data")
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=11), landing, "telemetry", "t", 11, 15000, 4)
    assert run_flow(spark, config, "bronze.telemetry", once) == 0
    assert run_flow(spark, config, "silver.telemetry", once) == 0
    assert run_flows(spark, config, [f"gold.{name}" for name in config.gold], once) == 0
    local = run_training(spark, config, "local", 1, gpu=False, force=False, epochs=TRAINED_EPOCHS)
    return config, local


@pytest.fixture(scope="session")
def chat_refined(spark, tmp_path_factory):
    """3,000 generated chat messages (a fifth of them faulty) through bronze and silver:
    (config, the generator's manifest). Shared by the chat scenario's silver and gold tests."""
    from lakehouse.chat_generator import ChatGenerator
    from lakehouse.generator_runs import generate_batch
    from lakehouse.runner import run_flow

    once = {"availableNow": True}
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path_factory.mktemp("chat") / "data", scenario="chat")
    landing = Path(config.landing_path("chat"))
    landing.mkdir(parents=True)
    generator = ChatGenerator.from_config(config.generator, seed=13, fault_rate=0.2)
    manifest = generate_batch(generator, landing, "chat", "c13", 13, 3000, 2)
    assert run_flow(spark, config, "bronze.chat", once) == 0
    assert run_flow(spark, config, "silver.chat", once) == 0
    return config, manifest
