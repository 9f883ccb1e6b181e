"""Silver's row decisions (lakehouse.quarantine.quarantine_reasons, quarantine_error) on hand-made
parsed rows: each reason on its own, several in their fixed order, the plan's time limits, the
exempt sources, unexpected fields by policy, a mismatched CSV header; and which version of a key
silver keeps (newest_of_its_key, and lakehouse.silver_dedupe's way to the same rows)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pyspark.sql import functions as F

from lakehouse import silver_dedupe, silver_keys
from lakehouse.parse import SOURCE_COLUMN
from lakehouse.quality import FAILED_COLUMNS
from lakehouse.quarantine import quarantine_error, quarantine_reasons
from lakehouse.silver_tables import newest_of_its_key, newest_rows

T0 = 1_772_323_200_000_000  # 2026-03-01T00:00:00Z in microseconds
MINUTE = 60_000_000

# The columns quarantine_reasons reads, as parse_records and the row rules leave them; event_us
# becomes the event time (micros, so no time zone is involved), value_hex raw bytes for value.
_SCHEMA = [("value", "string"), ("value_hex", "string"), ("_too_large", "boolean"), ("_malformed", "boolean"),
           ("_duplicate_field", "boolean"), ("_type_errors", "array<string>"), ("_non_finite", "array<string>"),
           *[(column, "array<string>") for column in FAILED_COLUMNS.values()],
           ("_rescued", "string"), ("_header", "string"), (SOURCE_COLUMN, "string"), ("event_us", "long")]
_CLEAN = {"value": "{}", "value_hex": None, "_too_large": False, "_malformed": False, "_duplicate_field": False,
          "_type_errors": [], "_non_finite": [], **{c: [] for c in FAILED_COLUMNS.values()},
          "_rescued": None, "_header": None, SOURCE_COLUMN: "telemetry", "event_us": T0}


def _frame(spark, entity, rows: list[dict]):
    data = [tuple({**_CLEAN, **row}[name] for name, _ in _SCHEMA) + (i,) for i, row in enumerate(rows)]
    frame = spark.createDataFrame(data, ", ".join(f"{n} {t}" for n, t in _SCHEMA) + ", _i int")
    frame = frame.withColumn("value", F.coalesce(F.unhex("value_hex").cast("string"), F.col("value")))
    return frame.withColumn(entity.event_time, F.timestamp_micros("event_us"))


def _decide(spark, entity, rows: list[dict], plan: dict | None = None) -> list[tuple[list[str], str]]:
    """(reasons, error line) of each row, in order."""
    reasons = quarantine_reasons(entity, plan)
    out = _frame(spark, entity, rows).select("_i", reasons.alias("reasons"),
                                             quarantine_error(reasons).alias("error")).collect()
    return [(list(r.reasons), r.error) for r in sorted(out, key=lambda r: r._i)]


def _reasons(spark, entity, rows, plan=None) -> list[list[str]]:
    return [reasons for reasons, _ in _decide(spark, entity, rows, plan)]


def _reasons_under(spark, rows, variants: list[tuple]) -> list[list[list[str]]]:
    """The reasons of each row under each (entity, plan), all in one Spark job."""
    columns = [quarantine_reasons(entity, plan).alias(f"r{i}") for i, (entity, plan) in enumerate(variants)]
    out = sorted(_frame(spark, variants[0][0], rows).select("_i", *columns).collect(), key=lambda r: r._i)
    return [[list(row[f"r{i}"]) for row in out] for i in range(len(variants))]


@pytest.fixture
def entity(config):
    return config.entity("telemetry")


def test_each_reason_fires_alone(spark, entity):
    cases = {
        "clean": ({}, []),
        "not_utf8": ({"value_hex": "7B22C328FF7D"}, ["not_utf8"]),  # {"\xc3(\xff}: invalid UTF-8
        "too_large": ({"_too_large": True}, ["too_large"]),
        "malformed": ({"_malformed": True}, ["malformed"]),
        "duplicate_field": ({"_duplicate_field": True}, ["duplicate_field"]),
        "type error": ({"_type_errors": ["cpu_util"]}, ["type(cpu_util)"]),
        "not finite": ({"_non_finite": ["power_w"]}, ["not_finite"]),
        "drop expectation": ({FAILED_COLUMNS["drop"]: ["cpu_util_between_0_and_100"]}, ["cpu_util_between_0_and_100"]),
        "warn expectation": ({FAILED_COLUMNS["warn"]: ["inlet_temp_warn"]}, []),  # kept, with a warning
        "fail expectation": ({FAILED_COLUMNS["fail"]: ["no_nulls_at_all"]}, []),  # fails the batch, not the row
        "rescued fields": ({"_rescued": '{"firmware":"1.2"}'}, []),  # unexpected_fields: rescue
        "header ok": ({"_header": "ok"}, []),  # refine_batch takes header lines out before this
    }
    got = _reasons(spark, entity, [row for row, _ in cases.values()])
    assert dict(zip(cases, got, strict=True)) == {name: want for name, (_, want) in cases.items()}


def test_type_errors_follow_the_declared_column_order_and_ignore_undeclared_names(spark, entity):
    (reasons,) = _reasons(spark, entity, [{"_type_errors": ["power_w", "not_a_column", "event_time", "cpu_util"]}])
    assert reasons == ["type(event_time)", "type(cpu_util)", "type(power_w)"]
    assert list(entity.columns).index("event_time") < list(entity.columns).index("cpu_util")


def test_several_reasons_accumulate_in_a_fixed_order(spark, entity):
    everything = {"value_hex": "FF", "_too_large": True, "_malformed": True, "_duplicate_field": True,
                  "_type_errors": ["host", "event_id"], "_non_finite": ["fan_rpm"],
                  FAILED_COLUMNS["drop"]: ["rule_b", "rule_a"], "_rescued": '{"x":1}'}
    quarantining = replace(entity, unexpected_fields="quarantine")
    plan = {"future_cutoff_us": T0 + 60 * MINUTE, "late_cutoff_us": T0 - 360 * MINUTE}
    rows = [{**everything, "event_us": T0 + 120 * MINUTE}, {**everything, "event_us": T0 - 600 * MINUTE}]
    ahead, late = _reasons(spark, quarantining, rows, plan)
    first = ["not_utf8", "too_large", "malformed", "duplicate_field", "type(event_id)", "type(host)",
             "not_finite", "rule_b", "rule_a", "unexpected_fields"]
    assert ahead == first + ["future_event_time"] and late == first + ["late"]


def test_the_error_line_lists_the_reasons_and_the_non_finite_columns(spark, entity):
    rows = [{}, {"_malformed": True}, {"_non_finite": ["power_w", "fan_rpm"], "_duplicate_field": True},
            {"_type_errors": ["cpu_util"], FAILED_COLUMNS["drop"]: ["rule_a"]}]
    assert [error for _, error in _decide(spark, entity, rows)] == [
        "", "malformed", "duplicate_field; not_finite; not finite: power_w, fan_rpm", "type(cpu_util); rule_a"]


def test_the_plan_cut_offs_are_strict_and_a_missing_event_time_is_neither(spark, entity):
    plan = {"future_cutoff_us": T0 + 60 * MINUTE, "late_cutoff_us": T0 - 360 * MINUTE, "late_exempt": []}
    times = [T0, T0 + 60 * MINUTE, T0 + 60 * MINUTE + 1, T0 - 360 * MINUTE, T0 - 360 * MINUTE - 1, None]
    assert _reasons(spark, entity, [{"event_us": t} for t in times], plan) == [
        [], [], ["future_event_time"], [], ["late"], []]


def test_without_cut_offs_no_time_is_late_or_future_and_one_cut_off_applies_alone(spark, entity):
    rows = [{"event_us": T0 - 10**12}, {"event_us": T0}, {"event_us": T0 + 10**12}]
    plans = [None, {}, {"future_cutoff_us": None, "late_cutoff_us": None, "late_exempt": ["telemetry"]},
             {"late_cutoff_us": T0}, {"future_cutoff_us": T0}]
    assert _reasons_under(spark, rows, [(entity, plan) for plan in plans]) == [
        [[], [], []], [[], [], []], [[], [], []], [["late"], [], []], [[], [], ["future_event_time"]]]


def test_exempt_sources_are_never_late_but_still_future(spark, entity):
    plan = {"future_cutoff_us": T0 + 60 * MINUTE, "late_cutoff_us": T0 - 360 * MINUTE, "late_exempt": ["history"]}
    old, ahead = T0 - 10_000 * MINUTE, T0 + 120 * MINUTE
    rows = [{SOURCE_COLUMN: "history", "event_us": old}, {SOURCE_COLUMN: "telemetry", "event_us": old},
            {SOURCE_COLUMN: None, "event_us": old}, {SOURCE_COLUMN: "history", "event_us": ahead}]
    assert _reasons(spark, entity, rows, plan) == [[], ["late"], ["late"], ["future_event_time"]]


def test_unexpected_fields_quarantine_only_under_that_policy(spark, entity):
    rows = [{"_rescued": '{"firmware":"1.2"}'}, {"_rescued": None}]
    policies = ["quarantine", "evolve", "rescue"]  # rescue: the project's setting
    assert _reasons_under(spark, rows, [(replace(entity, unexpected_fields=p), None) for p in policies]) == [
        [["unexpected_fields"], []], [[], []], [[], []]]


def test_a_mismatched_header_is_the_only_reason(spark, entity):
    plan = {"future_cutoff_us": T0, "late_cutoff_us": T0 - MINUTE}
    rows = [{"_header": "mismatch"},
            {"_header": "mismatch", "_malformed": True, "_type_errors": ["cpu_util"], "event_us": T0 + 10**9,
             FAILED_COLUMNS["drop"]: ["rule_a"]},
            {"_header": "mismatch", "event_us": T0 - 10**9}]
    assert _reasons(spark, entity, rows, plan) == [["header_mismatch"]] * 3


# -- one row per key ------------------------------------------------------------------------


# The ways silver finds the row each key keeps: the window over every row; silver_dedupe's hashes
# (a window over the repeated keys' rows only); the same with every key's hash colliding (every
# row is sorted, by its key columns); and silver_dedupe over its row limit (a window over all).
DEDUPES = ["window", "hashes", "colliding hashes", "over the row limit"]


@pytest.fixture(params=DEDUPES)
def dedupe(request, monkeypatch):
    if request.param == "colliding hashes":
        real = silver_keys.key_columns

        def colliding(entity):
            h1, h2, time = real(entity)
            return [F.lit(7).cast("long").alias(silver_keys.H1), F.lit(7).cast("long").alias(silver_keys.H2), time]

        monkeypatch.setattr(silver_keys, "key_columns", colliding)
        monkeypatch.setattr(silver_dedupe, "key_columns", colliding)
    return request.param


def _one_per_key(frame, entity, how: str = "window"):
    """The rows silver keeps of ``frame`` when every row competes, found ``how`` (:data:`DEDUPES`)."""
    if how == "window":
        return newest_rows(frame, entity)
    rows, keys = silver_dedupe.newest_per_key(frame, entity, max_rows=0 if how == "over the row limit" else 1000,
                                              rows_at_most=frame.count())
    assert (keys is None) == (how == "over the row limit")
    if how == "hashes":  # one entry per key: its hash and the newest event time of its rows (the index's)
        h1, h2, times = silver_keys.collect_keys(frame.groupBy(*entity.keys).agg(
            F.max(entity.event_time).alias(entity.event_time)), entity)
        assert sorted(zip(*keys, strict=True)) == sorted(zip(h1.tolist(), h2.tolist(), times.tolist(), strict=True))
    return rows


def _latest(spark, entity, rows: list[tuple], how: str = "window") -> dict:
    frame = spark.createDataFrame(rows, "event_id string, event_us long, _source_file string, _source_line long, tag string")
    frame = frame.withColumn(entity.event_time, F.timestamp_micros("event_us"))
    kept = _one_per_key(frame, entity, how).collect()
    assert len(kept) == len({r.event_id for r in kept})
    return {r.event_id: r.tag for r in kept}


def test_the_latest_event_time_wins_whatever_the_bronze_position(spark, entity, dedupe):
    rows = [("e1", T0 + MINUTE, "f1", 1, "newest"), ("e1", T0, "f9", 99, "older, later in bronze"),
            ("e2", None, "f9", 9, "no time"), ("e2", T0, "f1", 1, "has a time"),
            ("e3", T0, "f1", 1, "only version")]
    assert _latest(spark, entity, rows, dedupe) == {"e1": "newest", "e2": "has a time", "e3": "only version"}


def test_ties_go_to_the_later_bronze_position(spark, entity, dedupe):
    rows = [("e1", T0, "f1", 5, "f1:5"), ("e1", T0, "f2", 1, "f2:1"),  # a later file
            ("e2", T0, "f1", 5, "f1:5"), ("e2", T0, "f1", 7, "f1:7"),  # a later line of one file
            ("e3", None, "f1", 2, "f1:2"), ("e3", None, "f1", 3, "f1:3"),  # no times: position alone
            # Files compare as text: f10 sorts before f9; lines compare as numbers: 10 after 9.
            ("e4", T0, "f10", 1, "f10"), ("e4", T0, "f9", 1, "f9"),
            ("e5", T0, "f1", 9, "line 9"), ("e5", T0, "f1", 10, "line 10")]
    assert _latest(spark, entity, rows, dedupe) == {"e1": "f2:1", "e2": "f1:7", "e3": "f1:3", "e4": "f9", "e5": "line 10"}


def test_a_composite_key_keeps_one_row_per_combination(spark, entity, dedupe):
    two_keys = replace(entity, keys=["event_id", "_source_file"])
    rows = [("e1", T0, "a", 1, "a-old"), ("e1", T0 + 1, "a", 2, "a-new"), ("e1", T0, "b", 1, "b")]
    frame = spark.createDataFrame(rows, "event_id string, event_us long, _source_file string, _source_line long, tag string")
    frame = frame.withColumn(entity.event_time, F.timestamp_micros("event_us"))
    kept = sorted((r._source_file, r.tag) for r in _one_per_key(frame, two_keys, dedupe).collect())
    assert kept == [("a", "a-new"), ("b", "b")]
    assert _one_per_key(frame, two_keys, dedupe).columns == frame.columns


def test_only_kept_rows_compete_for_their_key(spark, entity):
    """newest_of_its_key among some rows (text dedupe's claim, lakehouse.text_prep): a newer
    version that is quarantined leaves the older kept one, and no quarantined row is flagged."""
    rows = [("e1", T0 + MINUTE, "f1", 1, False, "newest, quarantined"), ("e1", T0, "f1", 2, True, "older, kept"),
            ("e2", T0, "f1", 3, False, "only version, quarantined"),
            (None, None, "f1", 4, False, "malformed"), (None, None, "f1", 5, False, "malformed too")]
    frame = spark.createDataFrame(
        rows, "event_id string, event_us long, _source_file string, _source_line long, kept boolean, tag string")
    frame = frame.withColumn(entity.event_time, F.timestamp_micros("event_us"))
    flagged = frame.withColumn("_newest", newest_of_its_key(entity, among=F.col("kept")))
    assert sorted(r.tag for r in flagged.where("_newest").collect()) == ["older, kept"]
    assert flagged.where("_newest IS NULL").count() == 0
