"""The shared session's JVM runs in a session, and so a process group, of its own (see
tests/conftest.py): no signal sent to the test run's process group reaches it."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.slow


def test_the_shared_jvm_is_outside_the_test_runs_process_group(spark):
    jvm = spark.sparkContext._gateway.proc.pid  # the Popen pyspark started the JVM with
    assert os.getsid(jvm) == jvm
    assert os.getpgid(jvm) != os.getpgid(0)
