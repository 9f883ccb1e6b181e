"""The pipeline on a real Spark standalone cluster (a master and two workers on 127.0.0.1, started
by scripts/standalone_cluster.py): spark-submit runs the pipeline (bronze -> silver -> gold in
one application, spark_jobs/pipeline.py), then Horovod training with two processes; both workers
executed tasks, the tables reconcile, the run is in MLflow, and the cluster is stopped even when
the test fails."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from lakehouse.config import load_config
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.reconcile import reconcile
from lakehouse.session import delta_maven_coordinate
from tests.conftest import CONF_DIR, REPO

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
SCRIPT = REPO / "scripts" / "standalone_cluster.py"


@pytest.fixture
def cluster(tmp_path):
    state = tmp_path / "cluster"
    started = subprocess.run([sys.executable, str(SCRIPT), "start", "--state-dir", str(state), "--memory", "1500m"],
                             capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield (state / "master_url").read_text().strip(), state
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "stop", "--state-dir", str(state)], timeout=60)


def _workers_that_ran_tasks(event_dir: Path) -> set[str]:
    """Per application event log: executor -> its worker (the port of its log URL), then tasks per executor."""
    workers = set()
    for log in (p for p in event_dir.rglob("*") if p.is_file() and not p.name.startswith(("appstatus", "."))):
        executor_worker, tasks = {}, defaultdict(int)
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["Event"] == "SparkListenerExecutorAdded":
                url = event["Executor Info"]["Log Urls"].get("stdout", "")
                executor_worker[event["Executor ID"]] = re.search(r"//[^/]+:(\d+)/", url).group(1)
            elif event["Event"] == "SparkListenerTaskEnd":
                tasks[event["Task Info"]["Executor ID"]] += 1
        workers |= {executor_worker[e] for e, n in tasks.items() if n and e in executor_worker}
    return workers


def test_pipeline_and_horovod_training_on_a_standalone_cluster(spark, cluster, tmp_path, subprocess_env):
    master, state = cluster
    data = tmp_path / "data"
    config = load_config("test", conf_dir=CONF_DIR, data_dir=data)
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=5), landing, "telemetry", "c", 5, 8000, 4)
    events = tmp_path / "events"
    events.mkdir()
    jvm_options = config.spark.conf["spark.driver.extraJavaOptions"]

    def submit(script: str, *args: str) -> str:
        command = [str(Path(sys.executable).parent / "spark-submit"), "--master", master,
                   "--packages", delta_maven_coordinate(), "--total-executor-cores", "2", "--executor-cores", "1",
                   "--executor-memory", "1g", "--conf", "spark.eventLog.enabled=true",
                   # the test overlay's JVM options, for the driver spark-submit starts and the executors
                   "--driver-java-options", jvm_options, "--conf", f"spark.executor.extraJavaOptions={jvm_options}",
                   # one plain JSON-lines file per application, to read back below
                   "--conf", "spark.eventLog.compress=false", "--conf", "spark.eventLog.rolling.enabled=false",
                   "--conf", f"spark.eventLog.dir={events.as_uri()}", f"spark_jobs/{script}", *args,
                   "--env", "test", "--data-dir", str(data)]
        result = subprocess.run(command, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        return result.stdout

    # every flow of the pipeline in one application, inputs first (the per-layer jobs: test_spark_submit)
    flows = submit("pipeline.py", "--once")
    assert "bronze_telemetry: done" in flows and "silver_telemetry: done" in flows, flows[-3000:]
    assert "gold_telemetry_minute: done" in flows and "gold.telemetry_features: version 0" in flows, flows[-3000:]
    trained = submit("train_model.py", "--backend", "horovod", "--num-proc", "2", "--epochs", "3")
    run_id = re.search(r"^run (\w+) in experiment", trained, re.M).group(1)

    assert len(_workers_that_ran_tasks(events)) == 2  # both workers executed tasks
    assert reconcile(spark, config, "telemetry").holds

    import mlflow

    from ml.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(config))
    run = mlflow.get_run(run_id)
    assert run.data.params["backend"] == "horovod" and run.data.params["processes"] == "2"
    assert run.data.metrics["val_rmse"] < run.data.metrics["baseline_rmse"]
