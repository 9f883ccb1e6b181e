"""Value types of the configuration: constraints attached with typing.Annotated, and durations.

The converter (lakehouse/config/convert.py) checks each constraint when it builds the typed
configuration; :func:`spark_interval` gives Spark a duration in the syntax it takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from lakehouse.errors import ConfigError


@dataclass(frozen=True)
class MustExist:
    """A local path that must already exist (URIs such as ``s3a://`` are not checked)."""


@dataclass(frozen=True)
class Pattern:
    regex: str
    description: str
    echo: bool = True  # False: an error does not repeat the value (it may be a pasted secret)


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None


IDENTIFIER = Pattern(r"^[a-z][a-z0-9_]{0,62}$", "a lower-case identifier ([a-z][a-z0-9_]*)")

# Durations: a number and a unit (each unit also with a plural s). Spark is given the same span
# in its own syntax (spark_interval), so every form accepted here is one Spark takes.
_UNIT_SECONDS = {"ms": 0.001, "millisecond": 0.001, "s": 1, "sec": 1, "second": 1, "m": 60, "min": 60,
                 "minute": 60, "h": 3600, "hr": 3600, "hour": 3600, "d": 86400, "day": 86400,
                 "w": 604800, "week": 604800}
DURATION_UNITS = "ms, s (sec, second), m (min, minute), h (hr, hour), d (day), w (week)"
DURATION = Pattern(
    r"^\d+(\.\d+)?\s*(" + "|".join(sorted(_UNIT_SECONDS, key=len, reverse=True)) + r")s?$",
    f"a duration: a number and one of the units {DURATION_UNITS}, e.g. '10s', '1.5h' or '2 days'",
)


def duration_seconds(text: str) -> float:
    """Seconds in a DURATION ('10s', '500ms', '1.5h', '2 days')."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text.strip().lower())
    unit = match.group(2) if match else ""
    if unit not in _UNIT_SECONDS and unit.endswith("s"):  # plurals: "seconds", "mins", "days"
        unit = unit[:-1]
    if unit not in _UNIT_SECONDS:
        raise ValueError(f"not a duration: {text!r} (units: {DURATION_UNITS})")
    return float(match.group(1)) * _UNIT_SECONDS[unit]


def check_duration(option: str, text: str) -> None:
    """A DURATION given on the command line (``--trigger``); ConfigError naming the option if not."""
    if not re.match(DURATION.regex, text.strip()):
        raise ConfigError(option, option.lstrip("-"), f"expected {DURATION.description}, got {text!r}")


def spark_interval(text: str) -> str:
    """A DURATION in the interval syntax Spark's triggers and watermarks take: '1.5h' -> '5400000
    milliseconds' (Spark itself refuses '1 min', '1.5h' and fractions)."""
    micros = round(duration_seconds(text) * 1_000_000)
    return f"{micros // 1000} milliseconds" if micros % 1000 == 0 else f"{micros} microseconds"


Identifier = Annotated[str, IDENTIFIER]
Duration = Annotated[str, DURATION]
PositiveInt = Annotated[int, Range(low=1)]
TableName = Annotated[str, Pattern(r"^(bronze|silver|gold|ops)\.[a-z][a-z0-9_]{0,62}$",
                                   "a table name such as silver.telemetry")]
ImportName = Annotated[str, Pattern(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", "package.module:function")]  # code to load

URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# A password in a URI's user info (scheme://user:password@host).
URI_WITH_PASSWORD = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^@\s]*:[^@\s]*@")  # up to the last '@'

ENV_VAR = Pattern(r"^[A-Za-z_][A-Za-z0-9_]*$", "an environment variable name", echo=False)


def load_import_name(name: str):
    """The object an ImportName names ("package.module:attribute"); ImportError or AttributeError
    when it cannot be loaded. The callers say which configuration key named it."""
    import importlib

    module_name, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
