"""The configuration of how the pipeline runs: streaming triggers, `lakehouse run`'s supervision,
table maintenance and the ops tables' retention (sections ``streaming``, ``run``,
``maintenance``, ``ops`` of conf/<layer>/lakehouse.yml; conf/README.md documents each key)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from lakehouse.config.values import Duration, PositiveInt, Range, duration_seconds


@dataclass(frozen=True)
class StreamingConfig:
    trigger: Duration  # processing-time trigger for continuous runs
    # How often a running job appends the queued progress rows to ops.stream_progress.
    progress_flush_seconds: Annotated[float, Range(low=0.0)] = 30.0
    # Partitions of a streaming gold table's state (its aggregation's shuffle), fixed in the query's
    # checkpoint by its first run. null: spark.sql.shuffle.partitions; "cores": one per core Spark
    # has as the query first starts (its default parallelism: meant for a local master; a cluster's
    # executors may not all have registered by then).
    state_partitions: PositiveInt | Literal["cores"] | None = None


@dataclass(frozen=True)
class RunConfig:
    """`lakehouse run` (lakehouse/app.py): restarting a flow that failed with a transient error."""

    max_restarts: Annotated[int, Range(low=0)] = 5  # per flow; then it stays failed and the others go on
    backoff: Duration = "5 seconds"  # before the first restart, doubled for each next (at most 5 minutes)
    # On a terminal, one line per flow this often (rows/s, batch time, backlog, p95 freshness);
    # elsewhere one plain line per finished micro-batch.
    report_every: Duration = "10 seconds"


@dataclass(frozen=True)
class MaintenanceConfig:
    """Table maintenance (lakehouse/maintenance.py): `lakehouse maintain`, and inside `lakehouse run`."""

    # `lakehouse run` maintains every table this often, beside the streams; null: never in the run.
    interval: Duration | None = "1 hour"
    # In `lakehouse run`, a table's clean-up (the ops retention and VACUUM) runs at most this
    # often; compaction runs every pass. A removed file is deleted about deleted_file_retention +
    # cleanup_every (+ up to an interval) after its removal. null: every pass. `lakehouse
    # maintain` always cleans up.
    cleanup_every: Duration | None = "1 day"
    # A table is compacted (OPTIMIZE) once it holds at least this many data files.
    compact_min_files: Annotated[int, Range(low=2)] = 16
    # Silver tables are compacted with Z-order on the entity's keys (rather than plain bin-packing).
    # Measured (bench/zorder_merge.py): no faster MERGE on random keys; off.
    zorder_silver: bool = False
    # Silver tables are compacted into files of at most this size (MiB): each MERGE rewrites every
    # file a key of its batch is in, so large files make each batch write more (bench/RESULTS.md).
    silver_file_mib: Annotated[int, Range(low=1)] = 16
    # Every other table is compacted into files of at most this size (MiB), and files that size
    # are left alone: a pass rewrites at most this much of a table besides its new small files
    # (Delta's default, 1 GiB, rewrites a whole table below 1 GiB on every pass).
    file_mib: Annotated[int, Range(low=1)] = 128
    # Delta table properties set on every table: how long removed data files (and change-feed
    # files) are kept for time travel, readers and VACUUM; how long the log's history is kept.
    deleted_file_retention: Duration = "7 days"
    log_retention: Duration = "30 days"
    # A conflicting commit (a MERGE, an overwrite) makes a compaction or deletion retry this many
    # times, after 1 s, 2 s, 4 s ...
    max_attempts: Annotated[int, Range(low=1)] = 5

    def problems(self) -> list[tuple[str, str]]:
        if duration_seconds(self.log_retention) < duration_seconds(self.deleted_file_retention):
            return [("log_retention", "is shorter than deleted_file_retention: time travel needs both")]
        return []

    def table_properties(self) -> dict[str, str]:
        """The Delta properties maintenance keeps on every table (and new tables get from the session)."""
        return {"delta.deletedFileRetentionDuration": f"interval {int(duration_seconds(self.deleted_file_retention))} seconds",
                "delta.logRetentionDuration": f"interval {int(duration_seconds(self.log_retention))} seconds"}


@dataclass(frozen=True)
class OpsConfig:
    """The ``ops.*`` tables of the run's own records."""

    # Rows of ops.stream_progress, ops.freshness, ops.quality_results and ops.maintenance older
    # than this are deleted by maintenance; null: kept forever. (The accounting tables,
    # ops.silver_batches, ops.ingested_files and ops.bad_files, are never trimmed: reconciliation
    # and exactly-once read all of them.)
    retention: Duration | None = "30 days"
