"""Configuration: overlays, overrides, and bad configuration failing fast (exit 2, one line, nothing created)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse.cli import main
from lakehouse.config import ConfigError, load_config
from tests.conftest import CONF_DIR


def test_every_environment_loads():
    envs = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "base")
    assert envs == ["dev", "prod", "test"]
    for env in envs:
        config = load_config(env, conf_dir=CONF_DIR)
        assert config.env == env
        assert "telemetry" in config.sources


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
    assert config.storage.data_dir == tmp_path
    assert config.landing_path("telemetry") == f"{tmp_path}/landing/telemetry"
    assert config.checkpoint_path("bronze_telemetry") == f"{tmp_path}/checkpoints/bronze_telemetry"


def test_prod_maps_to_unity_catalog():
    config = load_config("prod", conf_dir=CONF_DIR)
    assert config.catalog.kind == "unity"
    assert config.spark.master is None


@pytest.fixture
def conf_copy(tmp_path) -> Path:
    target = tmp_path / "conf"
    shutil.copytree(CONF_DIR, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


BAD_CASES = {
    # case: (edit to the copied conf, extra CLI args, expected file suffix, expected key)
    "missing key": (
        lambda c: _edit(c / "base/lakehouse.yml", "  app_name: lakehouse\n", ""),
        [], "base/lakehouse.yml", "spark.app_name",
    ),
    "unknown key": (
        lambda c: _edit(c / "test/lakehouse.yml", "  records: 2000", "  recods: 2000"),
        [], "test/lakehouse.yml", "generator.recods",
    ),
    "wrong type": (
        lambda c: _edit(c / "base/sources/telemetry.yml", "max_files_per_trigger: 20", "max_files_per_trigger: twenty"),
        [], "base/sources/telemetry.yml", "sources.telemetry.max_files_per_trigger",
    ),
    "path does not exist": (
        lambda c: _edit(c / "base/sources/telemetry.yml", "path: null", "path: /nonexistent/landing/telemetry"),
        [], "base/sources/telemetry.yml", "sources.telemetry.path",
    ),
    "wrong type from --set": (
        lambda c: None,
        ["--set", "generator.fault_rate=lots"], "--set generator.fault_rate", "generator.fault_rate",
    ),
    "secret in a file": (
        lambda c: _edit(c / "test/lakehouse.yml", "streaming:\n", "storage:\n  token: abc123\nstreaming:\n"),
        [], "test/lakehouse.yml", "storage.token",
    ),
    "unknown environment": (lambda c: None, ["--env", "staging"], "staging", "--env"),
    "entity key not a column": (
        lambda c: _edit(c / "base/entities/telemetry.yml", "keys: [event_id]", "keys: [event_uuid]"),
        [], "base/entities/telemetry.yml", "entities.telemetry.keys",
    ),
    "entity suite file missing": (
        lambda c: (c / "base/expectations/telemetry.json").unlink(),
        [], "base/entities/telemetry.yml", "entities.telemetry.suite",
    ),
    "entity reads an unknown source": (
        lambda c: _edit(c / "base/entities/telemetry.yml", "sources: [telemetry, telemetry_kafka]",
                        "sources: [telemetry, telemetri_kafka]"),
        [], "base/entities/telemetry.yml", "entities.telemetry.sources",
    ),
    "kafka source without topics": (
        lambda c: _edit(c / "base/sources/telemetry_kafka.yml", "topics: [telemetry]", "topics: []"),
        [], "base/sources/telemetry_kafka.yml", "sources.telemetry_kafka.kafka.topics",
    ),
    "kafka password in a file": (
        lambda c: _edit(c / "base/sources/telemetry_kafka.yml", "options: {}", "options: {sasl.password: hunter2}"),
        [], "base/sources/telemetry_kafka.yml", "sources.telemetry_kafka.kafka.options.sasl.password",
    ),
    "both rate limits": (
        lambda c: None,
        ["--set", "sources.telemetry.max_bytes_per_trigger=1000000"],
        "--set sources.telemetry.max_bytes_per_trigger", "sources.telemetry.max_bytes_per_trigger",
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
    assert not data_dir.exists()


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
