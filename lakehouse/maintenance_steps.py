"""What one maintenance step did: a :class:`Step`, one row of ``ops.maintenance`` and one line
on the terminal; :func:`print_steps` sums up a pass. lakehouse/maintenance.py makes the steps;
`lakehouse status` reads the table back (the time since each table's last maintenance), and a
restarted `lakehouse run` its last whole clean-up of each table (:func:`recent_cleanups`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, LongType, StringType, StructField, StructType, TimestampType

from lakehouse.config import LakehouseConfig
from lakehouse.formatting import size_text
from lakehouse.tables import read_table, resolve_table, table_exists

MAINTENANCE_TABLE = "ops.maintenance"
CLEANUP_STEPS = ("retention", "vacuum")  # in `lakehouse run`, at most every maintenance.cleanup_every
OK_OUTCOMES = ("done", "nothing to do")
MAINTENANCE_SCHEMA = StructType(
    [
        StructField("table_name", StringType()),  # bronze.telemetry, ...; a source for "archive"/"delete"
        StructField("action", StringType()),  # settings | retention | compact | vacuum | archive | delete
        StructField("started_at", TimestampType()),
        StructField("duration_s", DoubleType()),
        StructField("attempts", IntegerType()),  # 1, or more after conflicts with concurrent commits
        StructField("outcome", StringType()),  # done | nothing to do | skipped | failed | stopped
        StructField("files_before", LongType()),  # compact: data files of the current version;
        StructField("files_after", LongType()),  # vacuum: files on disk; archive: landing files
        StructField("bytes_before", LongType()),
        StructField("bytes_after", LongType()),
        StructField("version_before", LongType()),
        StructField("version_after", LongType()),
        StructField("detail", StringType()),  # one line: what changed, or the error
    ]
)


@dataclass
class Step:
    """One maintenance action on one table (a row of ops.maintenance)."""

    table_name: str
    action: str
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    duration_s: float = 0.0
    attempts: int = 1
    outcome: str = "done"
    files_before: int | None = None
    files_after: int | None = None
    bytes_before: int | None = None
    bytes_after: int | None = None
    version_before: int | None = None
    version_after: int | None = None
    detail: str = ""

    def row(self) -> tuple:
        return (self.table_name, self.action, self.started_at, self.duration_s, self.attempts,
                self.outcome, self.files_before, self.files_after, self.bytes_before, self.bytes_after,
                self.version_before, self.version_after, self.detail)

    def describe(self, dry_run: bool = False) -> str:
        """One line: ``silver.telemetry: compact: done (212 -> 3 files, 2.1 MiB -> 1.9 MiB; by bin-packing) [4.2s]``."""
        outcome = "would be done" if dry_run and self.outcome == "done" else self.outcome
        parts = []
        if self.files_before is not None and self.files_after is not None:
            sizes = f"{self.files_before:,} -> {self.files_after:,} files"
            if self.bytes_before is not None and self.bytes_after is not None:
                sizes += f", {size_text(self.bytes_before)} -> {size_text(self.bytes_after)}"
            parts.append(sizes)
        if self.detail:
            parts.append(self.detail)
        if self.attempts > 1:
            parts.append(f"{self.attempts} attempts")
        inside = f" ({'; '.join(parts)})" if parts else ""
        return f"{self.table_name}: {self.action}: {outcome}{inside} [{self.duration_s:.1f}s]"


def print_steps(steps: list[Step], dry_run: bool, prefix: str = "maintain:", stream=sys.stdout) -> None:
    """One summary line of a pass."""
    failed = sum(s.outcome == "failed" for s in steps)
    done = sum(s.outcome == "done" for s in steps)
    skipped = sum(s.outcome == "skipped" for s in steps)
    stopped = sum(s.outcome == "stopped" for s in steps)
    verb = "would change something" if dry_run else "changed something"
    print(f"{prefix} {done} step(s) {verb}, {len(steps) - done - failed - skipped - stopped} had nothing to do, "
          f"{skipped} skipped, {failed} failed" + (f", {stopped} stopped" if stopped else ""), file=stream, flush=True)


def recent_cleanups(spark: SparkSession, config: LakehouseConfig, within_s: float) -> dict[str, datetime]:
    """When each table's clean-up last ran whole (aware UTC), of those less than ``within_s`` ago,
    from ops.maintenance: a vacuum that was done or had nothing to do, its pass's retention step
    (the row before it) likewise, and no failed, skipped or stopped clean-up step since. A
    restarted `lakehouse run` does not clean such a table up again at once."""
    ref = resolve_table(config, MAINTENANCE_TABLE)
    if not table_exists(spark, ref):
        return {}
    since = datetime.now(timezone.utc) - timedelta(seconds=within_s)
    # An hour more than asked: the retention step of a pass whose vacuum is just inside the window.
    rows = (read_table(spark, ref)
            .where(F.col("action").isin(*CLEANUP_STEPS) & (F.col("started_at") >= since - timedelta(hours=1)))
            .select("table_name", "action", "outcome", "started_at")
            .orderBy("started_at", "action").collect())  # a tie: retention before vacuum, as a pass runs them
    cleaned, before = {}, {}
    for row in rows:
        previous, before[row.table_name] = before.get(row.table_name), row
        if row.outcome not in OK_OUTCOMES:
            cleaned.pop(row.table_name, None)
        elif row.action == "vacuum" and (previous is None or previous.action == "vacuum"
                                         or previous.outcome in OK_OUTCOMES):
            began = previous if previous is not None and previous.action == "retention" else row  # the pass's clean-up
            cleaned[row.table_name] = began.started_at.astimezone(timezone.utc)  # pyspark: a naive local time
    return {name: at for name, at in cleaned.items() if at >= since}
