"""The driver JVM's class archive (lakehouse/jvm_archive.py makes it, `make install` runs that):
a driver JVM this process launches maps it; options that choose about class sharing are kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lakehouse.jvm_archive import _remove_orphans
from lakehouse.session import CDS_QUIET, class_archive, class_archive_sources, with_class_archive


def test_the_archive_joins_the_driver_options_only_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    archive = class_archive()
    assert archive.parent == tmp_path / "lakehouse" / "jvm" and archive.suffix == ".jsa"
    assert with_class_archive("-XX:+UseSerialGC") == "-XX:+UseSerialGC"  # none made yet
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"")
    assert with_class_archive("-XX:+UseSerialGC") == f"-XX:+UseSerialGC -XX:SharedArchiveFile={archive} {CDS_QUIET}"
    assert with_class_archive("") == f"-XX:SharedArchiveFile={archive} {CDS_QUIET}"
    for chosen in ("-Xshare:off", "-XX:SharedArchiveFile=/elsewhere.jsa", "-XX:ArchiveClassesAtExit=/new.jsa",
                   "-XX:-UseSharedSpaces"):
        assert with_class_archive(f"-Xmx1g {chosen}") == f"-Xmx1g {chosen}"
    # only whole options count: a system property that mentions one does not
    assert with_class_archive("-Dnote=-Xshare") == f"-Dnote=-Xshare -XX:SharedArchiveFile={archive} {CDS_QUIET}"


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
    assert str(archive) in Path(f"/proc/{pid}/maps").read_text(), (
        "the JVM dropped the archive as stale: python -m lakehouse.jvm_archive --force makes it again")


def test_making_an_archive_removes_those_no_jvm_will_map(tmp_path, monkeypatch):
    """Made for a pyspark folder that is gone, or for this one before (an older Java or pyspark
    there), or left by a make that was killed: removed. Another folder's archive stays."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    current = class_archive()
    folder = current.parent
    folder.mkdir(parents=True)
    here = class_archive_sources()

    def made(name: str, sources: list[str]) -> Path:
        (folder / f"{name}.for").write_text("\n".join(sources) + "\n")
        (folder / f"{name}.jsa").write_bytes(b"archive")
        return folder / f"{name}.jsa"

    kept = [made(current.stem, here), made("driver-other-venv", [here[0], str(tmp_path), *here[2:]])]
    removed = [made("driver-gone-venv", [here[0], str(tmp_path / "gone"), *here[2:]]),
               made("driver-older-java", ["/old/java", *here[1:]])]
    killed = folder / f".{current.name}.{2**22 + 12345}"  # a pid above Linux's limit: no such process
    alive = folder / f".{current.name}.{os.getpid()}"
    for partial in (killed, alive):
        partial.write_bytes(b"partial")
    _remove_orphans(current)
    assert all(path.is_file() for path in [*kept, alive])
    assert not any(path.exists() or path.with_suffix(".for").exists() for path in [*removed, killed])
