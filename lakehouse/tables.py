"""Logical table names (``bronze.<source>``, ``silver.<entity>``, ``gold.<table>``, ``ops.<table>``)
and where they live.

:func:`resolve_table` is the one place that maps a logical name to storage: locally
(``catalog.kind: path``) a Delta directory under ``<data_dir>/tables/<layer>/<table>``; on
Databricks (``catalog.kind: unity``) the Unity Catalog table ``<catalog>.<schema>.<table>``.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
from delta.exceptions import (
    ConcurrentAppendException,
    ConcurrentDeleteDeleteException,
    ConcurrentDeleteReadException,
    ConcurrentTransactionException,
    ConcurrentWriteException,
    DeltaConcurrentModificationException,
    MetadataChangedException,
    ProtocolChangedException,
)
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType, _make_type_verifier

from lakehouse.config import LAYERS, LakehouseConfig
from lakehouse.delta_log import COMMIT_COLUMNS, log_commits

_PART = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class TableNameError(ValueError):
    """A table name that is not ``<layer>.<table>`` with a known layer and a plain identifier."""


@dataclass(frozen=True)
class TableRef:
    name: str  # logical name, e.g. "bronze.telemetry"
    layer: str
    table: str
    path: str | None  # Delta directory (catalog.kind == "path")
    identifier: str  # the name Spark SQL resolves: bronze.telemetry, or main.bronze.telemetry

    @property
    def is_path(self) -> bool:
        return self.path is not None


def resolve_table(config: LakehouseConfig, name: str) -> TableRef:
    layer, _, table = name.partition(".")
    if layer not in LAYERS or not _PART.match(table):
        raise TableNameError(
            f"bad table name {name!r}: expected <layer>.<table> with layer one of "
            f"{', '.join(LAYERS)} and a lower-case identifier for the table"
        )
    if config.catalog.kind == "unity":
        schema = config.catalog.schemas[layer]
        return TableRef(name, layer, table, None, f"{config.catalog.name}.{schema}.{table}")
    path = str(Path(config.storage.data_dir, "tables", layer, table).absolute())
    return TableRef(name, layer, table, path, f"{layer}.{table}")


def table_exists(spark: SparkSession, ref: TableRef) -> bool:
    if ref.is_path:
        return Path(ref.path, "_delta_log").is_dir()
    return spark.catalog.tableExists(ref.identifier)


def read_table(spark: SparkSession, ref: TableRef, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return load_from(reader, ref)


def load_from(reader, ref: TableRef) -> DataFrame:
    """``reader`` (batch or streaming, options set) applied to the table's path or name."""
    return reader.load(ref.path) if ref.is_path else reader.table(ref.identifier)


def save_to(writer, ref: TableRef) -> None:
    """A batch ``DataFrameWriter`` (format and options set) into the table's path or name."""
    writer.save(ref.path) if ref.is_path else writer.saveAsTable(ref.identifier)


def start_to(writer, ref: TableRef):
    """A ``DataStreamWriter`` started into the table's path or name; returns the query."""
    return writer.start(ref.path) if ref.is_path else writer.toTable(ref.identifier)


def last_commit(spark: SparkSession, ref: TableRef):
    """The table's newest commit (:func:`commits`): ``version``, ``operationMetrics`` (e.g.
    numOutputRows), ``userMetadata``."""
    return next(commits(spark, ref), None)


def made_empty(commit) -> bool:
    """Whether a table whose newest commit is ``commit`` (:func:`last_commit`) surely holds no row:
    that commit created it, without a query."""
    return commit["version"] == 0 and commit["operation"] == "CREATE TABLE"


def local_rows(spark: SparkSession, rows: list, schema: StructType) -> DataFrame:
    """A DataFrame of a few rows made on the driver (an ops table's rows: tuples in ``schema``'s
    order, or dicts by name), in one partition, so its append writes one file.

    The rows go to the JVM as one Arrow table (:func:`arrow_rows`), not as the Python RDD
    ``createDataFrame`` makes of a list: that one's tasks are served by a Python worker, which
    costs about 0.15 s an append, and 0.9 s for the first (starting the worker) (bench/RESULTS.md,
    issue 16). (lakehouse.row_appends appends such rows to a table stored by path without Spark.)
    """
    return spark.createDataFrame(arrow_rows(rows, schema), schema).coalesce(1)


def arrow_rows(rows: list, schema: StructType) -> pa.Table:
    """Rows made on the driver (tuples in ``schema``'s order, or dicts by name) as an Arrow table.
    Each row is checked against ``schema`` as ``createDataFrame`` checks it (a float in a long
    field is a TypeError, not cut down). A datetime without a time zone means the local time, as
    ``createDataFrame`` takes it (top-level fields only: pass UTC times with their zone)."""
    names = schema.fieldNames()
    check = _make_type_verifier(schema)
    records = []
    for row in rows:
        record = row if isinstance(row, dict) else dict(zip(names, row, strict=True))
        check(record)
        records.append(_arrow_ready(record))
    return pa.Table.from_pylist(records, schema=to_arrow_schema(schema))


def _arrow_ready(record: dict) -> dict:
    return {name: value.astimezone(timezone.utc) if isinstance(value, datetime) and value.tzinfo is None else value
            for name, value in record.items()}


def append_to_table(df: DataFrame, ref: TableRef) -> None:
    """Append ``df`` (no idempotence: for rows whose loss or repetition a crash may cause, such as
    progress rows; a micro-batch's own writes use :func:`append_once`)."""
    retry_on_conflict(lambda: save_to(df.write.format("delta").mode("append"), ref), APPEND_ATTEMPTS)


def bronze_table(config: LakehouseConfig, source: str) -> TableRef:
    """A source's bronze table: ``bronze.<source>``."""
    return resolve_table(config, f"bronze.{source}")


def batch_marker(app_id: str, batch_id: int) -> str:
    """The userMetadata of the commit a micro-batch makes to one table: ``<app id>:<batch id>``."""
    return f"{app_id}:{batch_id}"


APPEND_ATTEMPTS = 4  # an append that lost to a concurrent metadata change is redone, after 1 s, 2 s, 4 s

# Commit timestamps come from the storage's clock, batch times from the driver's: allow for skew.
CLOCK_MARGIN_MS = 10 * 60 * 1000


def commits(spark: SparkSession, ref: TableRef) -> Iterator[Row]:
    """The table's commits newest first, each a row of ``version``, ``timestamp`` (naive local
    time), ``operation``, ``operationParameters``, ``operationMetrics`` and ``userMetadata``, as
    Delta's history gives them. A caller stops when it has gone back far enough (:func:`commit_ms`).

    A table stored by path is read from its log's files, one commit file per row asked for
    (lakehouse/delta_log.py: Delta's history runs a Spark job for each look); any other, from
    Delta's history in growing pages (50, 200, 800, ... commits)."""
    direct = log_commits(spark, ref.path) if ref.is_path else None
    if direct is not None:
        yield from direct
        return
    depth, below = 50, None  # rows yielded so far are those of versions at or above ``below``
    while True:
        page = delta_table(spark, ref).history(depth).select(*COMMIT_COLUMNS).collect()
        yield from (row for row in page if below is None or row["version"] < below)
        if len(page) < depth:
            return
        depth, below = depth * 4, min(row["version"] for row in page)


def commit_ms(commit: Row) -> float:
    """A commit row's time (:func:`commits`), in epoch milliseconds."""
    return commit["timestamp"].timestamp() * 1000  # a naive local time, as pyspark collects one


# Delta operations that change no row, whoever runs them (maintenance: lakehouse/maintenance.py).
ROWS_UNCHANGED = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "UNSET TBLPROPERTIES"})


def committed(spark: SparkSession, ref: TableRef, marker: str, since_ms: int | None = None):
    """The table's commit whose userMetadata is ``marker`` (``version``, ``operationMetrics``), or None.
    A maintenance commit made while a write had set the marker for the session (a VACUUM beside
    silver's MERGE) carries it too, and is not the write's: it is passed over.

    History is read newest first until a commit older than ``since_ms`` (when the batch that
    would have made the commit was planned; None: no bound, the whole history), so a table other
    queries also append to is searched only as far back as that batch."""
    for commit in commits(spark, ref):
        if commit["userMetadata"] == marker and commit["operation"] not in ROWS_UNCHANGED:
            return commit
        if since_ms is not None and commit_ms(commit) < since_ms - CLOCK_MARGIN_MS:
            return None
    return None


def append_once(df: DataFrame, ref: TableRef, marker: str, replay_since_ms: int | None = None,
                merge_schema: bool = False) -> bool:
    """Append ``df`` as the commit named ``marker`` (see :func:`batch_marker`); False when skipped.

    Exactly once per micro-batch: only the first batch a query runs after it starts can be one
    redone after a crash (a batch that fails stops the query). For that batch, give
    ``replay_since_ms`` (when it was planned): the table's history back to then is searched for
    the commit, and the append skipped if it is there. Every other batch appends at once.
    (Delta's own idempotent writes, txnAppId/txnVersion, look the application's version up in
    the table's reconstructed state on every write: about a second per append here, for an
    answer only a restarted query's first batch needs.) A marker names one query's batch, so
    queries may share a table (the ops tables); each query writes its own batches only.
    """
    if replay_since_ms is not None and committed(df.sparkSession, ref, marker, replay_since_ms) is not None:
        return False
    writer = df.write.format("delta").mode("append").option("userMetadata", marker)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    # An append conflicts only with a change of the table's metadata (maintenance setting its
    # retention properties, say); it committed nothing then, and is redone.
    retry_on_conflict(lambda: save_to(writer, ref), APPEND_ATTEMPTS)
    return True


def sql_target(ref: TableRef) -> str:
    """How Spark SQL names the table in DDL and maintenance statements (ALTER, OPTIMIZE, VACUUM)."""
    return f"delta.`{ref.path}`" if ref.is_path else ref.identifier


@dataclass(frozen=True)
class TableSize:
    version: int
    files: int  # data files of the current version
    bytes: int


def table_properties(spark: SparkSession, ref: TableRef) -> dict[str, str]:
    """The table's properties, from its metadata alone (DESCRIBE DETAIL also sums its files, a
    Spark job over the table's state: 0.8 s against 0.04 s on a new table)."""
    return {row["key"]: row["value"] for row in spark.sql(f"SHOW TBLPROPERTIES {sql_target(ref)}").collect()}


def table_size(spark: SparkSession, ref: TableRef) -> TableSize:
    """The current version's data files and bytes (DESCRIBE DETAIL: read from the log, no data scan)."""
    detail = delta_table(spark, ref).detail().select("numFiles", "sizeInBytes").first()
    return TableSize(last_commit(spark, ref).version, int(detail["numFiles"]), int(detail["sizeInBytes"]))


_WRITERS: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_WRITERS_GUARD = threading.Lock()


@contextmanager
def session_conf(spark: SparkSession, settings: dict[str, object]):
    """Session settings (those not None) for the duration of one command, then as they were.
    They are the whole session's: only for a command whose table no other thread writes meanwhile
    (silver's MERGE and maintenance's OPTIMIZE hold the table's writer lock; the streams never
    read the keys set), or for a query's start (lakehouse.gold: the query keeps a copy of the
    settings as it starts; queries start one at a time, from one thread). Jobs other threads plan
    on the session meanwhile take the settings too (maintenance's, say: only their speed changes)."""
    chosen = {key: str(value) for key, value in settings.items() if value is not None}
    before = {key: spark.conf.get(key, None) for key in chosen}
    for key, value in chosen.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


class WaitStopped(Exception):
    """A wait for a table's writer lock given up because the caller is stopping."""


@contextmanager
def writing(ref: TableRef, stop: threading.Event | None = None):
    """Hold the table's writer lock of this application while rewriting its files (a MERGE, an
    overwrite, a compaction). Two of those at once make the later commit fail with a Delta
    conflict; inside one application (`lakehouse run`) they take turns instead. Appends need
    no lock: they never conflict. With ``stop``, the wait ends with WaitStopped once it is set."""
    with _WRITERS_GUARD:
        lock = _WRITERS[ref.name]
    while not lock.acquire(timeout=0.5 if stop is not None else -1):
        if stop.is_set():
            raise WaitStopped(f"{ref.name}: stopped while waiting for its writer")
    try:
        yield
    finally:
        lock.release()


DELTA_CONFLICTS = (ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException,
                   ConcurrentTransactionException, ConcurrentWriteException, DeltaConcurrentModificationException,
                   MetadataChangedException, ProtocolChangedException)


def is_conflict(exc: BaseException) -> bool:
    """A Delta commit lost to a concurrent one (optimistic concurrency): redoing it may succeed.
    delta-rs raises CommitFailedError for that (lakehouse/row_appends.py sorts out the one
    failure of that kind no retry mends: a table feature it lacks)."""
    delta_rs = sys.modules.get("deltalake.exceptions")
    if delta_rs is not None and isinstance(exc, delta_rs.CommitFailedError):
        return True
    return isinstance(exc, DELTA_CONFLICTS) or any(
        name in str(exc) for name in ("DELTA_CONCURRENT_", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED"))


def retry_on_conflict(action, attempts: int, on_retry=None, first_delay: float = 1.0):
    """``action()``, redone after a Delta conflict (after 1 s, 2 s, 4 s, ...) up to ``attempts``
    times in all; returns ``(result, attempts used)``. ``on_retry(attempt, exc)`` is called
    before each wait. Any other error, or the last conflict, is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return action(), attempt
        except Exception as exc:
            if attempt == attempts or not is_conflict(exc):
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            time.sleep(first_delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def delta_table(spark: SparkSession, ref: TableRef) -> DeltaTable:
    return DeltaTable.forPath(spark, ref.path) if ref.is_path else DeltaTable.forName(spark, ref.identifier)


def _location(spark: SparkSession, identifier: str) -> str | None:
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {identifier}").where("col_name = 'Location'").collect()
    return rows[0]["data_type"].removeprefix("file:") if rows else None


def register_local_tables(spark: SparkSession, config: LakehouseConfig) -> list[str]:
    """Make every local Delta table resolvable by its logical name in Spark SQL.

    Locally there is no metastore, so each ``<data_dir>/tables/<layer>/<table>`` directory is
    registered as an external table in this session's catalog. Returns the names registered.
    """
    if config.catalog.kind != "path":
        return []
    root = Path(config.storage.data_dir, "tables")
    names = []
    for layer in LAYERS:
        for table_dir in sorted(Path(root, layer).glob("*/_delta_log")):
            ref = resolve_table(config, f"{layer}.{table_dir.parent.name}")
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {layer}")
            if spark.catalog.tableExists(ref.identifier) and _location(spark, ref.identifier) != ref.path:
                # registered by an earlier data directory in this session: the entry only (external)
                spark.sql(f"DROP TABLE {ref.identifier}")
            location = ref.path.replace("'", "\\'")
            spark.sql(f"CREATE TABLE IF NOT EXISTS {ref.identifier} USING delta LOCATION '{location}'")
            names.append(ref.name)
    return names
