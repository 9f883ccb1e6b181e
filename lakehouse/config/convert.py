"""Merged YAML to typed configuration: the overlay tree that remembers where each value came from,
and the converter that checks it against the dataclasses of lakehouse/config/schema.py.

Why not pydantic (installed through GX and MLflow): every error here names the file (or option)
that set the offending key, after overlays and ``--set`` merged several files into one tree, and
says what was expected in one line. With pydantic the origin of each error's location would
still need this tree, and its messages ("Input should be a valid integer ...") rewriting to keep
the CLI's one-line errors; the converter below handles exactly the types the schema uses.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml

from lakehouse.config.schema import LakehouseConfig
from lakehouse.config.values import URI_SCHEME, URI_WITH_PASSWORD, MustExist, Pattern, Range
from lakehouse.errors import ConfigError
from lakehouse.redaction import SECRET_REFERENCE, is_secret_key


def split_key(dotted: str) -> list[str]:
    """Split ``--set`` keys by the schema, so map keys may contain dots.

    ``spark.conf.spark.sql.shuffle.partitions`` is ``["spark", "conf", "spark.sql.shuffle.partitions"]``
    because ``spark.conf`` is a map of plain values.
    """
    parts = dotted.split(".")
    hint: Any = LakehouseConfig
    result: list[str] = []
    i = 0
    while i < len(parts):
        if get_origin(hint) is Annotated:
            hint = get_args(hint)[0]
        if get_origin(hint) in (Union, types.UnionType):
            hint = next(a for a in get_args(hint) if a is not type(None))
            continue
        if dataclasses.is_dataclass(hint):
            hints = typing.get_type_hints(hint, include_extras=True)
            result.append(parts[i])
            hint = hints.get(parts[i], Any)
            i += 1
        elif get_origin(hint) is dict:
            value_type = get_args(hint)[1]
            if get_origin(value_type) is Annotated:
                value_type = get_args(value_type)[0]
            if dataclasses.is_dataclass(value_type):
                result.append(parts[i])
                hint = value_type
                i += 1
            else:
                result.append(".".join(parts[i:]))
                break
        else:
            result.extend(parts[i:])
            break
    return result


# Settings of a source of which only one applies (its rate limit): a layer (conf/base, conf/<env>,
# the --set options together) that gives one a value clears the other where an earlier layer set
# it, so overriding the default limit of one kind does not also need the other nulled. One layer
# setting both is refused by the schema.
ALTERNATIVES = {"max_files_per_trigger": "max_bytes_per_trigger", "max_bytes_per_trigger": "max_files_per_trigger"}


class Tree:
    """Merged YAML values plus, for every key path, the file (or option) that set it."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origins: dict[tuple[str, ...], str] = {}
        self.layer = ""  # the layer being merged (see ALTERNATIVES)
        self.layers: dict[tuple[str, ...], str] = {}  # key path -> the layer that set it
        # Top-level sections later files may not create, only tune (see :meth:`close_absent`).
        self.absent: set[str] = set()

    def merge_file(self, path: Path, prefix: list[str]) -> None:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else "(file)"
            raise ConfigError(str(path), where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if data is None:
            return
        if not isinstance(data, dict):
            raise ConfigError(str(path), ".".join(prefix) or "(root)", "expected a mapping")
        if prefix and prefix[0] in self.absent:
            return
        if not prefix:
            data = {key: value for key, value in data.items() if key not in self.absent}
        self._merge(prefix, data, str(path))

    def _merge(self, path: list[str], data: dict, origin: str) -> None:
        for key, value in data.items():
            key_path = path + [str(key)]
            if isinstance(value, dict):
                _refuse_secret(key_path, value, origin)
                self._ensure_mapping(key_path, origin)
                self._merge(key_path, value, origin)
            else:
                self.set(key_path, value, origin)

    def _ensure_mapping(self, key_path: list[str], origin: str) -> None:
        node = self.values
        for i, part in enumerate(key_path):
            child = node.get(part)
            if not isinstance(child, dict):
                if child is not None:
                    raise ConfigError(
                        origin, ".".join(key_path[: i + 1]), "expected a mapping, got a value"
                    )
                node[part] = child = {}
                self.origins.setdefault(tuple(key_path[: i + 1]), origin)
            node = child

    def set(self, key_path: list[str], value: Any, origin: str) -> None:
        _refuse_secret(key_path, value, origin)
        if len(key_path) > 1:
            self._ensure_mapping(key_path[:-1], origin)
        node = self.values
        for part in key_path[:-1]:
            node = node[part]
        node[key_path[-1]] = value
        self.origins[tuple(key_path)] = origin
        self.layers[tuple(key_path)] = self.layer
        other = ALTERNATIVES.get(key_path[-1]) if len(key_path) == 3 and key_path[0] == "sources" else None
        sibling = (*key_path[:-1], other)
        if value is not None and other and node.get(other) is not None and self.layers.get(sibling) != self.layer:
            node[other] = None  # an earlier layer's alternative gives way
            self.origins[sibling] = origin
            self.layers[sibling] = self.layer

    def replace(self, keys: typing.Iterable[str]) -> None:
        """Forget what earlier layers set under these top-level keys (a scenario's layer)."""
        for key in keys:
            self.values.pop(key, None)
            for table in (self.origins, self.layers):
                for path in [path for path in table if path[0] == key]:
                    del table[path]

    def close_absent(self, keys: typing.Iterable[str]) -> None:
        """Of ``keys``, those no layer has set so far are left out of the files merged from now on
        (a scenario without training: the env's training settings tune nothing)."""
        self.absent = {key for key in keys if key not in self.values}

    def origin(self, key_path: tuple[str, ...], fallback: str) -> str:
        while key_path:
            if key_path in self.origins:
                return self.origins[key_path]
            key_path = key_path[:-1]
        return fallback


# Maps whose keys are other systems' settings, and the map that names the variable for each.
_ENV_MAPS = {("spark", "conf"): "spark.conf_env", ("kafka", "options"): "kafka.options_env",
             ("kafka", "librdkafka_options"): "kafka.librdkafka_options_env"}


def _names_a_thing(key_path: list[str]) -> bool:
    """A key that is a name the user chose, not a setting: a source, entity or gold table, a column."""
    return ((len(key_path) == 2 and key_path[0] in ("sources", "entities", "gold"))
            or (len(key_path) == 4 and key_path[0] == "entities" and key_path[2] == "columns"))


def _refuse_secret(key_path: list[str], value: Any, origin: str) -> None:
    """A credential never takes its value from a file or --set: name the environment variable."""
    key = key_path[-1]
    if isinstance(value, dict):  # a section under a credential's name, or --set a.b={x: 1}
        for inner_key, inner in value.items():
            _refuse_secret(key_path + [str(inner_key)], inner, origin)
        if not value:
            return
    if value is None or not is_secret_key(key) or _names_a_thing(key_path):
        return
    if (len(key_path) > 1 and key_path[-2].endswith("_env")) or SECRET_REFERENCE.match(str(value)):
        return  # the value names a variable (spark.conf_env), or a Databricks secret ({{secrets/scope/key}})
    parent = tuple(key_path[-3:-1])
    if parent in _ENV_MAPS or tuple(key_path[:2]) == ("spark", "conf"):
        where = _ENV_MAPS.get(parent, "spark.conf_env")
        hint = f"set {where}.{key} to the name of an environment variable that holds it"
    else:
        hint = f"set '{key}_env' to the name of an environment variable that holds it"
    raise ConfigError(origin, ".".join(key_path), f"{key} is a credential, read from the environment only: {hint}")


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) or "(root)"


def _type_name(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def convert(value: Any, hint: Any, path: tuple[str, ...], tree: Tree, fallback: str) -> Any:
    """Check ``value`` against the type ``hint`` and build the typed value."""
    constraints: tuple = ()
    if get_origin(hint) is Annotated:
        hint, *extra = get_args(hint)
        constraints = tuple(extra)
    fail = _failing(path, tree, fallback)
    if get_origin(hint) in (Union, types.UnionType):
        options = get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            fail("must not be empty")
        non_none = [opt for opt in options if opt is not type(None)]
        if len(non_none) == 1:
            return convert(value, non_none[0], path, tree, fallback)
        refused = []  # several kinds (a number or a word, say): the first that takes the value
        for option in non_none:
            try:
                return convert(value, option, path, tree, fallback)
            except ConfigError as exc:
                refused.append(exc.message)
        fail("; or ".join(refused))
    if hint is Any:  # free-form (a gold transform's options): plain YAML values, taken as they are
        return value
    if value is None:
        fail("missing a value")
    if dataclasses.is_dataclass(hint):
        result = _convert_dataclass(value, hint, path, tree, fallback)
    elif get_origin(hint) is dict:
        key_type, value_type = get_args(hint)
        if not isinstance(value, dict):
            fail(f"expected a mapping, got {_type_name(value)}")
        result = {convert(str(k), key_type, path + (str(k),), tree, fallback):
                  convert(v, value_type, path + (str(k),), tree, fallback) for k, v in value.items()}
    elif get_origin(hint) is list:
        (item_type,) = get_args(hint)
        if not isinstance(value, list):
            fail(f"expected a list, got {_type_name(value)}")
        result = [convert(v, item_type, path + (str(i),), tree, fallback) for i, v in enumerate(value)]
    else:
        result = _convert_scalar(value, hint, path, fail)
    _check_constraints(result, constraints, fail)
    return result


def _failing(path: tuple[str, ...], tree: Tree, fallback: str) -> typing.Callable[[str], typing.NoReturn]:
    """A function raising ConfigError for ``path``, located in the file that set it."""
    def fail(message: str) -> typing.NoReturn:
        raise ConfigError(tree.origin(path, fallback), _dotted(path), message)
    return fail


def _convert_dataclass(value: Any, hint: type, path: tuple[str, ...], tree: Tree, fallback: str) -> Any:
    """A mapping into the dataclass ``hint``: unknown keys named (with a close match), required
    keys present, then the dataclass's own ``problems()``."""
    if not isinstance(value, dict):
        _failing(path, tree, fallback)(f"expected a mapping, got {_type_name(value)}")
    fields = {f.name: f for f in dataclasses.fields(hint)}
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint_text = f" (did you mean '{close[0]}'?)" if close else ""
            _failing(path + (str(key),), tree, fallback)(f"unknown key{hint_text}")
    kwargs = {}
    hints = typing.get_type_hints(hint, include_extras=True)
    for name, spec in fields.items():
        if name in value:
            kwargs[name] = convert(value[name], hints[name], path + (name,), tree, fallback)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(tree.origin(path, fallback), _dotted(path + (name,)), "missing required key")
    result = hint(**kwargs)
    for name, message in getattr(result, "problems", lambda: [])():
        # name: a field, or "<map field>.<key>" (map keys may hold dots themselves)
        raise ConfigError(tree.origin(path + tuple(name.split(".", 1)), fallback), _dotted(path + (name,)), message)
    return result


def _convert_scalar(value: Any, hint: Any, path: tuple[str, ...], fail) -> Any:
    """A literal, bool, int, float, str or Path, strictly (YAML's true is not an int)."""
    if get_origin(hint) is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            fail(f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            fail(f"expected true or false, got {_type_name(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"expected an integer, got {_type_name(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(f"expected a number, got {_type_name(value)}")
        if not math.isfinite(value):  # YAML's .nan and .inf: a NaN bound compares false, turning checks off
            fail(f"expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)):
            fail(f"expected a string, got {_type_name(value)}")
        result = str(value)  # YAML may read 4.1 or true where a string was meant
        if URI_WITH_PASSWORD.match(result):
            fail("a URI with a password in it: keep credentials out of configuration (for MLflow: "
                 "$MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD)")
        return result
    if hint is Path:
        if not isinstance(value, str) or not value:
            fail(f"expected a path, got {_type_name(value)}")
        return Path(value)
    raise TypeError(f"unsupported config type {hint!r} at {_dotted(path)}")  # a programming error in the schema


def _check_constraints(result: Any, constraints: tuple, fail) -> None:
    for constraint in constraints:
        if isinstance(constraint, Pattern) and not re.match(constraint.regex, str(result)):
            fail(f"expected {constraint.description}" + (f", got {result!r}" if constraint.echo else ""))
        if isinstance(constraint, Range):
            if constraint.low is not None and result < constraint.low:
                fail(f"must be at least {constraint.low:g}, got {result!r}")
            if constraint.high is not None and result > constraint.high:
                fail(f"must be at most {constraint.high:g}, got {result!r}")
        if isinstance(constraint, MustExist) and not URI_SCHEME.match(str(result)):
            if not Path(result).exists():
                fail(f"path does not exist: {result}")
