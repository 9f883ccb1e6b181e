"""Bronze from a real Kafka broker (KRaft, started by lakehouse/devtools/kafka_broker.py for this module).

Exactly-once across kill -9 while a producer keeps publishing to a 3-partition topic; a broker
restart mid-stream; poison messages landing in bronze and quarantined in silver; consumer lag.
Each test uses its own topic and data directory; the broker is stopped even when a test fails.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.config import load_config
from lakehouse.devtools.kafka_broker import KafkaBroker
from lakehouse.generator import TelemetryGenerator
from lakehouse.kafka import TopicPublisher, ensure_topic
from lakehouse.reconcile import reconcile
from lakehouse.runner import run_flow
from lakehouse.tables import bronze_table, read_table, resolve_table
from tests.conftest import CONF_DIR
from tests.processes import batches, kill_9, start_job, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.kafka]
ONCE = {"availableNow": True}
SOURCE = "telemetry_kafka"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka") / "broker", partitions=3)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def kafka_config(tmp_path, broker, topic: str, *extra: str):
    """The test configuration reading ``topic`` (created with 3 partitions) from the module's
    broker, and the same as --set options for a child job."""
    overrides = [f"sources.{SOURCE}.kafka.bootstrap_servers={broker.bootstrap}", f"sources.{SOURCE}.kafka.topics=[{topic}]",
                 *extra]
    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / "data", overrides=overrides)
    assert ensure_topic(config.source(SOURCE).kafka, topic, 3) == 3
    return config, [arg for item in overrides for arg in ("--set", item)]


def telemetry_values(config, seed: int, count: int) -> list[bytes]:
    """``count`` valid generated records, as message values."""
    generator = TelemetryGenerator.from_config(config.generator, seed=seed, fault_rate=0.0)
    return [generator.next_line().text.encode() for _ in range(count)]


class Producer(threading.Thread):
    """Publishes generated telemetry in small acknowledged groups until stopped; ``positions``
    holds the (topic, partition, offset) of every message the broker acknowledged."""

    def __init__(self, config, topic: str, per_group=30, pause=0.4):
        super().__init__(daemon=True)
        self.options = config.source(SOURCE).kafka
        self.topic, self.per_group, self.pause = topic, per_group, pause
        self.generator = TelemetryGenerator.from_config(config.generator, seed=11, fault_rate=0.05)
        self.positions: list[tuple[str, int, int]] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        try:
            publisher = TopicPublisher(self.options, self.topic)
            while not self.halt.is_set():
                first = len(publisher.delivered)
                for _ in range(self.per_group):
                    publisher.send(self.generator.next_line().text.encode())
                publisher.flush(timeout=120)  # rides out a broker restart: librdkafka retries
                self.positions += [(self.topic, p, o) for p, o in publisher.delivered[first:]]
                self.halt.wait(self.pause)
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc

    def finish(self) -> list[tuple[str, int, int]]:
        self.halt.set()
        self.join(timeout=180)
        assert self.error is None, f"producer failed: {self.error}"
        return self.positions


def bronze_positions(spark, config) -> list[tuple[str, int, int]]:
    rows = read_table(spark, bronze_table(config, SOURCE)).select("topic", "partition", "offset").collect()
    return [tuple(r) for r in rows]


def test_kill_9_at_three_moments_while_producing_gives_exactly_once(spark, tmp_path, broker, subprocess_env):
    topic = "crash"
    # Small micro-batches, so that a kill can land between a batch's planning and its commit.
    config, sets = kafka_config(tmp_path, broker, topic, f"sources.{SOURCE}.kafka.max_offsets_per_trigger=300")
    checkpoint = Path(config.checkpoint_path(f"bronze_{SOURCE}"))
    def ingest(*mode):
        return start_job(config, subprocess_env, "ingest.log", *sets, "ingest", "--source", SOURCE, *mode)
    producer = Producer(config, topic)
    producer.start()
    moments = []
    try:
        proc = ingest("--trigger", "1s")  # 1. right after the first batch committed
        assert wait_for(lambda: 0 in batches(checkpoint, "commits")), "no batch committed"
        kill_9(proc)
        moments.append("after a commit")

        proc = ingest("--trigger", "1s")  # 2. mid-batch: offsets planned, commit not yet written
        done = batches(checkpoint, "commits")
        mid = wait_for(lambda: bool(batches(checkpoint, "offsets") - batches(checkpoint, "commits") - done))
        kill_9(proc)
        moments.append("mid-batch" if mid else "timed out waiting for a batch")

        proc = ingest("--trigger", "1s")  # 3. during start-up, before the query planned anything
        wait_for(lambda: False, timeout=4)
        kill_9(proc)
        moments.append("during start-up")
    finally:
        produced = producer.finish()
    assert moments[1] == "mid-batch", moments

    proc = ingest("--once")  # restart once more and take in everything published
    assert proc.wait(timeout=300) == 0, (Path(config.storage.data_dir) / "ingest.log").read_text()[-3000:]
    landed = bronze_positions(spark, config)
    assert len(landed) == len(set(landed)), "a (topic, partition, offset) is in bronze twice"
    assert set(landed) == set(produced)
    assert {p for _, p, _ in produced} == {0, 1, 2} and len(produced) > 300
    log = (Path(config.storage.data_dir) / "ingest.log").read_text()
    assert log.count(f"bronze_{SOURCE}: done") == 1  # only the last run finished; the others were killed


def test_broker_restart_mid_stream_loses_and_doubles_nothing(spark, tmp_path, broker, subprocess_env):
    topic = "restart"
    config, sets = kafka_config(tmp_path, broker, topic)
    checkpoint = Path(config.checkpoint_path(f"bronze_{SOURCE}"))
    log = Path(config.storage.data_dir) / "ingest.log"
    producer = Producer(config, topic)
    producer.start()
    proc = start_job(config, subprocess_env, "ingest.log", *sets, "ingest", "--source", SOURCE, "--trigger", "1s")
    try:
        assert wait_for(lambda: 0 in batches(checkpoint, "commits")), "no batch committed"
        broker.stop()
        wait_for(lambda: proc.poll() is not None, timeout=8)  # the broker is down for 8 s
        broker.start()
        wait_for(lambda: False, timeout=5)  # publishing goes on after the restart
        produced = producer.finish()
        # Either the query rode the outage out and takes in the rest, or it failed with one clear line.
        caught_up = wait_for(lambda: proc.poll() is not None or len(bronze_positions(spark, config)) >= len(produced),
                             timeout=240, poll=1)
        assert caught_up, log.read_text()[-3000:]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        else:
            assert proc.returncode == 1, log.read_text()[-3000:]
            assert f"lakehouse: bronze_{SOURCE} failed:" in log.read_text()
            again = start_job(config, subprocess_env, "ingest.log", *sets, "ingest", "--source", SOURCE, "--once")
            assert again.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_9(proc)
        producer.halt.set()
    landed = bronze_positions(spark, config)
    assert len(landed) == len(set(landed)), "a (topic, partition, offset) is in bronze twice"
    assert set(landed) == set(produced)


def test_poison_messages_land_in_bronze_and_are_quarantined_with_reasons(spark, tmp_path, broker):
    topic = "poison"
    config, _ = kafka_config(tmp_path, broker, topic)
    valid = telemetry_values(config, seed=3, count=30)
    oversized = json.loads(valid[0])
    oversized.update(event_id="big-one", note="x" * (1024 * 1024))  # a well-formed record of over 1 MiB
    poison = {"not_utf8": b'{"event_id": "\xff\xfe broken \xc3\x28"}', "empty": b"", "tombstone": None,
              "one_mb": json.dumps(oversized).encode()}
    publisher = TopicPublisher(config.source(SOURCE).kafka, topic)
    for value in valid:
        publisher.send(value)
    index = {name: publisher.send(value) for name, value in poison.items()}
    publisher.flush()

    assert run_flow(spark, config, f"bronze.{SOURCE}", ONCE) == 0
    bronze = read_table(spark, bronze_table(config, SOURCE))
    assert bronze.count() == len(valid) + len(poison)
    for name, value in poison.items():  # byte for byte, at the offset the broker gave it
        partition, offset = publisher.delivered[index[name]]
        row = bronze.where((F.col("partition") == partition) & (F.col("offset") == offset)).select("value").first()
        assert (bytes(row["value"]) if row["value"] is not None else None) == value, name

    assert run_flow(spark, config, "silver.telemetry", ONCE) == 0
    quarantine = read_table(spark, resolve_table(config, "silver.telemetry_quarantine"))
    reasons = {}
    for name in poison:
        partition, offset = publisher.delivered[index[name]]
        row = quarantine.where((F.col("_source_file") == f"kafka://{topic}/{partition}")
                               & (F.col("_source_line") == offset)).first()
        assert row is not None, f"{name} is not in quarantine"
        reasons[name] = row["reasons"]
    assert "not_utf8" in reasons["not_utf8"]
    assert reasons["empty"][0] == "malformed"  # (and every not-null expectation)
    assert reasons["tombstone"][0] == "malformed"
    assert reasons["one_mb"][0] == "too_large" and "malformed" not in reasons["one_mb"]  # not parsed at all
    assert read_table(spark, resolve_table(config, "silver.telemetry")).count() == len(valid)
    report = reconcile(spark, config, SOURCE)
    assert report.holds and report.quarantined == len(poison), report.describe()


def test_status_shows_partitions_and_consumer_lag(spark, tmp_path, broker):
    from lakehouse.status import collect_status, format_status
    from lakehouse.table_reader import SparkReader

    topic = "lag"
    config, _ = kafka_config(tmp_path, broker, topic)
    values = telemetry_values(config, seed=4, count=97)
    publisher = TopicPublisher(config.source(SOURCE).kafka, topic)
    for value in values[:90]:
        publisher.send(value)
    publisher.flush()
    assert run_flow(spark, config, f"bronze.{SOURCE}", ONCE) == 0
    for value in values[90:]:  # published after the last micro-batch: the lag
        publisher.send(value)
    publisher.flush()

    status = {s.query_name: s for s in collect_status(SparkReader(spark, config), config)}[f"bronze_{SOURCE}"]
    assert status.input_rows == 90
    assert status.channels == 3  # S: the topic's partitions
    assert status.consumer_lag == 7
    assert sum(status.lag_by_partition.values()) == 7 and len(status.lag_by_partition) == 3
    assert "7 msgs" in format_status([status])


def test_generate_publishes_with_faults_and_a_manifest(tmp_path, broker, capsys):
    from confluent_kafka import Consumer, TopicPartition

    from lakehouse.cli import main

    data = tmp_path / "data"
    argv = ["--env", "test", "--data-dir", str(data), "--set", f"sources.{SOURCE}.kafka.bootstrap_servers={broker.bootstrap}",
            "generate", "--sink", "kafka", "--topic", "generated", "--records", "1200", "--fault-rate", "0.1",
            "--run-id", "g1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    manifest = json.loads((data / "landing" / SOURCE / "_manifests" / "g1.json").read_text())
    assert manifest["sink"] == "kafka" and manifest["topic"] == "generated"
    assert manifest["total_lines"] == 1201 and manifest["fault_counts"]["empty_message"] == 1  # 1200 + one empty
    assert sum(manifest["fault_counts"].values()) == len(manifest["faults"]) > 60
    assert "published 1,201 messages to generated" in out

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "check"})
    try:
        on_broker = {}
        for partition in range(3):  # created with the source's kafka.partitions (3)
            low, high = consumer.get_watermark_offsets(TopicPartition("generated", partition), timeout=10)
            on_broker[str(partition)] = high - low
    finally:
        consumer.close()
    assert on_broker == {p: stats["messages"] for p, stats in manifest["partitions"].items()}
    fault = manifest["faults"][0]
    assert {"topic", "partition", "offset", "kind"} <= set(fault)
