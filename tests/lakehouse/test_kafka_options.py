"""Kafka source settings -> Spark connector options; offsets from a checkpoint; partitions from progress."""

from __future__ import annotations

import json

import pytest

from lakehouse.config import KafkaOptions
from lakehouse.kafka import KafkaSetupError, processed_offsets, spark_source_options
from lakehouse.status import kafka_partitions


def test_options_subscribe_rate_limit_and_bootstrap_from_the_environment(monkeypatch):
    options = KafkaOptions(topics=["a", "b"], max_offsets_per_trigger=500)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "h1:9092,h2:9092")
    spark = spark_source_options(options)
    assert spark["kafka.bootstrap.servers"] == "h1:9092,h2:9092"
    assert spark["subscribe"] == "a,b" and "subscribePattern" not in spark
    assert spark["maxOffsetsPerTrigger"] == "500" and spark["startingOffsets"] == "earliest"
    assert spark["failOnDataLoss"] == "true" and spark["kafka.security.protocol"] == "PLAINTEXT"

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    with pytest.raises(KafkaSetupError, match=r"\$KAFKA_BOOTSTRAP_SERVERS"):
        spark_source_options(options)


def test_sasl_credentials_come_from_the_environment_only(monkeypatch):
    options = KafkaOptions(bootstrap_servers="b:9093", topic_pattern="telemetry\\..*", security_protocol="SASL_SSL",
                           sasl_mechanism="SCRAM-SHA-512", options={"ssl.endpoint.identification.algorithm": "https"})
    with pytest.raises(KafkaSetupError, match="KAFKA_SASL_USERNAME"):
        spark_source_options(options)
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    spark = spark_source_options(options)
    assert spark["subscribePattern"] == "telemetry\\..*"
    assert spark["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert spark["kafka.sasl.jaas.config"].startswith("org.apache.kafka.common.security.scram.ScramLoginModule required")
    assert 'username="svc" password="s3cret";' in spark["kafka.sasl.jaas.config"]
    assert spark["kafka.ssl.endpoint.identification.algorithm"] == "https"


def test_processed_offsets_are_the_last_committed_batch_end(tmp_path):
    checkpoint = tmp_path / "cp"
    (checkpoint / "offsets").mkdir(parents=True)
    (checkpoint / "commits").mkdir()
    meta = json.dumps({"batchWatermarkMs": 0, "batchTimestampMs": 0, "conf": {}})
    for batch, ends in [(0, {"0": 10, "1": 12}), (1, {"0": 20, "1": 25, "2": 3})]:
        (checkpoint / "offsets" / str(batch)).write_text(f"v1\n{meta}\n{json.dumps({'t': ends})}\n")
    assert processed_offsets(str(checkpoint)) == {}  # planned, nothing committed
    (checkpoint / "commits" / "0").write_text("v1\n{}\n")
    assert processed_offsets(str(checkpoint)) == {("t", 0): 10, ("t", 1): 12}
    (checkpoint / "commits" / "1").write_text("v1\n{}\n")
    assert processed_offsets(str(checkpoint)) == {("t", 0): 20, ("t", 1): 25, ("t", 2): 3}


def test_kafka_partitions_counts_end_offsets_of_kafka_sources_only():
    progress = {"sources": [
        {"description": "KafkaV2[Subscribe[t]]", "endOffset": {"t": {"0": 5, "1": 6, "2": 7}}},
        {"description": "DeltaSource[file:/x]", "endOffset": {"reservoirVersion": 3}},
    ]}
    assert kafka_partitions(json.dumps(progress)) == 3
    assert kafka_partitions(None) is None


def test_credentials_in_client_options_are_refused(tmp_path):
    from lakehouse.config import ConfigError, load_config
    from tests.conftest import CONF_DIR

    with pytest.raises(ConfigError, match="sources.telemetry_kafka.kafka.options"):
        load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path, overrides=[
            'sources.telemetry_kafka.kafka.options={"sasl.jaas.config": "x required username=a;"}'])


def test_jaas_values_are_quoted(monkeypatch):
    monkeypatch.setenv("KAFKA_SASL_USERNAME", 'we"ird')
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "back\\slash")
    options = KafkaOptions(bootstrap_servers="b:1", topics=["t"], security_protocol="SASL_PLAINTEXT",
                           sasl_mechanism="PLAIN")
    jaas = spark_source_options(options)["kafka.sasl.jaas.config"]
    assert 'username="we\\"ird"' in jaas and 'password="back\\\\slash";' in jaas
