"""Silver's MERGE: one row per key of a refined micro-batch into ``silver.<entity>``, once per
batch (lakehouse/refine.py stages the batch and calls it), with the rescued fields given columns
of their own under ``unexpected_fields: evolve``.
Next stop: the gold tables that read silver's change feed (lakehouse.gold).
"""

from __future__ import annotations

import re

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import MapType, StringType

from lakehouse.config import EntityConfig
from lakehouse.silver_tables import silver_columns
from lakehouse.tables import TableRef, committed, delta_table, retry_on_conflict, session_conf, writing


def merge_into_silver(silver_ref: TableRef, rows: DataFrame, entity: EntityConfig, marker: str,
                      replay_since_ms: int | None, materialized: bool = False) -> int:
    """MERGE one row per key into silver (a seen key takes the row with the later event time).

    ``materialized``: ``rows`` read a batch computed once (lakehouse.refine.stage_rows), so Delta reads
    them as they are instead of materialising them again.

    Once per micro-batch, as tables.append_once: for a batch that may be redone
    (``replay_since_ms``), a MERGE already committed under ``marker`` is not run again. Returns
    the keys it inserted, from the MERGE's own metrics (a redone batch gets the figure of the
    MERGE that committed before the crash).
    """
    spark = rows.sparkSession
    if replay_since_ms is not None:
        done = committed(spark, silver_ref, marker, replay_since_ms)
        if done is not None:
            return int(done["operationMetrics"].get("numTargetRowsInserted", 0))
    silver = delta_table(spark, silver_ref)
    rows = rows.select(*silver_columns(entity))
    if entity.unexpected_fields == "evolve":
        rows, _ = evolve_rescued_fields(rows, entity)
        # Columns earlier batches evolved: a row without the field holds null there (the newer
        # version of a key replaces the whole row).
        rows = rows.withColumns({f.name: F.lit(None).cast(f.dataType) for f in silver.toDF().schema.fields
                                 if f.name not in rows.columns})
    settings = {"spark.databricks.delta.commitInfo.userMetadata": marker}
    if materialized:
        settings.update(SOURCE_MATERIALIZED)
    if set(rows.columns) - set(silver.toDF().columns):  # new columns join silver's schema in this MERGE
        settings["spark.databricks.delta.schema.autoMerge.enabled"] = "true"
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in entity.keys)
    newer = f"s.`{entity.event_time}` > t.`{entity.event_time}` OR t.`{entity.event_time}` IS NULL"

    def merge():
        # The MERGE's own metrics (a MERGE that changes nothing commits nothing: Delta skips empty commits).
        return silver.alias("t").merge(rows.alias("s"), condition).whenMatchedUpdateAll(condition=newer) \
            .whenNotMatchedInsertAll().execute().first()

    # Maintenance in the same application (lakehouse/maintenance.py) waits for the MERGE, and
    # the MERGE for it. A compaction by another application can still win the commit: the
    # MERGE, which committed nothing then, is redone on the new version. The marker is set once
    # the lock is held: a compaction of silver committing meanwhile would otherwise carry it.
    with writing(silver_ref), session_conf(spark, settings):
        metrics, _ = retry_on_conflict(merge, MERGE_ATTEMPTS, on_retry=lambda attempt, exc: print(
            f"silver.{silver_ref.table}: the MERGE met a concurrent commit ({type(exc).__name__}); "
            f"redoing it (attempt {attempt + 1} of {MERGE_ATTEMPTS})", flush=True))
    return int(metrics["num_inserted_rows"]) if metrics is not None else 0


MERGE_ATTEMPTS = 4
# A MERGE whose source is already computed once (a local checkpoint) reads it as it is. Delta
# reads a MERGE's source twice (to find the files it touches, then to write) and materialises
# any source that is not a plain Delta scan so both reads agree; a checkpoint already does.
SOURCE_MATERIALIZED = {"spark.databricks.delta.merge.materializeSource": "none"}


IDENTIFIER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def evolve_rescued_fields(latest: DataFrame, entity: EntityConfig) -> tuple[DataFrame, list[str]]:
    """Move rescued fields into string columns of their own (``unexpected_fields: evolve``).

    A field whose name is not a plain identifier, or clashes with a declared or system column,
    stays in ``_rescued``. Returns the rows and the names of the fields given columns.
    """
    rescued = F.from_json("_rescued", MapType(StringType(), StringType()))
    names = [r[0] for r in latest.select(F.explode(F.map_keys(rescued))).distinct().collect()]
    taken = {c.lower() for c in latest.columns}
    evolved = sorted(n for n in names if IDENTIFIER_NAME.match(n) and n.lower() not in taken)
    if not evolved:
        return latest, []
    left = F.map_filter(rescued, lambda key, _: ~key.isin(evolved))
    return latest.withColumns(
        {**{name: rescued[name] for name in evolved},
         "_rescued": F.when(F.size(left) > 0, F.to_json(left))}
    ), evolved
