"""``lakehouse demo``: the whole flow on embedded defaults, for a newcomer's first run.

Generate records for one source (files, or a Kafka topic with a local broker started for the
run), then run its flows inputs first as the pipeline graph gives them (lakehouse/pipeline.py):
bronze, checked exactly-once against the generator's manifest; silver, with the quarantine by
reason and the reconciliation; the gold tables downstream; a short training run and scoring when
the training table is among them; then the same flows always-on (`lakehouse run`) for a minute
under a live feed, and each table's freshness measured meanwhile (ops.freshness). Exit 1 when a
check does not hold.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse.config import DEFAULT_SCENARIO, LakehouseConfig
from lakehouse.errors import EXIT_FAILED, EXIT_OK
from lakehouse.formatting import format_rows
from lakehouse.generator_runs import (
    Manifest,
    generate_batch,
    generate_continuous,
    generator_for,
    print_manifest,
    publish_batch,
    publish_continuous,
)
from lakehouse.pipeline import TRAIN, Flow, Pipeline
from lakehouse.preflight import check_entity, check_gold_sql
from lakehouse.reconcile import reconcile
from lakehouse.runner import run_flow, run_flows
from lakehouse.session import start_job_session
from lakehouse.status import collect_status, format_freshness_summary, format_status, freshness_summary
from lakehouse.streaming import trigger_for
from lakehouse.table_reader import SparkReader
from lakehouse.tables import bronze_table, read_table, resolve_table


def run_demo(config: LakehouseConfig, source_name: str, run_seconds: float = 60.0, rate: float = 200.0) -> int:
    """The demo for ``source_name``. A Kafka source gets a local broker for the run (unless
    bootstrap servers are configured), started here and stopped at the end. ``run_seconds``: how
    long the last step runs the pipeline always-on under a live feed of ``rate`` records/s (0: not)."""
    live = (run_seconds, rate)
    source = config.source(source_name)
    downstream = Pipeline(config).downstream(f"bronze.{source_name}")
    spark = start_job_session(config)  # what only Spark can check, before anything is written
    for flow in downstream:
        if flow.kind == "silver":
            check_entity(spark, config, flow.name)
    check_gold_sql(spark, config, list(config.gold))
    if source.kind != "kafka":
        return _demo(config, source_name, spark, live)
    from lakehouse.kafka import KafkaSetupError, bootstrap_servers

    try:
        servers = bootstrap_servers(source.kafka)
    except KafkaSetupError:
        servers = None
    if servers:
        print(f"using the Kafka cluster at {servers}")
        return _demo(config, source_name, spark, live)
    from lakehouse.devtools.kafka_broker import KafkaBroker

    # Kept under the data directory, with the checkpoints whose offsets refer to its topics.
    state = Path(config.storage.data_dir) / "kafka-broker"
    print(f"== 0. a local Kafka broker (KRaft) in {state}; stopped at the end of the demo")
    with KafkaBroker(state, partitions=source.kafka.partitions) as broker:
        os.environ[source.kafka.bootstrap_servers_env] = broker.bootstrap
        try:
            return _demo(config, source_name, spark, live)
        finally:
            os.environ.pop(source.kafka.bootstrap_servers_env, None)


def _demo(config: LakehouseConfig, source_name: str, spark: SparkSession, live: tuple[float, float]) -> int:
    pipeline = Pipeline(config)
    downstream = pipeline.downstream(f"bronze.{source_name}")
    entities = [flow.name for flow in downstream if flow.kind == "silver"]
    gold_flows = [flow for flow in downstream if flow.kind == "gold"]
    manifest, run_id = _generate(config, source_name)
    once = trigger_for(True, None, config)  # every flow runs what it has, then stops (--once)
    kafka = manifest.sink == "kafka"

    print(f"\n== 2. bronze: ingest {'topic ' + manifest.topic if kafka else 'landing files'} into "
          f"bronze.{source_name} (--once)")
    code = run_flow(spark, config, pipeline.bronze(source_name), once)
    if code != EXIT_OK:
        return code
    ok = _landed_exactly_once(spark, config, source_name, manifest, run_id)
    for entity in entities:
        print(f"\n== 3. silver: refine bronze.{source_name} into silver.{entity} (--once)")
        code = run_flow(spark, config, pipeline.silver(entity), once)
        if code != EXIT_OK:
            return code
        _show_silver(spark, config, entity)
    if entities:
        report = reconcile(spark, config, source_name)
        print(f"\n== 4. reconciliation\n{report.describe()}")
        ok = ok and report.holds
    if gold_flows:
        print(f"\n== 5. gold: {', '.join(flow.id for flow in gold_flows)}")
        code = run_flows(spark, config, gold_flows, once)
        if code != EXIT_OK:
            return code
        _show_gold(spark, config, gold_flows)
    summary = None
    if any(flow.id == TRAIN for flow in downstream):
        summary = _train_and_score(spark, config)
    if live[0] > 0:
        code = _always_on(spark, config, source_name, *live)
        if code != EXIT_OK:
            return code
    print("\n" + format_status(collect_status(SparkReader(spark, config), config)))
    _print_next_steps(config, source_name, kafka, entities, gold_flows, summary)
    return EXIT_OK if ok else EXIT_FAILED


def _generate(config: LakehouseConfig, source_name: str) -> tuple[Manifest, str]:
    """== 1: this run's records, as landing files or messages on the source's topic."""
    g = config.generator
    kafka = config.source(source_name).kafka
    run_id = "demo-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    landing_dir = Path(config.landing_path(source_name))
    # A new seed per demo run, so a rerun adds new events rather than duplicates of the last run's.
    seed = g.seed + len(list((landing_dir / "_manifests").glob("demo-*.json")))
    publisher = None
    if kafka:
        from lakehouse.kafka import open_topic

        publisher, _ = open_topic(kafka)
    where = f"topic {publisher.topic}" if publisher else "landing files"
    print(f"== 1. generate: {g.records:,} {source_name} records as {where}, fault rate {g.fault_rate:g} "
          f"(run {run_id}, seed {seed})")
    landing_dir.mkdir(parents=True, exist_ok=True)
    # Recent history: the readings end now, so the live feed of the always-on step follows them
    # (and a later demo's data is not hours older than silver's newest, which would be late).
    span = generator_for(config, source_name).step * g.records  # each generator's event-time step per line
    start = (datetime.now(timezone.utc) - span).isoformat(timespec="seconds")
    generator = generator_for(config, source_name, seed=seed, start_time=start)
    if publisher:
        manifest = publish_batch(generator, publisher, landing_dir, source_name, run_id, seed, g.records)
    else:
        manifest = generate_batch(generator, landing_dir, source_name, run_id, seed, g.records, g.files)
    print_manifest(manifest, landing_dir)
    if config.source(source_name).generator == "chat" and not publisher:
        from lakehouse.demo_chat import land_corpus

        land_corpus(landing_dir, source_name)
    return manifest, run_id


def _always_on(spark: SparkSession, config: LakehouseConfig, source_name: str, seconds: float, rate: float) -> int:
    """== 7: the source's flows as one always-on application (`lakehouse run`) while a live feed
    lands ``rate`` records/s, for ``seconds``; then each table's measured freshness."""
    from lakehouse.app import PipelineApp

    pipeline = Pipeline(config)
    bronze = pipeline.bronze(source_name)
    flows = [bronze] + [flow for flow in pipeline.downstream(bronze) if flow.kind in ("silver", "gold")]
    print(f"\n== 7. always on: `lakehouse run --trigger 2s` for {seconds:.0f}s while a live feed (event time = now) "
          f"lands {rate:g} records/s")
    generator = generator_for(config, source_name, seed=config.generator.seed + 1000)
    generator.live = True
    run_id = "live-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    landing, stop = Path(config.landing_path(source_name)), threading.Event()
    kafka = config.source(source_name).kafka if config.source(source_name).kind == "kafka" else None
    if kafka is not None:
        from lakehouse.kafka import open_topic

        feed = partial(publish_continuous, generator, open_topic(kafka)[0])
    else:
        feed = partial(generate_continuous, generator)
    feeder = threading.Thread(target=feed, args=(landing, source_name, run_id, 0, rate, 0), kwargs={"stop": stop},
                              name="demo-feed", daemon=True)
    app = PipelineApp(spark, config, flows, {"processingTime": "2 seconds"})
    timer = threading.Timer(seconds, lambda: app.stop(f"the demo's {seconds:.0f}s are over"))
    started = datetime.now(timezone.utc)
    feeder.start()
    timer.start()
    try:
        code = app.run()
    finally:
        timer.cancel()
        stop.set()
        feeder.join(timeout=30)
    print("\n" + format_freshness_summary(freshness_summary(spark, config, since=started)))
    return code


def _landed_exactly_once(spark: SparkSession, config: LakehouseConfig, source_name: str, manifest: Manifest,
                         run_id: str) -> bool:
    """Every line (message) of this run is in bronze once: as many rows as distinct positions as
    the manifest's lines."""
    bronze = read_table(spark, bronze_table(config, source_name))
    kafka = manifest.sink == "kafka"
    if kafka:  # this run's messages: the offset range it was given in each partition
        in_run = F.lit(False)
        for partition, stats in manifest.partitions.items():
            in_run = in_run | ((F.col("topic") == manifest.topic) & (F.col("partition") == partition)
                               & F.col("offset").between(stats["first_offset"], stats["last_offset"]))
        position = ["topic", "partition", "offset"]
    else:
        in_run, position = F.col("_source_file").contains(f"-{run_id}-"), ["_source_file", "_source_line"]
    counts = bronze.where(in_run).agg(
        F.count("*").alias("rows"), F.countDistinct(*position).alias("distinct_positions")).first()
    total = bronze.count()
    unit = "messages" if kafka else "lines"
    print(f"{unit} {'published' if kafka else 'landed'} in this run:{'' if kafka else ' ' * 5} {manifest.total_lines:,}")
    print(f"bronze rows from this run:     {counts['rows']:,} ({counts['distinct_positions']:,} distinct "
          f"{'topic/partition/offset' if kafka else 'file/line'})")
    print(f"bronze rows in total:          {total:,}")
    ok = counts["rows"] == counts["distinct_positions"] == manifest.total_lines
    print(f"every {unit[:-1]} landed exactly once: {'yes' if ok else 'NO'}")
    return ok


def _show_silver(spark: SparkSession, config: LakehouseConfig, entity: str) -> None:
    quarantine = read_table(spark, resolve_table(config, f"silver.{entity}_quarantine"))
    print(f"silver.{entity}: {read_table(spark, resolve_table(config, f'silver.{entity}')).count():,} rows")
    print(f"silver.{entity}_quarantine by first reason:")
    for row in quarantine.groupBy(F.col("reasons")[0].alias("reason")).count().orderBy(F.desc("count")).collect():
        print(f"  {row['count']:>6,}  {row['reason']}")
    if config.entity(entity).text is not None:
        from lakehouse.demo_chat import show_text_prep

        show_text_prep(spark, config, entity)


def _show_gold(spark: SparkSession, config: LakehouseConfig, gold_flows: list[Flow]) -> None:
    for flow in gold_flows:
        print(f"{flow.id}: {read_table(spark, resolve_table(config, flow.id)).count():,} rows")
    if any(config.gold_table(flow.name).transform for flow in gold_flows):
        from lakehouse.demo_chat import show_text_gold

        show_text_gold(spark, config, gold_flows)  # token arrays are no rows to read
        return
    last = read_table(spark, resolve_table(config, gold_flows[-1].id))
    print(f"a few rows of {gold_flows[-1].id}:")
    print(format_rows(last.columns, last.orderBy(*last.columns[:3]).limit(5).collect()))


def _train_and_score(spark: SparkSession, config: LakehouseConfig):
    from ml.run import run_training
    from ml.score import score

    print(f"\n== 6. train: a short local run on {config.training.table}, tracked in MLflow")
    if config.training.task == "causal_lm":
        from lakehouse.demo_chat import train_language_model

        return train_language_model(spark, config)
    summary = run_training(spark, config, "local", 1, gpu=False, force=False)
    print("\n".join(summary.describe()))
    scored = score(spark, config)
    print(f"gold.predictions:  {scored.rows:,} rows by version {scored.model_version} (the champion)")
    return summary


def _print_next_steps(config: LakehouseConfig, source_name: str, kafka: bool, entities: list[str],
                      gold_flows: list[Flow], summary) -> None:
    from lakehouse.redaction import redact_text

    command = ".venv/bin/lakehouse" if Path(".venv/bin/lakehouse").exists() else "lakehouse"
    prefix = command + (f" --scenario {config.scenario}" if config.scenario != DEFAULT_SCENARIO else "")
    prefix += f" --data-dir {config.storage.data_dir}" if config.storage.data_dir != Path("data") else ""
    print("\nnext:")
    if kafka:
        print(f"  {prefix} sql \"SELECT partition, offset, CAST(value AS STRING) AS value FROM bronze.{source_name} "
              f"WHERE CAST(value AS STRING) NOT LIKE '{{%}}' LIMIT 5\"")
    else:
        print(f"  {prefix} sql \"SELECT _source_file, _source_line, CAST(value AS STRING) AS value FROM "
              f"bronze.{source_name} WHERE CAST(value AS STRING) NOT LIKE '{{%}}' LIMIT 5\"")
    for entity in entities:
        print(f"  {prefix} sql \"SELECT reasons, value FROM silver.{entity}_quarantine LIMIT 5\"")
    for flow in gold_flows:
        print(f"  {prefix} sql \"SELECT * FROM {flow.id} LIMIT 5\"")
    print(f"  {prefix} status")
    counted = f"silver.{entities[0]}" if entities else f"bronze.{source_name}"
    print(f"  {prefix} sql --engine duckdb \"SELECT count(*) FROM {counted}\"   # no JVM: answers in about a second")
    mlflow_url = " --mlflow-url http://127.0.0.1:5000" if summary is not None else ""
    print(f"  {prefix} ui{mlflow_url}   # the operations page: then open http://127.0.0.1:8050")
    if summary is not None:
        mlflow = ".venv/bin/mlflow" if Path(".venv/bin/mlflow").exists() else "mlflow"
        print(f"  {mlflow} ui --backend-store-uri {redact_text(summary.tracking_uri)}   # then open http://127.0.0.1:5000")
