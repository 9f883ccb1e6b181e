"""Configuration: overlays, overrides, and bad configuration failing fast (exit 2, one line, nothing created)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse.cli import main
from lakehouse.config import ConfigError, load_config
from tests.conftest import CONF_DIR, edit_conf


def test_every_environment_loads_with_every_scenario():
    envs = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("base", "scenarios"))
    assert envs == ["databricks", "dev", "prod", "test"]
    for env in envs:
        config = load_config(env, conf_dir=CONF_DIR)
        assert config.env == env
        assert "telemetry" in config.sources
        chat = load_config(env, conf_dir=CONF_DIR, scenario="chat")
        assert (chat.env, list(chat.sources)) == (env, ["chat"])
    with pytest.raises(ConfigError, match="no such environment 'scenarios'"):
        load_config("scenarios", conf_dir=CONF_DIR)


def test_overlay_and_overrides_apply_in_order(tmp_path):
    config = load_config(
        "test",
        conf_dir=CONF_DIR,
        data_dir=tmp_path,
        overrides=["spark.conf.spark.sql.shuffle.partitions=7", "sources.telemetry.max_files_per_trigger=3"],
    )
    assert config.spark.master == "local[2]"  # from conf/test over conf/base
    assert config.spark.conf["spark.sql.shuffle.partitions"] == "7"  # --set over both
    assert config.spark.conf["spark.sql.session.timeZone"] == "UTC"  # base key kept
    assert config.sources["telemetry"].max_files_per_trigger == 3
    assert config.sources["telemetry"].max_bytes_per_trigger is None  # base's limit of the other kind gives way
    assert config.storage.data_dir == tmp_path
    assert config.landing_path("telemetry") == f"{tmp_path}/landing/telemetry"
    assert config.checkpoint_path("bronze_telemetry") == f"{tmp_path}/checkpoints/bronze_telemetry"


def test_prod_maps_to_unity_catalog():
    config = load_config("prod", conf_dir=CONF_DIR)
    assert config.catalog.kind == "unity"
    assert config.spark.master is None


BAD_CASES = {
    # case: (edit to the copied conf, extra CLI args, expected file suffix, expected key)
    "missing key": (
        lambda c: edit_conf(c / "base/lakehouse.yml", "  app_name: lakehouse\n", ""),
        [], "base/lakehouse.yml", "spark.app_name",
    ),
    "unknown key": (
        lambda c: edit_conf(c / "test/lakehouse.yml", "  records: 2000", "  recods: 2000"),
        [], "test/lakehouse.yml", "generator.recods",
    ),
    "wrong type": (
        lambda c: edit_conf(c / "base/sources/telemetry.yml", "max_bytes_per_trigger: 268435456",
                            "max_bytes_per_trigger: lots"),
        [], "base/sources/telemetry.yml", "sources.telemetry.max_bytes_per_trigger",
    ),
    "path does not exist": (
        lambda c: edit_conf(c / "base/sources/telemetry.yml", "path: null", "path: /nonexistent/landing/telemetry"),
        [], "base/sources/telemetry.yml", "sources.telemetry.path",
    ),
    "wrong type from --set": (
        lambda c: None,
        ["--set", "generator.fault_rate=lots"], "--set generator.fault_rate", "generator.fault_rate",
    ),
    "secret in a file": (
        lambda c: edit_conf(c / "test/lakehouse.yml", "streaming:\n", "storage:\n  token: abc123\nstreaming:\n"),
        [], "test/lakehouse.yml", "storage.token",
    ),
    "unknown environment": (lambda c: None, ["--env", "staging"], "staging", "--env"),
    "training on a table no flow writes": (
        lambda c: None, ["--set", "training.table=gold.predictions"], "--set training.table", "training.table",
    ),
    "a gold table named like the predictions": (
        lambda c: (c / "base/gold/predictions.yml").write_text("mode: batch\ninputs: [silver.telemetry]\nsql: SELECT 1\n"),
        [], "base/gold/predictions.yml", "gold.predictions",
    ),
    "entity key not a column": (
        lambda c: edit_conf(c / "base/entities/telemetry.yml", "keys: [event_id]", "keys: [event_uuid]"),
        [], "base/entities/telemetry.yml", "entities.telemetry.keys",
    ),
    "entity suite file missing": (
        lambda c: (c / "base/expectations/telemetry.json").unlink(),
        [], "base/entities/telemetry.yml", "entities.telemetry.suite",
    ),
    "entity reads an unknown source": (
        lambda c: edit_conf(c / "base/entities/telemetry.yml", "sources: [telemetry, telemetry_kafka]",
                        "sources: [telemetry, telemetri_kafka]"),
        [], "base/entities/telemetry.yml", "entities.telemetry.sources",
    ),
    "kafka source without topics": (
        lambda c: edit_conf(c / "base/sources/telemetry_kafka.yml", "topics: [telemetry]", "topics: []"),
        [], "base/sources/telemetry_kafka.yml", "sources.telemetry_kafka.kafka.topics",
    ),
    "kafka password in a file": (
        lambda c: edit_conf(c / "base/sources/telemetry_kafka.yml", "options: {}", "options: {sasl.password: hunter2}"),
        [], "base/sources/telemetry_kafka.yml", "sources.telemetry_kafka.kafka.options.sasl.password",
    ),
    "unknown policy in a suite": (
        lambda c: edit_conf(c / "base/expectations/telemetry.json", '"policy": "drop"', '"policy": "warning"'),
        [], "base/expectations/telemetry.json", "expectations[0].meta.policy",
    ),
    "expectation on an undeclared column": (
        lambda c: edit_conf(c / "base/expectations/telemetry.json", '{"column": "cpu_util", "min_value"',
                        '{"column": "cpu_utilisation", "min_value"'),
        [], "base/expectations/telemetry.json", ".kwargs.column",
    ),
    "expectation type nobody evaluates": (
        lambda c: edit_conf(c / "base/expectations/telemetry.json", '"type": "expect_column_values_to_not_be_null"',
                        '"type": "expect_column_values_to_be_frobnicated"'),
        [], "base/expectations/telemetry.json", "expectations[0].type",
    ),
    "NaN bound in a suite": (
        lambda c: edit_conf(c / "base/expectations/telemetry.json", '"min_value": 0, "max_value": 100',
                        '"min_value": NaN, "max_value": 100'),
        [], "base/expectations/telemetry.json", ".kwargs.min_value",
    ),
    "duration with an unknown unit": (
        lambda c: edit_conf(c / "base/entities/telemetry.yml", "watermark: 6 hours", "watermark: 1 fortnight"),
        [], "base/entities/telemetry.yml", "entities.telemetry.watermark",
    ),
    "duration from --set without a unit": (
        lambda c: None, ["--set", "streaming.trigger=10"], "--set streaming.trigger", "streaming.trigger",
    ),
    "NaN for a bounded number": (
        lambda c: None, ["--set", "training.min_quality_pass_rate=.nan"],
        "--set training.min_quality_pass_rate", "training.min_quality_pass_rate",
    ),
    "infinity for a bounded number": (
        lambda c: None, ["--set", "training.max_refused_fraction=-.inf"],
        "--set training.max_refused_fraction", "training.max_refused_fraction",
    ),
    "a cycle among gold tables": (
        lambda c: edit_conf(c / "base/gold/telemetry_minute.yml", "inputs: [silver.telemetry]",
                        "inputs: [gold.telemetry_features]"),
        [], "base/gold/telemetry_features.yml", "gold.telemetry_features.inputs",
    ),
    "spark credential in a file": (
        lambda c: edit_conf(c / "test/lakehouse.yml", "  conf:\n", "  conf:\n    spark.hadoop.fs.s3a.secret.key: abc\n"),
        [], "test/lakehouse.yml", "spark.conf.spark.hadoop.fs.s3a.secret.key",
    ),
    "azure account key from --set": (
        lambda c: None, ["--set", "spark.conf.fs.azure.account.key.acct.dfs.core.windows.net=abc"],
        "--set spark.conf.fs.azure.account.key.acct.dfs.core.windows.net",
        "spark.conf.fs.azure.account.key.acct.dfs.core.windows.net",
    ),
    "password in a tracking URI": (
        lambda c: edit_conf(c / "base/training.yml", "tracking_uri: null", "tracking_uri: https://bob:hunter2@mlflow.example"),
        [], "base/training.yml", "training.tracking_uri",
    ),
    "spark credential variable unset": (
        lambda c: edit_conf(c / "test/lakehouse.yml", "  conf:\n",
                        "  conf_env:\n    spark.hadoop.fs.s3a.secret.key: LAKEHOUSE_TEST_UNSET_VARIABLE\n  conf:\n"),
        [], "test/lakehouse.yml", "spark.conf_env.spark.hadoop.fs.s3a.secret.key",
    ),
    "both rate limits in --set options": (
        lambda c: None,
        ["--set", "sources.telemetry.max_files_per_trigger=20", "--set", "sources.telemetry.max_bytes_per_trigger=1000000"],
        "--set sources.telemetry.max_bytes_per_trigger", "sources.telemetry.max_bytes_per_trigger",
    ),
    "both rate limits in one file": (
        lambda c: edit_conf(c / "base/sources/telemetry.yml", "max_files_per_trigger: null", "max_files_per_trigger: 20"),
        [], "base/sources/telemetry.yml", "sources.telemetry.max_bytes_per_trigger",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_configuration_exits_2_with_one_line_and_creates_nothing(case, conf_copy, tmp_path, capsys):
    edit, extra, origin, key = BAD_CASES[case]
    edit(conf_copy)
    data_dir = tmp_path / "data"
    argv = ["--conf-dir", str(conf_copy), "--data-dir", str(data_dir)]
    argv += extra if "--env" in extra else ["--env", "test"] + extra
    code = main(argv + ["ingest", "--source", "telemetry", "--once"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert origin in err[0] and key in err[0], err[0]
    assert "hunter2" not in err[0] and "abc" not in err[0].split(": ", 2)[-1]
    if "credential in" in case or "key from --set" in case or "secret in" in case or "password in a file" in case:
        assert "_env" in err[0], err[0]  # the way to give it: an environment variable
    assert not data_dir.exists()


def test_a_bad_trigger_on_the_command_line_exits_2(tmp_path, capsys):
    data = tmp_path / "data"
    code = main(["--env", "test", "--data-dir", str(data), "ingest", "--source", "telemetry", "--trigger", "10 parsecs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--trigger" in err[0] and "d (day)" in err[0]
    assert not data.exists()


def test_duration_errors_list_the_units_and_days_are_accepted(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config("test", conf_dir=CONF_DIR, overrides=["entities.telemetry.max_future=1 fortnight"])
    assert "ms, s (sec, second), m (min, minute), h (hr, hour), d (day), w (week)" in err.value.message
    config = load_config("test", conf_dir=CONF_DIR, overrides=["entities.telemetry.max_future=2 days",
                                                                 "streaming.trigger=1.5h"])
    assert config.entity("telemetry").max_future == "2 days"


def test_unknown_source_is_a_configuration_error(config, capsys):
    code = main(["--env", "test", "--data-dir", str(config.storage.data_dir), "ingest", "--source", "nope", "--once"])
    assert code == 2
    assert "sources.nope" in capsys.readouterr().err
    assert not config.storage.data_dir.exists()


def test_global_options_after_the_command(tmp_path, capsys):
    code = main(["config", "--env", "prod", "--data-dir", str(tmp_path / "d"), "--set", "spark.app_name=x"])
    out = capsys.readouterr().out
    assert code == 0
    assert '"env": "prod"' in out and '"app_name": "x"' in out and str(tmp_path / "d") in out


def test_console_script_exits_2_on_bad_config(tmp_path):
    """The installed `lakehouse` command itself returns 2 (not just main())."""
    script = Path(sys.executable).parent / "lakehouse"
    result = subprocess.run(
        [str(script), "--conf-dir", str(CONF_DIR), "--env", "test", "--data-dir", str(tmp_path / "d"),
         "--set", "sources.telemetry.max_files_per_trigger=0", "ingest", "--source", "telemetry"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "sources.telemetry.max_files_per_trigger" in result.stderr
    assert not (tmp_path / "d").exists()


def test_config_error_names_origin_and_key():
    with pytest.raises(ConfigError) as err:
        load_config("test", conf_dir=CONF_DIR, overrides=["catalog.kind=hive"])
    assert err.value.key == "catalog.kind"
    assert err.value.origin == "--set catalog.kind"


def test_a_key_of_several_kinds_takes_each_and_names_them_all_when_none_fits(tmp_path):
    """streaming.state_partitions: a positive number, the word cores, or null."""
    def state_partitions(value):
        return load_config("test", conf_dir=CONF_DIR, data_dir=tmp_path,
                           overrides=[f"streaming.state_partitions={value}"]).streaming.state_partitions

    assert (state_partitions(3), state_partitions("cores"), state_partitions("null")) == (3, "cores", None)
    with pytest.raises(ConfigError) as refused:
        state_partitions("all")
    assert refused.value.key == "streaming.state_partitions"
    assert refused.value.message == "expected an integer, got str 'all'; or expected one of 'cores', got 'all'"
    with pytest.raises(ConfigError, match="must be at least 1, got 0; or expected one of 'cores'"):
        state_partitions(0)
