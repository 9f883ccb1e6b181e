"""Kafka: how a ``kind: kafka`` source is read by Spark, produced to, and measured.

- :func:`spark_source_options`: the options of Spark's Kafka connector for a source (bronze reads
  with them; lakehouse.bronze). Credentials come from the environment only.
- :class:`TopicPublisher`: publishes generated events to a topic with the confluent-kafka client
  (librdkafka), idempotently, and records each message's partition and offset for the manifest
  (``lakehouse generate --sink kafka``).
- :func:`consumer_lag`: latest offsets minus the offsets a bronze query has processed, per
  partition (``lakehouse status``).

The connector itself is a JVM jar (``org.apache.spark:spark-sql-kafka-0-10_2.13:<pyspark
version>``), added to the session by lakehouse.session when any source is a Kafka source.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from lakehouse.checkpoints import local_dir, logged_batches, planned_source_offsets
from lakehouse.config import KafkaOptions, SourceConfig
from lakehouse.errors import JobError

SASL_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


class KafkaSetupError(JobError):
    """The source cannot reach Kafka as configured (no bootstrap servers, missing credentials)."""


def kafka_options(source: SourceConfig, name: str = "") -> KafkaOptions:
    if source.kind != "kafka" or source.kafka is None:
        raise KafkaSetupError(f"source {name or '?'} is not a Kafka source (kind: {source.kind})")
    return source.kafka


def bootstrap_servers(options: KafkaOptions) -> str:
    """The configured bootstrap servers, else those in the environment variable the config names."""
    servers = options.bootstrap_servers or os.environ.get(options.bootstrap_servers_env, "").strip()
    if not servers:
        raise KafkaSetupError(
            f"no Kafka bootstrap servers: set kafka.bootstrap_servers in the source's config or "
            f"${options.bootstrap_servers_env} (e.g. 127.0.0.1:9092)"
        )
    return servers


def _credentials(options: KafkaOptions) -> tuple[str, str]:
    user = os.environ.get(options.sasl_username_env)
    password = os.environ.get(options.sasl_password_env)
    if not user or not password:
        raise KafkaSetupError(
            f"SASL {options.sasl_mechanism} needs ${options.sasl_username_env} and ${options.sasl_password_env} "
            "in the environment"
        )
    return user, password


def _from_environment(names: dict[str, str]) -> dict[str, str]:
    """Client properties whose values are credentials: each from its environment variable."""
    missing = [variable for variable in names.values() if not os.environ.get(variable)]
    if missing:
        raise KafkaSetupError(f"set the environment variable{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                              "(named by the source's kafka options_env / librdkafka_options_env)")
    return {key: os.environ[variable] for key, variable in names.items()}


def _connection(options: KafkaOptions) -> dict[str, str]:
    """The connection properties both clients name alike: servers, protocol, SASL mechanism."""
    props = {"bootstrap.servers": bootstrap_servers(options), "security.protocol": options.security_protocol}
    if options.sasl_mechanism:
        props["sasl.mechanism"] = options.sasl_mechanism
    return props


def _jaas_quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def spark_source_options(options: KafkaOptions) -> dict[str, str]:
    """``readStream.format("kafka")`` options: subscription, start, rate limit, Java client properties.

    Holds the SASL password when one is configured: pass it to Spark, never print it."""
    client = {**_connection(options), **options.options, **_from_environment(options.options_env)}
    spark_options = {f"kafka.{key}": value for key, value in client.items()}
    if options.sasl_mechanism:
        user, password = _credentials(options)
        spark_options["kafka.sasl.jaas.config"] = (
            f"{SASL_MODULES[options.sasl_mechanism]} required username={_jaas_quoted(user)} "
            f"password={_jaas_quoted(password)};"
        )
    if options.topics:
        spark_options["subscribe"] = ",".join(options.topics)
    else:
        spark_options["subscribePattern"] = options.topic_pattern
    spark_options["startingOffsets"] = options.starting_offsets
    spark_options["failOnDataLoss"] = str(options.fail_on_data_loss).lower()
    if options.max_offsets_per_trigger:
        spark_options["maxOffsetsPerTrigger"] = str(options.max_offsets_per_trigger)
    return spark_options


def librdkafka_config(options: KafkaOptions) -> dict:
    """The connection for confluent-kafka (producer, admin, offset lookups): librdkafka's own
    property names, with ``librdkafka_options`` (the Java ``options`` mean nothing to it)."""
    config = {**_connection(options), **options.librdkafka_options,
              **_from_environment(options.librdkafka_options_env)}
    if options.sasl_mechanism:
        config["sasl.username"], config["sasl.password"] = _credentials(options)
    return config


# -- producing ------------------------------------------------------------------------------


def ensure_topic(options: KafkaOptions, topic: str, partitions: int, timeout: float = 30.0) -> int:
    """Create ``topic`` with ``partitions`` partitions unless it exists; returns its partition count."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    try:
        admin = AdminClient(librdkafka_config(options))
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaSetupError(f"cannot reach Kafka at {bootstrap_servers(options)}: {exc}") from exc
    if topic in metadata.topics and not metadata.topics[topic].error:
        return len(metadata.topics[topic].partitions)
    # replication factor -1: the cluster's default.replication.factor
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1)])[topic]
    try:
        future.result(timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # else a concurrent creator won the race: fine
            raise KafkaSetupError(f"could not create topic {topic}: {exc}") from exc
    return partitions


def topic_to_publish(options: KafkaOptions, override: str | None) -> str:
    """``--topic``, else the source's first topic (a pattern source needs ``--topic``)."""
    topic = override or (options.topics[0] if options.topics else None)
    if topic is None:
        raise KafkaSetupError(f"the source subscribes to the pattern {options.topic_pattern!r}: name a topic with --topic")
    return topic


def open_topic(options: KafkaOptions, override: str | None = None) -> tuple[TopicPublisher, int]:
    """A publisher for ``--topic`` (else the source's first topic), created with the source's
    ``partitions`` if missing, and the topic's partition count."""
    topic = topic_to_publish(options, override)
    partitions = ensure_topic(options, topic, options.partitions)
    return TopicPublisher(options, topic), partitions


class TopicPublisher:
    """Publishes messages to one topic, idempotently, and records where each one landed.

    ``delivered`` holds (partition, offset) per message in send order once :meth:`flush` returns;
    a message the broker never acknowledged raises there, so the manifest never claims one.
    """

    def __init__(self, options: KafkaOptions, topic: str):
        from confluent_kafka import KafkaException, Producer

        self.topic = topic
        try:
            self.producer = Producer({
                # Within this producer's session, retries (a broker restart, say) never write a
                # message twice; publishing the same events again from a new run does.
                "enable.idempotence": True,
                "linger.ms": 20,
                "message.max.bytes": 2_000_000,  # room for a deliberately oversized (poison) message
                "compression.type": "lz4",
                **librdkafka_config(options),
            })
        except KafkaException as exc:
            raise KafkaSetupError(f"cannot create a Kafka producer: {exc}") from exc
        self.delivered: list[tuple[int, int] | None] = []
        self.errors: list[str] = []

    def send(self, value: bytes | None, key: bytes | None = None) -> int:
        """Queue one message; returns its index in ``delivered``."""
        index = len(self.delivered)
        self.delivered.append(None)

        def on_delivery(error, message, index=index):
            if error is not None:
                self.errors.append(str(error))
            else:
                self.delivered[index] = (message.partition(), message.offset())

        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: let librdkafka send some first
                self.producer.poll(0.1)
        self.producer.poll(0)
        return index

    def flush(self, timeout: float = 120.0) -> None:
        remaining = self.producer.flush(timeout)
        if remaining or self.errors:
            raise KafkaSetupError(
                f"{remaining} message(s) to {self.topic} not acknowledged within {timeout:.0f} s"
                + (f"; first error: {self.errors[0]}" if self.errors else "")
            )


# -- consumer lag ---------------------------------------------------------------------------


def processed_offsets(checkpoint: str) -> dict[tuple[str, int], int]:
    """The next offset per (topic, partition) after the query's last committed micro-batch.

    Read from the checkpoint's offset log (the entry of the newest batch in ``commits/``), the
    same record a restart resumes from. Empty when nothing was committed (or not a local path).
    """
    committed = logged_batches(checkpoint, "commits")
    if not committed:
        return {}
    offsets: dict[tuple[str, int], int] = {}
    for line in planned_source_offsets(checkpoint, committed[-1]):
        source = json.loads(line) if line.strip().startswith("{") else {}
        for topic, partitions in source.items():
            if isinstance(partitions, dict):
                for partition, offset in partitions.items():
                    offsets[(topic, int(partition))] = int(offset)
    return offsets


@dataclass
class PartitionLag:
    topic: str
    partition: int
    latest: int  # the partition's high watermark: the offset the next message will get
    processed: int  # the next offset bronze will read
    lag: int


def latest_offsets(options: KafkaOptions, timeout: float = 10.0) -> dict[tuple[str, int], tuple[int, int]]:
    """(earliest, latest) offsets per (topic, partition) of the source's topics."""
    import re

    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**librdkafka_config(options), "group.id": "lakehouse-status", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=timeout)
        pattern = re.compile(options.topic_pattern) if options.topic_pattern else None
        # Internal topics (__consumer_offsets, ...) match broad patterns but are never read.
        topics = [t for t in metadata.topics
                  if t in options.topics or (pattern and pattern.fullmatch(t) and not t.startswith("__"))]
        latest = {}
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                latest[(topic, partition)] = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout)
        return latest
    finally:
        consumer.close()


def consumer_lag(options: KafkaOptions, checkpoint: str) -> list[PartitionLag]:
    """Per partition: latest offset minus the offset bronze has processed (the earliest one
    still held, before the query's first batch)."""
    if local_dir(checkpoint) is None:
        raise KafkaSetupError(f"consumer lag reads a local checkpoint; {checkpoint} is remote")
    done = processed_offsets(checkpoint)
    lags = []
    for (topic, partition), (low, high) in sorted(latest_offsets(options).items()):
        processed = done.get((topic, partition), low)
        lags.append(PartitionLag(topic, partition, high, processed, max(0, high - processed)))
    return lags
