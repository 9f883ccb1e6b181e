"""Hadoop's local file system without a process per call, for the JVMs a local job starts.

Without Hadoop's native library (pyspark ships none), Hadoop's local file system starts a
``chmod`` process for every file and directory it creates and a ``readlink`` for every link
status (four for each FileContext rename: a streaming checkpoint's offsets and commits, every
Delta commit). A bronze micro-batch started about 70 of them, about 4 ms apiece; without them
its fixed cost fell by about 0.15 s (bench/RESULTS.md, issue 16). The classes in ``lakehouse/jvm/`` do the
same through java.nio (InProcessRawLocalFileSystem.java says what they change, and what they
leave to Hadoop).

They are compiled once per source and pyspark installation into a jar in the user's cache
(:func:`local_fs_jar`; ``javac`` from the JDK, about 2 s). Every driver JVM this project starts
has the jar on its class path, and one with a local master (whose tasks run in that JVM) uses
it (:func:`local_fs_settings`). Without ``javac`` Hadoop's own classes serve, as before. A
cluster's executors (a standalone master, spark-submit, Databricks) keep Hadoop's: the jar is
not on their class path, and their storage is seldom local.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import zipfile
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

from lakehouse.fs import one_at_a_time, user_cache

log = logging.getLogger(__name__)

SOURCES = Path(__file__).parent / "jvm"
CLASSES = {
    "fs.file.impl": "lakehouse.hadoop.InProcessLocalFileSystem",  # Hadoop's FileSystem API
    "fs.AbstractFileSystem.file.impl": "lakehouse.hadoop.InProcessLocalFs",  # its FileContext API
}
CLASS_PATH = "spark.driver.extraClassPath"


def local_fs_jar_path() -> Path:
    """Where the jar of this source and this pyspark installation is (whether made or not)."""
    digest = hashlib.sha256(version("pyspark").encode())
    for source in sorted(SOURCES.glob("*.java")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return user_cache("jvm", f"local-fs-{digest.hexdigest()[:16]}.jar")


def local_fs_jar() -> Path | None:
    """The jar, compiled first if missing or unreadable (one process at a time); None where it
    cannot be made (no ``javac``, or it failed: logged), and Hadoop's own local file system serves."""
    jar = local_fs_jar_path()
    if _complete(jar):
        return jar
    javac = jdk_tool("javac")
    if javac is None:
        log.info("no javac: Hadoop's local file system (a process per chmod) serves this session")
        return None
    try:
        with one_at_a_time(jar.with_suffix(".lock")):
            if not _complete(jar):
                _compile(javac, jar)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("could not compile %s (%s): Hadoop's local file system serves this session", SOURCES, detail)
        return None
    return jar


def jdk_tool(name: str) -> str | None:
    """A JDK program (``java``, ``javac``) as Spark's launcher finds it: in $JAVA_HOME/bin, else on PATH."""
    home = os.environ.get("JAVA_HOME")
    return (home and shutil.which(name, path=str(Path(home) / "bin"))) or shutil.which(name)


def local_fs_jar_state() -> str:
    """The jar's path and the time it was made ("absent" while it is not): the driver's class path,
    and so the class archive made for it (lakehouse.session.class_archive_sources), depend on both."""
    jar = local_fs_jar_path()
    try:
        return f"{jar} {jar.stat().st_mtime_ns}"
    except OSError:
        return f"{jar} absent"


def _complete(jar: Path) -> bool:
    """The jar exists and holds every class a session names (a truncated one would fail every
    ``file:`` path of the session, with no way back to Hadoop's classes)."""
    try:
        with zipfile.ZipFile(jar) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return all(f"{name.replace('.', '/')}.class" in names for name in CLASSES.values())


def _compile(javac: str, jar: Path) -> None:
    hadoop = sorted((Path(find_spec("pyspark").origin).parent / "jars").glob("hadoop-client-api-*.jar"))
    if not hadoop:
        raise OSError("pyspark's jars hold no hadoop-client-api jar")
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="local-fs-") as classes:
        subprocess.run([javac, "--release", "17", "-nowarn", "-cp", str(hadoop[0]), "-d", classes,
                        *map(str, sorted(SOURCES.glob("*.java")))], check=True, capture_output=True, text=True,
                       timeout=300)
        partial = jar.with_name(f".{jar.name}.{os.getpid()}")
        try:
            with zipfile.ZipFile(partial, "w") as archive:
                for compiled in sorted(Path(classes).rglob("*.class")):
                    archive.write(compiled, compiled.relative_to(classes).as_posix())
            os.replace(partial, jar)
        finally:
            partial.unlink(missing_ok=True)


def local_fs_settings(master: str, settings: dict[str, str]) -> dict[str, str]:
    """``settings`` with the jar first on the driver's class path (whatever the master: the JVM
    class archive, lakehouse/jvm_archive.py, is made for one class path) and, for a local master
    (``local``, ``local[...]``: its tasks run in the driver's JVM; not ``local-cluster``), Hadoop's
    two local file system classes set to it. Unchanged where the jar cannot be made; a
    configuration that names either class itself keeps Hadoop's, or its own, for both."""
    jar = local_fs_jar()
    if jar is None:
        return settings
    ours = {CLASS_PATH: os.pathsep.join(p for p in (str(jar), settings.get(CLASS_PATH, "")) if p)}
    in_driver = master == "local" or master.startswith("local[")
    if in_driver and not any(f"spark.hadoop.{key}" in settings for key in CLASSES):
        ours.update({f"spark.hadoop.{key}": name for key, name in CLASSES.items()})
    return {**settings, **ours}
