"""Small file operations on a local path or on any file system Spark can reach (s3a://, abfss://, dbfs:).

Local paths and ``file:`` URIs are handled in Python; anything else goes through the Hadoop
``FileSystem`` of the running Spark session (its credentials and settings), so the same job code
works against a laptop's disk and object storage.
"""

from __future__ import annotations

import fcntl
import os
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ms: int  # modification time, milliseconds since the epoch


def user_cache(*parts: str) -> Path:
    """A path in this user's cache directory for the project: $XDG_CACHE_HOME/lakehouse, or
    ~/.cache/lakehouse (resolved jars, the Kafka broker's jars, Data Docs assets, Horovod wheels)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "lakehouse", *parts)


@contextmanager
def one_at_a_time(lock: Path, waiting: str = ""):
    """Hold an exclusive lock on the file ``lock`` (made if missing) for the block: processes of
    this machine that fill one cache take turns. One that must wait prints ``waiting`` (when
    given) to stderr first. Where the lock cannot be had (no writable folder, a file system
    without locks) the block runs unlocked."""
    handle = None
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(f"{waiting} (lock: {lock})", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:
        if handle is not None:
            handle.close()
        handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def local_path(location: str) -> Path | None:
    """The local path of a plain path or ``file:`` URI; None for remote storage."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else location).absolute()
    return None


def canonical(location: str) -> str:
    """One spelling per file: an absolute local path, or the URI with its path unquoted.

    Spark writes a file as ``file:///a%20b`` in one place and ``file:/a b`` in another; two
    spellings of one file compare equal after this."""
    local = local_path(location)
    if local is not None:
        return os.path.normpath(str(local))
    parsed = urlparse(location)
    return f"{parsed.scheme}://{parsed.netloc}{unquote(parsed.path)}"


def _hadoop(spark, location: str):
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(location)
    return path.getFileSystem(spark._jsc.hadoopConfiguration()), path


def stat(spark, location: str) -> FileStat | None:
    """Size and modification time, or None when the file does not exist."""
    local = local_path(location)
    if local is not None:
        try:
            info = os.stat(local)
        except FileNotFoundError:
            return None
        return FileStat(info.st_size, int(info.st_mtime_ns // 1_000_000))
    fs, path = _hadoop(spark, location)
    if not fs.exists(path):
        return None
    status = fs.getFileStatus(path)
    return FileStat(int(status.getLen()), int(status.getModificationTime()))


def read_bytes(spark, location: str) -> bytes | None:
    """The whole file, or None when it does not exist."""
    local = local_path(location)
    if local is not None:
        try:
            return local.read_bytes()
        except FileNotFoundError:
            return None
    fs, path = _hadoop(spark, location)
    if not fs.exists(path):
        return None
    stream = fs.open(path)
    try:
        return bytes(spark._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def head(spark, location: str, count: int) -> bytes | None:
    """The file's first ``count`` bytes (fewer if it is shorter), or None when it cannot be opened."""
    local = local_path(location)
    if local is not None:
        try:
            with open(local, "rb") as fh:
                return fh.read(count)
        except OSError:
            return None
    fs, path = _hadoop(spark, location)
    try:
        stream = fs.open(path)
    except Exception:  # noqa: BLE001 - gone or unreadable: the read names it
        return None
    try:
        return bytes(stream.readNBytes(count))
    finally:
        stream.close()


def write_atomic(spark, location: str, data: bytes) -> None:
    """Write the file so that a reader (or a crash) sees all of it or none: a temporary name, then a rename."""
    local = local_path(location)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        temporary = local.parent / f".{local.name}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, local)
        return
    fs, path = _hadoop(spark, location)
    temporary = spark._jvm.org.apache.hadoop.fs.Path(path.getParent(), f".{path.getName()}.{uuid.uuid4().hex}.tmp")
    stream = fs.create(temporary, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()
    if fs.exists(path):
        fs.delete(path, False)
    if not fs.rename(temporary, path):
        raise OSError(f"could not rename {temporary} to {location}")


def delete(spark, location: str) -> None:
    """Remove the file if it exists."""
    local = local_path(location)
    if local is not None:
        local.unlink(missing_ok=True)
        return
    fs, path = _hadoop(spark, location)
    fs.delete(path, False)


def list_names(spark, folder: str) -> list[str]:
    """The names of the entries in a folder (empty when it does not exist)."""
    local = local_path(folder)
    if local is not None:
        return sorted(os.listdir(local)) if local.is_dir() else []
    hadoop, path = _hadoop(spark, folder)
    if not hadoop.exists(path):
        return []
    return sorted(status.getPath().getName() for status in hadoop.listStatus(path))


def local_files(location: str, skip: str) -> dict[str, tuple[int, float]] | None:
    """Canonical path -> (bytes, modification time) of each file under a local directory (hidden
    files, and the subdirectories named ``skip``, left out); None for remote storage. A folder
    that cannot be read raises OSError."""
    root = local_path(location)
    if root is None:
        return None

    def unreadable(error: OSError):
        if not isinstance(error, FileNotFoundError):  # not one removed meanwhile
            raise error

    files = {}
    # As Hadoop's local file system lists them (Delta's VACUUM): into linked folders too.
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        dirnames[:] = [d for d in dirnames if d != skip]
        for name in filenames:
            if not name.startswith("."):
                path = os.path.join(dirpath, name)
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue  # removed meanwhile
                files[canonical(path)] = (stat.st_size, stat.st_mtime)
    return files
