"""No secret is printed or logged: credential keys, URI user info, secret query values."""

from __future__ import annotations

import json
import logging

import pytest

from lakehouse.cli import error_summary, main
from lakehouse.redaction import (
    REDACTED,
    install_log_redaction,
    is_secret_key,
    redact_text,
    redact_tree,
)


@pytest.mark.parametrize("key", [
    "spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.access.key", "fs.s3a.session.token",
    "fs.azure.account.key.acct.dfs.core.windows.net", "fs.azure.sas.container.acct.blob.core.windows.net",
    "spark.ssl.keyPassword", "fs.gs.auth.service.account.private.key", "api_key", "password", "client_secret",
    "sasl.jaas.credentials",
])
def test_credential_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", [
    "spark.sql.shuffle.partitions", "fs.s3a.aws.credentials.provider", "fs.azure.sas.token.provider.type",
    "sasl_password_env", "sasl_mechanism", "max_tokens", "bootstrap_servers", "keys", "tokenizer",
])
def test_keys_that_are_not_credentials(key):
    assert not is_secret_key(key)


def test_text_loses_uri_user_info_and_secret_values():
    text = ("browse: mlflow ui --backend-store-uri https://bob:hunter2@mlflow.example/x?sig=s1g&x=1 "
            "fs.s3a.secret.key=AKIASECRET {'password': 'pw1'} \"token\": \"t0k\"")
    redacted = redact_text(text)
    for secret in ("bob", "hunter2", "s1g", "AKIASECRET", "pw1", "t0k"):
        assert secret not in redacted
    assert "https://*****@mlflow.example/x?sig=*****&x=1" in redacted
    # a container name in an Azure URI is not a credential
    assert redact_text("abfss://raw@acct.dfs.core.windows.net/landing") == "abfss://raw@acct.dfs.core.windows.net/landing"


def test_a_tree_loses_the_values_of_credential_keys():
    tree = {"spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": "abc", "spark.sql.shuffle.partitions": "2"}},
            "uri": "postgresql://u:p@db/x"}
    assert redact_tree(tree) == {"spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": REDACTED,
                                                    "spark.sql.shuffle.partitions": "2"}},
                                 "uri": "postgresql://*****@db/x"}


def test_config_prints_no_secret(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAKEHOUSE_TEST_S3_SECRET", "s3cr3t-value")
    code = main(["--env", "test", "--data-dir", str(tmp_path / "d"),
                 "--set", "spark.conf_env.spark.hadoop.fs.s3a.secret.key=LAKEHOUSE_TEST_S3_SECRET",
                 "--set", "storage.landing_dir=https://tok3n@landing.example/raw", "config"])
    out = capsys.readouterr().out
    assert code == 0
    assert "s3cr3t-value" not in out and "tok3n" not in out
    printed = json.loads(out)
    assert printed["spark"]["conf_env"] == {"spark.hadoop.fs.s3a.secret.key": "LAKEHOUSE_TEST_S3_SECRET"}
    assert printed["storage"]["landing_dir"] == "https://*****@landing.example/raw"


def test_error_messages_and_log_lines_are_redacted(caplog):
    error = RuntimeError("\n[PATH_NOT_FOUND] Path does not exist: s3a://AKIA:wJalrXUtnFEMI@bucket/x.")
    summary = error_summary(error)
    assert "wJalrXUtnFEMI" not in summary and "PATH_NOT_FOUND" in summary  # the first non-empty line
    install_log_redaction()
    with caplog.at_level(logging.INFO):
        logging.getLogger("mlflow.test").info("tracking at %s", "https://bob:hunter2@mlflow.example")
    assert "hunter2" not in caplog.text and "https://*****@mlflow.example" in caplog.text


def test_a_run_id_that_is_not_a_plain_name_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    code = main(["--env", "test", "--data-dir", str(data), "generate", "--run-id", "../../x", "--records", "10",
                 "--files", "1"])
    assert code == 2
    assert "--run-id" in capsys.readouterr().err
    assert not data.exists() and not list(tmp_path.rglob("*x-*.jsonl"))


def test_a_local_session_listens_on_the_loopback_and_batch_jobs_start_no_ui(monkeypatch):
    from lakehouse.config import load_config
    from lakehouse.session import LOOPBACK, session_settings

    monkeypatch.setenv("LAKEHOUSE_TEST_S3_SECRET", "s3cr3t-value")
    config = load_config("dev", overrides=["spark.conf_env.spark.hadoop.fs.s3a.secret.key=LAKEHOUSE_TEST_S3_SECRET"])
    batch, continuous = session_settings(config, ui=False), session_settings(config, ui=True)
    assert batch["spark.ui.enabled"] == "false" and continuous["spark.ui.enabled"] == "true"
    assert batch["spark.driver.bindAddress"] == batch["spark.driver.host"] == LOOPBACK
    assert batch["spark.hadoop.fs.s3a.secret.key"] == "s3cr3t-value"  # from the environment, at session start
    assert "spark.driver.bindAddress" not in session_settings(config, launched=True)  # the launcher's JVM
    configured = load_config("dev", overrides=["spark.conf.spark.ui.enabled=true",
                                               "spark.conf.spark.driver.bindAddress=0.0.0.0"])
    assert session_settings(configured)["spark.ui.enabled"].lower() == "true"  # configured: as configured
    assert session_settings(configured)["spark.driver.bindAddress"] == "0.0.0.0"
