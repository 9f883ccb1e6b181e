"""Failpoints: named places in a micro-batch where a test can make the job crash.

The crash tests need to stop a job between two particular writes of one micro-batch, which a
``kill -9`` from outside cannot aim at. ``$LAKEHOUSE_FAILPOINTS`` lists where, as
``point[@batch][=action]`` items separated by commas, for example
``silver.merge@1=kill,bronze.read``. ``action`` is ``raise`` (the default: the batch fails
like any error, the query stops without committing it), ``kill`` (the process kills itself
with SIGKILL, as a crash would), ``raise-once`` (``raise`` the first time this process gets
there, a transient failure that a restart gets past) or ``sleep:<seconds>`` (to widen a race window). Without the
variable, :func:`failpoint` does nothing; production runs never set it. The points:
bronze.read / append / bad_files / ingested_files / done (lakehouse.landing), silver.plan / quarantine /
quality / merge / stats / done (lakehouse.silver), gold.build (lakehouse.gold, a batch table), train.promote (ml.run).
"""

from __future__ import annotations

import os
import signal
import time

FAILPOINTS_ENV = "LAKEHOUSE_FAILPOINTS"
_fired: set[tuple[str, int | None]] = set()  # raise-once points that have raised in this process


class FailpointError(RuntimeError):
    """Raised at a failpoint whose action is ``raise``."""


def _armed(name: str, batch_id: int | None) -> str | None:
    for item in os.environ.get(FAILPOINTS_ENV, "").split(","):
        spec, _, action = item.strip().partition("=")
        point, _, batch = spec.partition("@")
        if point == name and (not batch or (batch_id is not None and int(batch) == batch_id)):
            return action or "raise"
    return None


def failpoint(name: str, batch_id: int | None = None) -> None:
    """Crash here if ``$LAKEHOUSE_FAILPOINTS`` arms ``name`` (for this batch)."""
    action = _armed(name, batch_id)
    if action is None:
        return
    if action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
        return
    if action == "raise-once":
        if (name, batch_id) in _fired:
            return
        _fired.add((name, batch_id))
        raise FailpointError(f"failpoint {name} (batch {batch_id}, once)")
    if action == "kill":
        # A job started as its own process group (as the crash tests start them) dies with its JVM.
        if os.getpgid(0) == os.getpid():
            os.killpg(0, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    raise FailpointError(f"failpoint {name} (batch {batch_id})")
