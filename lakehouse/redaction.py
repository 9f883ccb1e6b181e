"""Keeping credentials out of everything the project prints, logs or records.

A *secret key* is a configuration key that names a credential: a secret, password, token, access
or secret key, account key, SAS, private key, API key or credential (``spark.hadoop.fs.s3a.secret.key``,
``fs.azure.account.key.<account>.dfs.core.windows.net``, ``spark.ssl.keyPassword``). Such keys
never take a value in configuration files or ``--set`` (lakehouse/config/convert.py refuses them and names
the ``_env`` way); their values come from the environment at run time, and every printed
configuration, error message, MLflow parameter and log line goes through :func:`redact_text` or
:func:`redact_tree` first. So does the user-info part of any URI (``https://user:pass@host``) and
a credential in a URI's query (``?sig=...``, ``?token=...``).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

REDACTED = "*****"

# Words (split at anything not a letter or digit, and at camelCase humps) that make a key secret,
# alone or as a pair of consecutive words.
_SECRET_WORDS = {"secret", "secrets", "password", "passwd", "passphrase", "token", "credential",
                 "credentials", "sas", "apikey", "secretkey", "accesskey", "privatekey", "jaas"}
_SECRET_PAIRS = {("access", "key"), ("secret", "key"), ("account", "key"), ("private", "key"),
                 ("api", "key"), ("client", "secret"), ("session", "token"), ("sas", "token"),
                 ("keystore", "key"), ("key", "pem"), ("encryption", "key"), ("oauthbearer", "config")}
# A key ending in one of these describes how credentials are found or handled, not a credential:
# fs.s3a.aws.credentials.provider, fs.azure.sas.token.provider.type, sasl_password_env,
# spark.security.credentials.renewalRatio, fs.s3a.delegation.token.binding.
_NOT_SECRET_TAILS = {"env", "provider", "providers", "type", "class", "mechanism", "location", "path",
                     "file", "enabled", "endpoint", "url", "uri", "name", "id", "renewal", "binding", "ratio",
                     "wait", "period", "streams", "scope", "timeout", "interval", "size", "length", "algorithm",
                     "format", "mode"}
# Words after which a secret word names a mechanism, not a value: a delegation token is issued at
# run time (fs.azure.enable.delegation.token: true), renewal credentials are a method's name.
_NOT_SECRET_AFTER = {("delegation", "token"), ("renewal", "credentials")}


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [word.lower() for word in re.split(r"[^A-Za-z0-9]+", spaced) if word]


def is_secret_key(key: str) -> bool:
    """Whether ``key`` (a config key, Spark conf name or option) names a credential."""
    words = _words(str(key))
    if not words or words[-1] in _NOT_SECRET_TAILS:
        return False
    pairs = list(zip(words, words[1:], strict=False))
    exempt = {i + 1 for i, pair in enumerate(pairs) if pair in _NOT_SECRET_AFTER}
    if any(word in _SECRET_WORDS and i not in exempt for i, word in enumerate(words)):
        return True
    return any(pair in _SECRET_PAIRS for pair in pairs)


# A Databricks secret reference, resolved by the cluster: it names a secret, it is not one.
SECRET_REFERENCE = re.compile(r"^\{\{secrets/[^/{}]+/[^/{}]+\}\}$")


# scheme://user[:password]@host -- the user info, up to the last '@' of the URI (a pasted secret
# key may hold '/' or '+', unencoded).
_URI_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s'\"]*)@")
# key=value where the key is secret (URI query parameters such as sig= or token=, Java and Hadoop
# messages), and 'key': value as a Python or JSON mapping prints it.
_ASSIGNMENT = re.compile(
    r"(?P<q>[\"']?)(?P<key>[A-Za-z][A-Za-z0-9_.\-]*)(?P=q)(?P<sep>\s*=\s*|\s*->\s*|(?<=[\"'])\s*:\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s&;,'\"}\])]+)"
)
_QUERY_SECRETS = {"sig", "signature", "token", "access_token", "password", "pwd", "secret", "key", "apikey",
                  "api_key"}


# Azure storage URIs name a container where user info would be (abfss://container@account...).
_CONTAINER_SCHEMES = ("abfs://", "abfss://", "wasb://", "wasbs://")


def redact_uri(text: str) -> str:
    """``scheme://user:password@host/...`` -> ``scheme://*****@host/...`` (any user info but an
    Azure container name)."""
    def userinfo(match: re.Match) -> str:
        scheme = match.group("scheme")
        if scheme.lower() in _CONTAINER_SCHEMES and ":" not in match.group("userinfo"):
            return match.group(0)
        return f"{scheme}{REDACTED}@"

    return _URI_USERINFO.sub(userinfo, text)


def redact_text(text: str) -> str:
    """A message or log line with user info in URIs and values of secret keys replaced."""
    if not text:
        return text
    text = redact_uri(str(text))

    def assignment(match: re.Match) -> str:
        key = match.group("key")
        if is_secret_key(key) or key.lower() in _QUERY_SECRETS:
            quote = match.group("q")
            return f"{quote}{key}{quote}{match.group('sep')}{REDACTED}"
        return match.group(0)

    return _ASSIGNMENT.sub(assignment, text)


def redact_tree(value: Any, key: str = "", names_variables: bool = False) -> Any:
    """A copy of a configuration tree (dicts, lists, values) safe to print: the value of every
    secret key is replaced (but in maps such as ``spark.conf_env``, whose values name environment
    variables), and every string loses URI user info and secret query values."""
    if isinstance(value, dict):
        return {k: redact_tree(v, str(k), str(key).endswith("_env")) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v, key, names_variables) for v in value]
    if value is not None and key and is_secret_key(key) and not names_variables:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    return value


def install_log_redaction() -> None:
    """Redact every log record of this process as it is made (the project's, MLflow's, py4j's,
    GX's), whichever logger or handler writes it: the CLI calls this before any job starts."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "redacting", False):
        return

    def redacting_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: logging reports it when it formats
            return record
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info:  # the traceback too, formatted once here
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return record

    redacting_record.redacting = True
    logging.setLogRecordFactory(redacting_record)
    show_exception = sys.excepthook

    def redacting_excepthook(kind, value, traceback) -> None:  # an uncaught error's traceback
        import traceback as tb

        sys.stderr.write(redact_text("".join(tb.format_exception(kind, value, traceback))))

    if show_exception is sys.__excepthook__:
        sys.excepthook = redacting_excepthook


# Spark redacts the values of matching conf keys in its UI, event logs and its own log lines.
# Its default, (?i)secret|password|token|access[.]key, misses account keys, SAS and private keys.
SPARK_REDACTION_REGEX = (r"(?i)secret|password|passwd|token|credential|access[.]?key|account[.]key|private[.]?key"
                         r"|api[.]?key|[.]sas[.]")


def error_summary(exc: BaseException, lines: int = 1) -> str:
    """The first ``lines`` non-empty lines of an error's message, redacted (a Spark message may
    start with a blank line: its first line alone can be empty)."""
    text = [line.rstrip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return redact_text("\n".join(text[:lines]))
