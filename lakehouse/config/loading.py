"""Typed configuration: ``conf/base/`` overlaid by ``conf/scenarios/<scenario>/`` (when one is
chosen), then ``conf/<env>/``, then command-line overrides.

Every ``*.yml`` file directly in a layer directory is merged at the root; a file in a
sub-directory is merged under the key named by its path, so ``conf/base/sources/telemetry.yml``
holds the mapping found at ``sources.telemetry``. Later layers override earlier ones key by key.

The merged tree is converted once into the frozen dataclasses of lakehouse/config/schema.py. Any problem (unknown key,
missing key, wrong type, a path that must exist and does not) raises :class:`ConfigError`, which
names the file that set (or should have set) the key; the CLI prints it on one line and exits 2.
A scenario (``--scenario chat``) is another set of feeds and tables on the same platform: its
layer replaces the base's :data:`SCENARIO_KEYS` whole (what it does not set is empty: the chat
scenario runs no telemetry flow); everything else overlays key by key as an env does.
Loading has no side effects: nothing is created on disk until a valid configuration exists.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path

import yaml

from lakehouse.config.convert import Tree, convert, split_key
from lakehouse.config.schema import LAYERS, LakehouseConfig
from lakehouse.errors import ConfigError
from lakehouse.fs import canonical
from lakehouse.graph import CycleError, inputs_first
from lakehouse.suites import read_suite_file, suite_problems

CONF_DIR_ENV = "LAKEHOUSE_CONF_DIR"
ENV_ENV = "LAKEHOUSE_ENV"
DEFAULT_ENV = "dev"
SCENARIO_ENV = "LAKEHOUSE_SCENARIO"
DEFAULT_SCENARIO = "telemetry"  # the base configuration alone
# What a scenario's layer replaces rather than overlays (lakehouse/config/schema.py's sections).
SCENARIO_KEYS = ("sources", "entities", "gold", "training")
NOT_ENVS = ("base", "scenarios")  # directories of conf/ that are not an --env


def default_conf_dir() -> Path:
    """``$LAKEHOUSE_CONF_DIR``, else ``./conf``, else the ``conf/`` beside this package's checkout."""
    if os.environ.get(CONF_DIR_ENV):
        return Path(os.environ[CONF_DIR_ENV])
    if Path("conf/base").is_dir():
        return Path("conf")
    return Path(__file__).resolve().parents[2] / "conf"


def load_config(
    env: str | None = None,
    conf_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    scenario: str | None = None,
) -> LakehouseConfig:
    """Load ``conf_dir/base`` + ``conf_dir/scenarios/<scenario>`` + ``conf_dir/<env>`` +
    ``--data-dir`` + ``--set`` overrides."""
    env = env or os.environ.get(ENV_ENV) or DEFAULT_ENV
    scenario = scenario or os.environ.get(SCENARIO_ENV) or DEFAULT_SCENARIO
    conf_path = Path(conf_dir) if conf_dir is not None else default_conf_dir()
    base, env_dir = _layer_dirs(conf_path, env)
    scenario_dir = _scenario_dir(conf_path, scenario)
    tree = Tree()
    for layer in (base, scenario_dir, env_dir):
        if layer is None:
            continue
        tree.layer = str(layer)
        if layer == scenario_dir:
            tree.replace(SCENARIO_KEYS)
        if layer == env_dir and scenario_dir is not None:
            tree.close_absent(SCENARIO_KEYS)  # the env tunes the scenario's sections, adds none
        for path in _layer_files(layer):
            tree.merge_file(path, _key_prefix(layer, path))
    if data_dir is not None:
        tree.set(["storage", "data_dir"], str(data_dir), "--data-dir")
    tree.layer = "--set"
    for item in overrides:
        _apply_override(tree, item)
    values = dict(tree.values)
    values["env"] = env
    values["scenario"] = scenario
    values["conf_dir"] = str(conf_path)
    tree.origins[("env",)] = "--env"
    tree.origins[("scenario",)] = "--scenario"
    tree.origins[("conf_dir",)] = "--conf-dir"
    config = convert(values, LakehouseConfig, (), tree, str(base))
    _check_entities(config, tree, str(base))
    _check_gold(config, tree, str(base))
    _check_training(config, tree, str(base))
    _check_archives(config, tree, str(base))
    missing_layers = [layer for layer in LAYERS if layer not in config.catalog.schemas]
    if missing_layers:
        raise ConfigError(tree.origin(("catalog", "schemas"), str(base)), "catalog.schemas",
                          f"missing a schema for {', '.join(missing_layers)}")
    return config


def _layer_dirs(conf_path: Path, env: str) -> tuple[Path, Path]:
    """``conf/base`` and ``conf/<env>``, both of which must exist."""
    if not conf_path.is_dir():
        raise ConfigError(str(conf_path), "--conf-dir", "directory does not exist")
    base = conf_path / "base"
    if not base.is_dir():
        raise ConfigError(str(base), "base", "the base configuration directory is missing")
    env_dir = conf_path / env
    if not env_dir.is_dir() or env in NOT_ENVS:
        envs = sorted(p.name for p in conf_path.iterdir() if p.is_dir() and p.name not in NOT_ENVS)
        raise ConfigError(str(env_dir), "--env", f"no such environment '{env}' (have: {', '.join(envs)})")
    return base, env_dir


def _scenario_dir(conf_path: Path, scenario: str) -> Path | None:
    """``conf/scenarios/<scenario>`` (None for the default scenario, which is the base alone)."""
    if scenario == DEFAULT_SCENARIO:
        return None
    root = conf_path / "scenarios"
    layer = root / scenario
    if "/" in scenario or scenario.startswith(".") or not layer.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise ConfigError(str(layer), "--scenario",
                          f"no such scenario '{scenario}' (have: {', '.join([DEFAULT_SCENARIO, *have])})")
    return layer


def _layer_files(layer: Path) -> list[Path]:
    return sorted(layer.rglob("*.yml")) + sorted(layer.rglob("*.yaml"))


def _key_prefix(layer: Path, path: Path) -> list[str]:
    """Where a file's mapping goes: ``sources/telemetry.yml`` -> ``sources.telemetry``; a file
    directly in the layer -> the root."""
    prefix = list(path.relative_to(layer).parent.parts)
    if path.parent != layer:
        prefix.append(path.stem)
    return prefix


def _apply_override(tree: Tree, item: str) -> None:
    """One ``--set key.path=value``: the value is read as YAML, else taken as it is."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", item, "expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:  # not YAML ({{secrets/scope/key}}, a: b: c): the text as it is
        value = raw
    tree.set(split_key(key.strip()), value, f"--set {key.strip()}")


def _check_entities(config: LakehouseConfig, tree: Tree, base: str) -> None:
    """Each entity reads configured sources and has a suite file that fits its columns."""
    for name, entity in config.entities.items():
        for source in entity.sources:
            if source not in config.sources:
                raise ConfigError(tree.origin(("entities", name, "sources"), base),
                                  f"entities.{name}.sources", f"no such source '{source}'")
        suite = config.suite_path(entity.suite)
        if not suite.is_file():
            raise ConfigError(tree.origin(("entities", name, "suite"), base), f"entities.{name}.suite",
                              f"no suite file {suite}")
        try:
            problems = suite_problems(read_suite_file(suite), {*entity.columns, *entity.prepared_columns})
        except ValueError as exc:
            raise ConfigError(str(suite), "(file)", str(exc)) from None
        for key, message in problems[:1]:
            raise ConfigError(str(suite), key, f"{message} (suite of entity {name})")


def _check_gold(config: LakehouseConfig, tree: Tree, base: str) -> None:
    """Each gold table reads tables that exist, and no gold table reads itself through others."""
    known = {"bronze": set(config.sources), "silver": {*config.entities, *(f"{e}_quarantine" for e in config.entities)},
             "gold": set(config.gold)}
    for name, gold in config.gold.items():
        origin = tree.origin(("gold", name, "inputs"), base)
        for table in gold.inputs:
            layer, _, short = table.partition(".")
            if (layer != "ops" and short not in known[layer]) or table == f"gold.{name}":
                raise ConfigError(origin, f"gold.{name}.inputs", f"no such input table '{table}'"
                                  + (" (a gold table cannot read itself)" if table == f"gold.{name}" else ""))
    reads = {name: [t.partition(".")[2] for t in gold.inputs if t.startswith("gold.")] for name, gold in config.gold.items()}
    try:
        inputs_first(reads)
    except CycleError as exc:
        first = exc.nodes[0]
        raise ConfigError(tree.origin(("gold", first, "inputs"), base), f"gold.{first}.inputs",
                          f"gold tables {exc}") from None


def _check_archives(config: LakehouseConfig, tree: Tree, base: str) -> None:
    """An archive (``after_ingest: archive``) lies outside every landing path: the file source
    would otherwise read what maintenance moved there as new files."""
    landings = {name: canonical(config.landing_path(name)).rstrip("/") + "/" for name in config.sources}
    for name, source in config.sources.items():
        if source.after_ingest != "archive":
            continue
        archive = canonical(config.archive_path(name)).rstrip("/") + "/"
        for other, landing in landings.items():
            if archive.startswith(landing) or landing.startswith(archive):
                raise ConfigError(tree.origin(("sources", name, "archive_path"), base), f"sources.{name}.archive_path",
                                  f"{archive.rstrip('/')} overlaps the landing path of source {other} ({landing.rstrip('/')})")


PREDICTIONS = "predictions"  # gold.predictions: what scoring writes (lakehouse/pipeline.py)


def _check_training(config: LakehouseConfig, tree: Tree, base: str) -> None:
    """Training reads a table a flow writes: a silver entity's or a gold table, not the predictions."""
    if PREDICTIONS in config.gold:
        raise ConfigError(tree.origin(("gold", PREDICTIONS), base), f"gold.{PREDICTIONS}",
                          "the name is taken: scoring writes gold.predictions")
    if config.training is None:
        return
    layer, _, name = config.training.table.partition(".")
    if (layer, name) not in {("silver", e) for e in config.entities} | {("gold", g) for g in config.gold}:
        raise ConfigError(tree.origin(("training", "table"), base), "training.table",
                          f"no such table to train on: '{config.training.table}' (a configured silver entity or "
                          "gold table)")
