"""Silver's key index (lakehouse/silver_keys.py): the lookups on their own, and silver written
through it against silver written by the MERGE alone, batch by batch, with resends, newer and
older versions of held keys, and commits by another writer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from lakehouse import silver_keys
from lakehouse.silver_keys import NO_TIME, SilverKeyIndex
from lakehouse.silver_merge import merge_into_silver
from lakehouse.silver_tables import ensure_silver_tables, silver_schema
from lakehouse.tables import delta_table, read_table, resolve_table, sql_target

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _index_of(*keys: tuple[int, int, int]) -> SilverKeyIndex:
    index = SilverKeyIndex(None, None, None, max_keys=100)
    index.add(*(np.array(column, dtype=np.int64) for column in zip(*keys, strict=True)))
    return index


def test_lookup_finds_held_keys_with_their_newest_time_and_only_those():
    index = _index_of((5, 1, 100), (5, 2, 200), (7, 1, 300))  # two keys share a first hash
    index.add(np.array([7, 9]), np.array([1, 1]), np.array([250, NO_TIME]))  # 7/1 again, older; 9/1 without a time
    found, times = index.lookup(np.array([5, 5, 5, 7, 9, 8]), np.array([1, 2, 3, 1, 1, 1]))
    assert found.tolist() == [True, True, False, True, True, False]
    assert times.tolist() == [100, 200, NO_TIME, 300, NO_TIME, NO_TIME]


def test_chunks_merged_past_the_limit_keep_each_keys_newest_time(monkeypatch):
    monkeypatch.setattr(silver_keys, "_MAX_CHUNKS", 2)
    index = _index_of((1, 1, 10))
    for time in (30, 20, 40):
        index.add(np.array([1, 2]), np.array([1, 2]), np.array([time, time]))
    assert len(index._chunks) <= 2 and index.size < 7  # merged once: 7 entries, 2 keys
    found, times = index.lookup(np.array([1, 2]), np.array([1, 2]))
    assert found.all() and times.tolist() == [40, 40]


def test_unique_keys_gives_each_key_once_with_its_newest_time_and_its_count():
    """Against a dictionary, on random keys: most with a first hash of their own, some sharing one
    with other keys, some repeated, some without a time; and on no keys at all."""
    rng = np.random.default_rng(16)
    h1 = np.concatenate([rng.integers(-2**62, 2**62, 1_500, dtype=np.int64),  # first hashes of their own
                         rng.integers(-50, 50, 500, dtype=np.int64)])  # shared by several keys
    h2 = rng.integers(0, 30, 2_000, dtype=np.int64)
    times = np.where(rng.random(2_000) < 0.1, NO_TIME, rng.integers(0, 1_000, 2_000, dtype=np.int64))
    order = rng.permutation(2_000)
    h1, h2, times = h1[order], h2[order], times[order]
    expected = {}
    for key in zip(h1.tolist(), h2.tolist(), times.tolist(), strict=True):
        newest, count = expected.get(key[:2], (NO_TIME, 0))
        expected[key[:2]] = (max(newest, key[2]), count + 1)
    (k1, k2, newest), counts = silver_keys.unique_keys(h1, h2, times)
    assert list(zip(k1.tolist(), k2.tolist(), strict=True)) == sorted(expected)
    assert [(t, c) for t, c in zip(newest.tolist(), counts.tolist(), strict=True)] == [expected[k] for k in sorted(expected)]
    assert 1 in counts and (counts > 1).any()
    none = np.array([], dtype=np.int64)
    (k1, k2, newest), counts = silver_keys.unique_keys(none, none, none)
    assert len(k1) == len(k2) == len(newest) == len(counts) == 0


def test_an_index_past_its_bound_is_dropped():
    index = SilverKeyIndex(None, None, None, max_keys=2)
    index.add(np.array([1, 2, 3]), np.array([1, 2, 3]), np.array([1, 2, 3]))
    assert index.dropped and index.size == 0
    assert not index.ready("q:1")


def _rows(spark, entity, readings):
    """Silver rows for (event id, minutes after T0) pairs (None: no event time)."""
    rows = [{"event_id": f"e{key}", "host": "h", "rack": "r",
             "event_time": None if minutes is None else T0 + timedelta(minutes=minutes),
             "cpu_util": float(minutes or 0), "_source_file": "f", "_source_line": i}
            for i, (key, minutes) in enumerate(readings)]
    return spark.createDataFrame(rows, silver_schema(entity))


def _silver(spark, ref) -> dict:
    rows = read_table(spark, ref).select("event_id", "event_time", "cpu_util").collect()
    assert len(rows) == len({r.event_id for r in rows})  # one row per key
    return {r.event_id: (r.event_time, r.cpu_util) for r in rows}


@pytest.mark.slow
def test_silver_through_the_index_is_silver_through_the_merge(spark, tmp_path):
    from lakehouse.config import load_config
    from tests.conftest import CONF_DIR

    configs = [load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / side) for side in ("indexed", "merged")]
    entity = configs[0].entity("telemetry")
    refs = [resolve_table(config, "silver.telemetry") for config in configs]
    for config in configs:
        ensure_silver_tables(spark, config, "telemetry")
    index = SilverKeyIndex(spark, refs[0], entity, entity.key_index_max_keys)
    batches = [
        [(k, 0) for k in range(20)],                  # new keys
        [(k, 0) for k in range(5)] + [(k, 1) for k in range(20, 25)],  # resends, and new keys
        [(1, 5), (30, 5)],                            # a newer version of a held key: the MERGE
        [(2, -5), (31, 5), (32, None)],               # an older version of a held key, left out
        [(3, 0)],                                     # only a resend: nothing to write
        [(32, 1)],                                    # a time for a key held without one: the MERGE
    ]
    commits = []
    for number, readings in enumerate(batches):
        inserted = [merge_into_silver(ref, _rows(spark, entity, readings), entity, f"q-1:{number}", None,
                                      index=index if side == 0 else None) for side, ref in enumerate(refs)]
        assert inserted[0] == inserted[1], (number, inserted)
        assert _silver(spark, refs[0]) == _silver(spark, refs[1]), number
        last = delta_table(spark, refs[0]).history(1).first()
        commits.append(last["operation"] if last["userMetadata"] == f"q-1:{number}" else None)
    assert commits == ["WRITE", "WRITE", "MERGE", "WRITE", None, "MERGE"]  # batch 4: nothing to write, no commit

    # A batch redone after a crash finds its append by its marker: the same figure, no second commit.
    version = delta_table(spark, refs[0]).history(1).first()["version"]
    assert merge_into_silver(refs[0], _rows(spark, entity, [(3, 0), (50, 0)]), entity, "q-1:5a", None, index=index) == 1
    assert merge_into_silver(refs[0], _rows(spark, entity, [(3, 0), (50, 0)]), entity, "q-1:5a", 0, index=index) == 1
    assert delta_table(spark, refs[0]).history(1).first()["version"] == version + 1
    merge_into_silver(refs[1], _rows(spark, entity, [(3, 0), (50, 0)]), entity, "q-1:5a", None)
    assert _silver(spark, refs[0])["e1"][1] == 5.0 and _silver(spark, refs[0])["e2"][1] == 0.0

    # Another writer's rows: the index builds again before the next batch, so a resend of one of
    # them is left out, not appended twice. A compaction changes no row: no build.
    builds = []
    build = SilverKeyIndex.build
    SilverKeyIndex.build = lambda self: (builds.append(1), build(self))
    try:
        for ref in refs:
            _rows(spark, entity, [(40, 0)]).write.format("delta").mode("append").save(ref.path)
            spark.sql(f"OPTIMIZE {sql_target(ref)}")
        assert index.ready("q-1:6") and len(builds) == 1  # the other writer's append
        for side, ref in enumerate(refs):
            merge_into_silver(ref, _rows(spark, entity, [(40, 0), (41, 0)]), entity, "q-1:6", None,
                              index=index if side == 0 else None)
        assert _silver(spark, refs[0]) == _silver(spark, refs[1])
        for ref in refs:
            spark.sql(f"OPTIMIZE {sql_target(ref)}")
        assert index.ready("q-1:7") and len(builds) == 1  # a compaction only
    finally:
        SilverKeyIndex.build = build
    assert len(_silver(spark, refs[0])) == 31  # keys 0-24, 30-32, 40-41, 50


def test_keys_with_nulls_in_different_places_hash_apart(spark):
    from types import SimpleNamespace

    from pyspark.sql.types import StringType, StructField, StructType

    entity = SimpleNamespace(keys=["a", "b"], event_time="t")  # the two fields collect_keys reads
    rows = spark.createDataFrame([("x", None, None), (None, "x", None), (None, None, None), (None, None, None)],
                                 StructType([StructField(n, StringType()) for n in ("a", "b", "t")]))
    h1, h2, times = silver_keys.collect_keys(rows, entity)
    assert len({(a, b) for a, b in zip(h1.tolist(), h2.tolist(), strict=True)}) == 3  # the two all-null keys are one
    assert (times == NO_TIME).all()


@pytest.mark.slow
def test_the_silver_flow_with_the_index_writes_what_it_writes_without(spark, tmp_path):
    """Generated data with every fault (late rows, resends, duplicates within a file), one file a
    micro-batch, refined from one bronze table twice: with the key index and with MERGE alone."""
    import shutil
    from pathlib import Path

    from lakehouse.config import load_config
    from lakehouse.generator import TelemetryGenerator
    from lakehouse.generator_runs import generate_batch
    from lakehouse.runner import run_flow
    from lakehouse.silver_tables import SILVER_BATCHES_TABLE
    from tests.conftest import CONF_DIR

    overrides = ["entities.telemetry.max_files_per_trigger=1", "sources.telemetry.max_files_per_trigger=1"]
    indexed, merged = (load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path / side, overrides=overrides + extra)
                       for side, extra in (("indexed", []), ("merged", ["entities.telemetry.key_index_max_keys=0"])))
    landing = Path(indexed.landing_path("telemetry"))
    landing.mkdir(parents=True)
    generator = TelemetryGenerator.from_config(indexed.generator, seed=43, fault_rate=0.2)
    generate_batch(generator, landing, "telemetry", "keys", 43, 1200, 6)
    once = {"availableNow": True}
    assert run_flow(spark, indexed, "bronze.telemetry", once) == 0
    shutil.copytree(resolve_table(indexed, "bronze.telemetry").path, resolve_table(merged, "bronze.telemetry").path)
    for config in (indexed, merged):
        assert run_flow(spark, config, "silver.telemetry", once) == 0

    def outcome(config):
        silver = read_table(spark, resolve_table(config, "silver.telemetry")).drop("_ingested_at")
        quarantine = read_table(spark, resolve_table(config, "silver.telemetry_quarantine"))
        batches = read_table(spark, resolve_table(config, SILVER_BATCHES_TABLE))
        return (sorted(tuple(r) for r in silver.collect()),
                sorted((r._source_file, r._source_line, tuple(r.reasons)) for r in quarantine.collect()),
                sorted(tuple(r) for r in batches.select("batch_id", "inserted", "quarantined").collect()))

    with_index, without = outcome(indexed), outcome(merged)
    assert with_index == without
    assert len(with_index[2]) >= 6 and any(r[1] for r in with_index[2])  # several batches, keys inserted
    operations = {r.operation for r in delta_table(spark, resolve_table(indexed, "silver.telemetry")).history().collect()}
    assert "WRITE" in operations  # some batch was appended


def test_a_silver_just_created_is_not_scanned_for_its_newest_time_nor_its_keys(spark, tmp_path, monkeypatch):
    """A first run's silver: its history alone says it is empty, for NewestEventTime (the late
    cut-off) and for the key index; once rows are written, both read them."""
    from lakehouse import batch_plan
    from lakehouse.batch_plan import NewestEventTime
    from lakehouse.config import load_config
    from tests.conftest import CONF_DIR

    config = load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path)
    entity, ref = config.entity("telemetry"), resolve_table(config, "silver.telemetry")
    ensure_silver_tables(spark, config, "telemetry")
    scans = []
    for module in (batch_plan, silver_keys):
        monkeypatch.setattr(module, "read_table", lambda *args, module=module: scans.append(module) or read_table(*args))
    index = SilverKeyIndex(spark, ref, entity, max_keys=100)
    index.build()
    assert NewestEventTime(spark, config, "telemetry").value() is None
    assert index.version == 0 and index.size == 0 and not scans

    merge_into_silver(ref, _rows(spark, entity, [(1, 5), (2, None), (3, -5)]), entity, "q-1:0", None)
    assert NewestEventTime(spark, config, "telemetry").value() == int((T0 + timedelta(minutes=5)).timestamp() * 1_000_000)
    index = SilverKeyIndex(spark, ref, entity, max_keys=100)
    index.build()
    assert index.version == 1 and index.size == 3 and scans == [batch_plan, silver_keys]
