"""Parsing bronze lines into the entity's typed columns, and the generator's faults seen by the suite."""

from __future__ import annotations

from pyspark.sql import functions as F

from lakehouse.generator import TelemetryGenerator
from lakehouse.generator_runs import generate_batch
from lakehouse.landing_lines import with_lines
from lakehouse.parse import parse_records
from lakehouse.quality import load_suite, row_rules, with_rule_results


def test_parse_types_values_and_flags_problems(spark, config):
    entity = config.entity("telemetry")
    lines = spark.createDataFrame(
        [
            (1, '{"event_id": "e1", "cpu_util": 12.5, "event_time": "2026-01-01T00:00:01.000Z", "firmware": "1.2"}'),
            (2, '{"event_id": "e2", "cpu_util": "n/a", "event_time": 1767225600}'),
            (3, '{"event_id": "e3", "cpu_u'),
            (4, ""),
        ],
        "line long, value string",
    )
    rows = {r.line: r for r in parse_records(lines, entity).collect()}
    assert rows[1].cpu_util == 12.5 and rows[1].event_time.isoformat() == "2026-01-01T00:00:01"
    assert rows[1]._rescued == '{"firmware":"1.2"}' and rows[1]._type_errors == [] and not rows[1]._malformed
    assert sorted(rows[2]._type_errors) == ["cpu_util", "event_time"] and rows[2].cpu_util is None
    assert rows[3]._malformed and rows[3].event_id is None and rows[3]._type_errors == []
    assert rows[4]._malformed
    assert rows[1].value == lines.where("line = 1").first().value  # the raw line is carried along


def test_generated_faults_are_each_caught_by_parse_and_rules(spark, config, tmp_path):
    g = config.generator
    generator = TelemetryGenerator.from_config(g, seed=9, fault_rate=0.1)
    manifest = generate_batch(generator, tmp_path, "telemetry", "q", 9, 3000, 3)
    files = spark.read.format("text").option("wholetext", True).load(str(tmp_path))
    bronze = with_lines(files, F.col("_metadata.file_path"))
    entity = config.entity("telemetry")
    rules = row_rules(load_suite(config.suite_path(entity.suite)))
    checked = with_rule_results(parse_records(bronze, entity), rules).select(
        F.element_at(F.split("_source_file", "/"), -1).alias("file"), "_source_line", "_malformed",
        "_type_errors", "_rescued", "_failed_drop").collect()
    assert len(checked) == manifest.total_lines

    kinds = {(f["file"], f["line"]): f["kind"] for f in manifest.faults}
    seen = {}
    for row in checked:
        if row._malformed:
            found = "malformed_json"
        elif row._type_errors:
            found = "wrong_type"
        elif any("not_be_null" in name for name in row._failed_drop):
            found = "missing_field"
        elif row._failed_drop:
            found = "out_of_range"
        elif row._rescued:
            found = "extra_field"
        else:
            found = None
        if found:
            seen[(row.file, row._source_line)] = found
    expected = {key: kind for key, kind in kinds.items()
                if kind in ("malformed_json", "wrong_type", "missing_field", "out_of_range", "extra_field")}
    assert seen == expected


def test_decisions_built_once_per_query_follow_each_batchs_plan(spark, config):
    """A silver query builds its decision expressions for its first batch and keeps them
    (refine.decide_rows' cache): each later batch still takes its own plan's cut-offs."""
    from lakehouse.refine import decide_rows

    entity = config.entity("telemetry")
    rules = row_rules(load_suite(config.suite_path(entity.suite)))
    fields = ('"host": "dc1-r01-h001", "rack": "r01", "cpu_util": 1.0, "mem_util": 1.0, "gpu_util": 1.0, '
              '"power_w": 100.0, "fan_rpm": 1000.0, "inlet_temp_c": 20.0, "exhaust_temp_c": 30.0')
    lines = [f'{{"event_id": "e{i}", "event_time": "2026-03-01T00:0{i}:00Z", {fields}}}' for i in range(3)]
    bronze = spark.createDataFrame([(text, "f.jsonl", i + 1) for i, text in enumerate(lines)],
                                   "value string, _source_file string, _source_line long").withColumn(
        "_ingested_at", F.current_timestamp())
    at = 1_772_323_200_000_000 + 90_000_000  # 2026-03-01T00:01:30Z: e0 and e1 are before it
    plan = {"planned_at_us": at, "future_cutoff_us": at * 2, "late_exempt": [], "backfill": False}
    plans = [{**plan, "late_cutoff_us": at}, {**plan, "late_cutoff_us": None},
             {**plan, "late_cutoff_us": None, "future_cutoff_us": at}]
    cache = {}

    def reasons(decided):
        return {r._source_line: r._reasons for r in decided.select("_source_line", "_reasons").collect()}

    seen = [reasons(decide_rows(bronze, config, entity, p, rules, cache)) for p in plans]
    assert seen == [{1: ["late"], 2: ["late"], 3: []}, {1: [], 2: [], 3: []},
                    {1: [], 2: [], 3: ["future_event_time"]}]
    assert len(cache) == 1  # one bronze schema, the same late-exempt sources
    assert seen == [reasons(decide_rows(bronze, config, entity, p, rules)) for p in plans]  # as built afresh


def test_the_expressions_built_as_the_query_starts_are_the_ones_its_batches_take(spark, config):
    """lakehouse.silver builds the decisions from the query's stream before any batch
    (refine.prepare_decisions); a batch of the same bronze tables finds them in the cache."""
    from functools import partial

    from lakehouse.batch_plan import plan_batch
    from lakehouse.bronze import ensure_source_bronze_table
    from lakehouse.parse import SOURCE_COLUMN, bronze_records
    from lakehouse.refine import decide_rows, prepare_decisions
    from lakehouse.silver import _bronze_stream
    from lakehouse.silver_tables import ensure_silver_tables
    from lakehouse.threads import at_once

    entity = config.entity("telemetry")
    rules = row_rules(load_suite(config.suite_path(entity.suite)))
    refs = at_once(*[partial(ensure_source_bronze_table, spark, config, source) for source in entity.sources])
    ensure_silver_tables(spark, config, "telemetry")
    cache = {}
    prepare_decisions(_bronze_stream(spark, config, "telemetry", refs), config, "telemetry", rules, cache)
    built = dict(cache)
    assert len(built) == 2  # the decisions, and the batch's aggregation
    batches = [bronze_records(spark.read.format("delta").load(ref.path), config.source(source))
               .withColumn(SOURCE_COLUMN, F.lit(source)) for source, ref in zip(entity.sources, refs, strict=True)]
    batch = batches[0]
    for other in batches[1:]:
        batch = batch.unionByName(other)
    decide_rows(batch, config, entity, plan_batch(spark, config, "telemetry"), rules, cache)
    assert cache == built  # nothing built again: the batch's key is the stream's
