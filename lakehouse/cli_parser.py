"""The ``lakehouse`` command line: every command, its options and their help.

    lakehouse [--env ENV] [--scenario NAME] [--conf-dir DIR] [--data-dir DIR] [--set key.path=value ...] [--verbose] COMMAND ...
"""

from __future__ import annotations

import argparse

DESCRIPTION = "The ``lakehouse`` command: one front door for every job."


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options every command takes; accepted before or after the command name."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("global options")
    group.add_argument("--env", default=default, help="configuration overlay: conf/<env>/ (default: dev, or $LAKEHOUSE_ENV)")
    group.add_argument("--scenario", default=default,
                       help="which feeds and tables: telemetry (the base configuration) or a directory of "
                            "conf/scenarios/, e.g. chat (default: telemetry, or $LAKEHOUSE_SCENARIO)")
    group.add_argument("--conf-dir", default=default, help="configuration directory (default: ./conf, or $LAKEHOUSE_CONF_DIR)")
    group.add_argument("--data-dir", default=default, help="where tables, checkpoints and landing files live (storage.data_dir)")
    group.add_argument(
        "--set",
        # after the command, its own list: argparse would replace the one given before it
        dest="command_overrides" if suppress else "overrides",
        action="append",
        default=default if suppress else [],
        metavar="KEY.PATH=VALUE",
        help="override one configuration value (repeatable), e.g. --set sources.telemetry.max_files_per_trigger=5",
    )
    group.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS if suppress else False,
                       help="show all the Spark JVM prints (dependency resolution, start-up notices, warnings); by "
                            "default only the project's own lines and errors (or $LAKEHOUSE_VERBOSE=1)")


def _trigger_options(parser: argparse.ArgumentParser, what: str) -> None:
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help=f"process {what} so far, then stop (availableNow)")
    when.add_argument("--trigger", help="run continuously with this processing-time trigger (default: streaming.trigger)")


class _Parser(argparse.ArgumentParser):
    """Keeps every ``--set``: argparse parses a command's options into a namespace of its own and
    copies it over, which would replace the ``--set`` list given before the command."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        parsed.overrides = [*(parsed.overrides or ()), *vars(parsed).pop("command_overrides", ())]  # before, then after
        return parsed, rest


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; lakehouse/cli.py runs what it parses."""
    parser = _Parser(prog="lakehouse", description=DESCRIPTION)
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=argparse.ArgumentParser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _global_options(sub, suppress=True)
        return sub

    _pipeline_commands(command)
    _ml_commands(command)
    _tool_commands(command)
    _look_commands(command)
    return parser


def _pipeline_commands(command) -> None:
    """generate, and the flows: ingest (bronze), refine (silver), gold."""
    gen = command("generate", "write generated JSON-lines records (telemetry or chat messages, by the source's "
                              "generator; with injected faults) into a landing directory, or publish them to Kafka")
    gen.add_argument("--source", help="source whose landing directory (or topic) receives the records (default: "
                                      "the first files source, telemetry in the base configuration; with --sink "
                                      "kafka the first Kafka source)")
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
    gen.add_argument("--clock", choices=["simulated", "live"],
                     help="event times: simulated (from generator.start_time, one step per reading; the same seed "
                          "gives the same bytes) or live (the wall clock as each reading is made). "
                          "Default: live with --rate, else simulated")

    ing = command("ingest", "stream a source's landing files or Kafka topics into bronze.<source> (exactly-once)")
    ing.add_argument("--source", required=True, help="configured source name, e.g. telemetry")
    _trigger_options(ing, "everything landed")

    ref = command("refine", "stream bronze rows into silver.<entity>: parse, expectations, quarantine, dedupe (MERGE)")
    ref.add_argument("--entity", required=True, help="configured entity name, e.g. telemetry")
    ref.add_argument("--backfill", action="store_true",
                     help="the batches this run plans quarantine no row as late (loading old data on purpose; "
                          "see conf/README.md, 'Late rows and backfills')")
    _trigger_options(ref, "everything in bronze")

    run = command("run", "run the pipeline's flows in one Spark application: every source's bronze, every entity's "
                         "silver, every gold table as concurrent supervised queries (each commit's freshness in "
                         "ops.freshness; on a terminal a line per flow every run.report_every; retraining with "
                         "training.retrain.enabled), or with --once each in turn, inputs first")
    run.add_argument("--only", nargs="+", metavar="FLOW",
                     help="run just these flows, by id: bronze.<source>, silver.<entity>, gold.<table> "
                          "(`lakehouse config` lists what is configured)")
    _trigger_options(run, "everything available in each flow's input")

    gold = command("gold", "build gold tables declared in conf/<env>/gold/: streaming aggregates or batch feature tables")
    which = gold.add_mutually_exclusive_group(required=True)
    which.add_argument("--table", action="append", help="configured gold table, e.g. telemetry_minute (repeatable)")
    which.add_argument("--all", action="store_true", help="every configured gold table, inputs first (implies --once)")
    _trigger_options(gold, "everything in the input (streaming tables; batch tables are rebuilt once)")


def _ml_commands(command) -> None:
    """train and score."""
    train = command("train", "train the model on the gold feature table; track the run in MLflow; register it")
    train.add_argument("--backend", choices=["local", "horovod", "torch-distributor"], default="local",
                       help="local: one process; horovod: horovod.spark.run on the executors; "
                            "torch-distributor: pyspark's TorchDistributor (DDP)")
    train.add_argument("--num-proc", type=int, default=None, help="training processes (default: 1 local, 2 otherwise)")
    train.add_argument("--gpu", action="store_true", help="one GPU per process (fails clearly where there is none)")
    train.add_argument("--force", action="store_true", help="train even when the input's quality is below the gate")
    train.add_argument("--version", type=int, help="the feature table's Delta version (default: the latest)")
    train.add_argument("--epochs", type=int, help="override training.epochs")
    train.add_argument("--resume", metavar="RUN_ID", help="go on with a causal_lm run that stopped half-way, from its "
                       "last checkpoint (same table version, same --num-proc)")

    command("score", "score the feature table with the registered model's champion into gold.predictions")


def _tool_commands(command) -> None:
    """Checking: bundle, reconcile, quality, demo, config (looking: :func:`_look_commands`)."""
    bundle = command("bundle", "Databricks Asset Bundle: 'check' validates databricks.yml offline (schema + the CLI's checks)")
    bundle.add_argument("action", choices=["check"], help="check: load databricks.yml as the CLI does and validate it")
    bundle.add_argument("-t", "--target", help="bundle target (default: the one marked default)")
    bundle.add_argument("--all-targets", action="store_true", help="check every target")
    bundle.add_argument("--schema", help="the CLI's bundle JSON schema (default: $LAKEHOUSE_BUNDLE_SCHEMA)")
    bundle.add_argument("--dir", default=".", help="the bundle's directory (default: .)")

    corpus = command("corpus", "convert a real text corpus (the chatterbot-corpus package's dialogues) into chat "
                               "messages in a landing directory (the chat scenario's source)")
    corpus.add_argument("name", choices=["chatterbot"], help="the corpus")
    corpus.add_argument("--source", help="the chat source to land it in (default: the first source whose generator "
                                         "is chat)")
    corpus.add_argument("--languages", default="english",
                        help="comma-separated corpus languages (english, spanish, ...), or all (default: english)")
    corpus.add_argument("--start", default="2026-01-01T00:00:00Z",
                        help="the first message's timestamp; the next ones follow a second apart")

    rec = command("reconcile", "check bronze rows = silver rows + quarantined rows + duplicates; exit 1 when not")
    rec.add_argument("--source", required=True, help="configured source name")

    quality = command("quality", "data quality: 'docs' builds Great Expectations Data Docs from ops.quality_results")
    quality.add_argument("action", choices=["docs"], help="docs: build the GX Data Docs site and print its index.html")

    demo = command("demo", "generate data, run bronze, silver and gold, train and score; print a summary and the "
                           "reconciliation; then run the pipeline always-on under a live feed and print each "
                           "table's freshness, on embedded defaults")
    demo.add_argument("--source", help="source to run the demo for (default: the scenario's first files source: "
                                       "telemetry, or chat with --scenario chat)")
    demo.add_argument("--run-seconds", type=float, default=60.0,
                      help="how long the always-on step runs `lakehouse run` under a live feed (0: skip it; default 60)")
    demo.add_argument("--rate", type=float, default=200.0,
                      help="records per second of the always-on step's live feed (default 200)")

    maintain = command("maintain", "table maintenance: Delta retention settings, ops-table retention, compaction "
                                   "(OPTIMIZE), VACUUM that keeps what streaming readers still need, and landing "
                                   "clean-up (sources.<s>.after_ingest); each step recorded in ops.maintenance")
    maintain.add_argument("--table", action="append", metavar="TABLE",
                          help="maintain only this table, e.g. silver.telemetry (repeatable; default: every table, "
                               "and the landing directories)")
    maintain.add_argument("--dry-run", action="store_true",
                          help="change nothing: print what each step would do (files, bytes, versions)")

    command("config", "print the resolved configuration (after overlays and --set) as JSON")


def _look_commands(command) -> None:
    """Looking at the pipeline: status, sql, ui (lakehouse/cli_look.py)."""
    status = command("status", "per query: last batch, records, R, S, B and the landed-but-unprocessed backlog; "
                               "per table: freshness, files, bytes and the time since its last maintenance")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--engine", choices=["auto", "duckdb", "spark"], default="auto",
                        help="how the tables are read: duckdb (delta-rs and DuckDB, no JVM: about a second), spark "
                             "(a Spark session: any catalog), or auto (default): duckdb for tables at paths, else spark")

    sql = command("sql", "run a Spark SQL query over the tables by their names (bronze.telemetry, "
                         "ops.stream_progress, ...); read-only unless --write; --engine duckdb answers "
                         "read-only queries in DuckDB's SQL without starting Spark")
    sql.add_argument("query", help='e.g. "SELECT count(*) FROM bronze.telemetry"; also DESCRIBE, SHOW and EXPLAIN')
    sql.add_argument("--write", action="store_true",
                     help="also run statements that change tables or the catalog (DELETE, UPDATE, MERGE, INSERT, "
                          "ALTER, DROP, OPTIMIZE, VACUUM, ...); without it they are refused before they run")
    sql.add_argument("--json", action="store_true", help="print one JSON object per row")
    sql.add_argument("--limit", type=int, default=1000, help="print at most this many rows (default 1000)")
    sql.add_argument("--engine", choices=["spark", "duckdb"], default="spark",
                     help="spark (default): full Spark SQL; duckdb: DuckDB's SQL over the same table names, read "
                          "with delta-rs (no JVM, tables at paths only, read-only)")

    ui = command("ui", "the operations page on 127.0.0.1: the flow graph with each table's version, rows, "
                       "freshness and state; per flow R, B, batch time, backlog and freshness over time; quality "
                       "and quarantine reasons; training runs and the champion (no JVM; refreshes itself)")
    ui.add_argument("--port", type=int, default=8050, help="port on 127.0.0.1 (default 8050)")
    ui.add_argument("--refresh", type=float, default=5.0, help="seconds between refreshes of the page (default 5)")
    ui.add_argument("--mlflow-url", help="the MLflow UI to link runs to, e.g. http://127.0.0.1:5000 (default: the "
                                         "tracking server's address when the store is one, else no links)")
