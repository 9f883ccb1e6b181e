"""Hadoop's local file system without a process per call (lakehouse/local_fs.py and the classes
in lakehouse/jvm/): what a session with a local master uses, that it sets permissions and reads
link statuses as Hadoop's own does, and that a Delta commit and a streaming batch start no
process for them."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import zipfile

import pytest
from py4j.protocol import Py4JJavaError

from lakehouse import local_fs
from lakehouse.local_fs import CLASS_PATH, CLASSES, local_fs_jar, local_fs_settings

needs_javac = pytest.mark.skipif(shutil.which("javac") is None, reason="no javac (a JDK): Hadoop's own classes serve")


def _hadoop(spark):
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    uri = jvm.java.net.URI("file:///")
    return jvm, jvm.org.apache.hadoop.fs.FileSystem.get(uri, conf), jvm.org.apache.hadoop.fs.FileContext.getFileContext(uri, conf)


def test_settings_put_the_jar_first_on_the_class_path_and_set_it_for_a_local_master(tmp_path, monkeypatch):
    jar = tmp_path / "local-fs.jar"
    monkeypatch.setattr(local_fs, "local_fs_jar", lambda: jar)
    local = local_fs_settings("local[2]", {CLASS_PATH: "/other.jar", "spark.app.name": "x"})
    assert local[CLASS_PATH] == f"{jar}{os.pathsep}/other.jar" and local["spark.app.name"] == "x"
    assert {local[f"spark.hadoop.{key}"] for key in CLASSES} == set(CLASSES.values())
    # a cluster's executors do not have the jar: its driver gets the class path (one class archive) only
    for master in ("spark://127.0.0.1:7077", "local-cluster[2,1,1024]"):  # executors in JVMs of their own
        assert local_fs_settings(master, {}) == {CLASS_PATH: str(jar)}
    # a configuration naming a class itself keeps its own, and names neither of ours
    own = {"spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.LocalFileSystem"}
    assert local_fs_settings("local", own) == {**own, CLASS_PATH: str(jar)}
    monkeypatch.setattr(local_fs, "local_fs_jar", lambda: None)  # no javac: nothing changes
    assert local_fs_settings("local", {"spark.app.name": "x"}) == {"spark.app.name": "x"}


@needs_javac
def test_the_jar_is_compiled_once_into_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    jar = local_fs_jar()
    assert jar is not None and jar.parent == tmp_path / "lakehouse" / "jvm"
    names = set(zipfile.ZipFile(jar).namelist())
    assert {f"{name.replace('.', '/')}.class" for name in CLASSES.values()} <= names
    made = jar.stat().st_mtime_ns
    assert local_fs_jar() == jar and jar.stat().st_mtime_ns == made  # found, not made again
    assert not list(jar.parent.glob(".local-fs-*"))  # no partial jar left
    jar.write_bytes(b"PK\x03\x04 cut short")  # a jar that would fail every file: path of a session
    assert local_fs_jar() == jar and set(zipfile.ZipFile(jar).namelist()) == names  # made again


@needs_javac
def test_the_shared_session_uses_them(spark):
    _, fs, context = _hadoop(spark)
    assert fs.getClass().getName() == CLASSES["fs.file.impl"]
    assert context.getDefaultFileSystem().getClass().getName() == CLASSES["fs.AbstractFileSystem.file.impl"]


@needs_javac
def test_permissions_and_link_statuses_are_as_hadoops_own(spark, tmp_path):
    """Each call made through Hadoop's own raw local file system and through ours, on twin paths:
    the same modes (the umask of the session's configuration, a sticky bit, the setgid bit a
    directory inherits and chmod keeps) and the same link statuses."""
    jvm = spark.sparkContext._jvm
    HPath = jvm.org.apache.hadoop.fs.Path
    permission = jvm.org.apache.hadoop.fs.permission.FsPermission
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    stock, ours = jvm.org.apache.hadoop.fs.RawLocalFileSystem(), jvm.lakehouse.hadoop.InProcessRawLocalFileSystem()
    for raw in (stock, ours):
        raw.initialize(jvm.java.net.URI("file:///"), conf)
    modes = {}
    for name, raw in (("stock", stock), ("ours", ours)):
        root = tmp_path / name
        root.mkdir()
        os.chmod(root, 0o2775)  # setgid: a directory made inside inherits it
        assert raw.mkdirs(HPath(f"file://{root}/made/inner"), permission(0o750))
        raw.create(HPath(f"file://{root}/file"), permission(0o640), True, 4096, 1, 1 << 20, None).close()
        (root / "set").write_text("x")
        raw.setPermission(HPath(f"file://{root}/set"), permission(0o604))
        (root / "sticky").mkdir()
        raw.setPermission(HPath(f"file://{root}/sticky"), permission(0o1777))
        modes[name] = {path.relative_to(root).as_posix(): stat.S_IMODE(path.stat().st_mode) for path in root.rglob("*")}
    assert modes["ours"] == modes["stock"]
    assert modes["ours"]["made/inner"] & 0o2000 and modes["ours"]["sticky"] == 0o1777 | 0o2000
    assert modes["ours"]["set"] == 0o604
    for raw in (stock, ours):
        with pytest.raises(Py4JJavaError):
            raw.setPermission(HPath(f"file://{tmp_path / 'missing'}"), permission(0o644))

    folder, file, link = tmp_path / "folder", tmp_path / "file", tmp_path / "link"
    folder.mkdir()
    file.write_bytes(b"12345")
    link.symlink_to(file)

    def status(raw, path):
        found = raw.getFileLinkStatus(HPath(path))
        return (found.isSymlink(), found.isFile(), found.getLen(), found.getPath().toString(),
                found.getSymlink().toString() if found.isSymlink() else None)

    seen = {}
    for path in (str(file), f"file://{file}", str(link), f"file://{link}", str(folder)):
        seen[path] = status(stock, path)
        assert status(ours, path) == seen[path], path
    assert seen[str(link)][0] and seen[str(link)][4].endswith(str(file))  # a symbolic link, as Hadoop reads it
    assert not seen[str(file)][0] and seen[str(file)][2] == 5
    for raw in (stock, ours):
        with pytest.raises(Py4JJavaError, match="FileNotFoundException"):
            raw.getFileLinkStatus(HPath(f"file://{tmp_path / 'missing'}"))


@needs_javac
def test_a_file_context_rename_moves_and_never_overwrites(spark, tmp_path):
    """The streaming checkpoint's and Delta's log store's guarantee: a commit file is made by an
    atomic rename that fails where another writer made that file first."""
    jvm, _, context = _hadoop(spark)
    HPath = jvm.org.apache.hadoop.fs.Path
    none = jvm.org.apache.hadoop.fs.Options.Rename.NONE
    renames = spark.sparkContext._gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 1)
    renames[0] = none
    (tmp_path / "a").write_text("first")
    (tmp_path / "b").write_text("second")
    context.rename(HPath(f"file://{tmp_path / 'a'}"), HPath(f"file://{tmp_path / 'c'}"), renames)
    assert not (tmp_path / "a").exists() and (tmp_path / "c").read_text() == "first"
    with pytest.raises(Py4JJavaError, match="FileAlreadyExistsException"):
        context.rename(HPath(f"file://{tmp_path / 'b'}"), HPath(f"file://{tmp_path / 'c'}"), renames)
    assert (tmp_path / "c").read_text() == "first" and (tmp_path / "b").read_text() == "second"


@pytest.mark.slow
@needs_javac
@pytest.mark.skipif(shutil.which("jcmd") is None or shutil.which("jfr") is None, reason="needs the JDK's jcmd and jfr")
def test_a_streaming_delta_batch_starts_no_process(spark, tmp_path):
    """Java's flight recorder lists every process the session's JVM starts while a stream writes
    two micro-batches into a Delta table (its checkpoint's renames, Delta's commits, the files)."""
    (tmp_path / "in").mkdir()
    for name in ("one", "two"):
        (tmp_path / "in" / f"{name}.txt").write_text(f"{name}\n")
    spark.range(1).count()  # a session's first task copies its jars to the executor (Spark's chmod a+x each)
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    recording = tmp_path / "processes.jfr"
    subprocess.run(["jcmd", str(pid), "JFR.start", "name=local-fs-test", "settings=default",
                    f"filename={recording}"], check=True, capture_output=True)
    try:
        query = (spark.readStream.format("text").option("maxFilesPerTrigger", 1).load(str(tmp_path / "in"))
                 .writeStream.format("delta").option("checkpointLocation", str(tmp_path / "checkpoint"))
                 .trigger(availableNow=True).start(str(tmp_path / "table")))
        query.awaitTermination()
        # A control, so that a recording that lists nothing cannot pass: Hadoop's own class forks.
        stock = spark.sparkContext._jvm.org.apache.hadoop.fs.RawLocalFileSystem()
        stock.initialize(spark.sparkContext._jvm.java.net.URI("file:///"), spark.sparkContext._jsc.hadoopConfiguration())
        stock.setPermission(spark.sparkContext._jvm.org.apache.hadoop.fs.Path(f"file://{tmp_path / 'in' / 'one.txt'}"),
                            spark.sparkContext._jvm.org.apache.hadoop.fs.permission.FsPermission(0o644))
    finally:
        subprocess.run(["jcmd", str(pid), "JFR.stop", "name=local-fs-test"], check=True, capture_output=True)
    assert spark.read.format("delta").load(str(tmp_path / "table")).count() == 2
    started = subprocess.run(["jfr", "print", "--events", "jdk.ProcessStart", str(recording)],
                             check=True, capture_output=True, text=True).stdout
    commands = [line.split("=", 1)[1].strip() for line in started.splitlines() if line.strip().startswith("command =")]
    forked = [c for c in commands if c.strip('"').split()[0] in ("chmod", "readlink") and str(tmp_path) in c]
    assert forked == [f'"chmod 0644 {tmp_path / "in" / "one.txt"}"'], commands  # the control's only


