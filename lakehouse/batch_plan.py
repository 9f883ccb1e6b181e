"""A silver micro-batch's plan: what its decisions depend on besides its rows (its processing
time, the future and late cut-offs, the sources exempt from being late), fixed when the batch is
first planned and recorded in the query's checkpoint (lakehouse.checkpoints.BatchPlans), so a
batch redone after a crash decides every row as its first attempt did.
Next stop: lakehouse.refine decides the batch's rows by its plan.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse.config import LakehouseConfig, duration_seconds
from lakehouse.parse import TIMESTAMP_RANGE_MICROS
from lakehouse.tables import last_commit, made_empty, read_table, resolve_table, table_exists


class NewestEventTime:
    """Silver's newest event time (microseconds) before the next batch, for the late cut-off: read
    from the table once, when the query starts, then advanced by each batch's kept rows. Silver
    has one writer (its query) and its MERGE keeps the latest version of each key, so this is
    max(event_time) over silver without a scan of the whole table on every batch (a scan that
    grows with the table: seconds per batch after weeks of running)."""

    _UNREAD = object()

    def __init__(self, spark: SparkSession, config: LakehouseConfig, entity_name: str):
        self.spark, self.config, self.entity_name = spark, config, entity_name
        self._value = self._UNREAD

    def value(self) -> int | None:
        if self._value is self._UNREAD:
            self._value = self._read()
        return self._value

    def _read(self) -> int | None:
        ref = resolve_table(self.config, f"silver.{self.entity_name}")
        # A silver just created (a first run) holds no row: its history says so in about 0.1 s,
        # where the scan's snapshot jobs take 0.5-0.8 s (bench/RESULTS.md, issue 16, fifteenth round).
        if made_empty(last_commit(self.spark, ref)):
            return None
        entity = self.config.entity(self.entity_name)
        return read_table(self.spark, ref).agg(F.max(F.col(entity.event_time)).alias("newest")).select(
            F.unix_micros(F.col("newest").cast("timestamp"))).first()[0]

    def advance(self, kept_newest: int | None) -> None:
        """After a batch: the newest event time among the rows it kept (None: it kept none)."""
        current = self.value()
        if kept_newest is not None:
            self._value = kept_newest if current is None else max(current, kept_newest)


def late_exempt(config: LakehouseConfig, entity_name: str) -> list[str]:
    """The entity's sources configured as backfills (``sources.<s>.backfill``): no row of theirs is late."""
    return sorted(s for s in config.entity(entity_name).sources if config.source(s).backfill)


def plan_batch(spark: SparkSession, config: LakehouseConfig, entity_name: str, backfill: bool = False,
               newest: NewestEventTime | None = None) -> dict:
    """What the batch's decisions depend on besides its rows, fixed when it is first planned.

    - ``planned_at_us``: the batch's processing time; ``future_cutoff_us`` = that + ``max_future``.
    - ``late_cutoff_us``: silver's newest event time before the batch (never later than the
      future cut-off) minus the entity's watermark, as Spark's watermarks come from what earlier
      batches committed, so the rows of one batch are never late relative to each other. None
      while silver is empty, and for a backfill run (``--backfill``).
    - ``late_exempt``: the entity's sources configured as backfills (``sources.<s>.backfill``).
    - ``silver_version`` (an entity with ``text.dedupe``): silver's version, which the batch's exact
      duplicates are looked up in (None: no silver yet).
    Times are microseconds since the epoch (UTC), so no local clock or Python datetime is involved.
    ``newest``: the running query's tracker of silver's newest event time (default: read silver).
    """
    entity = config.entity(entity_name)
    planned_at = int(datetime.now(timezone.utc).timestamp() * 1_000_000)
    # Clamped to the timestamps a row can hold (1900-9999), so a huge max_future is no crash.
    future_cutoff = min(planned_at + int(duration_seconds(entity.max_future) * 1_000_000),
                        TIMESTAMP_RANGE_MICROS[1] - 1)
    newest = (newest or NewestEventTime(spark, config, entity_name)).value()
    late_cutoff = None
    if newest is not None and not backfill:
        late_cutoff = max(min(newest, future_cutoff) - int(duration_seconds(entity.watermark) * 1_000_000),
                          TIMESTAMP_RANGE_MICROS[0])
    plan = {
        "planned_at_us": planned_at,
        "future_cutoff_us": future_cutoff,
        "late_cutoff_us": late_cutoff,
        "late_exempt": late_exempt(config, entity_name),
        "backfill": backfill,
    }
    if entity.text is not None and entity.text.dedupe is not None:  # exact duplicates are looked up in silver
        ref = resolve_table(config, f"silver.{entity_name}")
        plan["silver_version"] = last_commit(spark, ref).version if table_exists(spark, ref) else None
    return plan
