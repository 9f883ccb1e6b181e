"""The job scripts under pyspark's own spark-submit, and the demo end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.cli import main
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.session import delta_maven_coordinate
from lakehouse.tables import bronze_table, read_table, resolve_table
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _spark_submit(script: str, args: list[str], config, env) -> subprocess.CompletedProcess:
    spark_submit = Path(sys.executable).parent / "spark-submit"
    return subprocess.run(
        # the test overlay's JVM options: spark-submit starts the driver before the job reads them
        [str(spark_submit), "--master", "local[2]", "--packages", delta_maven_coordinate(),
         "--driver-java-options", config.spark.conf["spark.driver.extraJavaOptions"], script, *args,
         "--env", "test", "--data-dir", str(config.storage.data_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


def _downloads(result: subprocess.CompletedProcess) -> list[str]:
    """What spark-submit's Ivy resolution fetched from a repository (one line per artifact)."""
    return [line.strip() for line in (result.stdout + result.stderr).splitlines() if "downloading http" in line]


def test_spark_submit_bronze_silver_gold(spark, config, subprocess_env):
    g = config.generator
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    generator = TelemetryGenerator.from_config(g, seed=2, fault_rate=0.05)
    manifest = generate_batch(generator, landing, "telemetry", "submit", 2, 1500, 3)

    # Bronze is this test's first spark-submit with these --packages, and the one that fills the
    # Ivy cache with what their resolution picks: on a fresh machine it downloads. The in-process
    # session's jars are no warm-up for it: that session resolved other coordinates (Delta and
    # Kafka's connector), so Ivy may have picked other versions of shared dependencies
    # (snappy-java 1.1.10.8 there, 1.1.10.7 here).
    result = _spark_submit("spark_jobs/bronze_ingest.py", ["--source", "telemetry", "--once"], config, subprocess_env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "bronze_telemetry: done" in result.stdout
    assert read_table(spark, bronze_table(config, "telemetry")).count() == manifest.total_lines

    # What matters: once resolved, a job submitted with the same --packages takes them from the
    # local Ivy cache and fetches nothing (no downloads on every run, none needed offline).
    result = _spark_submit("spark_jobs/silver_refine.py", ["--entity", "telemetry", "--once"], config, subprocess_env)
    assert result.returncode == 0 and "silver_telemetry: done" in result.stdout, (result.stdout + result.stderr)[-4000:]
    assert not _downloads(result), _downloads(result)
    result = _spark_submit("spark_jobs/gold_build.py", ["--all"], config, subprocess_env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert not _downloads(result), _downloads(result)
    assert "gold_telemetry_minute: done" in result.stdout and "gold.telemetry_features: version 0" in result.stdout
    assert read_table(spark, resolve_table(config, "gold.telemetry_features")).count() > 0


def test_spark_submit_without_delta_jar_says_what_to_add(config, subprocess_env):
    spark_submit = Path(sys.executable).parent / "spark-submit"
    result = subprocess.run(
        [str(spark_submit), "--master", "local[1]", "spark_jobs/bronze_ingest.py", "--source", "telemetry",
         "--once", "--env", "test", "--data-dir", str(config.storage.data_dir)],
        cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    # spark-submit's Python runner merges the driver's stderr into its stdout
    assert f"--packages {delta_maven_coordinate()}" in result.stdout


def test_demo_runs_end_to_end(spark, config, capsys):
    assert main(["--env", "test", "--data-dir", str(config.storage.data_dir), "demo", "--run-seconds", "12"]) == 0
    out = capsys.readouterr().out
    assert "every line landed exactly once: yes" in out
    assert "reconciled: every bronze row" in out
    bronze = read_table(spark, bronze_table(config, "telemetry"))
    assert bronze.where(F.col("_source_file").contains("-demo-")).count() == config.generator.records
    # 7. always on: the live feed's lines reached bronze, and each table's freshness was printed
    assert "== 7. always on: `lakehouse run --trigger 2s` for 12s" in out
    assert bronze.where(F.col("_source_file").contains("-live-")).count() > 0
    summary = out.split("freshness measured at each commit", 1)[1]
    assert re.search(r"^bronze\.telemetry +\d+ +[\d,]+ +[\d.]+s / [\d.]+s", summary, re.M), summary
    assert "== 5. gold" in out and "a few rows of gold.telemetry_features" in out
    features = read_table(spark, resolve_table(config, "gold.telemetry_features")).count()
    assert features > 0 and f"gold.telemetry_features: {features:,} rows" in out
    assert "== 6. train" in out and re.search(r"^run \w+ in experiment", out, re.M)  # the lines `lakehouse train` prints
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    assert read_table(spark, resolve_table(config, "gold.predictions")).count() == features


@pytest.mark.kafka
def test_demo_from_kafka_starts_and_stops_its_own_broker(spark, config, capsys):
    data = config.storage.data_dir
    argv = ["--env", "test", "--data-dir", str(data), "--set", "generator.records=3000", "demo", "--source", "telemetry_kafka",
            "--run-seconds", "10"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = out.split("freshness measured at each commit", 1)[1]  # the live feed published to the topic
    assert re.search(r"^bronze\.telemetry_kafka +\d+ +[\d,]+ ", summary, re.M), summary
    assert "a local Kafka broker (KRaft)" in out
    assert "published 3,001 messages to telemetry" in out  # with one injected empty message
    assert "every message landed exactly once: yes" in out and "reconciled: every bronze row" in out
    assert read_table(spark, bronze_table(config, "telemetry_kafka")).count() > 3001  # with the live feed
    assert "== 6. train" in out and "gold.predictions:" in out
    assert not (Path(data) / "kafka-broker" / "broker.pid").exists()  # stopped at the end
