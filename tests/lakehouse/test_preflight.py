"""Configuration Spark must check (gold SQL, Java regexes, silver's column types): exit 2 with one
line naming the file and the key, before the job creates any table, checkpoint or directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse.cli import main
from lakehouse.config import load_config
from tests.conftest import edit_conf
from tests.faults import land, lines, reading

pytestmark = pytest.mark.slow


def _run(conf: Path, data: Path, *command: str, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["--conf-dir", str(conf), "--env", "test", "--data-dir", str(data), *command])
    return code, capsys.readouterr().err.strip().splitlines()


CASES = {
    "gold SQL that does not parse": (
        lambda c: edit_conf(c / "base/gold/telemetry_minute.yml", "SELECT host,", "SELEC host,"),
        ["gold", "--table", "telemetry_minute", "--once"], "base/gold/telemetry_minute.yml",
        "gold.telemetry_minute.sql", "does not parse",
    ),
    "gold SQL reading a table it does not declare": (
        lambda c: edit_conf(c / "base/gold/telemetry_minute.yml", "FROM silver_telemetry",
                        "FROM silver_telemetry JOIN silver_telemetry_quarantine USING (event_id)"),
        ["gold", "--table", "telemetry_minute", "--once"], "base/gold/telemetry_minute.yml",
        "gold.telemetry_minute.sql", "silver_telemetry_quarantine",
    ),
    "a suite regex Java cannot compile": (
        lambda c: edit_conf(c / "base/expectations/telemetry.json",
                        '{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "host"}, '
                        '"meta": {"policy": "drop"}}',
                        '{"type": "expect_column_values_to_match_regex", "kwargs": {"column": "host", "regex": "^dc[0-9"}, '
                        '"meta": {"policy": "drop"}}'),
        ["refine", "--entity", "telemetry", "--once"], "base/expectations/telemetry.json",
        "expectations[1].kwargs.regex", "Java regular expression",
    ),
    "a text mask Java cannot compile": (
        lambda c: edit_conf(c / "scenarios/chat/entities/chat.yml", "EMAIL: '(?<!", "EMAIL: '((?<!"),
        ["--scenario", "chat", "refine", "--entity", "chat", "--once"], "scenarios/chat/entities/chat.yml",
        "entities.chat.text.mask.EMAIL", "Java regular expression",
    ),
    "a derived column that does not parse": (
        lambda c: edit_conf(c / "scenarios/chat/entities/chat.yml", "sql: char_length(text)", "sql: char_length(text"),
        ["--scenario", "chat", "refine", "--entity", "chat", "--once"], "scenarios/chat/entities/chat.yml",
        "entities.chat.derived.text_chars.sql", "does not parse",
    ),
    "a transform option the function does not take": (
        lambda c: edit_conf(c / "scenarios/chat/gold/chat_tokens.yml", "seq_len: 256", "seq_length: 256"),
        ["--scenario", "chat", "gold", "--table", "chat_tokens", "--once"], "scenarios/chat/gold/chat_tokens.yml",
        "gold.chat_tokens.options", "seq_length",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_spark_checks_fail_before_anything_is_created(spark, case, conf_copy, tmp_path, capsys):
    edit, command, origin, key, words = CASES[case]
    edit(conf_copy)
    data = tmp_path / "data"
    code, err = _run(conf_copy, data, *command, capsys=capsys)
    assert code == 2, err
    errors = [line for line in err if not line.startswith("starting Spark")]  # that one is progress
    assert len(errors) == 1, err
    assert origin in errors[0] and key in errors[0] and words in errors[0], errors[0]
    assert not data.exists()


def test_the_console_script_leaves_no_data_dir_behind(conf_copy, tmp_path):
    """In a job of its own (its session starts here): the data directory is not even created."""
    edit_conf(conf_copy / "base/gold/telemetry_minute.yml", "FROM silver_telemetry", "FROM silver_telemetri")
    data = tmp_path / "data"
    result = subprocess.run([str(Path(sys.executable).parent / "lakehouse"), "--conf-dir", str(conf_copy), "--env",
                             "test", "--data-dir", str(data), "gold", "--table", "telemetry_minute", "--once"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "gold.telemetry_minute.sql" in result.stderr and "silver_telemetri" in result.stderr
    assert not data.exists()


def test_a_column_type_changed_under_silver_is_refused_before_any_write(spark, conf_copy, tmp_path, capsys):
    data = tmp_path / "data"
    config = load_config("test", conf_dir=conf_copy, data_dir=data)
    land(config, "a.jsonl", lines(reading(1), reading(2)))
    assert _run(conf_copy, data, "ingest", "--source", "telemetry", "--once", capsys=capsys)[0] == 0
    assert _run(conf_copy, data, "refine", "--entity", "telemetry", "--once", capsys=capsys)[0] == 0
    edit_conf(conf_copy / "base/entities/telemetry.yml", "  fan_rpm: double", "  fan_rpm: string")
    land(config, "b.jsonl", lines(reading(3)))
    before = sorted(str(p) for p in data.rglob("*"))
    code, err = _run(conf_copy, data, "refine", "--entity", "telemetry", "--once", capsys=capsys)
    assert code == 2
    assert "base/entities/telemetry.yml" in err[-1] and "entities.telemetry.columns.fan_rpm" in err[-1]
    assert "holds it as double" in err[-1]
    assert sorted(str(p) for p in data.rglob("*")) == before  # no checkpoint, plan or commit written
