"""The bundle's tasks and the configuration they load: every task runs `lakehouse --env databricks`
(conf/databricks/) with only the target's values as --set, and what it loads is Unity Catalog with
the bundle's paths."""

from __future__ import annotations

import re

import pytest

from lakehouse.cli import build_parser, main
from lakehouse.config import ConfigError, load_config
from lakehouse.devtools.bundle_check import load_bundle
from tests.conftest import CONF_DIR, REPO

LAYERS = ("bronze", "silver", "gold", "ops")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILE_PATH = "/Workspace/Users/someone/.bundle/lakehouse/dev/files"
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")


def _resolver(bundle):
    """Resolve ${var.x}, ${bundle.target}, ... as the Databricks CLI does (variables' values)."""
    known = {f"var.{name}": str(v.get("default")) for name, v in bundle.config["variables"].items()}
    known.update({"bundle.target": bundle.target, "bundle.name": bundle.config["bundle"]["name"],
                  "bundle.git.commit": COMMIT, "workspace.file_path": FILE_PATH})

    def resolve(text: str) -> str:
        for _ in range(5):  # variables may name the target (experiment_name)
            text = REFERENCE.sub(lambda m: known.get(m.group(1), m.group(0)), text)
        assert "${" not in text, text
        return text

    return resolve


def _tasks(bundle):
    for job_name, job in bundle.config["resources"]["jobs"].items():
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job.get("job_clusters", [])}
        for task in job["tasks"]:
            yield job_name, job, task, clusters[task["job_cluster_key"]]


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_task_loads_the_databricks_overlay_with_the_targets_values(target):
    bundle = load_bundle(REPO, target)
    resolve = _resolver(bundle)
    var = {name: resolve(f"${{var.{name}}}") for name in bundle.config["variables"]}
    commands, scenarios = set(), set()
    for job_name, job, task, cluster in _tasks(bundle):
        # One task type: the wheel's console script (spark_jobs/ is for spark-submit).
        assert set(task) & {"python_wheel_task", "spark_python_task", "notebook_task"} == {"python_wheel_task"}
        wheel = task["python_wheel_task"]
        assert (wheel["package_name"], wheel["entry_point"]) == ("lakehouse", "lakehouse")
        # conf/ is synced with the bundle's files (not in the wheel): the cluster points at it.
        assert cluster["spark_env_vars"]["LAKEHOUSE_CONF_DIR"] == "${workspace.file_path}/conf"
        assert resolve(cluster["spark_env_vars"]["LAKEHOUSE_CONF_DIR"]) == f"{FILE_PATH}/conf"

        args = build_parser().parse_args([resolve(str(p)) for p in wheel["parameters"]])
        commands.add(args.command)
        assert args.env == "databricks" and args.conf_dir is None and args.data_dir is None
        # The overlay says what every target shares; the task passes only what differs by target.
        keys = {item.partition("=")[0] for item in args.overrides}
        assert keys <= {"catalog.name", "catalog.schemas", "storage.landing_dir", "storage.checkpoint_dir",
                        "training.experiment", "training.registry_schema"}, (job_name, keys)
        config = load_config(args.env, conf_dir=CONF_DIR, data_dir=args.data_dir, overrides=args.overrides,
                             scenario=args.scenario)
        scenarios.add(config.scenario)

        assert config.catalog.kind == "unity" and config.spark.master is None
        assert config.catalog.name == var["catalog"] == ("prod" if target == "prod" else "main")
        assert config.catalog.schemas == {layer: f"{var['schema']}_{layer}" for layer in LAYERS}
        assert config.landing_root == var["landing_path"] and config.landing_root.startswith("/Volumes/")
        assert config.checkpoint_root == var["checkpoint_root"] and config.checkpoint_root.startswith("/Volumes/")
        assert config.training.tracking_uri == "databricks"
        if args.command in ("train", "score"):  # Unity Catalog's registry: <catalog>.<schema>.<model>
            model = "chat_lm" if config.scenario == "chat" else "telemetry_power"
            assert config.training.model_name == f"{var['catalog']}.{var['schema']}_gold.{model}"
        if args.command == "train":
            suffix = "-chat" if config.scenario == "chat" else ""  # each scenario's runs in an experiment of its own
            assert config.training.experiment == var["experiment_name"] + suffix == f"/Shared/lakehouse-{target}{suffix}"
            assert resolve(cluster["spark_env_vars"]["LAKEHOUSE_GIT_COMMIT"]) == COMMIT
        if job_name == "lakehouse_ingest":  # the file-arrival trigger watches where the job reads
            assert resolve(job["trigger"]["file_arrival"]["url"]) == config.landing_path("telemetry") + "/"
        if args.command == "run":  # always on, deployed paused: it shares the per-layer jobs' checkpoints
            assert not args.once and args.trigger and job["continuous"] == {"pause_status": "PAUSED"}
            assert job["max_concurrent_runs"] == 1 and "schedule" not in job and "trigger" not in job
    assert commands == {"ingest", "refine", "gold", "train", "score", "run", "maintain"}
    assert scenarios == {"telemetry", "chat"}


def test_the_overlay_alone_has_the_bundles_defaults(capsys):
    """`lakehouse --env databricks` by hand (a notebook in the dev workspace) sees the dev target's
    tables and paths; it loads anywhere (the volumes, catalog and workspace MLflow exist only on
    Databricks, and nothing is checked against them before a job runs)."""
    defaults = {name: v.get("default") for name, v in load_bundle(REPO, "dev").config["variables"].items()}
    config = load_config("databricks", conf_dir=CONF_DIR)
    assert (config.catalog.kind, config.catalog.name) == ("unity", defaults["catalog"])
    assert config.catalog.schemas == {layer: f"{defaults['schema']}_{layer}" for layer in LAYERS}
    assert config.landing_root == defaults["landing_path"]
    assert config.checkpoint_root == defaults["checkpoint_root"]
    assert config.training.model_name == f"{defaults['catalog']}.{defaults['schema']}_gold.telemetry_power"
    chat = load_config("databricks", conf_dir=CONF_DIR, scenario="chat")
    assert chat.training.model_name == f"{defaults['catalog']}.{defaults['schema']}_gold.chat_lm"
    with pytest.raises(ConfigError, match="without dots"):  # a three-part name of old: not qualified twice
        load_config("databricks", conf_dir=CONF_DIR, overrides=["training.registered_model=main.x.telemetry_power"])
    assert main(["--env", "databricks", "--conf-dir", str(CONF_DIR), "config"]) == 0
    assert '"kind": "unity"' in capsys.readouterr().out
    # The laptop's overlay is untouched: the default env stays local.
    assert load_config("dev", conf_dir=CONF_DIR).catalog.kind == "path"


# The jobs use Spark 4 APIs (F.make_valid_utf8, Column.try_cast, localCheckpoint(storageLevel=)):
# Databricks Runtime 17.0 is the first on Spark 4 (16.4 LTS is Spark 3.5, Scala 2.12).
SPARK_4_RUNTIME = re.compile(r"^(\d+)\.(\d+|x)\.x-(?:cpu-ml-|gpu-ml-)?scala2\.13$")


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_job_cluster_runs_a_spark_4_runtime(target):
    bundle = load_bundle(REPO, target)
    resolve = _resolver(bundle)
    runtimes = {}
    for job_name, _job, _task, cluster in _tasks(bundle):
        runtimes[job_name] = resolve(cluster["spark_version"])
    assert len(runtimes) == len(bundle.config["resources"]["jobs"])
    for job_name, runtime in runtimes.items():
        found = SPARK_4_RUNTIME.match(runtime)
        assert found and int(found.group(1)) >= 17, (job_name, runtime)
    # the GPU training cluster runs an ML runtime, the scoring one too
    assert "-gpu-ml-" in runtimes["lakehouse_train"] and "-cpu-ml-" in runtimes["lakehouse_score"]
