"""The ``lakehouse`` command line (lakehouse.cli): what build_parser() accepts and refuses, and
the usage and configuration errors main() answers with exit code 2 before any Spark starts."""

from __future__ import annotations

import pytest

import lakehouse.cli
from lakehouse.cli import build_parser, main
from tests.conftest import CONF_DIR


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def _usage_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        _parse(*argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


# -- the parser -----------------------------------------------------------------------------


def test_global_options_default_to_none_and_no_overrides():
    args = _parse("config")
    assert (args.command, args.env, args.conf_dir, args.data_dir, args.overrides) == ("config", None, None, None, [])


@pytest.mark.parametrize("argv", [
    ["--env", "prod", "--conf-dir", "c", "--data-dir", "d", "--set", "a=1", "--set", "b=2", "status"],
    ["status", "--env", "prod", "--conf-dir", "c", "--data-dir", "d", "--set", "a=1", "--set", "b=2"],
    ["--env", "prod", "--conf-dir", "c", "status", "--data-dir", "d", "--set", "a=1", "--set", "b=2"],
])
def test_global_options_before_or_after_the_command(argv):
    args = _parse(*argv)
    assert (args.command, args.env, args.conf_dir, args.data_dir, args.overrides) == ("status", "prod", "c", "d", ["a=1", "b=2"])
    assert args.json is False


def test_a_global_option_after_the_command_wins_over_one_before():
    args = _parse("--env", "dev", "--data-dir", "first", "config", "--env", "prod")
    assert (args.env, args.data_dir) == ("prod", "first")  # one given before only is kept


def test_set_before_and_after_the_command_are_all_kept():
    assert _parse("--set", "a=1", "config", "--set", "b=2").overrides == ["a=1", "b=2"]


@pytest.mark.parametrize("command", [["ingest", "--source", "telemetry"], ["refine", "--entity", "telemetry"],
                                     ["gold", "--table", "telemetry_minute"]])
def test_once_and_trigger_exclude_each_other(capsys, command):
    assert "not allowed with argument" in _usage_error(capsys, *command, "--once", "--trigger", "5 seconds")
    once, trigger, neither = (_parse(*command, *extra) for extra in (["--once"], ["--trigger", "5s"], []))
    assert (once.once, once.trigger) == (True, None)
    assert (trigger.once, trigger.trigger) == (False, "5s")
    assert (neither.once, neither.trigger) == (False, None)


def test_ingest_and_refine_need_their_source_or_entity(capsys):
    assert "--source" in _usage_error(capsys, "ingest", "--once")
    assert "--entity" in _usage_error(capsys, "refine")
    assert _parse("refine", "--entity", "telemetry", "--backfill").backfill is True
    assert _parse("refine", "--entity", "telemetry").backfill is False


def test_gold_takes_tables_or_all_but_not_both_or_neither(capsys):
    assert "one of the arguments --table --all is required" in _usage_error(capsys, "gold", "--once")
    assert "not allowed with argument" in _usage_error(capsys, "gold", "--all", "--table", "telemetry_minute")
    tables = _parse("gold", "--table", "telemetry_minute", "--table", "telemetry_features")
    assert (tables.table, tables.all) == (["telemetry_minute", "telemetry_features"], False)
    everything = _parse("gold", "--all")
    assert (everything.table, everything.all) == (None, True)


def test_train_defaults_and_choices(capsys):
    args = _parse("train")
    assert (args.backend, args.num_proc, args.gpu, args.force, args.version, args.epochs) == (
        "local", None, False, False, None, None)
    args = _parse("train", "--backend", "torch-distributor", "--num-proc", "4", "--gpu", "--force",
                  "--version", "7", "--epochs", "2")
    assert (args.backend, args.num_proc, args.gpu, args.force, args.version, args.epochs) == (
        "torch-distributor", 4, True, True, 7, 2)
    assert "invalid choice: 'ray'" in _usage_error(capsys, "train", "--backend", "ray")
    assert "invalid int value" in _usage_error(capsys, "train", "--num-proc", "two")


def test_sql_defaults_and_its_query_is_required(capsys):
    args = _parse("sql", "SELECT 1")
    assert (args.query, args.write, args.json, args.limit) == ("SELECT 1", False, False, 1000)
    args = _parse("sql", "--limit", "5", "--json", "--write", "DELETE FROM ops.x")
    assert (args.query, args.write, args.json, args.limit) == ("DELETE FROM ops.x", True, True, 5)
    assert "query" in _usage_error(capsys, "sql")


def test_generate_defaults_and_sinks(capsys):
    args = _parse("generate")
    assert (args.source, args.sink, args.records, args.files, args.seed, args.fault_rate, args.run_id) == (None,) * 7
    assert (args.rate, args.duration, args.file_seconds) == (None, 0.0, 1.0)
    assert _parse("generate", "--sink", "kafka", "--topic", "t").sink == "kafka"
    assert "invalid choice: 'ftp'" in _usage_error(capsys, "generate", "--sink", "ftp")


def test_actions_of_bundle_and_quality_are_checked(capsys):
    args = _parse("bundle", "check", "-t", "dev")
    assert (args.action, args.target, args.all_targets, args.dir, args.schema) == ("check", "dev", False, ".", None)
    assert "invalid choice" in _usage_error(capsys, "bundle", "deploy")
    assert _parse("quality", "docs").action == "docs"
    assert "invalid choice" in _usage_error(capsys, "quality", "report")
    assert _parse("demo").source is None and _parse("reconcile", "--source", "x").source == "x"


@pytest.mark.parametrize("argv", [[], ["launch"], ["--env"], ["config", "--bogus"], ["--once", "ingest"]])
def test_unknown_or_missing_commands_and_options_exit_2(capsys, argv):
    _usage_error(capsys, *argv)


# -- main(): refused before Spark -----------------------------------------------------------


@pytest.fixture
def no_spark(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Spark was started")

    monkeypatch.setattr(lakehouse.cli, "_start_spark", refuse)


def _main(tmp_path, capsys, *argv: str) -> tuple[int, str]:
    code = main(["--conf-dir", str(CONF_DIR), "--env", "test", "--data-dir", str(tmp_path / "data"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert not (tmp_path / "data").exists()  # nothing written
    return code, "\n".join(err)


@pytest.mark.parametrize("argv,expected", [
    (["ingest", "--source", "telemetry", "--trigger", "soon"], "--trigger"),
    (["refine", "--entity", "telemetry", "--trigger", "5 parsecs"], "--trigger"),
    (["gold", "--table", "telemetry_minute", "--trigger=-1s"], "--trigger"),
    (["ingest", "--source", "nope", "--once"], "sources.nope"),
    (["reconcile", "--source", "nope"], "sources.nope"),
    (["refine", "--entity", "nope", "--once"], "entities.nope"),
    (["gold", "--table", "telemetry_minute", "--table", "nope"], "gold.nope"),
    (["--set", "streaming.trigger=never", "config"], "streaming.trigger"),
    (["--set", "no_equals_sign", "config"], "expected key.path=value"),
])
def test_configuration_errors_exit_2_with_one_line(tmp_path, capsys, no_spark, argv, expected):
    code, err = _main(tmp_path, capsys, *argv)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("lakehouse: configuration error: ") and expected in err


def test_an_unknown_environment_exits_2(tmp_path, capsys, no_spark):
    code = main(["--conf-dir", str(CONF_DIR), "--env", "staging", "--data-dir", str(tmp_path / "data"), "config"])
    err = capsys.readouterr().err
    assert code == 2 and "no such environment 'staging'" in err and "test" in err


@pytest.mark.parametrize("argv,expected", [
    (["gold", "--table", "telemetry_features", "--trigger", "5s"], "gold.telemetry_features is a batch table"),
    (["gold", "--table", "telemetry_minute", "--table", "telemetry_features", "--trigger", "5s"], "batch table"),
    (["gold", "--all", "--trigger", "5s"], "--trigger runs one streaming gold table"),
    (["generate", "--fault-rate", "1.5"], "--fault-rate"),
    (["generate", "--records", "3", "--files", "4"], "--files <= --records"),
    (["generate", "--run-id", "../elsewhere"], "--run-id"),
    (["generate", "--sink", "kafka", "--source", "telemetry"], "telemetry is a files source"),
    (["maintain", "--table", "silver.telemetry", "--table", "silver.nope"], "no such table silver.nope (tables: "),
])
def test_commands_refuse_bad_usage_before_spark_and_before_writing(tmp_path, capsys, no_spark, argv, expected):
    code, err = _main(tmp_path, capsys, *argv)
    assert code == 2 and expected in err, err
