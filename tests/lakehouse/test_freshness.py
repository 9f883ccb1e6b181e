"""ops.freshness: the arithmetic of a measurement, and (check_freshness, used by the run tests) that
each recorded row agrees with its table's commit and with the rows that commit wrote."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.bronze import ensure_bronze_table, freshness_times
from lakehouse.freshness import (
    BRONZE_SAMPLE_LINES,
    FRESHNESS_TABLE,
    ROW_SAMPLE,
    Measured,
    bronze_sample_every,
    constant_time,
    measure_aggregates,
    p95_seconds,
    sample_quantiles,
    sampled_rows,
    sampled_time_aggregates,
)
from lakehouse.tables import bronze_table, delta_table, read_table, resolve_table

MS = 0.0015  # rows hold seconds to the millisecond


def test_latencies_are_the_commit_time_minus_the_mirrored_quantiles():
    measured = Measured("silver.x", "silver.x", 3, rows=10,
                        times={"ingest": (100.0, 101.0, 105.0), "event": (40.0, 50.0, 90.0)}, marker="m:3")
    commit = datetime.fromtimestamp(110.0, tz=timezone.utc)
    row = dict(zip(["flow", "table", "batch", "version", "commit", "rows",
                    "ingest_p50", "ingest_p95", "ingest_max", "event_p50", "event_p95", "event_max",
                    "window_p50", "window_p95", "window_max"], measured.row(7, commit), strict=True))
    # p50 of (C - t) is C - median(t); p95 is C - the 5th percentile; max is C - the oldest
    assert (row["ingest_p50"], row["ingest_p95"], row["ingest_max"]) == (5.0, 9.0, 10.0)
    assert (row["event_p50"], row["event_p95"], row["event_max"]) == (20.0, 60.0, 70.0)
    assert row["window_p50"] is None and row["version"] == 7 and row["rows"] == 10
    assert p95_seconds(measured.row(7, commit)) == 60.0  # event time's, when there is one


def test_the_aggregates_skip_rows_without_a_time_and_count_the_written_ones(spark):
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    data = [(start + timedelta(seconds=s), s % 2 == 0) for s in range(100)] + [(None, True)]
    df = spark.createDataFrame(data, "t timestamp, kept boolean")
    row = df.agg(*measure_aggregates({"event": F.when(F.col("kept"), F.col("t"))}, rows=F.col("kept"))).first()
    measured = Measured.from_row(row, "f", "silver.x", 0)
    assert measured.rows == 51  # the row without a time is written, but has no age
    oldest, q05, q50 = measured.times["event"]
    assert oldest == start.timestamp()
    assert start.timestamp() + 2 <= q05 <= start.timestamp() + 10 and 44 <= q50 - start.timestamp() <= 54
    assert "ingest" not in measured.times


def test_percentiles_take_the_sampled_rows_and_the_oldest_takes_every_row(spark):
    """Silver's measurements: percentiles over every ROW_SAMPLE-th line (and rows without a
    position), the oldest time and the row count over every row."""
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    lines = 4 * ROW_SAMPLE
    # Sampled lines are an hour old, the others a day, and line 2 a year.
    age = {n: timedelta(hours=1) if n % ROW_SAMPLE == 1 else timedelta(days=365 if n == 2 else 1)
           for n in range(1, lines + 1)}
    unplaced = [(start - timedelta(hours=1), None)]  # no position: counted in the sample
    df = spark.createDataFrame([(start - age[n], n) for n in age] + unplaced, "t timestamp, _source_line long")
    row = df.agg(*measure_aggregates({"event": F.col("t")}, sample=sampled_rows())).first()
    measured = Measured.from_row(row, "f", "silver.x", 0)
    oldest, q05, q50 = measured.times["event"]
    assert measured.rows == lines + 1
    assert oldest == (start - timedelta(days=365)).timestamp()
    assert q05 == q50 == (start - timedelta(hours=1)).timestamp()  # the five sampled rows alike


def test_bronze_reads_the_event_time_of_a_sample_of_lines_and_takes_the_batch_time_exactly(spark, config):
    """A file source's bronze reads event time from every ROW_SAMPLE-th line of each file,
    its first included (the oldest is the sample's); its ingest time is the batch's, one literal
    for every row, measured without reading them."""
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    lines = 2 * ROW_SAMPLE + 5
    data = [(f'{{"event_id": "e{n}", "event_time": "{(start + timedelta(seconds=n)).isoformat()}"}}'.encode(),
             "file:/f.jsonl", n) for n in range(lines, 0, -1)]  # line 1 holds the oldest time
    data.append((b'{"event_id": "old", "event_time": "2025-01-01T00:00:00Z"}', "file:/f.jsonl", 2))
    df = spark.createDataFrame(data, "value binary, _source_file string, _source_line long")
    times = freshness_times(config, "telemetry")
    assert set(times) == {"event"}
    row = df.agg(*[a for m, t in times.items() for a in sampled_time_aggregates(m, t)]).first()
    stamp = start + timedelta(hours=1, microseconds=250)
    measured = Measured.from_row({**row.asDict(), "fresh_rows": lines + 1, **constant_time("ingest", stamp)},
                                 "bronze.telemetry", "bronze.telemetry", 0)
    sampled = [(start + timedelta(seconds=n)).timestamp() for n in range(1, lines + 1) if n % ROW_SAMPLE == 1]
    assert len(sampled) == 3 and sorted(row["event_sample"]) == sampled  # lines 1, 17, 33; not line 2's 2025
    assert measured.times["event"] == (sampled[0], sampled[0], sampled[1])
    assert measured.times["ingest"] == (stamp.timestamp(),) * 3 and measured.rows == lines + 1


def test_sample_quantiles_are_those_percentile_approx_gives(spark):
    """The percentiles of a collected sample match Spark's percentile_approx on the same values
    (its rank rule: the smallest value with at least that share at or below it)."""
    for values in ([5.0], [3.0, 1.0], [float(v) for v in range(1, 21)], [float(v * v % 37) for v in range(1, 101)]):
        df = spark.createDataFrame([(v,) for v in values], "s double")
        approx = df.agg(F.percentile_approx("s", F.array(F.lit(0.05), F.lit(0.5)), F.lit(10_000))).first()[0]
        assert sample_quantiles(values) == (min(values), *approx), values
    assert sample_quantiles([]) is None


def _added(spark, ref, version: int):
    """The rows an append-only table gained in ``version``."""
    now = read_table(spark, ref, version=version)
    return now if version == 0 else now.exceptAll(read_table(spark, ref, version=version - 1))


def _versions_adding_rows(table_path: str) -> set[int]:
    """The versions of a table whose commit added rows, by its log's add actions (a commit that
    delta-rs made carries no operationMetrics)."""
    versions = set()
    for commit in Path(table_path, "_delta_log").glob("*.json"):
        actions = [json.loads(line) for line in commit.read_text().splitlines() if line.strip()]
        if any(a["add"]["dataChange"] and json.loads(a["add"].get("stats") or "{}").get("numRecords", 1)
               for a in actions if "add" in a):
            versions.add(int(commit.stem))
    return versions


def check_freshness(spark, config, flows: list[str], complete: bool = False) -> list:
    """Every flow has ops.freshness rows, and each row agrees with its commit: the commit time is
    the Delta commit's timestamp of that version, p50 <= p95 <= max, and the max is exactly the
    commit time minus the oldest time among the rows that commit wrote (append-only tables), or
    at least that (silver: kept rows are measured before the MERGE keeps one per key).
    ``complete`` (a run that stopped cleanly): every commit that added rows to an append-only
    table (bronze, a streaming gold table) has its row."""
    rows = read_table(spark, resolve_table(config, FRESHNESS_TABLE)).collect()
    assert set(flows) <= {row["flow"] for row in rows}, (flows, rows)
    for table in (f for f in flows if f.startswith("bronze.") or f == "gold.telemetry_minute") if complete else ():
        added = _versions_adding_rows(resolve_table(config, table).path)
        recorded = {row["version"] for row in rows if row["table_name"] == table}
        assert added and added <= recorded, (table, sorted(added - recorded))
    for row in rows:
        ref = resolve_table(config, row["table_name"])
        commit = delta_table(spark, ref).history().where(F.col("version") == row["version"]).first()
        assert commit is not None and commit["timestamp"] == row["commit_time"], row
        at = row["commit_time"].timestamp()
        for measure in ("ingest", "event", "window"):
            p50, p95, worst = (row[f"{measure}_{f}_s"] for f in ("p50", "p95", "max"))
            if worst is not None:
                assert p50 <= p95 + MS and p95 <= worst + MS, row
        if ref.layer == "bronze":
            added = _added(spark, ref, row["version"])
            assert added.count() == row["rows"], row
            oldest = added.agg(F.min("_ingested_at")).first()[0]
            assert row["ingest_max_s"] == pytest.approx(at - oldest.timestamp(), abs=MS), row
            assert row["ingest_p50_s"] >= 0, row  # the commit comes after the batch took the lines in
        elif ref.layer == "silver":
            changed = (spark.read.format("delta").option("readChangeFeed", "true")
                       .option("startingVersion", row["version"]).option("endingVersion", row["version"])
                       .load(ref.path).where("_change_type IN ('insert', 'update_postimage')"))
            oldest = changed.agg(F.min("_ingested_at"), F.min("event_time")).first()
            assert row["ingest_max_s"] >= at - oldest[0].timestamp() - MS, row
            assert row["event_max_s"] >= at - oldest[1].timestamp() - MS, row
        elif row["flow"] == "gold.telemetry_minute":
            added = _added(spark, ref, row["version"])
            ends = added.agg(F.count(F.lit(1)), F.min(F.expr("minute + INTERVAL 1 MINUTE"))).first()
            assert ends[0] == row["rows"], row
            assert row["window_max_s"] == pytest.approx(at - ends[1].timestamp(), abs=MS), row
    return rows


def test_a_large_bronze_batch_samples_sparser_and_keeps_each_file_first_line(spark):
    """A batch of up to 32 MiB samples every ROW_SAMPLE-th line; a larger one a power of two more
    sparsely, so the sample stays about BRONZE_SAMPLE_LINES lines, unless its files are short: a
    file of average size keeps a few sampled lines. Line 1 always counts."""
    assert bronze_sample_every(0) == bronze_sample_every((32 << 20) - 1) == ROW_SAMPLE
    for planned in (64 << 20, 256 << 20, 10 << 30):
        every = bronze_sample_every(planned, files=10)
        assert every > ROW_SAMPLE and every & (every - 1) == 0
        assert BRONZE_SAMPLE_LINES <= planned // 256 // every < 2 * BRONZE_SAMPLE_LINES
    assert bronze_sample_every(1 << 30, files=40_000) == ROW_SAMPLE  # 40,000 files of about 100 lines
    assert bronze_sample_every(1 << 30, files=4_000) == 128  # about 1,000 lines each: 8 sampled
    df = spark.createDataFrame([(n, float(n)) for n in range(1, 200)], "_source_line long, t double")
    row = df.agg(*sampled_time_aggregates("event", F.col("t").cast("timestamp"), every=64)).first()
    assert sorted(row["event_sample"]) == [1.0, 65.0, 129.0, 193.0]


@pytest.mark.parametrize("every", [ROW_SAMPLE, 8])
def test_a_bronze_batch_samples_its_lines_at_the_stride_chosen_for_it(spark, config, tmp_path, monkeypatch, every):
    """landing._append_lines takes the stride bronze_sample_every gives for the batch's files."""
    from lakehouse import landing

    monkeypatch.setattr(landing, "bronze_sample_every", lambda planned, files: every)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(b'{"event_id": "e%d", "event_time": "%s"}\n' % (n, (start + timedelta(seconds=n))
                              .isoformat().encode()) for n in range(1, 41)))
    ensure_bronze_table(spark, bronze_table(config, "telemetry"))
    counts, measured = landing._append_lines(  # noqa: SLF001 - the batch's one read and its measurement
        spark, [landing.LandedFile(path.as_uri(), size=path.stat().st_size)], bronze_table(config, "telemetry"),
        "stride:0", 0, f"stride-{every}", times=freshness_times(config, "telemetry"))
    assert list(counts.values()) == [40] and measured["fresh_rows"] == 40
    assert sorted(measured["event_sample"]) == [(start + timedelta(seconds=n)).timestamp()
                                                 for n in range(1, 41, every)]
