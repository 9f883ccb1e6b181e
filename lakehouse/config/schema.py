"""The typed configuration: frozen dataclasses, one per section of ``conf/<layer>/*.yml``.

conf/README.md documents every key. A dataclass's ``problems()`` states what a value cannot be
given the others (checked by the converter after it builds the dataclass); what spans sections
(an entity's sources exist, a gold table's inputs, the graph has no cycle) is checked by
lakehouse/config/loading.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from lakehouse.config.entities import EntityConfig
from lakehouse.config.running import MaintenanceConfig, OpsConfig, RunConfig, StreamingConfig
from lakehouse.config.training import TrainingConfig
from lakehouse.config.values import (
    ENV_VAR,
    Duration,
    Identifier,
    ImportName,
    MustExist,
    Pattern,
    PositiveInt,
    Range,
    TableName,
)
from lakehouse.errors import ConfigError

LAYERS = ("bronze", "silver", "gold", "ops")


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path  # tables, checkpoints and (by default) landing directories live under it
    landing_dir: str | None = None  # default <data_dir>/landing; may be a URI
    checkpoint_dir: str | None = None  # default <data_dir>/checkpoints; may be a URI


@dataclass(frozen=True)
class SparkConfig:
    app_name: str
    master: str | None = None  # None: leave it to spark-submit / the cluster
    packages: list[str] = field(default_factory=list)  # Maven coordinates besides Delta's jar
    conf: dict[str, str] = field(default_factory=dict)
    # Spark settings that hold credentials (spark.hadoop.fs.s3a.secret.key, ...): the name of the
    # environment variable each is read from when the session starts. Never printed or logged.
    conf_env: dict[str, Annotated[str, ENV_VAR]] = field(default_factory=dict)

    def problems(self) -> list[tuple[str, str]]:
        for key, variable in self.conf_env.items():
            if key in self.conf:
                return [(f"conf_env.{key}", "is also set in spark.conf: set it in one place")]
            if not os.environ.get(variable):
                return [(f"conf_env.{key}", f"the environment variable {variable} is not set")]
        return []


@dataclass(frozen=True)
class CatalogConfig:
    # path: tables are Delta directories under <data_dir>/tables/<layer>/<table>;
    # unity: tables are Unity Catalog tables <name>.<schemas[layer]>.<table>.
    kind: Literal["path", "unity"]
    name: Identifier = "main"
    schemas: dict[str, Identifier] = field(
        default_factory=lambda: {layer: layer for layer in ("bronze", "silver", "gold", "ops")}
    )


@dataclass(frozen=True)
class CsvOptions:
    """How silver splits a CSV line: fields map by position to the entity's declared columns."""

    header: bool = True  # line 1 of every file names the columns (checked, then skipped)
    delimiter: Annotated[str, Pattern(r"^[^\"\r\n]$", "one character other than a quote or newline")] = ","


@dataclass(frozen=True)
class QualityConfig:
    # How silver computes each micro-batch's per-expectation results (ops.quality_results):
    # fused: row-level expectations from the one aggregation that also counts the batch (checked
    # against GX's own results in the tests), the others by GX; gx: GX validates every
    # expectation on each batch itself (several Spark jobs per expectation: slow on big batches).
    validation: Literal["fused", "gx"] = "fused"


KAFKA_BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"


@dataclass(frozen=True)
class KafkaOptions:
    """Where and how a ``kind: kafka`` source reads (Spark's Kafka connector, lakehouse/kafka.py)."""

    # host:port[,host:port]; null: the environment variable named by bootstrap_servers_env.
    bootstrap_servers: str | None = None
    bootstrap_servers_env: str = KAFKA_BOOTSTRAP_ENV
    topics: list[str] = field(default_factory=list)  # subscribe to these ...
    topic_pattern: str | None = None  # ... or to every topic matching this Java regex
    starting_offsets: Literal["earliest", "latest"] = "earliest"  # only for a query's first run
    max_offsets_per_trigger: PositiveInt | None = None  # rate limit: messages per micro-batch
    fail_on_data_loss: bool = True  # fail (not skip) when offsets the checkpoint expects are gone
    partitions: PositiveInt = 3  # of a topic `lakehouse generate --sink kafka` creates
    # Security: the protocol and mechanism here; the credentials only from the environment.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username_env: str = "KAFKA_SASL_USERNAME"
    sasl_password_env: str = "KAFKA_SASL_PASSWORD"
    # Further Java client properties for Spark's connector (no secrets), e.g. ssl.truststore.location.
    options: dict[str, str] = field(default_factory=dict)
    # The same for the Python client (librdkafka names, e.g. ssl.ca.location): generate, status.
    librdkafka_options: dict[str, str] = field(default_factory=dict)
    # Client properties that are credentials (ssl.keystore.password, ...): property -> the
    # environment variable holding its value, read when the client is made.
    options_env: dict[str, Annotated[str, ENV_VAR]] = field(default_factory=dict)
    librdkafka_options_env: dict[str, Annotated[str, ENV_VAR]] = field(default_factory=dict)

    def problems(self) -> list[tuple[str, str]]:
        for field_name in ("options_env", "librdkafka_options_env"):
            for key, variable in getattr(self, field_name).items():
                if not os.environ.get(variable):
                    return [(f"{field_name}.{key}", f"the environment variable {variable} is not set")]
        if bool(self.topics) == bool(self.topic_pattern):
            return [("topics", "set topics or topic_pattern (one of the two)")]
        for key in (*self.options, *self.librdkafka_options):
            if "jaas" in key.lower() or key.lower().startswith("sasl.username"):
                return [("options", f"{key} carries credentials: they come from sasl_username_env / sasl_password_env")]
        if self.sasl_mechanism and not self.security_protocol.startswith("SASL"):
            return [("sasl_mechanism", "needs security_protocol SASL_PLAINTEXT or SASL_SSL")]
        return []


@dataclass(frozen=True)
class SourceConfig:
    # files: a landing directory (bronze keeps each line); kafka: topics (bronze keeps each message).
    kind: Literal["files", "kafka"]
    format: Literal["json-lines", "csv"]  # how silver parses a line or message value
    # files: the landing location; kafka: where generator manifests go. Default <landing_dir>/<name>.
    path: Annotated[str, MustExist()] | None = None
    csv: CsvOptions = field(default_factory=CsvOptions)  # used when format is csv
    # Rate limits per micro-batch of a file source; Spark takes one or the other, not both.
    max_files_per_trigger: PositiveInt | None = None
    max_bytes_per_trigger: PositiveInt | None = None
    # A larger landing file (its size on disk, compressed or not) is recorded in ops.bad_files as
    # too_large instead of being loaded; compressed files are read whole, so it bounds their memory.
    max_file_bytes: PositiveInt = 64 * 1024 * 1024
    # A feed of history (a backfill): its rows are never quarantined as late by the entity's
    # watermark. `lakehouse refine --backfill` does the same for one run, whatever the source.
    backfill: bool = False
    # Where Spark runs in this process (local[...]), read a batch's local files on the driver with
    # Arrow and append them with delta-rs (lakehouse/landing_arrow.py); false: a Spark job reads them.
    read_on_driver: bool = True
    kafka: KafkaOptions | None = None  # required when kind is kafka
    # What maintenance does with a landing file once the commit that ingested it (or recorded it
    # as bad) is in the checkpoint: keep it, archive it (move it under archive_path), or delete it.
    after_ingest: Literal["keep", "archive", "delete"] = "keep"
    archive_path: str | None = None  # default <data_dir>/archive/<source>; never inside the landing path
    # What `lakehouse generate --source <this>` writes: telemetry readings (lakehouse/generator.py)
    # or chat messages (lakehouse/chat_generator.py).
    generator: Literal["telemetry", "chat"] = "telemetry"

    def problems(self) -> list[tuple[str, str]]:
        if self.max_files_per_trigger and self.max_bytes_per_trigger:
            return [("max_bytes_per_trigger", "set max_files_per_trigger or max_bytes_per_trigger, not both")]
        if self.kind == "kafka" and self.kafka is None:
            return [("kafka", "a kafka source needs a kafka: section (topics, bootstrap servers)")]
        if self.kind == "kafka" and self.after_ingest != "keep":
            return [("after_ingest", "only a files source has landing files to archive or delete")]
        if self.kind == "kafka" and self.format == "csv" and self.csv.header:
            return [("csv.header", "a Kafka message has no header line: set csv.header to false")]
        return []



@dataclass(frozen=True)
class WatermarkConfig:
    column: Identifier  # the input's event-time column
    delay: Duration  # how late an event may be and still count in its window


@dataclass(frozen=True)
class GoldTableConfig:
    """A gold table: Spark SQL over silver (or other gold) tables, declared in conf/<layer>/gold/.

    Each input is visible to the SQL as a view named like the table with "_" for ".", e.g.
    ``silver_telemetry``. streaming: one input, read incrementally (a silver input through its
    change feed), aggregated with the watermark and appended once a window closes. batch: the SQL
    is recomputed over the inputs' current versions and replaces the table.
    """

    mode: Literal["streaming", "batch"]
    inputs: list[TableName]
    sql: str | None = None
    # batch only, instead of sql: "package.module:function", called as function(spark, inputs,
    # **options) with the inputs' DataFrames by table name (at the versions read), returning the
    # table's rows (lakehouse/text_dedup.py's near_duplicates, for the chat scenario).
    transform: ImportName | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the transform's keyword arguments
    watermark: WatermarkConfig | None = None  # streaming only
    # batch only: `lakehouse run` rebuilds the table when an input's Delta version has changed,
    # at most this often
    refresh: Duration = "1 minute"
    # A SQL expression over the table's columns: when a row's window closes (e.g.
    # "minute + INTERVAL 1 MINUTE"); ops.freshness records commit time minus it. null: not windowed.
    window_end: str | None = None

    def problems(self) -> list[tuple[str, str]]:
        if not self.inputs:
            return [("inputs", "at least one input table is required")]
        if self.mode == "streaming" and len(self.inputs) != 1:
            return [("inputs", "a streaming gold table reads exactly one input")]
        if self.mode == "streaming" and self.watermark is None:
            return [("watermark", "a streaming gold table needs a watermark (column and delay)")]
        if self.mode == "batch" and self.watermark is not None:
            return [("watermark", "only streaming gold tables take a watermark")]
        if (self.sql is None) == (self.transform is None):
            return [("sql", "give the table's sql or its transform (one of the two)")]
        if self.transform is not None and self.mode != "batch":
            return [("transform", "only a batch gold table takes a transform")]
        if self.options and self.transform is None:
            return [("options", "options are a transform's arguments: this table has none")]
        return []


def view_name(table: str) -> str:
    """The name a gold table's SQL uses for an input table: silver.telemetry -> silver_telemetry."""
    return table.replace(".", "_")


@dataclass(frozen=True)
class GeneratorConfig:
    records: PositiveInt  # lines written per run (faults included)
    files: PositiveInt  # non-empty files per run; empty files are injected on top
    seed: int
    fault_rate: Annotated[float, Range(0.0, 1.0)]  # share of lines that carry a fault
    hosts: PositiveInt
    racks: PositiveInt
    interval_seconds: Annotated[float, Range(low=0.001)] = 10.0  # event-time step between two readings of one host
    start_time: str = "2026-01-01T00:00:00Z"


@dataclass(frozen=True)
class LakehouseConfig:
    env: str
    conf_dir: Path
    storage: StorageConfig
    spark: SparkConfig
    catalog: CatalogConfig
    streaming: StreamingConfig
    generator: GeneratorConfig
    sources: dict[Identifier, SourceConfig]
    entities: dict[Identifier, EntityConfig] = field(default_factory=dict)
    gold: dict[Identifier, GoldTableConfig] = field(default_factory=dict)
    quality: QualityConfig = field(default_factory=QualityConfig)
    run: RunConfig = field(default_factory=RunConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    training: TrainingConfig | None = None
    scenario: str = "telemetry"  # --scenario: conf/scenarios/<name>/ over the base (lakehouse/config/loading.py)

    def source(self, name: str) -> SourceConfig:
        return self._named("sources", self.sources, name)

    def entity(self, name: str) -> EntityConfig:
        return self._named("entities", self.entities, name)

    def gold_table(self, name: str) -> GoldTableConfig:
        return self._named("gold", self.gold, name)

    def _named(self, section: str, items: dict, name: str):
        if name not in items:
            known = ", ".join(sorted(items)) or "none"
            kind = {"entities": "entity", "sources": "source", "gold": "gold table"}.get(section, section)
            raise ConfigError(str(self.conf_dir), f"{section}.{name}", f"no such {kind} (configured: {known})")
        return items[name]

    @property
    def conf_layers(self) -> list[Path]:
        """The configuration's layer directories, the one that wins first: env, scenario, base."""
        scenario = [] if self.scenario == "telemetry" else [Path("scenarios") / self.scenario]
        return [self.conf_dir / layer for layer in (Path(self.env), *scenario, Path("base"))]

    def conf_file(self, relative: str) -> Path:
        """A file under the layer that defines it (the env's, else the scenario's, else the base's);
        the base's path when none does."""
        for layer in self.conf_layers:
            if (layer / relative).is_file():
                return layer / relative
        return self.conf_dir / "base" / relative

    def suite_path(self, suite: str) -> Path:
        """``expectations/<suite>.json`` of the layer that defines it."""
        return self.conf_file(f"expectations/{suite}.json")

    @property
    def landing_root(self) -> str:
        return self.storage.landing_dir or str(self.storage.data_dir / "landing")

    @property
    def checkpoint_root(self) -> str:
        return self.storage.checkpoint_dir or str(self.storage.data_dir / "checkpoints")

    def landing_path(self, source_name: str) -> str:
        """Where files for ``source_name`` land (its configured path, or one under the landing root)."""
        configured = self.source(source_name).path
        return configured if configured else f"{self.landing_root}/{source_name}"

    def archive_path(self, source_name: str) -> str:
        """Where maintenance moves a source's ingested landing files (``after_ingest: archive``)."""
        configured = self.source(source_name).archive_path
        return configured if configured else str(self.storage.data_dir / "archive" / source_name)

    def checkpoint_path(self, query_name: str) -> str:
        """One checkpoint directory per streaming query."""
        return f"{self.checkpoint_root}/{query_name}"


