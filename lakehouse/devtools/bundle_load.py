"""Loading a Databricks Asset Bundle as the Databricks CLI does, for `lakehouse bundle check`
(lakehouse/devtools/bundle_check.py validates what this loads).

``databricks.yml`` is read with YAML 1.2 semantics (``on``/``yes`` stay strings, with line numbers),
the files its ``include:`` globs name are merged in, and the chosen target's overrides applied
(variables set by the target, resources merged, job tasks and job clusters merged by their keys).
"""

from __future__ import annotations

import copy
import glob
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from lakehouse.errors import EXIT_CONFIG, LakehouseError

KEYED_SEQUENCES = {"tasks": "task_key", "job_clusters": "job_cluster_key", "environments": "environment_key"}
TARGET_ONLY = {"default", "mode", "compute_id", "cluster_id", "git"}


def dotted(path) -> str:
    """A YAML path as the CLI prints it: resources.jobs.x.tasks[0]."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class BundleError(LakehouseError, ValueError):
    """The bundle cannot be loaded at all (no databricks.yml, unreadable YAML, unknown target): exit 2."""

    exit_code = EXIT_CONFIG
    heading = "bundle check"
    whole_message = True


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" or "warning" (what the CLI would say without --strict)
    message: str
    path: str  # YAML path, e.g. resources.jobs.ingest.tasks[0].python_wheel_task
    location: str = ""  # file:line:column

    def __str__(self) -> str:
        text = f"{self.severity.capitalize()}: {self.message}"
        if self.path:
            text += f"\n  at {self.path}"
        if self.location:
            text += f"\n  in {self.location}"
        return text


# -- loading -------------------------------------------------------------------------------


class _Loaded:
    """Plain values plus, for every path, where it was written."""

    def __init__(self) -> None:
        self.where: dict[tuple, str] = {}
        self.anchor_only: set[tuple] = set()  # paths whose value is an anchor, or only holds anchors

    def load(self, path: Path, root: Path):
        yaml = YAML(typ="rt")  # ruamel reads YAML 1.2 by default
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.load(fh)
        except Exception as exc:  # ruamel's errors carry their own position
            raise BundleError(f"{path}: not valid YAML: {exc}") from exc
        return self._plain(data, (), str(path.relative_to(root)) if path.is_relative_to(root) else str(path))

    def _plain(self, node, at: tuple, name: str):
        if _anchor_only(node):
            self.anchor_only.add(at)
        if isinstance(node, dict):
            result = {}
            for key, value in node.items():
                line, col = _position(node, key)
                self.where.setdefault(at + (str(key),), f"{name}:{line}:{col}")
                result[str(key)] = self._plain(value, at + (str(key),), name)
            return result
        if isinstance(node, list):
            result = []
            for i, value in enumerate(node):
                if hasattr(node, "lc"):
                    try:
                        line, col = node.lc.item(i)
                        self.where.setdefault(at + (i,), f"{name}:{line + 1}:{col + 1}")
                    except (KeyError, IndexError, TypeError):
                        pass
                result.append(self._plain(value, at + (i,), name))
            return result
        if type(node).__module__.startswith("ruamel"):  # scalars ruamel wraps (anchored, styled): plain values
            for plain in (bool, int, float, str):
                if isinstance(node, plain):
                    return plain(node)
        return node


def _anchor_only(node) -> bool:
    """An anchored node, or a container whose every element is one (reusable blocks, not config)."""
    anchor = getattr(node, "anchor", None)
    if anchor is not None and getattr(anchor, "value", None):
        return True
    if isinstance(node, dict) and node:
        return all(_anchor_only(v) for v in node.values())
    if isinstance(node, list) and node:
        return all(_anchor_only(v) for v in node)
    return False


def _position(node, key) -> tuple[int, int]:
    try:
        line, col = node.lc.value(key)
        return line + 1, col + 1
    except (KeyError, AttributeError, TypeError):
        return 0, 0


def _merge(base, extra, keyed_by: str | None = None):
    """Deep merge: mappings key by key; sequences of tasks/job clusters by their keys; else replace."""
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = _merge(base[key], value, KEYED_SEQUENCES.get(key)) if key in base else copy.deepcopy(value)
        return merged
    if keyed_by and isinstance(base, list) and isinstance(extra, list):
        merged = [copy.deepcopy(item) for item in base]
        index = {item.get(keyed_by): i for i, item in enumerate(merged) if isinstance(item, dict)}
        for item in extra:
            key = item.get(keyed_by) if isinstance(item, dict) else None
            if key is not None and key in index:
                merged[index[key]] = _merge(merged[index[key]], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(extra)


@dataclass
class Bundle:
    root: Path
    target: str
    config: dict  # after includes and the target's overrides
    where: dict  # path tuple -> file:line:col
    problems: list  # found while loading (undeclared target variables)
    anchor_only: set  # top-level keys that only hold YAML anchors (not reported as unknown)


def load_bundle(root: str | Path, target: str | None = None) -> Bundle:
    root = Path(root)
    main = root / "databricks.yml"
    if not main.is_file():
        raise BundleError(f"{root}: no databricks.yml")
    loaded = _Loaded()
    config = loaded.load(main, root) or {}
    if not isinstance(config, dict):
        raise BundleError(f"{main}: expected a mapping at the top")
    for pattern in config.get("include", []) or []:
        for path in sorted(glob.glob(str(root / pattern), recursive=True)):
            extra = loaded.load(Path(path), root) or {}
            config = _merge(config, extra)

    targets = config.get("targets") or {}
    if target is None:
        defaults = [name for name, t in targets.items() if isinstance(t, dict) and t.get("default")]
        target = defaults[0] if defaults else (next(iter(targets)) if targets else "default")
    elif target not in targets and not (target == "default" and not targets):
        raise BundleError(f"no target '{target}' in {main} (targets: {', '.join(targets) or 'none'})")

    problems = []
    overrides = dict(targets.get(target) or {})
    variables = overrides.pop("variables", None) or {}
    declared = config.get("variables") or {}
    config = _merge(config, {k: v for k, v in overrides.items() if k not in TARGET_ONLY})
    for name, value in variables.items():
        path = ("targets", target, "variables", name)
        if name not in declared:
            problems.append(Problem("error", f'variable "{name}" is not defined', dotted(path), loaded.where.get(path, "")))
            continue
        setting = value if isinstance(value, dict) else {"default": value}
        config["variables"][name] = _merge(config["variables"][name] or {}, setting)
    return Bundle(root, target, config, loaded.where, problems, loaded.anchor_only)


