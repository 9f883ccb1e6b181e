"""Typed configuration: ``conf/base/`` overlaid by ``conf/<env>/``, then command-line overrides.

Every ``*.yml`` file directly in a layer directory is merged at the root; a file in a
sub-directory is merged under the key named by its path, so ``conf/base/sources/telemetry.yml``
holds the mapping found at ``sources.telemetry``. Later layers override earlier ones key by key.

The merged tree is converted once into the frozen dataclasses below. Any problem (unknown key,
missing key, wrong type, a path that must exist and does not) raises :class:`ConfigError`, which
names the file that set (or should have set) the key; the CLI prints it on one line and exits 2.
Loading has no side effects: nothing is created on disk until a valid configuration exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml

from lakehouse.redaction import SECRET_REFERENCE, is_secret_key
from lakehouse.suites import read_suite_file, suite_problems

# --------------------------------------------------------------------------------------------
# Errors


class ConfigError(ValueError):
    """A configuration problem, located by the file (or option) and the dotted key."""

    def __init__(self, origin: str, key: str, message: str):
        super().__init__(f"{origin}: {key}: {message}")
        self.origin = origin
        self.key = key
        self.message = message


# --------------------------------------------------------------------------------------------
# Value constraints, attached with typing.Annotated


@dataclass(frozen=True)
class MustExist:
    """A local path that must already exist (URIs such as ``s3a://`` are not checked)."""


@dataclass(frozen=True)
class Pattern:
    regex: str
    description: str
    echo: bool = True  # False: an error does not repeat the value (it may be a pasted secret)


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None


IDENTIFIER = Pattern(r"^[a-z][a-z0-9_]{0,62}$", "a lower-case identifier ([a-z][a-z0-9_]*)")

# Durations: a number and a unit (each unit also with a plural s). Spark is given the same span
# in its own syntax (spark_interval), so every form accepted here is one Spark takes.
_UNIT_SECONDS = {"ms": 0.001, "millisecond": 0.001, "s": 1, "sec": 1, "second": 1, "m": 60, "min": 60,
                 "minute": 60, "h": 3600, "hr": 3600, "hour": 3600, "d": 86400, "day": 86400,
                 "w": 604800, "week": 604800}
DURATION_UNITS = "ms, s (sec, second), m (min, minute), h (hr, hour), d (day), w (week)"
DURATION = Pattern(
    r"^\d+(\.\d+)?\s*(" + "|".join(sorted(_UNIT_SECONDS, key=len, reverse=True)) + r")s?$",
    f"a duration: a number and one of the units {DURATION_UNITS}, e.g. '10s', '1.5h' or '2 days'",
)


def duration_seconds(text: str) -> float:
    """Seconds in a DURATION ('10s', '500ms', '1.5h', '2 days')."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text.strip().lower())
    unit = match.group(2) if match else ""
    if unit not in _UNIT_SECONDS and unit.endswith("s"):  # plurals: "seconds", "mins", "days"
        unit = unit[:-1]
    if unit not in _UNIT_SECONDS:
        raise ValueError(f"not a duration: {text!r} (units: {DURATION_UNITS})")
    return float(match.group(1)) * _UNIT_SECONDS[unit]


def check_duration(option: str, text: str) -> None:
    """A DURATION given on the command line (``--trigger``); ConfigError naming the option if not."""
    if not re.match(DURATION.regex, text.strip()):
        raise ConfigError(option, option.lstrip("-"), f"expected {DURATION.description}, got {text!r}")


def spark_interval(text: str) -> str:
    """A DURATION in the interval syntax Spark's triggers and watermarks take: '1.5h' -> '5400000
    milliseconds' (Spark itself refuses '1 min', '1.5h' and fractions)."""
    micros = round(duration_seconds(text) * 1_000_000)
    return f"{micros // 1000} milliseconds" if micros % 1000 == 0 else f"{micros} microseconds"


Identifier = Annotated[str, IDENTIFIER]
Duration = Annotated[str, DURATION]
PositiveInt = Annotated[int, Range(low=1)]

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# A password in a URI's user info (scheme://user:password@host).
_URI_PASSWORD = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^@\s]*:[^@\s]*@")  # up to the last '@'

ENV_VAR = Pattern(r"^[A-Za-z_][A-Za-z0-9_]*$", "an environment variable name", echo=False)

# --------------------------------------------------------------------------------------------
# The typed configuration


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
class StreamingConfig:
    trigger: Duration  # processing-time trigger for continuous runs
    # How often a running job appends the queued progress rows to ops.stream_progress.
    progress_flush_seconds: Annotated[float, Range(low=0.0)] = 30.0


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
    # A landing file is read whole: a larger one (its size on disk, compressed or not) is recorded
    # in ops.bad_files as too_large instead of being loaded.
    max_file_bytes: PositiveInt = 64 * 1024 * 1024
    # A feed of history (a backfill): its rows are never quarantined as late by the entity's
    # watermark. `lakehouse refine --backfill` does the same for one run, whatever the source.
    backfill: bool = False
    kafka: KafkaOptions | None = None  # required when kind is kafka

    def problems(self) -> list[tuple[str, str]]:
        if self.max_files_per_trigger and self.max_bytes_per_trigger:
            return [("max_bytes_per_trigger", "set max_files_per_trigger or max_bytes_per_trigger, not both")]
        if self.kind == "kafka" and self.kafka is None:
            return [("kafka", "a kafka source needs a kafka: section (topics, bootstrap servers)")]
        if self.kind == "kafka" and self.format == "csv" and self.csv.header:
            return [("csv.header", "a Kafka message has no header line: set csv.header to false")]
        return []


ColumnType = Literal["string", "double", "long", "int", "boolean", "timestamp", "date"]


@dataclass(frozen=True)
class EntityConfig:
    """A silver entity: the typed record parsed from its sources' bronze rows."""

    sources: list[Identifier]  # bronze.<source> tables it reads
    columns: dict[Identifier, ColumnType]  # the declared schema, in order
    keys: list[Identifier]  # deduplication key
    event_time: Identifier  # which version of a key is the latest
    suite: Identifier  # expectations/<suite>.json under the env or base conf dir
    # How late an event may arrive: a row whose event time is older than the newest event time
    # in silver before its micro-batch, minus this, goes to quarantine with reason "late".
    watermark: Duration = "1 hour"
    # An event time later than the micro-batch's processing time plus this goes to quarantine as
    # "future_event_time" (clock skew): it never moves the late cut-off or a gold watermark.
    max_future: Duration = "1 hour"
    # Double columns that may hold NaN or +-Infinity; in any other, a non-finite value is
    # quarantined as "not_finite".
    allow_non_finite: list[Identifier] = field(default_factory=list)
    # Fields the schema does not declare. rescue: kept as JSON in _rescued; evolve: each becomes a
    # new string column of silver (Delta schema evolution); quarantine: the row is quarantined.
    unexpected_fields: Literal["rescue", "evolve", "quarantine"] = "rescue"
    max_files_per_trigger: PositiveInt | None = None  # rate limit on the bronze Delta files per batch
    # A record (line or message) longer than this many bytes is quarantined as "too_large", unparsed.
    max_record_bytes: PositiveInt = 262_144

    def problems(self) -> list[tuple[str, str]]:
        for name in (*self.keys, self.event_time):
            if name not in self.columns:
                return [("keys" if name in self.keys else "event_time", f"'{name}' is not a declared column")]
        if self.columns[self.event_time] not in ("timestamp", "date"):
            return [("event_time", f"'{self.event_time}' is a {self.columns[self.event_time]} column, not a timestamp")]
        for name in self.allow_non_finite:
            if self.columns.get(name) != "double":
                return [("allow_non_finite", f"'{name}' is not a declared double column")]
        if not self.keys:
            return [("keys", "at least one key column is required")]
        return []


TableName = Annotated[str, Pattern(r"^(bronze|silver|gold|ops)\.[a-z][a-z0-9_]{0,62}$",
                                   "a table name such as silver.telemetry")]


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
    sql: str
    watermark: WatermarkConfig | None = None  # streaming only

    def problems(self) -> list[tuple[str, str]]:
        if not self.inputs:
            return [("inputs", "at least one input table is required")]
        if self.mode == "streaming" and len(self.inputs) != 1:
            return [("inputs", "a streaming gold table reads exactly one input")]
        if self.mode == "streaming" and self.watermark is None:
            return [("watermark", "a streaming gold table needs a watermark (column and delay)")]
        if self.mode == "batch" and self.watermark is not None:
            return [("watermark", "only streaming gold tables take a watermark")]
        return []


class GoldCycle(ValueError):
    def __init__(self, tables: tuple[str, ...]):
        super().__init__(f"gold tables read each other in a cycle: {' -> '.join(tables)}")
        self.tables = tables


def view_name(table: str) -> str:
    """The name a gold table's SQL uses for an input table: silver.telemetry -> silver_telemetry."""
    return table.replace(".", "_")


@dataclass(frozen=True)
class ModelConfig:
    hidden: list[PositiveInt] = field(default_factory=lambda: [64, 32])  # MLP hidden layer widths
    dropout: Annotated[float, Range(0.0, 0.9)] = 0.0


@dataclass(frozen=True)
class TrainingConfig:
    """Training on a gold feature table (ml/): data, model, optimiser, tracking, gate."""

    table: TableName  # the feature table, read at a pinned Delta version
    features: list[Identifier]
    label: Identifier
    split_key: list[Identifier]  # rows go to validation by a hash of these columns (deterministic)
    registered_model: Annotated[str, Pattern(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$", "a model name")]
    validation_fraction: Annotated[float, Range(0.01, 0.9)] = 0.2
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: Literal["sgd", "adam"] = "adam"
    learning_rate: Annotated[float, Range(low=1e-7)] = 0.003
    batch_size: PositiveInt = 128  # per process
    epochs: PositiveInt = 20
    seed: int = 7
    log_every_steps: PositiveInt = 10  # training loss (averaged over processes) every N steps
    # MLflow: tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<data_dir>/mlflow.db);
    # experiment name, "{env}" replaced by the environment.
    tracking_uri: str | None = None
    experiment: str = "lakehouse-{env}"
    # Quality gate: refuse (exit 3) when the share of rows the entity's last silver batches kept
    # is below this (unless --force).
    min_quality_pass_rate: Annotated[float, Range(0.0, 1.0)] = 0.9
    quality_window_batches: PositiveInt = 20
    # Rows whose features or label are not finite (NaN, +-Infinity, or beyond float32, the
    # model's precision) are refused; above this share of the table the run stops (exit 3).
    max_refused_fraction: Annotated[float, Range(0.0, 1.0)] = 0.01

    def problems(self) -> list[tuple[str, str]]:
        if self.label in self.features:
            return [("label", f"'{self.label}' is also a feature")]
        if not self.features:
            return [("features", "at least one feature column is required")]
        return []


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
    training: TrainingConfig | None = None

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

    def gold_order(self, names: typing.Iterable[str] | None = None) -> list[str]:
        """Gold tables (``names``, default all) in an order where every gold input among them is
        built before the tables that read it. Raises GoldCycle (load_config
        refuses a configuration with one)."""
        wanted = list(names) if names is not None else list(self.gold)
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in order:
                return
            if name in path:
                raise GoldCycle(path + (name,))
            for table in self.gold_table(name).inputs:
                layer, _, short = table.partition(".")
                if layer == "gold" and short in wanted:
                    visit(short, path + (name,))
            order.append(name)

        for name in wanted:
            visit(name, ())
        return order

    def suite_path(self, suite: str) -> Path:
        """``expectations/<suite>.json`` from the environment's conf dir, else the base one."""
        for layer in (self.env, "base"):
            candidate = self.conf_dir / layer / "expectations" / f"{suite}.json"
            if candidate.is_file():
                return candidate
        return self.conf_dir / "base" / "expectations" / f"{suite}.json"

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

    def checkpoint_path(self, query_name: str) -> str:
        """One checkpoint directory per streaming query."""
        return f"{self.checkpoint_root}/{query_name}"


# --------------------------------------------------------------------------------------------
# Loading


CONF_DIR_ENV = "LAKEHOUSE_CONF_DIR"
ENV_ENV = "LAKEHOUSE_ENV"
DEFAULT_ENV = "dev"


def default_conf_dir() -> Path:
    """``$LAKEHOUSE_CONF_DIR``, else ``./conf``, else the ``conf/`` beside this package's checkout."""
    if os.environ.get(CONF_DIR_ENV):
        return Path(os.environ[CONF_DIR_ENV])
    if Path("conf/base").is_dir():
        return Path("conf")
    return Path(__file__).resolve().parent.parent / "conf"


def load_config(
    env: str | None = None,
    conf_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
) -> LakehouseConfig:
    """Load ``conf_dir/base`` + ``conf_dir/<env>`` + ``--data-dir`` + ``--set`` overrides."""
    env = env or os.environ.get(ENV_ENV) or DEFAULT_ENV
    conf_path = Path(conf_dir) if conf_dir is not None else default_conf_dir()
    if not conf_path.is_dir():
        raise ConfigError(str(conf_path), "--conf-dir", "directory does not exist")
    base = conf_path / "base"
    if not base.is_dir():
        raise ConfigError(str(base), "base", "the base configuration directory is missing")
    env_dir = conf_path / env
    if not env_dir.is_dir():
        envs = sorted(p.name for p in conf_path.iterdir() if p.is_dir() and p.name != "base")
        raise ConfigError(
            str(env_dir), "--env", f"no such environment '{env}' (have: {', '.join(envs)})"
        )

    tree = _Tree()
    for layer in (base, env_dir):
        for path in sorted(layer.rglob("*.yml")) + sorted(layer.rglob("*.yaml")):
            prefix = list(path.relative_to(layer).parent.parts)
            if path.parent != layer:
                prefix.append(path.stem)
            tree.merge_file(path, prefix)

    if data_dir is not None:
        tree.set(["storage", "data_dir"], str(data_dir), "--data-dir")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", item, "expected key.path=value")
        key_path = _split_key(key.strip())
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:  # not YAML ({{secrets/scope/key}}, a: b: c): the text as it is
            value = raw
        tree.set(key_path, value, f"--set {key.strip()}")

    values = dict(tree.values)
    values["env"] = env
    values["conf_dir"] = str(conf_path)
    tree.origins[("env",)] = "--env"
    tree.origins[("conf_dir",)] = "--conf-dir"
    config = _convert(values, LakehouseConfig, (), tree, str(base))
    for name, entity in config.entities.items():
        for source in entity.sources:
            if source not in config.sources:
                raise ConfigError(tree.origin(("entities", name, "sources"), str(base)),
                                  f"entities.{name}.sources", f"no such source '{source}'")
        suite = config.suite_path(entity.suite)
        if not suite.is_file():
            raise ConfigError(tree.origin(("entities", name, "suite"), str(base)), f"entities.{name}.suite",
                              f"no suite file {suite}")
        try:
            problems = suite_problems(read_suite_file(suite), set(entity.columns))
        except ValueError as exc:
            raise ConfigError(str(suite), "(file)", str(exc)) from None
        for key, message in problems[:1]:
            raise ConfigError(str(suite), key, f"{message} (suite of entity {name})")
    for name, gold in config.gold.items():
        origin = tree.origin(("gold", name, "inputs"), str(base))
        for table in gold.inputs:
            layer, _, short = table.partition(".")
            known = {"bronze": config.sources, "silver": {**config.entities, **{f"{e}_quarantine": e for e in config.entities}},
                     "gold": config.gold, "ops": {short: None}}[layer]
            if short not in known or table == f"gold.{name}":
                raise ConfigError(origin, f"gold.{name}.inputs", f"no such input table '{table}'"
                                  + (" (a gold table cannot read itself)" if table == f"gold.{name}" else ""))
    try:
        config.gold_order()
    except GoldCycle as exc:
        first = exc.tables[0]
        raise ConfigError(tree.origin(("gold", first, "inputs"), str(base)), f"gold.{first}.inputs", str(exc)) from None
    missing_layers = [layer for layer in LAYERS if layer not in config.catalog.schemas]
    if missing_layers:
        raise ConfigError(
            tree.origin(("catalog", "schemas"), str(base)),
            "catalog.schemas",
            f"missing a schema for {', '.join(missing_layers)}",
        )
    return config


LAYERS = ("bronze", "silver", "gold", "ops")


def _split_key(dotted: str) -> list[str]:
    """Split ``--set`` keys by the schema, so map keys may contain dots.

    ``spark.conf.spark.sql.shuffle.partitions`` is ``["spark", "conf", "spark.sql.shuffle.partitions"]``
    because ``spark.conf`` is a map of plain values.
    """
    parts = dotted.split(".")
    hint: Any = LakehouseConfig
    result: list[str] = []
    i = 0
    while i < len(parts):
        if get_origin(hint) is Annotated:
            hint = get_args(hint)[0]
        if get_origin(hint) in (Union, types.UnionType):
            hint = next(a for a in get_args(hint) if a is not type(None))
            continue
        if dataclasses.is_dataclass(hint):
            hints = typing.get_type_hints(hint, include_extras=True)
            result.append(parts[i])
            hint = hints.get(parts[i], Any)
            i += 1
        elif get_origin(hint) is dict:
            value_type = get_args(hint)[1]
            if get_origin(value_type) is Annotated:
                value_type = get_args(value_type)[0]
            if dataclasses.is_dataclass(value_type):
                result.append(parts[i])
                hint = value_type
                i += 1
            else:
                result.append(".".join(parts[i:]))
                break
        else:
            result.extend(parts[i:])
            break
    return result


class _Tree:
    """Merged YAML values plus, for every key path, the file (or option) that set it."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origins: dict[tuple[str, ...], str] = {}

    def merge_file(self, path: Path, prefix: list[str]) -> None:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else "(file)"
            raise ConfigError(str(path), where, f"invalid YAML: {getattr(exc, 'problem', exc)}")
        if data is None:
            return
        if not isinstance(data, dict):
            raise ConfigError(str(path), ".".join(prefix) or "(root)", "expected a mapping")
        self._merge(prefix, data, str(path))

    def _merge(self, path: list[str], data: dict, origin: str) -> None:
        for key, value in data.items():
            key_path = path + [str(key)]
            if isinstance(value, dict):
                _refuse_secret(key_path, value, origin)
                self._ensure_mapping(key_path, origin)
                self._merge(key_path, value, origin)
            else:
                self.set(key_path, value, origin)

    def _ensure_mapping(self, key_path: list[str], origin: str) -> None:
        node = self.values
        for i, part in enumerate(key_path):
            child = node.get(part)
            if not isinstance(child, dict):
                if child is not None:
                    raise ConfigError(
                        origin, ".".join(key_path[: i + 1]), "expected a mapping, got a value"
                    )
                node[part] = child = {}
                self.origins.setdefault(tuple(key_path[: i + 1]), origin)
            node = child

    def set(self, key_path: list[str], value: Any, origin: str) -> None:
        _refuse_secret(key_path, value, origin)
        if len(key_path) > 1:
            self._ensure_mapping(key_path[:-1], origin)
        node = self.values
        for part in key_path[:-1]:
            node = node[part]
        node[key_path[-1]] = value
        self.origins[tuple(key_path)] = origin

    def origin(self, key_path: tuple[str, ...], fallback: str) -> str:
        while key_path:
            if key_path in self.origins:
                return self.origins[key_path]
            key_path = key_path[:-1]
        return fallback


# Maps whose keys are other systems' settings, and the map that names the variable for each.
_ENV_MAPS = {("spark", "conf"): "spark.conf_env", ("kafka", "options"): "kafka.options_env",
             ("kafka", "librdkafka_options"): "kafka.librdkafka_options_env"}


def _names_a_thing(key_path: list[str]) -> bool:
    """A key that is a name the user chose, not a setting: a source, entity or gold table, a column."""
    return ((len(key_path) == 2 and key_path[0] in ("sources", "entities", "gold"))
            or (len(key_path) == 4 and key_path[0] == "entities" and key_path[2] == "columns"))


def _refuse_secret(key_path: list[str], value: Any, origin: str) -> None:
    """A credential never takes its value from a file or --set: name the environment variable."""
    key = key_path[-1]
    if isinstance(value, dict):  # a section under a credential's name, or --set a.b={x: 1}
        for inner_key, inner in value.items():
            _refuse_secret(key_path + [str(inner_key)], inner, origin)
        if not value:
            return
    if value is None or not is_secret_key(key) or _names_a_thing(key_path):
        return
    if (len(key_path) > 1 and key_path[-2].endswith("_env")) or SECRET_REFERENCE.match(str(value)):
        return  # the value names a variable (spark.conf_env), or a Databricks secret ({{secrets/scope/key}})
    parent = tuple(key_path[-3:-1])
    if parent in _ENV_MAPS or tuple(key_path[:2]) == ("spark", "conf"):
        where = _ENV_MAPS.get(parent, "spark.conf_env")
        hint = f"set {where}.{key} to the name of an environment variable that holds it"
    else:
        hint = f"set '{key}_env' to the name of an environment variable that holds it"
    raise ConfigError(origin, ".".join(key_path), f"{key} is a credential, read from the environment only: {hint}")


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) or "(root)"


def _type_name(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _convert(value: Any, hint: Any, path: tuple[str, ...], tree: _Tree, fallback: str) -> Any:
    """Check ``value`` against the type ``hint`` and build the typed value."""
    origin_file = tree.origin(path, fallback)
    constraints: tuple = ()
    if get_origin(hint) is Annotated:
        hint, *extra = get_args(hint)
        constraints = tuple(extra)

    def fail(message: str) -> typing.NoReturn:
        raise ConfigError(origin_file, _dotted(path), message)

    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            fail("must not be empty")
        non_none = [opt for opt in options if opt is not type(None)]
        return _convert(value, non_none[0], path, tree, fallback)
    if value is None:
        fail("missing a value")

    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            fail(f"expected a mapping, got {_type_name(value)}")
        fields = {f.name: f for f in dataclasses.fields(hint)}
        for key in value:
            if key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1)
                hint_text = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    tree.origin(path + (str(key),), fallback),
                    _dotted(path + (str(key),)),
                    f"unknown key{hint_text}",
                )
        kwargs = {}
        hints = typing.get_type_hints(hint, include_extras=True)
        for name, spec in fields.items():
            if name in value:
                kwargs[name] = _convert(value[name], hints[name], path + (name,), tree, fallback)
            elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(origin_file, _dotted(path + (name,)), "missing required key")
        result = hint(**kwargs)
        for name, message in getattr(result, "problems", lambda: [])():
            # name: a field, or "<map field>.<key>" (map keys may hold dots themselves)
            raise ConfigError(tree.origin(path + tuple(name.split(".", 1)), fallback), _dotted(path + (name,)), message)
    elif origin is dict:
        key_type, value_type = get_args(hint)
        if not isinstance(value, dict):
            fail(f"expected a mapping, got {_type_name(value)}")
        result = {
            _convert(str(k), key_type, path + (str(k),), tree, fallback): _convert(
                v, value_type, path + (str(k),), tree, fallback
            )
            for k, v in value.items()
        }
    elif origin is list:
        (item_type,) = get_args(hint)
        if not isinstance(value, list):
            fail(f"expected a list, got {_type_name(value)}")
        result = [_convert(v, item_type, path + (str(i),), tree, fallback) for i, v in enumerate(value)]
    elif origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            fail(f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        result = value
    elif hint is bool:
        if not isinstance(value, bool):
            fail(f"expected true or false, got {_type_name(value)}")
        result = value
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"expected an integer, got {_type_name(value)}")
        result = value
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(f"expected a number, got {_type_name(value)}")
        if not math.isfinite(value):  # YAML's .nan and .inf: a NaN bound compares false, turning checks off
            fail(f"expected a finite number, got {value!r}")
        result = float(value)
    elif hint is str:
        if isinstance(value, (dict, list)):
            fail(f"expected a string, got {_type_name(value)}")
        result = str(value)  # YAML may read 4.1 or true where a string was meant
        if _URI_PASSWORD.match(result):
            fail("a URI with a password in it: keep credentials out of configuration (for MLflow: "
                 "$MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD)")
    elif hint is Path:
        if not isinstance(value, str) or not value:
            fail(f"expected a path, got {_type_name(value)}")
        result = Path(value)
    else:  # pragma: no cover - a programming error in the dataclasses above
        raise TypeError(f"unsupported config type {hint!r} at {_dotted(path)}")

    for constraint in constraints:
        if isinstance(constraint, Pattern) and not re.match(constraint.regex, str(result)):
            fail(f"expected {constraint.description}" + (f", got {result!r}" if constraint.echo else ""))
        if isinstance(constraint, Range):
            if constraint.low is not None and result < constraint.low:
                fail(f"must be at least {constraint.low:g}, got {result!r}")
            if constraint.high is not None and result > constraint.high:
                fail(f"must be at most {constraint.high:g}, got {result!r}")
        if isinstance(constraint, MustExist) and not _URI.match(str(result)):
            if not Path(result).exists():
                fail(f"path does not exist: {result}")
    return result
