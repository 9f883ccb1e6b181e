"""`lakehouse bundle check`: the project's bundle passes for every target; the checker agrees with
the Databricks CLI's own corpus (schema fixtures and `bundle validate` golden outputs); mutations
of the project's bundle are caught."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from lakehouse.cli import main
from lakehouse.devtools.bundle_check import (
    check_bundle,
    cli_type_problems,
    load_bundle,
    load_schema,
    schema_problems,
)
from tests.conftest import REPO

SHARED = REPO.parent / "shared" / "databricks"
SCHEMA_PATH = SHARED / "bundle_jsonschema.json"
pytestmark = pytest.mark.skipif(not SCHEMA_PATH.is_file(), reason="../shared/databricks is not beside the checkout")


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMA_PATH)


def _bundle_dir(tmp_path: Path, source: Path) -> Path:
    shutil.copy(source, tmp_path / "databricks.yml")
    return tmp_path


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_the_project_bundle_passes(schema, target, capsys):
    bundle, problems = check_bundle(REPO, target, schema, project_root=REPO)
    assert problems == [] and bundle.target == target
    jobs = bundle.config["resources"]["jobs"]
    assert {"lakehouse_ingest", "lakehouse_refine", "lakehouse_train", "lakehouse_score", "lakehouse_pipeline"} <= set(jobs)
    assert bundle.config["variables"]["catalog"]["default"] == ("prod" if target == "prod" else "main")


def test_the_command_checks_every_target(monkeypatch, capsys):
    monkeypatch.setenv("LAKEHOUSE_BUNDLE_SCHEMA", str(SCHEMA_PATH))
    monkeypatch.chdir(REPO)
    assert main(["bundle", "check", "--all-targets"]) == 0
    out = capsys.readouterr().out
    assert "target dev: no problems" in out and "target prod: no problems" in out


@pytest.mark.parametrize("fixture", sorted((SHARED / "cli_testdata" / "pass").glob("*.yml")), ids=lambda p: p.name)
def test_cli_pass_fixtures_are_valid(schema, fixture, tmp_path):
    assert schema_problems(load_bundle(_bundle_dir(tmp_path, fixture)), schema) == []


@pytest.mark.parametrize("fixture", sorted((SHARED / "cli_testdata" / "fail").glob("*.yml")), ids=lambda p: p.name)
def test_cli_fail_fixtures_are_invalid(schema, fixture, tmp_path):
    assert schema_problems(load_bundle(_bundle_dir(tmp_path, fixture)), schema) != []


SCHEMA_LEVEL = re.compile(r'^(?:Warning|Error): (unknown field: \S+|invalid value "[^"]*"(?= for enum field)'
                          r'|required field "[^"]+" is not set)')


def _finding(first_line: str, path: str | None):
    match = SCHEMA_LEVEL.match(first_line)
    if not match:
        return None
    kind = match.group(1)
    return kind, None if kind.startswith("unknown field") else path  # the CLI gives no path for unknown fields


def golden_cases():
    for case in sorted((SHARED / "cli_validate_golden").glob("*/output.txt")):
        for block in case.read_text().split(">>> [CLI] bundle validate")[1:]:
            lines = block.splitlines()
            expected = set()
            for i, line in enumerate(lines):
                nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
                found = _finding(line, nxt[3:] if nxt.startswith("at ") else None)
                if found:
                    expected.add(found)
            if expected:
                target = re.search(r"-t (\S+)", lines[0]) or re.search(r"^Target: (\S+)", block, re.M)
                yield pytest.param(case.parent, target.group(1) if target else None, expected,
                                   id=f"{case.parent.name}{lines[0].strip() and ' ' + lines[0].strip()}")


@pytest.mark.parametrize("case, target, expected", list(golden_cases()))
def test_schema_level_findings_match_the_cli(schema, case, target, expected):
    bundle = load_bundle(case, target)
    found = {f for p in schema_problems(bundle, schema) + cli_type_problems(bundle, schema)
             if (f := _finding(str(p).splitlines()[0], p.path))}
    assert found == expected


def _mutated(tmp_path: Path, file: str, old: str, new: str) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(REPO / "resources", copy / "resources")
    shutil.copytree(REPO / "spark_jobs", copy / "spark_jobs")
    for name in ("databricks.yml", "setup.cfg"):
        shutil.copy(REPO / name, copy / name)
    path = copy / file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return copy


@pytest.mark.parametrize("file, old, new, message, at", [
    ("resources/ingest.yml", "          job_cluster_key: ingest_cluster\n          python_wheel_task:",
     "          job_cluster_key: ingest_cluster\n          retry_on_timeout_s: 3\n          python_wheel_task:",
     "unknown field: retry_on_timeout_s", "resources.jobs.lakehouse_ingest.tasks[0].retry_on_timeout_s"),
    ("resources/score.yml", "entry_point: lakehouse", "entry_point: lakehouse-score",
     'entry point "lakehouse-score" is not a console script',
     "resources.jobs.lakehouse_score.tasks[0].python_wheel_task.entry_point"),
    ("resources/train.yml", "          job_cluster_key: gpu_cluster\n          python_wheel_task",
     "          job_cluster_key: gpu_clustr\n          python_wheel_task",
     'job_cluster_key "gpu_clustr" is not defined', "resources.jobs.lakehouse_train.tasks[0].job_cluster_key"),
    ("databricks.yml", "    variables:\n      catalog: prod", "    variables:\n      catalgo: prod",
     'variable "catalgo" is not defined', "targets.prod.variables.catalgo"),
    # The bundle has no spark_python_task: silver_refine turned into one that names a missing file.
    ("resources/refine.yml", "          job_cluster_key: refine_cluster\n          python_wheel_task:\n"
     "            package_name: lakehouse\n            entry_point: lakehouse\n            parameters: [--env, databricks,",
     "          job_cluster_key: refine_cluster\n          spark_python_task:\n"
     "            python_file: ../spark_jobs/gold_built.py\n            parameters: [--env, databricks,",
     "python_file ../spark_jobs/gold_built.py does not exist",
     "resources.jobs.lakehouse_refine.tasks[0].spark_python_task.python_file"),
])
def test_mutations_are_caught(schema, tmp_path, capsys, file, old, new, message, at):
    root = _mutated(tmp_path, file, old, new)
    _, problems = check_bundle(root, "prod", schema, project_root=root)
    assert any(message in p.message and p.path == at for p in problems), [str(p) for p in problems]
    assert all(p.location for p in problems if p.path.startswith(("resources", "targets")))
    assert main(["bundle", "check", "-t", "prod", "--dir", str(root), "--schema", str(SCHEMA_PATH)]) == 1
    assert at in capsys.readouterr().out
