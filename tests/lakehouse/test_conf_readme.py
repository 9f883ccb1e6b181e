"""conf/README.md's worked example, run literally: a CSV feed added with configuration files only
goes through bronze -> silver -> gold via the CLI, and every figure the README promises holds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.config import load_config
from lakehouse.tables import read_table, resolve_table

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def worked_example() -> str:
    text = (REPO / "conf" / "README.md").read_text()
    block = re.search(r"<!-- worked-example:start -->\s*```bash\n(.*?)```\s*<!-- worked-example:end -->", text, re.S)
    assert block, "conf/README.md has no worked-example block"
    return block.group(1)


def test_worked_example_csv_feed(spark, tmp_path, subprocess_env):
    shutil.copytree(REPO / "conf", tmp_path / "conf")  # the example starts from the repository's conf/
    env = dict(subprocess_env)
    env.pop("LAKEHOUSE_CONF_DIR")  # the example names its own --conf-dir
    env["LAKEHOUSE_ENV"] = "test"  # the test overlay: two cores, few partitions
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", worked_example()], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "reconciled" in run.stdout and "header lines 1" in run.stdout

    config = load_config("test", conf_dir=tmp_path / "my-conf", data_dir=tmp_path / "my-data")
    table = lambda name: read_table(spark, resolve_table(config, name))  # noqa: E731
    assert table("bronze.sensors").count() == 18
    silver = table("silver.sensors")
    assert silver.count() == 12 and silver.select("reading_id").distinct().count() == 12
    assert silver.where("reading_id = 'r012'").first()._rescued == '{"_c6":"fw-2.1"}'
    assert silver.agg(F.max("reading_time")).first()[0] == datetime(2026, 3, 1, 8, 40)

    reasons = {r.value.split(",")[0]: r.reasons[0] for r in table("silver.sensors_quarantine").collect()}
    assert reasons == {
        "r008": "expect_column_values_to_not_be_null(temperature_c)",
        "r009": "expect_column_values_to_be_between(humidity_pct)",
        "r010": "type(temperature_c)",
        "r011": "malformed",
    }
    batches = table("ops.silver_batches").where("entity = 'sensors'").agg(
        F.sum("duplicates").alias("duplicates"), F.sum("skipped").alias("skipped")).first()
    assert (batches.duplicates, batches.skipped) == (1, 1)

    gold = {(r.site, r.window_start.strftime("%H:%M")): r.readings for r in table("gold.sensors_10min").collect()}
    assert gold == {("lab", "08:00"): 2, ("lab", "08:10"): 2, ("roof", "08:00"): 2, ("roof", "08:10"): 1,
                    ("basement", "08:20"): 1}
    assert Counter(site for site, _ in gold) == {"lab": 2, "roof": 2, "basement": 1}
