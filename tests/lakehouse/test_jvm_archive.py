"""The driver JVM's class archive (lakehouse/jvm_archive.py makes it, `make install` runs that):
a driver JVM this process launches maps it; options that choose about class sharing are kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakehouse.session import CDS_QUIET, class_archive, with_class_archive


def test_the_archive_joins_the_driver_options_only_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    archive = class_archive()
    assert archive.parent == tmp_path / "lakehouse" / "jvm" and archive.suffix == ".jsa"
    assert with_class_archive("-XX:+UseSerialGC") == "-XX:+UseSerialGC"  # none made yet
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"")
    assert with_class_archive("-XX:+UseSerialGC") == f"-XX:+UseSerialGC -XX:SharedArchiveFile={archive} {CDS_QUIET}"
    assert with_class_archive("") == f"-XX:SharedArchiveFile={archive} {CDS_QUIET}"
    for chosen in ("-Xshare:off", "-XX:SharedArchiveFile=/elsewhere.jsa", "-XX:ArchiveClassesAtExit=/new.jsa"):
        assert with_class_archive(f"-Xmx1g {chosen}") == f"-Xmx1g {chosen}"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the JVM's memory map in /proc")
def test_the_shared_sessions_jvm_maps_the_archive(spark):
    archive = class_archive()
    if not archive.is_file():
        pytest.skip(f"no class archive at {archive}: `make install` makes it (python -m lakehouse.jvm_archive)")
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    options = spark.sparkContext.getConf().get("spark.driver.extraJavaOptions")
    assert f"-XX:SharedArchiveFile={archive}" in options
    # Mapped, not only named: the JVM took it (a stale one it would have dropped, silently).
    assert str(archive) in Path(f"/proc/{pid}/maps").read_text()
