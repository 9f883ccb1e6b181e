"""Silver's quarantine rules: why a parsed and checked row is not kept.

Each rule is a Spark column expression over the columns lakehouse.parse and lakehouse.quality
add to a bronze row (``_malformed``, ``_type_errors``, the failed expectations, ...); together
they give the row's reasons, in a fixed order. An empty list keeps the row. README.md's silver
section lists the reasons; conf/README.md the entity keys that shape them.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from lakehouse.config import EntityConfig
from lakehouse.parse import SOURCE_COLUMN
from lakehouse.quality import FAILED_COLUMNS, names_where


def _no_reasons() -> Column:
    return F.array().cast("array<string>")


def _reason(condition: Column, name: str) -> Column:
    return F.when(condition, F.array(F.lit(name))).otherwise(_no_reasons())


def quarantine_reasons(entity: EntityConfig, plan: dict | None = None) -> Column:
    """Why a checked row goes to quarantine; an empty array keeps it.

    ``plan`` (see lakehouse.batch_plan.plan_batch) fixes the batch's time limits: an event time after
    ``future_cutoff_us`` is ``future_event_time`` (a skewed clock: such a row would otherwise
    move the late cut-off, and gold's watermarks, into the future); one before
    ``late_cutoff_us`` is ``late``, unless the row comes from a source in ``late_exempt``
    (a backfill). None: no time limits. A cut-off may also be a column (of microseconds; null: no
    limit), so the expression serves every batch (lakehouse.refine.decide_rows).
    """
    reasons = F.concat(
        _reason(~F.is_valid_utf8("value"), "not_utf8"),
        _reason(F.col("_too_large"), "too_large"),
        _reason(F.col("_malformed"), "malformed"),
        _reason(F.col("_duplicate_field"), "duplicate_field"),
        names_where([(F.array_contains("_type_errors", name), f"type({name})") for name in entity.columns]),
        _reason(F.size("_non_finite") > 0, "not_finite"),
        F.col(FAILED_COLUMNS["drop"]),
    )
    if entity.unexpected_fields == "quarantine":
        reasons = F.concat(reasons, _reason(F.col("_rescued").isNotNull(), "unexpected_fields"))
    event_time = F.col(entity.event_time).cast("timestamp")
    plan = plan or {}
    future = F.lit(False)
    if plan.get("future_cutoff_us") is not None:
        future = F.coalesce(event_time > F.timestamp_micros(_micros(plan["future_cutoff_us"])), F.lit(False))
        reasons = F.concat(reasons, _reason(future, "future_event_time"))
    if plan.get("late_cutoff_us") is not None:
        late = F.coalesce(event_time < F.timestamp_micros(_micros(plan["late_cutoff_us"])), F.lit(False))
        if plan.get("late_exempt"):
            late = late & ~F.coalesce(F.col(SOURCE_COLUMN).isin(plan["late_exempt"]), F.lit(False))
        reasons = F.concat(reasons, _reason(late, "late"))
    # A CSV header line is not a record: one that names other columns is quarantined for that alone.
    return F.when(F.col("_header") == "mismatch", F.array(F.lit("header_mismatch"))).otherwise(reasons)


def _micros(cutoff: int | Column) -> Column:
    return cutoff if isinstance(cutoff, Column) else F.lit(cutoff)


def quarantine_error(reasons: Column) -> Column:
    """The quarantine's one readable line: the reasons, and which columns were not finite."""
    non_finite = F.when(F.size("_non_finite") > 0, F.concat(F.lit("not finite: "), F.array_join("_non_finite", ", ")))
    return F.concat_ws("; ", F.array_join(reasons, "; "), non_finite)


# The rows of a decided batch (its ``_reasons``: null for a CSV header line, [] for a kept record).
def is_record() -> Column:
    """A record, not a CSV header line."""
    return F.col("_reasons").isNotNull()


def is_kept() -> Column:
    """A record kept: no reason to quarantine it."""
    return is_record() & (F.size("_reasons") == 0)


def is_quarantined() -> Column:
    """A record with a reason to quarantine it."""
    return is_record() & (F.size("_reasons") > 0)


def is_failing() -> Column:
    """A record a ``fail`` expectation does not hold on (the batch is not committed)."""
    return is_record() & (F.size(FAILED_COLUMNS["fail"]) > 0)
