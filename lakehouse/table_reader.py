"""Reading the tables to look at them (``lakehouse status``, ``lakehouse sql --engine duckdb``):
through Spark, or straight from the Delta log and its Parquet files, without a JVM.

Both readers answer the same questions: does a table exist, how big is it (version, files,
bytes), and the rows of a query over it. A query is written once, in the SQL that Spark and
DuckDB share, with ``{t}`` where the table goes; every time in the rows comes back as an aware
UTC ``datetime``. So lakehouse/status.py gives the same figures through either reader
(tests/lakehouse/test_table_reader.py compares them).

- :class:`SparkReader`: a running Spark session; every catalog (path tables, Unity Catalog).
- :class:`DirectReader`: delta-rs (the ``deltalake`` package) reads the table's log and lists its
  files, DuckDB runs the query over them. It starts in well under a second, where a Spark
  session takes 15-60 s. Path tables only (``catalog.kind: path``, local landing directories).

Table features: delta-rs reads every feature our tables use (appendOnly, invariants,
changeDataFeed; checkpoints every ``delta.checkpointInterval`` commits; statistics columns), and
deletion vectors (a table Databricks made, say) through its own query engine. A reader feature it
cannot read fails with the table's name, and ``--engine spark`` still reads it. The README lists
the features we avoid.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from lakehouse.config import LakehouseConfig
from lakehouse.errors import UsageError
from lakehouse.fs import local_path
from lakehouse.tables import LAYERS, TableRef, TableSize, resolve_table

ENGINES = ("auto", "duckdb", "spark")  # --engine: duckdb is the direct reader


class ReaderError(RuntimeError):
    """A table the direct reader cannot read (a feature delta-rs lacks, a corrupt log)."""


def direct_reads_possible(config: LakehouseConfig) -> str | None:
    """None when :class:`DirectReader` can read this configuration's tables; else why not."""
    if config.catalog.kind != "path":
        return f"the tables are in a catalog ({config.catalog.kind}), not at paths"
    remote = [name for name, source in config.sources.items()
              if source.kind == "files" and local_path(config.landing_path(name)) is None]
    if remote:
        return f"source {remote[0]}'s landing directory is not local"
    return None


def _utc(value):
    """An aware UTC datetime for any datetime (a naive one is local time, as pyspark gives it)."""
    return value.astimezone(timezone.utc) if isinstance(value, datetime) else value


class SparkReader:
    """Tables read through a Spark session."""

    engine = "spark"

    def __init__(self, spark, config: LakehouseConfig):
        self.spark, self.config = spark, config

    def ref(self, name: str) -> TableRef:
        return resolve_table(self.config, name)

    def exists(self, name: str) -> bool:
        from lakehouse.tables import table_exists

        return table_exists(self.spark, self.ref(name))

    def size(self, name: str) -> TableSize:
        from lakehouse.tables import table_size

        return table_size(self.spark, self.ref(name))

    def count(self, name: str) -> int:
        """The table's rows (Delta answers a bare count from its files' statistics)."""
        from lakehouse.tables import read_table

        return read_table(self.spark, self.ref(name)).count()

    def stat(self, location: str):
        """A file's size and modification time (fs.FileStat), or None when it does not exist."""
        from lakehouse.fs import stat

        return stat(self.spark, location)

    def rows(self, sql: str, table: str) -> list[dict]:
        ref = self.ref(table)
        source = f"delta.`{ref.path}`" if ref.is_path else ref.identifier
        return [{key: _utc(value) for key, value in row.asDict().items()}
                for row in self.spark.sql(sql.format(t=source)).collect()]


class DirectReader:
    """Tables read with delta-rs and DuckDB: no JVM. Path tables only (:func:`direct_reads_possible`)."""

    engine = "duckdb"

    def __init__(self, config: LakehouseConfig):
        why_not = direct_reads_possible(config)
        if why_not is not None:
            raise UsageError(f"the direct reader cannot read these tables: {why_not}; use --engine spark")
        import duckdb

        self.config = config
        self.db = duckdb.connect(":memory:")
        # The tables are read from Arrow datasets registered here; DuckDB itself reads no file,
        # writes none, and loads no extension (no network: extensions would be downloaded).
        self.db.execute("SET TimeZone = 'UTC'")
        self.db.execute("SET enable_external_access = false")
        self.db.execute("SET autoinstall_known_extensions = false")
        self.db.execute("SET autoload_known_extensions = false")
        self.db.execute("SET lock_configuration = true")  # no query can turn these back
        self._tables: dict[str, object] = {}
        self._views: set[str] = set()

    def ref(self, name: str) -> TableRef:
        return resolve_table(self.config, name)

    def exists(self, name: str) -> bool:
        return Path(self.ref(name).path, "_delta_log").is_dir()

    def table(self, name: str):
        """The table's newest version as a ``deltalake.DeltaTable`` (opened once per reader)."""
        if name not in self._tables:
            from deltalake import DeltaTable

            try:
                self._tables[name] = DeltaTable(self.ref(name).path)
            except Exception as exc:  # noqa: BLE001 - delta-rs' own error types differ by version
                raise ReaderError(f"{name}: delta-rs cannot open the table: {exc}") from exc
        return self._tables[name]

    def size(self, name: str) -> TableSize:
        table = self.table(name)
        files = table.get_add_actions(flatten=True).column("size_bytes").to_pylist()
        return TableSize(table.version(), len(files), sum(files))

    def count(self, name: str) -> int:
        """The table's rows: the sum of its files' record counts in the log, without reading them
        (files without statistics, or deletion vectors: counted by a scan)."""
        table = self.table(name)
        actions = table.get_add_actions(flatten=True)
        counts = actions.column("num_records").to_pylist() if "num_records" in actions.schema.names else [None]
        if None not in counts and "deletionVectors" not in (table.protocol().reader_features or []):
            return sum(counts)
        return self.rows("SELECT count(*) AS n FROM {t}", name)[0]["n"]

    def view(self, name: str) -> str:
        """The DuckDB name of the table's rows (registered on first use: a lazy scan of its files)."""
        view = "t_" + name.replace(".", "__")
        if view not in self._views:
            self.db.register(view, self._scan(name))
            self._views.add(view)
        return view

    def stat(self, location: str):
        """A local file's size and modification time (fs.FileStat), or None when it does not exist."""
        from lakehouse.fs import stat

        if local_path(location) is None:
            raise ReaderError(f"{location}: the direct reader reads local files only; use --engine spark")
        return stat(None, location)

    def _scan(self, name: str):
        """The table's rows for DuckDB: a lazy Arrow dataset over its files; for a table with
        deletion vectors (which the dataset cannot apply), the rows delta-rs' own engine reads,
        whole, in memory."""
        table = self.table(name)
        try:
            if "deletionVectors" not in (table.protocol().reader_features or []):
                return table.to_pyarrow_dataset()
            import pyarrow as pa
            from deltalake import QueryBuilder

            return pa.table(QueryBuilder().register("t", table).execute("SELECT * FROM t").read_all())
        except Exception as exc:  # noqa: BLE001 - e.g. a reader feature delta-rs does not support
            raise ReaderError(f"{name}: delta-rs cannot read the table's files: {exc}") from exc

    def rows(self, sql: str, table: str) -> list[dict]:
        result = self.db.sql(sql.format(t=self.view(table))).to_arrow_table()
        return [{key: _utc(value) for key, value in row.items()} for row in result.to_pylist()]

    def register_all(self) -> list[str]:
        """Every existing table under its logical name (``bronze.telemetry``: a schema per layer),
        for ``lakehouse sql --engine duckdb``. Returns the names."""
        names = []
        root = Path(self.config.storage.data_dir, "tables")
        for layer in LAYERS:
            for log in sorted(Path(root, layer).glob("*/_delta_log")):
                name = f"{layer}.{log.parent.name}"
                self.db.execute(f'CREATE SCHEMA IF NOT EXISTS "{layer}"')
                self.db.execute(f'CREATE OR REPLACE VIEW "{layer}"."{log.parent.name}" AS SELECT * FROM {self.view(name)}')
                names.append(name)
        return names


def open_reader(config: LakehouseConfig, engine: str, start_spark):
    """The reader for ``--engine``: ``duckdb`` (the direct reader), ``spark`` (``start_spark()``
    gives the session), or ``auto``: the direct reader where it can read the tables, else Spark."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
    if engine == "duckdb" or (engine == "auto" and direct_reads_possible(config) is None):
        return DirectReader(config)
    return SparkReader(start_spark(), config)
