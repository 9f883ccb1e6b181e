from __future__ import annotations

import threading

import pytest

from lakehouse.config import load_config
from lakehouse.silver_tables import CHANGE_FEED, ensure_silver_tables, silver_schema
from lakehouse.table_create import create_table_if_missing
from lakehouse.tables import TableNameError, resolve_table, table_properties
from lakehouse.threads import Behind, NotReadyError, at_once, await_ready, in_background, start_beside
from tests.conftest import CONF_DIR


def test_local_tables_live_under_the_data_dir(config):
    ref = resolve_table(config, "bronze.telemetry")
    assert ref.path == str((config.storage.data_dir / "tables/bronze/telemetry").absolute())
    assert ref.identifier == "bronze.telemetry"


def test_unity_catalog_mapping():
    config = load_config("prod", conf_dir=CONF_DIR, overrides=["catalog.name=lake", "catalog.schemas.ops=ops_monitoring"])
    assert resolve_table(config, "ops.stream_progress").identifier == "lake.ops_monitoring.stream_progress"
    assert resolve_table(config, "silver.telemetry").path is None


@pytest.mark.parametrize("name", ["raw.telemetry", "bronze.Telemetry", "bronze.x;drop", "bronze", "gold."])
def test_bad_table_names_are_refused(config, name):
    with pytest.raises(TableNameError):
        resolve_table(config, name)


def test_local_rows_hold_what_create_data_frame_holds_in_one_partition(spark):
    """local_rows (an Arrow table, no Python worker) and createDataFrame of the same list agree,
    a datetime without a zone included (both take it as the local time), in any time zone."""
    import os
    import time
    from datetime import datetime, timedelta, timezone

    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType, TimestampType

    from lakehouse.tables import local_rows

    schema = StructType([StructField("name", StringType()), StructField("n", LongType()),
                         StructField("at", TimestampType()), StructField("tags", ArrayType(StringType()))])
    rows = [("a", 1, datetime(2026, 1, 1, 12, 30), ["x"]),
            ("b", None, datetime(2026, 7, 1, 3, 0, tzinfo=timezone(timedelta(hours=5))), []),
            ("c", 2**40, None, None)]

    def instants(df):
        return sorted(tuple(r) for r in df.select("name", "n", F.unix_micros("at"), "tags").collect())

    saved = os.environ.get("TZ")
    try:
        for zone in ("UTC", "America/New_York"):  # Python's local time; Spark's session zone is UTC
            os.environ["TZ"] = zone
            time.tzset()
            made = local_rows(spark, rows, schema)
            assert instants(made) == instants(spark.createDataFrame(rows, schema))
            assert made.rdd.getNumPartitions() == 1
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()
    by_name = local_rows(spark, [{"name": "d", "n": 3, "at": None, "tags": None}], schema)
    assert [tuple(r) for r in by_name.collect()] == [("d", 3, None, None)]
    assert local_rows(spark, [], schema).count() == 0
    with pytest.raises(ValueError):
        local_rows(spark, [("too", "few")], schema)  # a row that does not fit the schema
    for wrong in [("e", 1.5, None, None), ("e", 1, 1_767_225_600, None), ("e", 1, None, "x")]:
        with pytest.raises(TypeError):  # as createDataFrame refuses them; pyarrow alone would convert them
            local_rows(spark, [wrong], schema)


def _raise(exc: Exception):
    raise exc


def test_at_once_keeps_the_callers_pool_and_raises_the_first_error_once_every_step_ended(spark, capsys):
    context = spark.sparkContext
    context.setLocalProperty("spark.scheduler.pool", "pool-of-the-caller")
    try:
        assert at_once(lambda: context.getLocalProperty("spark.scheduler.pool"), lambda: 2) == ["pool-of-the-caller", 2]
    finally:
        context.setLocalProperty("spark.scheduler.pool", None)
    finished = []
    with pytest.raises(ValueError, match="first"):
        at_once(lambda: _raise(ValueError("first")), lambda: finished.append("ran"), lambda: _raise(KeyError("second")))
    assert finished == ["ran"]
    assert "KeyError" in capsys.readouterr().err


def test_in_background_keeps_the_callers_pool_and_hands_back_its_result_or_error(spark):
    context = spark.sparkContext
    context.setLocalProperty("spark.scheduler.pool", "pool-of-the-caller")
    try:
        pool = in_background(lambda: context.getLocalProperty("spark.scheduler.pool"), "test-pool")
    finally:
        context.setLocalProperty("spark.scheduler.pool", None)
    assert pool.result(timeout=60) == "pool-of-the-caller"
    with pytest.raises(ValueError, match="in the thread"):
        in_background(lambda: _raise(ValueError("in the thread")), "test-error").result(timeout=60)


def test_behind_runs_its_steps_one_after_another_while_the_caller_goes_on(spark, capsys):
    """Each step starts once the one before has ended (a failed one included); wait() waits for
    all and raises the first error, or prints every error when the caller has one of its own."""
    gate, ran = threading.Event(), []
    behind = Behind("test-behind")
    behind.add(lambda: gate.wait(60) and ran.append("first"))
    behind.add(lambda: _raise(ValueError("second")))
    behind.add(lambda: ran.append("third"))
    ran.append("caller")  # the caller goes on while the first step waits
    gate.set()
    with pytest.raises(ValueError, match="second"):
        behind.wait()
    assert ran == ["caller", "first", "third"]
    behind.add(lambda: _raise(KeyError("printed")))
    behind.wait(raising=False)
    assert "KeyError" in capsys.readouterr().err
    behind.wait()  # nothing left


class _Query:
    """What start_beside does with a streaming query: stop it."""

    def __init__(self, fails_to_stop: bool = False):
        self.stopped, self.fails_to_stop = False, fails_to_stop

    def stop(self):
        self.stopped = True
        if self.fails_to_stop:
            raise RuntimeError("the stop timed out")


def test_start_beside_returns_the_query_once_its_background_start_has_ended(spark, capsys):
    """A failed background start stops the query and is what the start raises (not the stop's
    error); a batch waiting for it fails with an error of its own; a failed query start waits for
    the background start and says what it raised too."""
    gate = threading.Event()
    query = _Query()
    ready = in_background(lambda: gate.wait(60) and "tables", "test-ready")
    started = threading.Timer(0.2, gate.set)
    started.start()
    assert start_beside(lambda: query, ready) is query and ready.result() == "tables" and not query.stopped

    failing = in_background(lambda: _raise(KeyError("old layout")), "test-failing")
    stubborn = _Query(fails_to_stop=True)
    with pytest.raises(KeyError, match="old layout"):
        start_beside(lambda: stubborn, failing)
    assert stubborn.stopped
    with pytest.raises(NotReadyError, match="KeyError") as raised:
        await_ready(failing)
    assert isinstance(raised.value.__cause__, KeyError)

    slow = threading.Event()
    behind = in_background(lambda: (slow.wait(60), _raise(ValueError("tables too")))[1], "test-behind")
    threading.Timer(0.2, slow.set).start()
    with pytest.raises(OSError, match="no landing"):
        start_beside(lambda: _raise(OSError("no landing")), behind)
    assert behind.done() and "ValueError: tables too" in capsys.readouterr().err


def test_a_silver_made_without_the_change_feed_gets_it(spark, config):
    """An older release made silver without the change feed gold's streams read: it is turned on."""
    silver = resolve_table(config, "silver.telemetry")
    create_table_if_missing(spark, silver, silver_schema(config.entity("telemetry")))
    assert table_properties(spark, silver).get(CHANGE_FEED) is None
    ensure_silver_tables(spark, config, "telemetry")
    assert table_properties(spark, silver)[CHANGE_FEED] == "true"
    assert table_properties(spark, resolve_table(config, "silver.telemetry_quarantine")).get(CHANGE_FEED) is None
