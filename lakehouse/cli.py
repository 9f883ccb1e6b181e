"""The ``lakehouse`` command: one front door for every job.

    lakehouse [--env ENV] [--conf-dir DIR] [--data-dir DIR] [--set key.path=value ...] [--verbose] COMMAND ...

Exit codes: 0 done, 1 the job failed (or a check did not hold), 2 bad configuration or usage,
3 training refused by the quality gate.
The configuration is loaded and validated before anything touches the disk or starts Spark.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from lakehouse.cli_look import cmd_sql, cmd_status, cmd_ui
from lakehouse.cli_parser import build_parser
from lakehouse.config import LakehouseConfig, check_duration, load_config
from lakehouse.errors import (
    EXIT_FAILED,
    EXIT_OK,
    ConfigError,
    LakehouseError,
    UsageError,
)
from lakehouse.jvm_output import VERBOSE_ENV
from lakehouse.redaction import error_summary, install_log_redaction, redact_text, redact_tree


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    install_log_redaction()
    if args.verbose:  # read where the JVM starts (lakehouse/jvm_output.py), also by the jobs this one starts
        os.environ[VERBOSE_ENV] = "1"
    try:
        config = load_config(
            env=args.env,
            scenario=args.scenario,
            conf_dir=args.conf_dir,
            data_dir=args.data_dir,
            overrides=args.overrides or (),
        )
        if getattr(args, "source", None) is not None:
            config.source(args.source)  # an unknown source or entity is a configuration error too
        if getattr(args, "entity", None) is not None:
            config.entity(args.entity)
        if args.command == "gold":  # maintain's --table names any table: cmd_maintain checks it (check_table_names)
            for name in args.table or ():
                config.gold_table(name)
        if getattr(args, "trigger", None):
            check_duration("--trigger", args.trigger)
    except ConfigError as exc:
        return _report(exc, args.command)
    handler = COMMANDS[args.command]
    from pyspark.errors import PySparkException

    try:
        return handler(config, args)
    except LakehouseError as exc:  # each carries its exit code (lakehouse/errors.py)
        return _report(exc, args.command)
    except PySparkException as exc:
        print(f"lakehouse: {args.command} failed: {error_summary(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("lakehouse: interrupted", file=sys.stderr)
        return 130


def _report(exc: LakehouseError, command: str) -> int:
    print(f"lakehouse: {redact_text(exc.report(command))}", file=sys.stderr)
    return exc.exit_code


# -- commands -------------------------------------------------------------------------------


def cmd_config(config: LakehouseConfig, args) -> int:
    import dataclasses

    print(json.dumps(redact_tree(dataclasses.asdict(config)), indent=2, default=str))
    return EXIT_OK


def cmd_generate(config: LakehouseConfig, args) -> int:
    from lakehouse.generator import RUN_ID
    from lakehouse.generator_runs import generate_batch, generate_continuous, generator_for, print_manifest

    kafka_sources = [name for name, source in config.sources.items() if source.kind == "kafka"]
    if args.source is None:
        file_sources = [name for name, source in config.sources.items() if source.kind == "files"]
        args.source = kafka_sources[0] if args.sink == "kafka" and kafka_sources else (file_sources or ["telemetry"])[0]
        config.source(args.source)
    sink = args.sink or config.source(args.source).kind
    if sink == "kafka" and config.source(args.source).kind != "kafka":
        raise UsageError(f"--sink kafka needs a Kafka source for its connection settings; {args.source} is a "
                         f"{config.source(args.source).kind} source (Kafka sources: {', '.join(kafka_sources) or 'none'})")
    landing = config.landing_path(args.source)
    if "://" in landing:
        raise UsageError(f"generate writes local files only; landing path is {landing}")
    g = config.generator
    seed = g.seed if args.seed is None else args.seed
    fault_rate = g.fault_rate if args.fault_rate is None else args.fault_rate
    records = args.records or g.records
    files = args.files or g.files
    if not 0 <= fault_rate <= 1 or records < 1 or files < 1 or files > records:
        raise UsageError("generate needs 0 <= --fault-rate <= 1 and 1 <= --files <= --records")
    run_id = args.run_id or f"s{seed}"
    if not RUN_ID.match(run_id):  # it names files: nothing that leaves the landing directory
        raise UsageError(f"--run-id {run_id!r}: a run id is a plain name (letters, digits, '.', '_', '-'; "
                         "no '/' or '..'), since it names files in the landing directory")
    generator = generator_for(config, args.source, seed=seed, fault_rate=fault_rate)
    generator.live = (args.clock or ("live" if args.rate else "simulated")) == "live"
    landing_dir = Path(landing)
    landing_dir.mkdir(parents=True, exist_ok=True)
    if sink == "kafka":
        return _publish(config, args, generator, landing_dir, run_id, seed, records)
    if args.rate:
        print(f"generating {args.rate:g} records/s into {landing_dir} (Ctrl-C to stop)", flush=True)
        manifest = generate_continuous(
            generator, landing_dir, args.source, run_id, seed, args.rate, args.duration, args.file_seconds,
            progress=lambda n, lines: print(f"  {n} files, {lines:,} lines", flush=True) if n % 10 == 0 else None,
        )
    else:
        manifest = generate_batch(
            generator, landing_dir, args.source, run_id, seed, records, files,
            progress=lambda i, n: print(f"  wrote file {i}/{n}", flush=True) if n > 20 and i % (n // 10) == 0 else None,
        )
    print_manifest(manifest, landing_dir)
    return EXIT_OK


def _publish(config: LakehouseConfig, args, generator, landing_dir: Path, run_id: str, seed: int, records: int) -> int:
    """generate --sink kafka: publish to the topic, then print the manifest."""
    from lakehouse.generator_runs import (
        print_manifest,
        publish_batch,
        publish_continuous,
    )
    from lakehouse.kafka import bootstrap_servers, open_topic

    options = config.source(args.source).kafka
    publisher, partitions = open_topic(options, args.topic)
    where = f"topic {publisher.topic} ({partitions} partitions) at {bootstrap_servers(options)}"
    if args.rate:
        print(f"publishing {args.rate:g} records/s to {where} (Ctrl-C to stop)", flush=True)
        manifest = publish_continuous(
            generator, publisher, landing_dir, args.source, run_id, seed, args.rate, args.duration, args.file_seconds,
            progress=lambda n, total: print(f"  {total:,} messages", flush=True) if n % 10 == 0 else None,
        )
    else:
        print(f"publishing {records:,} records to {where}", flush=True)
        manifest = publish_batch(
            generator, publisher, landing_dir, args.source, run_id, seed, records,
            progress=lambda done, total: print(f"  {done:,}/{total:,} acknowledged", flush=True) if total > 5000 else None,
        )
    print_manifest(manifest, landing_dir)
    return EXIT_OK


def _start_spark(config: LakehouseConfig, ui: bool = False):
    from lakehouse.session import (
        start_job_session,  # pyspark loads only once a command needs it
    )

    return start_job_session(config, ui=ui)


def cmd_ingest(config: LakehouseConfig, args) -> int:
    from lakehouse.runner import run_flow
    from lakehouse.streaming import trigger_for

    spark = _start_spark(config, ui=not args.once)
    return run_flow(spark, config, f"bronze.{args.source}", trigger_for(args.once, args.trigger, config))


def cmd_refine(config: LakehouseConfig, args) -> int:
    from lakehouse.preflight import check_entity
    from lakehouse.runner import run_flow
    from lakehouse.streaming import trigger_for

    spark = _start_spark(config, ui=not args.once)
    check_entity(spark, config, args.entity)
    return run_flow(spark, config, f"silver.{args.entity}", trigger_for(args.once, args.trigger, config),
                    backfill=args.backfill)


def cmd_gold(config: LakehouseConfig, args) -> int:
    from lakehouse.preflight import check_gold_sql
    from lakehouse.runner import run_flows
    from lakehouse.streaming import trigger_for

    names = list(config.gold) if args.all else args.table
    if not names:
        raise UsageError("no gold tables are configured (conf/<env>/gold/*.yml)")
    batch = [n for n in names if config.gold_table(n).mode == "batch"]
    if args.trigger and (batch or args.all or len(names) > 1):
        raise UsageError("--trigger runs one streaming gold table continuously; "
                         + (f"gold.{batch[0]} is a batch table (rebuilt once per run)" if batch else "name one --table"))
    once = args.once or args.all or bool(batch)
    spark = _start_spark(config, ui=not once)
    check_gold_sql(spark, config, names)
    return run_flows(spark, config, [f"gold.{n}" for n in names], trigger_for(once, args.trigger, config))


def cmd_run(config: LakehouseConfig, args) -> int:
    from lakehouse.preflight import check_entity, check_gold_sql
    from lakehouse.runner import pipeline_flows, run_flows
    from lakehouse.streaming import trigger_for

    flows, skipped = pipeline_flows(config, args.only)
    for line in skipped:
        print(line, flush=True)
    if not flows:
        raise UsageError("no flow to run")
    spark = _start_spark(config, ui=not args.once)
    for flow in flows:
        if flow.kind == "silver":
            check_entity(spark, config, flow.name)
    check_gold_sql(spark, config, [flow.name for flow in flows if flow.kind == "gold"])
    if args.once:
        return run_flows(spark, config, flows, trigger_for(True, None, config))
    from lakehouse.app import PipelineApp

    return PipelineApp(spark, config, flows, trigger_for(False, args.trigger, config)).run()


def cmd_train(config: LakehouseConfig, args) -> int:
    from ml.run import run_training

    num_proc = args.num_proc or (1 if args.backend == "local" else 2)
    if args.resume and (args.version is not None or args.epochs):
        raise UsageError("--resume goes on with the run's own table version and epochs: drop --version and --epochs")
    spark = _start_spark(config)
    summary = run_training(spark, config, args.backend, num_proc, args.gpu, args.force, args.version, args.epochs,
                           resume=args.resume)
    print("\n".join(summary.describe()))
    print(f"browse: mlflow ui --backend-store-uri {redact_text(summary.tracking_uri)}")
    return EXIT_OK


def cmd_score(config: LakehouseConfig, args) -> int:
    from ml.score import score

    if config.training is None:
        raise UsageError("no training section in the configuration (conf/<env>/training.yml)")
    if config.training.task != "regression":
        raise UsageError(f"scoring writes the regression model's predictions; training.task is {config.training.task}")
    spark = _start_spark(config)
    summary = score(spark, config)
    print(f"gold.predictions: version {summary.table_version}, {summary.rows:,} rows from {summary.input} "
          f"by {summary.model} version {summary.model_version} (champion)")
    return EXIT_OK


def cmd_bundle(config: LakehouseConfig, args) -> int:
    try:
        from lakehouse.devtools.bundle_check import (
            check_bundle,
            load_bundle,
            load_schema,
        )
    except ImportError as exc:  # the [dev] extra: development tooling, not a job's dependency
        raise UsageError(f"bundle check needs the development extra ({exc.name} is missing): "
                         "pip install 'lakehouse[dev]'") from None

    root = Path(args.dir)
    schema = load_schema(args.schema)
    targets = [args.target]
    if args.all_targets:
        targets = list(load_bundle(root).config.get("targets") or {"default": {}})
    failed = 0
    for target in targets:
        bundle, problems = check_bundle(root, target, schema, project_root=root)
        for problem in problems:
            print(f"{problem}\n")
        name = (bundle.config.get("bundle") or {}).get("name", "?")
        verdict = "no problems" if not problems else f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        print(f"bundle {name}, target {bundle.target}: {verdict}")
        failed += bool(problems)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_corpus(config: LakehouseConfig, args) -> int:
    from lakehouse.corpus import convert

    source = args.source or next((name for name, s in config.sources.items() if s.generator == "chat"), None)
    if source is None or config.source(source).kind != "files":
        raise UsageError("corpus needs a files source for chat messages (--scenario chat has one: chat)")
    landing = Path(config.landing_path(source))
    if "://" in str(config.landing_path(source)):
        raise UsageError(f"corpus writes local files only; landing path is {config.landing_path(source)}")
    languages = None if args.languages == "all" else [name.strip() for name in args.languages.split(",") if name.strip()]
    print(f"converting the chatterbot corpus into chat messages in {landing}", flush=True)
    manifest = convert(landing, source, languages, args.start, progress=lambda line: print(line, flush=True))
    print(f"{manifest.total_lines:,} messages in {len(manifest.files)} files; manifest: "
          f"{landing / '_manifests' / 'chatterbot.json'}")
    return EXIT_OK


def cmd_reconcile(config: LakehouseConfig, args) -> int:
    from lakehouse.reconcile import reconcile

    spark = _start_spark(config)
    report = reconcile(spark, config, args.source)
    print(report.describe())
    return EXIT_OK if report.holds else EXIT_FAILED


def cmd_quality(config: LakehouseConfig, args) -> int:
    from lakehouse.quality import build_data_docs

    spark = _start_spark(config)
    index = build_data_docs(spark, config)
    if index is None:
        print("lakehouse: no validation results yet: run `lakehouse refine` first", file=sys.stderr)
        return EXIT_FAILED
    print(f"Data Docs: {index}")
    return EXIT_OK


def cmd_maintain(config: LakehouseConfig, args) -> int:
    from lakehouse.maintained_tables import check_table_names
    from lakehouse.maintenance import Maintainer
    from lakehouse.maintenance_steps import print_steps

    check_table_names(config, args.table or [])  # before the JVM starts
    steps = Maintainer(_start_spark(config), config, dry_run=args.dry_run,
                       out=lambda line: print(f"maintain: {line}", flush=True)).run(args.table)
    print_steps(steps, args.dry_run)
    return EXIT_FAILED if any(step.outcome == "failed" for step in steps) else EXIT_OK


def cmd_demo(config: LakehouseConfig, args) -> int:
    from lakehouse.demo import run_demo

    if args.run_seconds < 0 or args.rate <= 0:
        raise UsageError("demo needs --run-seconds >= 0 and --rate > 0")
    source = args.source or next((name for name, s in config.sources.items() if s.kind == "files"), None)
    if source is None:
        raise UsageError("demo: no files source in this configuration: name one with --source")
    return run_demo(config, source, args.run_seconds, args.rate)


COMMANDS = {
    "generate": cmd_generate,
    "corpus": cmd_corpus,
    "ingest": cmd_ingest,
    "refine": cmd_refine,
    "gold": cmd_gold,
    "run": cmd_run,
    "train": cmd_train,
    "score": cmd_score,
    "bundle": cmd_bundle,
    "reconcile": cmd_reconcile,
    "quality": cmd_quality,
    "status": cmd_status,
    "sql": cmd_sql,
    "ui": cmd_ui,
    "maintain": cmd_maintain,
    "demo": cmd_demo,
    "config": cmd_config,
}


if __name__ == "__main__":
    sys.exit(main())
