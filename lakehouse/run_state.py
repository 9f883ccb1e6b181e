"""What the always-on `lakehouse run` is doing, for other processes to read (`lakehouse ui`):
each flow's state (starting, running, waiting to restart, idle, building, stopped, failed) and
its last error, in ``<data_dir>/run/state.json``.

lakehouse/app.py publishes it every few seconds while it runs, and once more when it stops; a
reader takes the states as live only while the writing process is alive and the file is fresh.
Best effort: a state that cannot be written costs the page its states, never the run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lakehouse.config import LakehouseConfig

PUBLISH_SECONDS = 2.0  # how often the run rewrites the file
STALE_SECONDS = 30.0  # a file older than this is a run that died without saying so


def state_path(config: LakehouseConfig) -> Path:
    return Path(config.storage.data_dir, "run", "state.json")


def publish(config: LakehouseConfig, flows: dict[str, dict], stopped: bool = False) -> None:
    """Write the flows' states (flow id -> {"state", "error", "restarts"}) atomically."""
    path = state_path(config)
    document = {"pid": os.getpid(), "updated_at": time.time(), "stopped": stopped, "flows": flows}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(document))
        os.replace(temporary, path)
    except OSError:
        pass


def read_state(config: LakehouseConfig) -> dict:
    """The last published states, with ``live``: whether a run is publishing them now. Without a
    file: no flow states, not live."""
    try:
        document = json.loads(state_path(config).read_text())
    except (OSError, ValueError):
        return {"live": False, "flows": {}, "updated_at": None}
    fresh = time.time() - float(document.get("updated_at") or 0) < STALE_SECONDS
    document["live"] = bool(fresh and not document.get("stopped") and _alive(int(document.get("pid") or 0)))
    return document


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
