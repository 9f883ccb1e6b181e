"""Landing files after ingest (``sources.<s>.after_ingest``): kept, archived or deleted.

Maintenance (lakehouse/maintenance.py) calls :func:`clean_landing` for each files source whose
``after_ingest`` is ``archive`` or ``delete``. Only the files of micro-batches the bronze
checkpoint has committed are touched (lakehouse/checkpoints.py, :func:`committed_source_files`):
never a file still in the backlog, and never one a redone batch would read again. A move is a
rename (across file systems, see :func:`_move`): a ``kill -9`` leaves each file whole in landing
or in the archive, and the next pass moves what is left. Spark's file source remembers the paths
it has taken in (its log), so a file gone from landing is not missed, and one left there is not
read twice. Landing names must be unique: a name used again is never read (as without clean-up).
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lakehouse import fs
from lakehouse.checkpoints import committed_source_files, landed_files
from lakehouse.config import LakehouseConfig
from lakehouse.errors import UsageError
from lakehouse.failpoints import failpoint
from lakehouse.pipeline import Flow


@dataclass
class Cleanup:
    landing: str
    present: int  # data files in landing before
    done: int  # of them, files of committed micro-batches: archived or deleted (a dry run: would be)
    bytes: int  # their size
    left: int  # data files in landing after


def clean_landing(config: LakehouseConfig, bronze: Flow, dry_run: bool = False) -> Cleanup:
    """Archive (under ``archive_path``, keeping sub-folders) or delete the source's committed files."""
    source = bronze.name
    action = config.source(source).after_ingest
    landing = config.landing_path(source)
    if fs.local_path(landing) is None:
        raise UsageError(f"{source}: after_ingest {action} handles local landing directories only ({landing})")
    present = {fs.canonical(path): path for path in landed_files(landing)}
    done = sorted(committed_source_files(bronze.checkpoint) & set(present))
    size = sum(os.stat(present[path]).st_size for path in done)
    if dry_run or not done:
        return Cleanup(landing, len(present), len(done), size, len(present) - len(done))
    root = fs.local_path(landing)
    archive = fs.local_path(config.archive_path(source)) if action == "archive" else None
    for index, path in enumerate(done):
        failpoint(f"maintenance.{action}", index)
        if archive is None:
            Path(present[path]).unlink(missing_ok=True)
        else:
            _move(Path(present[path]), archive / Path(present[path]).relative_to(root))
    return Cleanup(landing, len(present), len(done), size, len(landed_files(landing)))


def _move(source: Path, target: Path) -> None:
    """Move a landing file into the archive (a name already there gets a numbered one beside it)
    so that a crash leaves it whole in one place: a rename, or across file systems a copy under a
    hidden name, then a rename, then the original removed (a crash before that leaves the file
    in landing as well, and the next pass archives it again beside the first, whole)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = target, 0
    while candidate.exists():
        n += 1
        candidate = target.with_name(f"{target.name}.{n}")
    try:
        os.rename(source, candidate)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    partial = candidate.with_name(f".{candidate.name}.partial")
    shutil.copy2(source, partial)
    with open(partial, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, candidate)
    source.unlink()
