"""Retraining inside `lakehouse run`: due when the feature table has gained enough rows, trained and
scored beside the streaming flows, which keep committing meanwhile."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.app import PipelineApp
from lakehouse.config import load_config
from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.progress import STREAM_PROGRESS_TABLE
from lakehouse.runner import pipeline_flows
from lakehouse.tables import read_table, resolve_table
from ml.retrain import current_champion
from tests.conftest import CONF_DIR
from tests.processes import Lander

pytestmark = pytest.mark.slow


def test_the_run_retrains_scores_and_keeps_ingesting(spark, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data", overrides=[
        "training.retrain.enabled=true", "training.retrain.min_new_rows=100", "training.retrain.check_every=1s",
        "training.epochs=40", "gold.telemetry_features.refresh=0s", "streaming.progress_flush_seconds=2"])
    landing = Path(config.landing_path("telemetry"))
    landing.mkdir(parents=True)
    generate_batch(TelemetryGenerator.from_config(config.generator, seed=21, fault_rate=0.0), landing, "telemetry",
                   "r", 21, 3000, 3)
    lander = Lander(config, interval=0.5, lines=24, fault_rate=0.0)  # files keep landing while it trains
    app = PipelineApp(spark, config, pipeline_flows(config)[0], {"processingTime": "1 second"})
    assert app.retrainer is not None
    failures: list[str] = []

    def stop_after_the_first_attempt() -> None:
        deadline = time.monotonic() + 420
        while not app.retrainer.attempts and time.monotonic() < deadline:
            time.sleep(1)
        if not app.retrainer.attempts:
            failures.append("no training attempt within 420 s")
        app.stop()

    helper = threading.Thread(target=stop_after_the_first_attempt, daemon=True)
    lander.start()
    helper.start()
    try:
        assert app.run() == 0
    finally:
        lander.halt.set()
        lander.join()
    helper.join(timeout=60)
    assert not failures, failures
    # The first attempt; on a slow machine a second may begin (more rows arrived) before the stop.
    attempt = app.retrainer.attempts[0]
    assert "promoted, scored into gold.predictions" in attempt.outcome, attempt
    out = capsys.readouterr().out
    assert re.search(r"^train: retraining on gold\.telemetry_features@v\d+ \(gold\.telemetry_features gained "
                     r"[\d,]+ rows since nothing", out, re.M), out

    champion = current_champion(config)
    features = read_table(spark, resolve_table(config, "gold.telemetry_features"), version=champion.version)
    assert features.count() >= 100  # what made it due
    predictions = read_table(spark, resolve_table(config, "gold.predictions"))
    scored_input = predictions.select("input").distinct().collect()
    assert len(scored_input) == 1
    scored_version = int(scored_input[0]["input"].rsplit("@v", 1)[1])
    scored = read_table(spark, resolve_table(config, "gold.telemetry_features"), version=scored_version).count()
    assert predictions.count() == scored and scored_version >= champion.version

    # Ingestion went on while the model trained: bronze committed batches inside the attempt.
    progress = read_table(spark, resolve_table(config, STREAM_PROGRESS_TABLE))
    during = progress.where((F.col("query_name") == "bronze_telemetry") & (F.col("num_input_rows") > 0)
                            & (F.unix_timestamp("batch_time") > attempt.started_s)
                            & (F.unix_timestamp("batch_time") < attempt.ended_s - 1))
    assert during.count() >= 1, (attempt, progress.orderBy("batch_time").select("batch_time").collect()[-10:])
