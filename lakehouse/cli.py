"""The ``lakehouse`` command: one front door for every job.

    lakehouse [--env ENV] [--conf-dir DIR] [--data-dir DIR] [--set key.path=value ...] COMMAND ...

Exit codes: 0 done, 1 the job failed (or a check did not hold), 2 bad configuration or usage,
3 training refused by the quality gate.
The configuration is loaded and validated before anything touches the disk or starts Spark.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from lakehouse.config import ConfigError, LakehouseConfig, check_duration, load_config
from lakehouse.redaction import install_log_redaction, redact_text, redact_tree
from lakehouse.exit_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_QUALITY, JobError


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options every command takes; accepted before or after the command name."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("global options")
    group.add_argument("--env", default=default, help="configuration overlay: conf/<env>/ (default: dev, or $LAKEHOUSE_ENV)")
    group.add_argument("--conf-dir", default=default, help="configuration directory (default: ./conf, or $LAKEHOUSE_CONF_DIR)")
    group.add_argument("--data-dir", default=default, help="where tables, checkpoints and landing files live (storage.data_dir)")
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=default if suppress else [],
        metavar="KEY.PATH=VALUE",
        help="override one configuration value (repeatable), e.g. --set sources.telemetry.max_files_per_trigger=5",
    )


def _trigger_options(parser: argparse.ArgumentParser, what: str) -> None:
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help=f"process {what} so far, then stop (availableNow)")
    when.add_argument("--trigger", help="run continuously with this processing-time trigger (default: streaming.trigger)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakehouse", description=__doc__.split("\n\n")[0])
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _global_options(sub, suppress=True)
        return sub

    gen = command("generate", "write telemetry JSON-lines files (with injected faults) into a landing directory, "
                              "or publish them to a Kafka topic")
    gen.add_argument("--source", help="source whose landing directory (or topic) receives the records "
                                      "(default: telemetry; with --sink kafka the first Kafka source)")
    gen.add_argument("--sink", choices=["files", "kafka"], help="files or kafka (default: by the source's kind)")
    gen.add_argument("--topic", help="--sink kafka: the topic (default: the source's first topic); created with "
                                     "kafka.partitions partitions if missing")
    gen.add_argument("--records", type=int, help="lines to write, faults included (default: generator.records)")
    gen.add_argument("--files", type=int, help="non-empty files to spread them over (default: generator.files)")
    gen.add_argument("--seed", type=int, help="random seed; the same seed writes the same bytes (default: generator.seed)")
    gen.add_argument("--fault-rate", type=float, help="share of lines with a fault, 0..1 (default: generator.fault_rate)")
    gen.add_argument("--run-id", help="names this run's files and manifest (default: s<seed>)")
    gen.add_argument("--rate", type=float, help="continuous mode: records per second, until --duration or Ctrl-C")
    gen.add_argument("--duration", type=float, default=0.0, help="continuous mode: seconds to run (0: until interrupted)")
    gen.add_argument("--file-seconds", type=float, default=1.0,
                     help="continuous mode: seconds between two files (Kafka: two flushed groups of messages)")

    ing = command("ingest", "stream a source's landing files or Kafka topics into bronze.<source> (exactly-once)")
    ing.add_argument("--source", required=True, help="configured source name, e.g. telemetry")
    _trigger_options(ing, "everything landed")

    ref = command("refine", "stream bronze rows into silver.<entity>: parse, expectations, quarantine, dedupe (MERGE)")
    ref.add_argument("--entity", required=True, help="configured entity name, e.g. telemetry")
    ref.add_argument("--backfill", action="store_true",
                     help="the batches this run plans quarantine no row as late (loading old data on purpose; "
                          "see conf/README.md, 'Late rows and backfills')")
    _trigger_options(ref, "everything in bronze")

    gold = command("gold", "build gold tables declared in conf/<env>/gold/: streaming aggregates or batch feature tables")
    which = gold.add_mutually_exclusive_group(required=True)
    which.add_argument("--table", action="append", help="configured gold table, e.g. telemetry_minute (repeatable)")
    which.add_argument("--all", action="store_true", help="every configured gold table, inputs first (implies --once)")
    _trigger_options(gold, "everything in the input (streaming tables; batch tables are rebuilt once)")

    train = command("train", "train the model on the gold feature table; track the run in MLflow; register it")
    train.add_argument("--backend", choices=["local", "horovod", "torch-distributor"], default="local",
                       help="local: one process; horovod: horovod.spark.run on the executors; "
                            "torch-distributor: pyspark's TorchDistributor (DDP)")
    train.add_argument("--num-proc", type=int, default=None, help="training processes (default: 1 local, 2 otherwise)")
    train.add_argument("--gpu", action="store_true", help="one GPU per process (fails clearly where there is none)")
    train.add_argument("--force", action="store_true", help="train even when the input's quality is below the gate")
    train.add_argument("--version", type=int, help="the feature table's Delta version (default: the latest)")
    train.add_argument("--epochs", type=int, help="override training.epochs")

    command("score", "score the feature table with the registered model's champion into gold.predictions")

    bundle = command("bundle", "Databricks Asset Bundle: 'check' validates databricks.yml offline (schema + the CLI's checks)")
    bundle.add_argument("action", choices=["check"], help="check: load databricks.yml as the CLI does and validate it")
    bundle.add_argument("-t", "--target", help="bundle target (default: the one marked default)")
    bundle.add_argument("--all-targets", action="store_true", help="check every target")
    bundle.add_argument("--schema", help="the CLI's bundle JSON schema (default: $LAKEHOUSE_BUNDLE_SCHEMA)")
    bundle.add_argument("--dir", default=".", help="the bundle's directory (default: .)")

    rec = command("reconcile", "check bronze rows = silver rows + quarantined rows + duplicates; exit 1 when not")
    rec.add_argument("--source", required=True, help="configured source name")

    quality = command("quality", "data quality: 'docs' builds Great Expectations Data Docs from ops.quality_results")
    quality.add_argument("action", choices=["docs"], help="docs: build the GX Data Docs site and print its index.html")

    status = command("status", "per query: last batch, records, R, S, B and the landed-but-unprocessed backlog")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sql = command("sql", "run a Spark SQL query over the tables by their names (bronze.telemetry, "
                         "ops.stream_progress, ...); read-only unless --write")
    sql.add_argument("query", help='e.g. "SELECT count(*) FROM bronze.telemetry"; also DESCRIBE, SHOW and EXPLAIN')
    sql.add_argument("--write", action="store_true",
                     help="also run statements that change tables or the catalog (DELETE, UPDATE, MERGE, INSERT, "
                          "ALTER, DROP, OPTIMIZE, VACUUM, ...); without it they are refused before they run")
    sql.add_argument("--json", action="store_true", help="print one JSON object per row")
    sql.add_argument("--limit", type=int, default=1000, help="print at most this many rows (default 1000)")

    demo = command("demo", "generate data, run bronze, silver and gold, train and score; print a summary and the reconciliation, on embedded defaults")
    demo.add_argument("--source", default="telemetry", help="source to run the demo for")

    command("config", "print the resolved configuration (after overlays and --set) as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    install_log_redaction()
    try:
        config = load_config(
            env=args.env,
            conf_dir=args.conf_dir,
            data_dir=args.data_dir,
            overrides=args.overrides or (),
        )
        if getattr(args, "source", None) is not None:
            config.source(args.source)  # an unknown source or entity is a configuration error too
        if getattr(args, "entity", None) is not None:
            config.entity(args.entity)
        for name in getattr(args, "table", None) or ():
            config.gold_table(name)
        if getattr(args, "trigger", None):
            check_duration("--trigger", args.trigger)
    except ConfigError as exc:
        print(f"lakehouse: configuration error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    handler = COMMANDS[args.command]
    from pyspark.errors import PySparkException

    try:
        return handler(config, args)
    except ConfigError as exc:  # found once Spark could check it (lakehouse/preflight.py)
        print(f"lakehouse: configuration error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except (JobError, PySparkException) as exc:
        print(f"lakehouse: {args.command} failed: {error_summary(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("lakehouse: interrupted", file=sys.stderr)
        return 130


# -- commands -------------------------------------------------------------------------------


def error_summary(exc: BaseException, lines: int = 1) -> str:
    """The first ``lines`` non-empty lines of an error's message, redacted (a Spark message may
    start with a blank line: its first line alone can be empty)."""
    text = [line.rstrip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return redact_text("\n".join(text[:lines]))


def cmd_config(config: LakehouseConfig, args) -> int:
    import dataclasses

    print(json.dumps(redact_tree(dataclasses.asdict(config)), indent=2, default=str))
    return EXIT_OK


def cmd_generate(config: LakehouseConfig, args) -> int:
    from lakehouse.generator import RUN_ID, TelemetryGenerator, generate_batch, generate_continuous

    kafka_sources = [name for name, source in config.sources.items() if source.kind == "kafka"]
    if args.source is None:
        args.source = kafka_sources[0] if args.sink == "kafka" and kafka_sources else "telemetry"
        config.source(args.source)
    sink = args.sink or config.source(args.source).kind
    if sink == "kafka" and config.source(args.source).kind != "kafka":
        print(f"lakehouse: --sink kafka needs a Kafka source for its connection settings; {args.source} is a "
              f"{config.source(args.source).kind} source (Kafka sources: {', '.join(kafka_sources) or 'none'})",
              file=sys.stderr)
        return EXIT_CONFIG
    landing = config.landing_path(args.source)
    if "://" in landing:
        print(f"lakehouse: generate writes local files only; landing path is {landing}", file=sys.stderr)
        return EXIT_CONFIG
    g = config.generator
    seed = g.seed if args.seed is None else args.seed
    fault_rate = g.fault_rate if args.fault_rate is None else args.fault_rate
    records = args.records or g.records
    files = args.files or g.files
    if not 0 <= fault_rate <= 1 or records < 1 or files < 1 or files > records:
        print("lakehouse: generate needs 0 <= --fault-rate <= 1 and 1 <= --files <= --records", file=sys.stderr)
        return EXIT_CONFIG
    run_id = args.run_id or f"s{seed}"
    if not RUN_ID.match(run_id):  # it names files: nothing that leaves the landing directory
        print(f"lakehouse: --run-id {run_id!r}: a run id is a plain name (letters, digits, '.', '_', '-'; "
              "no '/' or '..'), since it names files in the landing directory", file=sys.stderr)
        return EXIT_CONFIG
    generator = TelemetryGenerator.from_config(g, seed=seed, fault_rate=fault_rate)
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
    from lakehouse.generator import publish_batch, publish_continuous
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


def print_manifest(manifest, landing_dir: Path) -> None:
    if manifest.sink == "kafka":
        spread = ", ".join(f"{p}: {s['messages']:,}" for p, s in sorted(manifest.partitions.items()))
        print(f"published {manifest.total_lines:,} messages to {manifest.topic} (by partition {spread})")
    else:
        print(f"wrote {manifest.total_lines:,} lines in {len(manifest.files)} files to {landing_dir}")
    faults = ", ".join(f"{kind} {n}" for kind, n in manifest.fault_counts().items())
    print(f"injected: {faults}")
    print(f"manifest: {landing_dir / '_manifests' / (manifest.run_id + '.json')}")


def _start_spark(config: LakehouseConfig, ui: bool = False):
    """The job's session; ``ui``: with Spark's web UI (a continuous job; on the loopback locally)."""
    from lakehouse.session import build_session, running_on_cluster_launcher

    master = "the launcher's master" if running_on_cluster_launcher() else config.spark.master or "default master"
    # progress on stderr: stdout stays the command's output (sql --json, status --json)
    print(f"starting Spark ({master}, env {config.env}) ...", file=sys.stderr, flush=True)
    return build_session(config, ui=ui)


def cmd_ingest(config: LakehouseConfig, args) -> int:
    from lakehouse.bronze import run_bronze_ingest
    from lakehouse.streaming import trigger_for

    spark = _start_spark(config, ui=not args.once)
    return run_bronze_ingest(spark, config, args.source, trigger_for(args.once, args.trigger, config))


def cmd_refine(config: LakehouseConfig, args) -> int:
    from lakehouse.preflight import check_entity
    from lakehouse.silver import run_silver_refine
    from lakehouse.streaming import trigger_for

    spark = _start_spark(config, ui=not args.once)
    check_entity(spark, config, args.entity)
    return run_silver_refine(spark, config, args.entity, trigger_for(args.once, args.trigger, config), args.backfill)


def cmd_gold(config: LakehouseConfig, args) -> int:
    from lakehouse.gold import run_gold_tables
    from lakehouse.preflight import check_gold_sql
    from lakehouse.streaming import trigger_for

    names = list(config.gold) if args.all else args.table
    if not names:
        print("lakehouse: no gold tables are configured (conf/<env>/gold/*.yml)", file=sys.stderr)
        return EXIT_CONFIG
    batch = [n for n in names if config.gold_table(n).mode == "batch"]
    if args.trigger and (batch or args.all or len(names) > 1):
        print("lakehouse: --trigger runs one streaming gold table continuously; "
              + (f"gold.{batch[0]} is a batch table (rebuilt once per run)" if batch else "name one --table"),
              file=sys.stderr)
        return EXIT_CONFIG
    once = args.once or args.all or bool(batch)
    spark = _start_spark(config, ui=not once)
    check_gold_sql(spark, config, names)
    return run_gold_tables(spark, config, names, trigger_for(once, args.trigger, config))


def cmd_train(config: LakehouseConfig, args) -> int:
    from ml.run import BackendError, TrainingRefused, run_training

    num_proc = args.num_proc or (1 if args.backend == "local" else 2)
    spark = _start_spark(config)
    try:
        summary = run_training(spark, config, args.backend, num_proc, args.gpu, args.force, args.version, args.epochs)
    except TrainingRefused as exc:
        print(f"lakehouse: training refused: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_QUALITY
    except BackendError as exc:
        print(f"lakehouse: train: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    final = summary.final
    print(f"run {summary.run_id} in experiment {summary.experiment}")
    print(f"validation RMSE {final.get('val_rmse', float('nan')):.3f} W (predicting the mean: "
          f"{summary.baseline_rmse:.3f} W), MAE {final.get('val_mae', float('nan')):.3f} W, "
          f"{summary.samples_per_s:,.0f} samples/s")
    if summary.refused_rows:
        print(f"{summary.refused_rows:,} rows not trained on: a feature or the label is not finite in float32")
    print(f"registered {config.training.registered_model} version {summary.model_version}"
          + (" -> alias champion" if summary.champion else
             f" (not the champion: {summary.not_champion_because})"))
    print(f"browse: mlflow ui --backend-store-uri {redact_text(summary.tracking_uri)}")
    return EXIT_OK


def cmd_score(config: LakehouseConfig, args) -> int:
    from ml.score import NoChampion, score

    if config.training is None:
        print("lakehouse: no training section in the configuration (conf/<env>/training.yml)", file=sys.stderr)
        return EXIT_CONFIG
    spark = _start_spark(config)
    try:
        summary = score(spark, config)
    except NoChampion as exc:
        print(f"lakehouse: score: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    print(f"gold.predictions: version {summary.table_version}, {summary.rows:,} rows from {summary.input} "
          f"by {summary.model} version {summary.model_version} (champion)")
    return EXIT_OK


def cmd_bundle(config: LakehouseConfig, args) -> int:
    from lakehouse.bundle import BundleError, check_bundle, load_bundle, load_schema

    root = Path(args.dir)
    try:
        schema = load_schema(args.schema)
        targets = [args.target]
        if args.all_targets:
            targets = list((load_bundle(root).config.get("targets") or {"default": {}}))
        failed = 0
        for target in targets:
            bundle, problems = check_bundle(root, target, schema, project_root=root)
            for problem in problems:
                print(f"{problem}\n")
            name = (bundle.config.get("bundle") or {}).get("name", "?")
            verdict = "no problems" if not problems else f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
            print(f"bundle {name}, target {bundle.target}: {verdict}")
            failed += bool(problems)
    except BundleError as exc:
        print(f"lakehouse: bundle check: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_FAILED if failed else EXIT_OK


def cmd_reconcile(config: LakehouseConfig, args) -> int:
    from lakehouse.silver import reconcile

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


def cmd_status(config: LakehouseConfig, args) -> int:
    from lakehouse.observability import collect_status, format_status

    spark = _start_spark(config)
    statuses = collect_status(spark, config)
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        print(format_status(statuses))
    return EXIT_OK


def cmd_sql(config: LakehouseConfig, args) -> int:
    from pyspark.errors import PySparkException

    from lakehouse.sql_plans import parsed_plan, writing_node
    from lakehouse.tables import register_local_tables

    spark = _start_spark(config)
    if not args.write:
        try:
            writes = writing_node(parsed_plan(spark, args.query))
        except ValueError as exc:  # it does not parse: Spark's message, caret and all
            print(f"lakehouse: sql failed: {redact_text(str(exc))}", file=sys.stderr)
            return EXIT_FAILED
        if writes:
            print(f"lakehouse: sql: refused: the statement is not a query (Spark parses it as {writes}); "
                  "`lakehouse sql` is read-only unless given --write", file=sys.stderr)
            return EXIT_CONFIG
    register_local_tables(spark, config)
    try:
        df = spark.sql(args.query)
        rows = df.limit(args.limit + 1).collect()
    except PySparkException as exc:  # Spark's whole message: what is wrong, and where
        print(f"lakehouse: sql failed: {error_summary(exc, lines=20)}", file=sys.stderr)
        return EXIT_FAILED
    truncated = len(rows) > args.limit
    rows = rows[: args.limit]
    if args.json:
        for row in rows:
            print(json.dumps(row.asDict(recursive=True), default=str))
    else:
        print(_format_rows(df.columns, rows))
    if truncated:
        print(f"(first {args.limit} rows shown; use --limit)", file=sys.stderr)
    return EXIT_OK


def _format_rows(columns: list[str], rows) -> str:
    def text(value) -> str:
        if value is None:
            return "NULL"
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    table = [columns] + [[text(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def cmd_demo(config: LakehouseConfig, args) -> int:
    """The whole flow on embedded defaults. A Kafka source gets a local broker for the run (unless
    bootstrap servers are configured), started here and stopped at the end."""
    from lakehouse.preflight import check_entity, check_gold_sql

    source = config.source(args.source)
    spark = _start_spark(config)  # what only Spark can check, before anything is written
    for entity in (name for name, e in config.entities.items() if args.source in e.sources):
        check_entity(spark, config, entity)
    check_gold_sql(spark, config, list(config.gold))
    if source.kind != "kafka":
        return _demo(config, args, spark)
    import os

    from lakehouse.kafka import KafkaSetupError, bootstrap_servers
    from lakehouse.kafka_broker import KafkaBroker

    try:
        servers = bootstrap_servers(source.kafka)
    except KafkaSetupError:
        servers = None
    if servers:
        print(f"using the Kafka cluster at {servers}")
        return _demo(config, args, spark)
    # Kept under the data directory, with the checkpoints whose offsets refer to its topics.
    state = Path(config.storage.data_dir) / "kafka-broker"
    print(f"== 0. a local Kafka broker (KRaft) in {state}; stopped at the end of the demo")
    with KafkaBroker(state, partitions=source.kafka.partitions) as broker:
        os.environ[source.kafka.bootstrap_servers_env] = broker.bootstrap
        try:
            return _demo(config, args, spark)
        finally:
            os.environ.pop(source.kafka.bootstrap_servers_env, None)


def _demo(config: LakehouseConfig, args, spark) -> int:
    from pyspark.sql import functions as F

    from lakehouse.bronze import run_bronze_ingest
    from lakehouse.tables import bronze_table
    from lakehouse.generator import TelemetryGenerator, generate_batch
    from lakehouse.gold import run_gold_tables
    from lakehouse.observability import collect_status, format_status
    from lakehouse.silver import reconcile, run_silver_refine
    from lakehouse.tables import read_table, resolve_table

    g = config.generator
    kafka = config.source(args.source).kafka
    run_id = "demo-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    landing_dir = Path(config.landing_path(args.source))
    # A new seed per demo run, so a rerun adds new events rather than duplicates of the last run's.
    seed = g.seed + len(list((landing_dir / "_manifests").glob("demo-*.json")))
    if kafka:
        from lakehouse.kafka import open_topic

        publisher, _ = open_topic(kafka)
    where = f"topic {publisher.topic}" if kafka else "landing files"
    print(f"== 1. generate: {g.records:,} {args.source} records as {where}, fault rate {g.fault_rate:g} "
          f"(run {run_id}, seed {seed})")
    landing_dir.mkdir(parents=True, exist_ok=True)
    generator = TelemetryGenerator.from_config(g, seed=seed)
    if kafka:
        from lakehouse.generator import publish_batch

        manifest = publish_batch(generator, publisher, landing_dir, args.source, run_id, seed, g.records)
    else:
        manifest = generate_batch(generator, landing_dir, args.source, run_id, seed, g.records, g.files)
    print_manifest(manifest, landing_dir)

    print(f"\n== 2. bronze: ingest {where} into bronze.{args.source} (--once)")
    entities = [name for name, e in config.entities.items() if args.source in e.sources]
    code = run_bronze_ingest(spark, config, args.source, {"availableNow": True})
    if code != EXIT_OK:
        return code

    bronze = read_table(spark, bronze_table(config, args.source))
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

    for entity in entities:
        print(f"\n== 3. silver: refine bronze.{args.source} into silver.{entity} (--once)")
        code = run_silver_refine(spark, config, entity, {"availableNow": True})
        if code != EXIT_OK:
            return code
        quarantine = read_table(spark, resolve_table(config, f"silver.{entity}_quarantine"))
        print(f"silver.{entity}: {read_table(spark, resolve_table(config, f'silver.{entity}')).count():,} rows")
        print(f"silver.{entity}_quarantine by first reason:")
        for row in quarantine.groupBy(F.col("reasons")[0].alias("reason")).count().orderBy(F.desc("count")).collect():
            print(f"  {row['count']:>6,}  {row['reason']}")
    if entities:
        report = reconcile(spark, config, args.source)
        print(f"\n== 4. reconciliation\n{report.describe()}")
        ok = ok and report.holds

    # The gold tables fed by these entities, directly or through another gold table, inputs first.
    fed = {f"silver.{e}" for e in entities}
    gold_tables = []
    for name in config.gold_order():
        if fed & set(config.gold_table(name).inputs):
            gold_tables.append(name)
            fed.add(f"gold.{name}")
    if gold_tables:
        print(f"\n== 5. gold: {', '.join('gold.' + n for n in gold_tables)}")
        code = run_gold_tables(spark, config, gold_tables, {"availableNow": True})
        if code != EXIT_OK:
            return code
        for name in gold_tables:
            table = read_table(spark, resolve_table(config, f"gold.{name}"))
            print(f"gold.{name}: {table.count():,} rows")
        last = read_table(spark, resolve_table(config, f"gold.{gold_tables[-1]}"))
        print(f"a few rows of gold.{gold_tables[-1]}:")
        print(_format_rows(last.columns, last.orderBy(*last.columns[:3]).limit(5).collect()))
    training = config.training
    summary = None
    if training is not None and training.table in {f"gold.{n}" for n in gold_tables}:
        from ml.run import run_training
        from ml.score import score

        print(f"\n== 6. train: a short local run on {training.table}, tracked in MLflow")
        summary = run_training(spark, config, "local", 1, gpu=False, force=False)
        final = summary.final
        print(f"run id:            {summary.run_id} (experiment {summary.experiment})")
        print(f"validation RMSE:   {final['val_rmse']:.2f} W (predicting the mean: {summary.baseline_rmse:.2f} W)")
        print(f"validation MAE:    {final['val_mae']:.2f} W; {summary.samples_per_s:,.0f} samples/s")
        print(f"registered model:  {training.registered_model} version {summary.model_version}"
              + (" (champion)" if summary.champion else f" (not the champion: {summary.not_champion_because})"))
        scored = score(spark, config)
        print(f"gold.predictions:  {scored.rows:,} rows by version {scored.model_version} (the champion)")
    print("\n" + format_status(collect_status(spark, config)))
    command = ".venv/bin/lakehouse" if Path(".venv/bin/lakehouse").exists() else "lakehouse"
    prefix = command + (f" --data-dir {config.storage.data_dir}" if config.storage.data_dir != Path("data") else "")
    print("\nnext:")
    if kafka:
        print(f"  {prefix} sql \"SELECT partition, offset, CAST(value AS STRING) AS value FROM bronze.{args.source} "
              f"WHERE CAST(value AS STRING) NOT LIKE '{{%}}' LIMIT 5\"")
    else:
        print(f"  {prefix} sql \"SELECT _source_file, _source_line, CAST(value AS STRING) AS value FROM "
              f"bronze.{args.source} WHERE CAST(value AS STRING) NOT LIKE '{{%}}' LIMIT 5\"")
    for entity in entities:
        print(f"  {prefix} sql \"SELECT reasons, value FROM silver.{entity}_quarantine LIMIT 5\"")
    for name in gold_tables:
        print(f"  {prefix} sql \"SELECT * FROM gold.{name} LIMIT 5\"")
    print(f"  {prefix} status")
    if summary is not None:
        mlflow = ".venv/bin/mlflow" if Path(".venv/bin/mlflow").exists() else "mlflow"
        print(f"  {mlflow} ui --backend-store-uri {redact_text(summary.tracking_uri)}   # then open http://127.0.0.1:5000")
    return EXIT_OK if ok else EXIT_FAILED


COMMANDS = {
    "generate": cmd_generate,
    "ingest": cmd_ingest,
    "refine": cmd_refine,
    "gold": cmd_gold,
    "train": cmd_train,
    "score": cmd_score,
    "bundle": cmd_bundle,
    "reconcile": cmd_reconcile,
    "quality": cmd_quality,
    "status": cmd_status,
    "sql": cmd_sql,
    "demo": cmd_demo,
    "config": cmd_config,
}


if __name__ == "__main__":
    sys.exit(main())
