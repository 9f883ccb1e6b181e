"""Silver's write: one row per key of a refined micro-batch into ``silver.<entity>``, once per
batch (lakehouse/refine.py stages the batch and calls it), with the rescued fields given columns
of their own under ``unexpected_fields: evolve``. A Delta MERGE, or, when the query's key index
(lakehouse/silver_keys.py) shows the batch updates no key silver holds, an append.
Next stop: the gold tables that read silver's change feed (lakehouse.gold).
"""

from __future__ import annotations

import re

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import MapType, StringType

from lakehouse.config import EntityConfig
from lakehouse.silver_keys import H1, H2, NO_TIME, SilverKeyIndex, collect_keys, hash_frame, key_columns
from lakehouse.silver_tables import silver_columns
from lakehouse.tables import (
    TableRef,
    append_once,
    committed,
    delta_table,
    retry_on_conflict,
    session_conf,
    writing,
)


def merge_into_silver(silver_ref: TableRef, rows: DataFrame, entity: EntityConfig, marker: str,
                      replay_since_ms: int | None, materialized: bool = False,
                      index: SilverKeyIndex | None = None, keys: tuple | None = None) -> int:
    """MERGE one row per key into silver (a seen key takes the row with the later event time).

    ``materialized``: ``rows`` read a batch computed once (lakehouse.refine.stage_rows) and are the
    same on every read (lakehouse.silver_dedupe), so Delta does not materialise them again.
    ``index``: the query's index of silver's keys (lakehouse/silver_keys.py); a batch that brings no
    newer version of a key silver holds is appended instead (:func:`_append_new_keys`), with the
    same outcome. ``keys``: its key hashes and newest event times, one entry per key
    (lakehouse.silver_dedupe), or None to collect them here when the index needs them.

    Once per micro-batch, as tables.append_once: for a batch that may be redone (``replay_since_ms``),
    a MERGE or append already committed under ``marker`` is not run again. Returns the keys it
    inserted, from the commit's own metrics (a redone batch gets the figure of the commit before the crash).
    """
    spark = rows.sparkSession
    if replay_since_ms is not None:
        done = committed(spark, silver_ref, marker, replay_since_ms)
        if done is not None:
            metrics = done["operationMetrics"]
            return int(metrics.get("numTargetRowsInserted", metrics.get("numOutputRows", 0)))
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
    new_columns = bool(set(rows.columns) - set(silver.toDF().columns))
    if new_columns:  # new columns join silver's schema in this MERGE
        settings["spark.databricks.delta.schema.autoMerge.enabled"] = "true"
    if index is not None and index.ready(marker):
        keys = keys if keys is not None else collect_keys(rows, entity)
        appended = _append_new_keys(silver_ref, rows, entity, marker, index, keys, new_columns)
        if appended is not None:
            return appended
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
    if index is not None and keys is not None:
        index.add(*keys)
    return int(metrics["num_inserted_rows"]) if metrics is not None else 0


def _append_new_keys(silver_ref: TableRef, rows: DataFrame, entity: EntityConfig, marker: str,
                     index: SilverKeyIndex, keys: tuple, new_columns: bool) -> int | None:
    """Append the rows whose key silver does not hold, leaving out those whose key it holds with an
    event time theirs is not newer than, as the MERGE would; the rows appended. None (nothing
    written): some row is a newer version of a key silver holds, which only the MERGE can update,
    or the batch brings new columns (``unexpected_fields: evolve``), which the MERGE adds as it
    always did, whether or not a row of the batch is written."""
    if new_columns:
        return None
    h1, h2, times = keys
    held, held_times = index.lookup(h1, h2)
    if (held & ((held_times == NO_TIME) | (times > held_times))).any():
        return None
    if held.all():  # nothing new (or no row): no commit, as a MERGE that changes nothing makes none
        return 0
    if held.any():
        resent = hash_frame(rows.sparkSession, h1[held], h2[held])
        hashes = key_columns(entity)[:2]
        rows = rows.select("*", *hashes)
        rows = rows.join(F.broadcast(resent), [H1, H2], "left_anti").drop(H1, H2)
    append_once(rows, silver_ref, marker)
    index.add(h1[~held], h2[~held], times[~held])
    return int((~held).sum())


MERGE_ATTEMPTS = 4
# A MERGE whose source reads a batch computed once (a local checkpoint) reads it as it is. Delta
# reads a MERGE's source twice (to find the files it touches, then to write) and materialises
# any source that is not a plain Delta scan so both reads agree. Over a checkpoint they agree
# already: the dedupe's window over repeated keys, recomputed on each read, orders by bronze
# position, which is unique (lakehouse.silver_dedupe).
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
