"""`lakehouse bundle check`: validate databricks.yml offline, as `databricks bundle validate` would.

The Databricks CLI (a Go binary) cannot run here, so this module does what it does before a
deploy, from the same inputs:
  1. load ``databricks.yml`` with YAML 1.2 semantics (``on``/``yes`` stay strings), merge the
     files its ``include:`` globs name, and apply the chosen target's overrides (variables set
     by the target, resources merged, job tasks and job clusters merged by their keys):
     lakehouse/devtools/bundle_load.py;
  2. validate the result against the CLI's own JSON schema (``databricks bundle schema``),
     evaluating the schema's ``pattern``s with the ``regex`` package (they use ``\\p{L}``, which
     Python's ``re`` rejects). Unlike the CLI, scalars are not coerced (13.3 for a string
     field is reported), as in the CLI's own schema conformance tests;
  3. add the semantic checks the schema cannot express (each job_cluster_key is defined; each
     task that runs code has compute; each ``${var.x}`` is declared) and the project's own (each
     python_wheel_task entry point is a console script in setup.cfg; each python_file exists).
Every problem is reported with its YAML path (``resources.jobs.x.tasks[0].run_if``) and where it
was written (file:line:column).
"""

from __future__ import annotations

import configparser
import json
import os
from pathlib import Path

import jsonschema
import regex
from jsonschema import Draft202012Validator

from lakehouse.devtools.bundle_load import Bundle, BundleError, Problem, dotted, load_bundle

SCHEMA_ENV = "LAKEHOUSE_BUNDLE_SCHEMA"
COMPUTE_KEYS = ("job_cluster_key", "new_cluster", "existing_cluster_id", "environment_key")
CODE_TASKS = ("python_wheel_task", "spark_python_task", "spark_jar_task", "spark_submit_task")
GO_ENUMS = {("variables", "type"): ["complex"], ("artifacts", "type"): ["whl", "jar"]}
VAR_REFERENCE = regex.compile(r"\$\{var\.([\p{L}\p{N}_-]+)")


# -- schema validation ---------------------------------------------------------------------


def _pattern(validator, pattern, instance, schema):
    if isinstance(instance, str) and not regex.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


BundleValidator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _pattern})


def load_schema(path: str | Path | None = None) -> dict:
    path = path or os.environ.get(SCHEMA_ENV)
    if not path:
        raise BundleError(f"no bundle schema: pass --schema or set {SCHEMA_ENV} "
                          "(the file `databricks bundle schema` prints)")
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read the bundle schema: {exc}") from exc


def _leaves(error):
    """The errors that say what is wrong, below the ``oneOf``s that admit a ``${var}`` reference."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        branches: dict = {}
        for sub in error.context:
            branches.setdefault(sub.schema_path[0], []).append(sub)
        # The branch for the instance's own shape: not the one that failed only on its type.
        real = [errs for errs in branches.values()
                if not all(e.validator == "type" and list(e.path) == [] for e in errs)]
        if not real:  # every branch wants another type: report one type error (an empty mapping's, for null)
            objects = [e for e in error.context if error.instance is None and e.validator_value == "object"]
            yield (objects or error.context)[0]
            return
        for errs in real:
            for sub in errs:
                yield from _leaves(sub)
        return
    yield error


def schema_problems(bundle: Bundle, schema: dict) -> list[Problem]:
    validator = BundleValidator(schema)
    document = bundle.config
    problems = []
    for error in validator.iter_errors(document):
        for leaf in _leaves(error):
            path = tuple(leaf.absolute_path)
            if leaf.validator == "additionalProperties":
                allowed = set(leaf.schema.get("properties") or {})
                for key in sorted(set(leaf.instance) - allowed):
                    problems.append(Problem("warning", f"unknown field: {key}", dotted(path + (key,)),
                                            bundle.where.get(path + (key,), "")))
            elif leaf.validator == "required":
                for name in leaf.validator_value:
                    if isinstance(leaf.instance, dict) and name not in leaf.instance:
                        problems.append(Problem("warning", f'required field "{name}" is not set', dotted(path),
                                                bundle.where.get(path, "")))
            elif leaf.validator == "enum":
                values = " ".join(map(str, leaf.validator_value))
                problems.append(Problem("warning", f'invalid value "{leaf.instance}" for enum field. '
                                        f"Valid values are [{values}]", dotted(path), bundle.where.get(path, "")))
            elif leaf.validator == "type" and leaf.instance is None and leaf.validator_value == "object":
                # `key:` with nothing under it: the CLI reads an empty mapping and reports what it lacks.
                for name in leaf.schema.get("required", []):
                    problems.append(Problem("warning", f'required field "{name}" is not set', dotted(path),
                                            bundle.where.get(path, "")))
            elif leaf.validator == "type":
                found = {dict: "map", list: "sequence", str: "string", bool: "bool"}.get(type(leaf.instance), "number")
                problems.append(Problem("warning", f"expected {leaf.validator_value}, found {found}",
                                        dotted(path), bundle.where.get(path, "")))
            elif leaf.validator == "pattern" and str(leaf.validator_value).startswith("\\$\\{"):
                # The branch that admits a ${...} reference: only news when the value is one.
                if "${" in str(leaf.instance):
                    problems.append(Problem("warning", f"invalid reference {leaf.instance}", dotted(path),
                                            bundle.where.get(path, "")))
            else:
                problems.append(Problem("warning", leaf.message, dotted(path), bundle.where.get(path, "")))
    return _unique(problems)


def cli_type_problems(bundle: Bundle, schema: dict) -> list[Problem]:
    """What the CLI reports from its Go types where the JSON schema is looser: unknown top-level
    keys (except blocks that only hold YAML anchors), and enums the schema leaves as strings."""
    document = bundle.config
    problems = []
    # Top-level keys the schema does not name (it admits any): unknown unless they only hold anchors.
    for key in document:
        if key not in (schema.get("properties") or {}) and (key,) not in bundle.anchor_only:
            problems.append(Problem("warning", f"unknown field: {key}", "", bundle.where.get((key,), "")))
    # Enums the CLI knows from its Go types but the JSON schema leaves as plain strings.
    for (section, field_name), allowed in GO_ENUMS.items():
        for name, item in (document.get(section) or {}).items():
            value = item.get(field_name) if isinstance(item, dict) else None
            if isinstance(value, str) and value and value not in allowed and "${" not in value:
                path = (section, name, field_name)
                problems.append(Problem("warning", f'invalid value "{value}" for enum field. Valid values are '
                                        f"[{' '.join(allowed)}]", dotted(path), bundle.where.get(path, "")))
    return _unique(problems)


def _unique(problems: list[Problem]) -> list[Problem]:
    seen, result = set(), []
    for p in problems:
        if (p.message, p.path) not in seen:
            seen.add((p.message, p.path))
            result.append(p)
    return sorted(result, key=lambda p: (p.path, p.message))


# -- semantic and project checks -----------------------------------------------------------


def console_scripts(setup_cfg: Path) -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(setup_cfg, encoding="utf-8")
    raw = parser.get("options.entry_points", "console_scripts", fallback="")
    scripts = {}
    for line in raw.strip().splitlines():
        name, _, target = line.partition("=")
        if name.strip():
            scripts[name.strip()] = target.strip()
    return scripts


def semantic_problems(bundle: Bundle, project_root: Path | None = None) -> list[Problem]:
    problems = list(bundle.problems)
    config, where = bundle.config, bundle.where
    declared = set(config.get("variables") or {})
    for path, value in _walk(config, ()):
        if isinstance(value, str) and path[:1] != ("targets",):
            for name in VAR_REFERENCE.findall(value):
                if name not in declared:
                    problems.append(Problem("error", f'reference does not exist: ${{var.{name}}}', dotted(path),
                                            where.get(path, "")))
    scripts = console_scripts(project_root / "setup.cfg") if project_root and (project_root / "setup.cfg").is_file() else None
    for job_name, job in ((config.get("resources") or {}).get("jobs") or {}).items():
        if not isinstance(job, dict):
            continue
        clusters = {c.get("job_cluster_key") for c in job.get("job_clusters") or [] if isinstance(c, dict)}
        for i, task in enumerate(job.get("tasks") or []):
            if not isinstance(task, dict):
                continue
            at = ("resources", "jobs", job_name, "tasks", i)
            key = task.get("job_cluster_key")
            if key is not None and key not in clusters:
                problems.append(Problem("error", f'job_cluster_key "{key}" is not defined in the job\'s job_clusters',
                                        dotted(at + ("job_cluster_key",)), where.get(at + ("job_cluster_key",), "")))
            if any(kind in task for kind in CODE_TASKS) and not any(k in task for k in COMPUTE_KEYS):
                problems.append(Problem("error", f'task "{task.get("task_key")}" runs code but has no compute: set '
                                        "job_cluster_key, new_cluster, existing_cluster_id or environment_key",
                                        dotted(at), where.get(at, "")))
            wheel = task.get("python_wheel_task")
            if isinstance(wheel, dict) and scripts is not None and "${" not in str(wheel.get("entry_point", "")):
                entry = wheel.get("entry_point")
                if entry not in scripts:
                    path = at + ("python_wheel_task", "entry_point")
                    problems.append(Problem("error", f'entry point "{entry}" is not a console script in setup.cfg '
                                            f"(have: {', '.join(sorted(scripts)) or 'none'})", dotted(path),
                                            where.get(path, "")))
            spark_python = task.get("spark_python_task")
            if isinstance(spark_python, dict) and "python_file" in spark_python:
                path = at + ("spark_python_task", "python_file")
                file = str(spark_python["python_file"])
                resolved = _local_file(bundle, file, where.get(path, ""))
                if resolved is not None and not resolved.is_file():
                    problems.append(Problem("error", f"python_file {file} does not exist ({resolved})", dotted(path),
                                            where.get(path, "")))
    return _unique(problems)


def _local_file(bundle: Bundle, file: str, location: str) -> Path | None:
    """A task's file as the CLI resolves it: relative to the YAML file that names it."""
    for prefix in ("${workspace.file_path}/", "${workspace.root_path}/files/"):
        if file.startswith(prefix):
            return bundle.root / file[len(prefix):]
    if "${" in file or "://" in file or file.startswith("/Workspace"):
        return None  # a workspace or remote path: not checkable offline
    declared_in = location.rsplit(":", 2)[0] if location else "databricks.yml"
    return (bundle.root / declared_in).parent / file


def _walk(value, path):
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, path + (i,))


def check_bundle(root: str | Path, target: str | None, schema: dict,
                 project_root: Path | None = None) -> tuple[Bundle, list[Problem]]:
    bundle = load_bundle(root, target)
    problems = schema_problems(bundle, schema) + cli_type_problems(bundle, schema) + semantic_problems(bundle, project_root)
    return bundle, problems
