"""The Spark JVM's output, quiet by default (lakehouse/jvm_output.py): Ivy's resolution report,
Spark's start-up notices and Delta's VACUUM line held back, everything else (errors, a failed
resolution) shown; and `--verbose` shows it all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse.jvm_output import OutputFilter
from tests.conftest import CONF_DIR, REPO

RESOLUTION = """\
:: loading settings :: url = jar:file:/opt/venv/pyspark/jars/ivy-2.5.3.jar!/org/apache/ivy/core/settings/ivysettings.xml
Ivy Default Cache set to: /home/u/.ivy2.5.2/cache
The jars for the packages stored in: /home/u/.ivy2.5.2/jars
io.delta#delta-spark_4.1_2.13 added as a dependency
:: resolving dependencies :: org.apache.spark#spark-submit-parent-1f2e;1.0
\tconfs: [default]
\tfound io.delta#delta-spark_4.1_2.13;4.4.0 in central
downloading https://repo1.maven.org/maven2/io/delta/delta-spark_4.1_2.13/4.4.0/delta-spark_4.1_2.13-4.4.0.jar ...
\t[SUCCESSFUL ] io.delta#delta-spark_4.1_2.13;4.4.0!delta-spark_4.1_2.13.jar (812ms)
:: resolution report :: resolve 1234ms :: artifacts dl 820ms
\t---------------------------------------------------------------------
\t|                  |            modules            ||   artifacts   |
\t|       conf       | number| search|dwnlded|evicted|| number|dwnlded|
\t---------------------------------------------------------------------
\t|      default     |   2   |   2   |   2   |   0   ||   2   |   2   |
\t---------------------------------------------------------------------
:: retrieving :: org.apache.spark#spark-submit-parent-1f2e
\tconfs: [default]
\t2 artifacts copied, 0 already retrieved (5120kB/12ms)
"""
NOTICES = """\
WARNING: Using incubator modules: jdk.incubator.vector
26/12/05 11:12:44 WARN NativeCodeLoader: Unable to load native-hadoop library for your platform... using builtin-java \
classes where applicable
Using Spark's default log4j profile: org/apache/spark/log4j2-defaults.properties
Setting default log level to "WARN".
To adjust logging level use sc.setLogLevel(newLevel). For SparkR, use setLogLevel(newLevel).
"""


def _shown(text: str) -> str:
    lines = OutputFilter()
    shown = [out for line in text.splitlines(keepends=True) for out in lines.feed(line)]
    return "".join(shown + lines.end())


def test_the_resolution_report_and_the_start_up_notices_are_held_back_and_the_rest_shown():
    error = "26/12/05 11:13:02 ERROR Executor: Exception in task 0.0 in stage 3.0 (TID 7)\n"
    worker = "epoch 3: train loss 0.1432\n"  # a Python worker's own line, through the JVM
    assert _shown(RESOLUTION + NOTICES + error + worker) == error + worker
    assert _shown(worker + RESOLUTION + worker) == worker * 2  # the report ends where Ivy's retrieve does


def test_deltas_vacuum_console_line_is_held_back_and_other_counts_shown():
    vacuum = "Deleted 4 files and directories in a total of 1 directories.                    \n"
    other = "Deleted 3 rows of ops.freshness older than 30 days\n"
    assert _shown(vacuum + other + vacuum.strip() + "\n") == other


def test_a_uris_user_info_is_redacted_from_what_is_shown():
    line = ("26/12/07 18:10:36 ERROR FileFormatWriter: java.lang.IllegalArgumentException: Wrong FS: "
            "file://bob:hunter2@localhost/nowhere, expected: file:///\n")
    shown = _shown(line + "\tat org.apache.hadoop.fs.FileSystem.checkPath(FileSystem.java:824)\n")
    assert "hunter2" not in shown and "file://*****@localhost/nowhere" in shown and "checkPath" in shown


def test_a_failed_resolution_is_shown_whole():
    failed = RESOLUTION.replace("\t2 artifacts copied", "\t\t::::::::::::::\n\t\t::          UNRESOLVED DEPENDENCIES         ::\n"
                                "\t2 artifacts copied")
    assert _shown(failed) == failed
    unfinished = RESOLUTION.split(":: resolution report ::")[0]  # the JVM exited mid-way
    assert _shown(unfinished) == unfinished


@pytest.mark.slow
def test_a_command_prints_only_its_own_lines_unless_verbose(tmp_path, subprocess_env):
    """A cold Ivy cache (resolution from Maven Central) and Spark's start: nothing of either shows,
    unless --verbose."""
    env = {**subprocess_env, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # no record of resolved jars
    command = [sys.executable, "-m", "lakehouse.cli", "--env", "test", "--conf-dir", str(CONF_DIR),
               "--data-dir", str(tmp_path / "data"), "--set", f"spark.conf.spark.jars.ivy={tmp_path / 'ivy'}",
               "sql", "SELECT 40 + 2 AS answer"]
    quiet = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines()[:3] == ["answer", "------", "42    "]
    assert quiet.stderr.splitlines() == ["starting Spark (local[2], env test) ..."], quiet.stderr
    assert Path(tmp_path / "ivy" / "jars").is_dir()  # it did resolve them

    for record in (tmp_path / "cache" / "lakehouse").glob("jars-*.txt"):
        os.remove(record)  # resolve again, now verbose
    loud = subprocess.run([*command[:3], "--verbose", *command[3:]], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert loud.returncode == 0, loud.stderr
    assert ":: resolving dependencies ::" in loud.stderr and "Using Spark's default log4j profile" in loud.stderr
