"""Table maintenance: what keeps a lakehouse that runs for weeks from growing without bound.

For each table (every table the pipeline writes, and the ``ops.*`` tables), in this order:

1. ``settings``: ``delta.deletedFileRetentionDuration`` and ``delta.logRetentionDuration`` from
   ``maintenance.*``, where they differ (one metadata commit, the first time only).
2. ``retention`` (the ops tables that are logs): rows older than ``ops.retention`` are deleted.
   The accounting tables (silver_batches, ingested_files, bad_files) are kept whole:
   reconciliation and exactly-once read all of them.
3. ``compact``: OPTIMIZE once the table holds ``maintenance.compact_min_files`` data files, into
   files of at most ``maintenance.file_mib`` (silver: ``maintenance.silver_file_mib``, by
   Z-order on its keys with ``maintenance.zorder_silver``). It commits with dataChange=false:
   streaming readers and the change feed skip it.
4. ``vacuum``: VACUUM with the table's own retention (never a shorter RETAIN), skipped while a
   file a streaming reader's checkpoint would still read on a restart was removed long enough
   ago to be deleted (lakehouse/reader_holds.py).

Then each files source with ``after_ingest: archive | delete`` is cleaned (lakehouse/landing_cleanup.py).
Each step is a row of ``ops.maintenance`` (lakehouse/maintenance_steps.py). A commit that loses
to a concurrent one (Delta's optimistic concurrency) is retried with backoff, up to
``maintenance.max_attempts``.

Inside `lakehouse run` (lakehouse/app.py) a pass runs every ``maintenance.interval`` in a thread
of its own (scheduler pool ``maintenance``) beside the streams. Each pass compacts; the
clean-up steps (retention, vacuum) run on a table at most every ``maintenance.cleanup_every``:
each costs a scan of the table's log and files (on a local path, a VACUUM runs only when a file
of the table's directory that its newest version does not read is older than the retention),
for files that become deletable only a retention (7 days) after their removal. Where a flow
rewrites files (silver's MERGE, a batch gold table's overwrite), compaction takes that table's
writer lock (:func:`lakehouse.tables.writing`) and so runs between two of the flow's
micro-batches: a race would waste the compaction, or fail the MERGE, whenever a batch touched a
compacted file, and a busy table might never be compacted (delta-io/delta#1449). Appends never
conflict with compaction: bronze and the ops tables are compacted while their flows write.
"""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import datetime, timedelta, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import fs
from lakehouse.config import LakehouseConfig, duration_seconds
from lakehouse.formatting import duration_text, size_text
from lakehouse.landing_cleanup import clean_landing
from lakehouse.maintained_tables import LOG_TABLES, check_table_names, maintained_tables
from lakehouse.maintenance_steps import CLEANUP_STEPS, MAINTENANCE_SCHEMA, MAINTENANCE_TABLE, OK_OUTCOMES, Step
from lakehouse.pipeline import Pipeline
from lakehouse.reader_holds import reader_holds
from lakehouse.redaction import redact_text
from lakehouse.row_appends import append_rows
from lakehouse.table_create import create_table_if_missing
from lakehouse.tables import (
    TableRef,
    WaitStopped,
    delta_table,
    read_table,
    resolve_table,
    retry_on_conflict,
    session_conf,
    sql_target,
    table_exists,
    table_properties,
    table_size,
    writing,
)


class Maintainer:
    """Maintains the tables of one configuration; :meth:`run` does one pass over them."""

    def __init__(self, spark: SparkSession, config: LakehouseConfig, dry_run: bool = False,
                 stop: threading.Event | None = None, out=None, settings_step: bool = True,
                 job_group: str | None = None, cleaned: dict[str, float] | None = None):
        self.spark, self.config, self.dry_run = spark, config, dry_run
        self.settings_step = settings_step  # False: the run applied them before its streams started
        self.stop = stop or threading.Event()  # set: the pass ends after the step it is in
        self.job_group = job_group  # each step's Spark jobs, for a stop to cancel (not the ops row)
        # `lakehouse run`'s: when each table's clean-up last completed (time.monotonic()); given,
        # the clean-up steps wait for maintenance.cleanup_every to pass (None: they always run).
        self.cleaned = cleaned
        self.out = out or (lambda line: print(line, flush=True))
        self.pipeline = Pipeline(config)
        self.settings = config.maintenance

    # -- which tables --------------------------------------------------------------------------
    def tables(self, names: list[str] | None = None) -> list[TableRef]:
        """The tables to maintain: ``names``, or every table the pipeline writes and every ops table,
        those that exist."""
        known = maintained_tables(self.config)
        if names:
            check_table_names(self.config, names)
            known = [name for name in known if name in names]
        refs = [resolve_table(self.config, name) for name in dict.fromkeys(known)]
        return [ref for ref in refs if table_exists(self.spark, ref)]

    # -- one pass ------------------------------------------------------------------------------
    def run(self, names: list[str] | None = None, landing: bool = True) -> list[Step]:
        """One pass: every step on every table, then the landing clean-up. Returns the steps; each
        (but a dry run's) is also in ops.maintenance."""
        steps: list[Step] = []
        tables = self.tables(names)  # an unknown name fails before anything changes
        self.out(f"{len(tables)} table(s){' (dry run: nothing changes)' if self.dry_run else ''}")
        waiting = []  # tables whose clean-up is not due
        for ref in tables:
            cleanup = self._cleanup_due(ref)
            if not cleanup:
                waiting.append(ref.name)
            began, ran = time.monotonic(), []
            for name, action in (("settings", self.apply_settings), ("retention", self.trim),
                                 ("compact", self.compact), ("vacuum", self.vacuum)):
                if (name == "settings" and not self.settings_step) or (name in CLEANUP_STEPS and not cleanup):
                    continue
                if self.stop.is_set():
                    break
                step = self._attempt(ref.name, name, lambda a=action, r=ref: a(r))
                if step is not None:
                    ran.append(step)
            steps.extend(ran)
            if cleanup:
                self._cleanup_done(ref, began, ran)
        if waiting:
            self.out(f"retention and vacuum of {len(waiting)} table(s) wait: cleaned up less than "
                     f"maintenance.cleanup_every ({self.settings.cleanup_every}) ago")
        if landing and not names:
            for source, settings in self.config.sources.items():
                if settings.kind == "files" and settings.after_ingest != "keep" and not self.stop.is_set():
                    step = self._attempt(source, settings.after_ingest, lambda s=source: self.clean_landing(s))
                    if step is not None:
                        steps.append(step)
        if steps and not self.dry_run:
            self._record(steps)
        return steps

    def _cleanup_due(self, ref: TableRef) -> bool:
        if self.cleaned is None or self.settings.cleanup_every is None or ref.name not in self.cleaned:
            return True
        return time.monotonic() - self.cleaned[ref.name] >= duration_seconds(self.settings.cleanup_every)

    def _cleanup_done(self, ref: TableRef, began: float, steps: list[Step]) -> None:
        """Note the table's clean-up (due in this pass) as done when it ran whole: a skipped vacuum
        (a reader holds files), a failed or stopped step is tried again at the next pass."""
        if self.cleaned is None or self.stop.is_set():
            return
        if all(step.outcome in OK_OUTCOMES for step in steps if step.action in CLEANUP_STEPS):
            self.cleaned[ref.name] = began

    def _attempt(self, name: str, action: str, do) -> Step | None:
        """Run one step; a failure is recorded as its outcome (the other steps go on)."""
        started = time.monotonic()
        context = self.spark.sparkContext
        if self.job_group:
            context.setJobGroup(self.job_group, f"lakehouse maintenance: {name}: {action}", interruptOnCancel=False)
        try:
            step = do()
        except Exception as exc:  # noqa: BLE001 - one failed step is recorded; the others go on
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            # A stop cancels the step's Spark jobs after a while (lakehouse.app.ScheduledMaintenance),
            # or ends its wait for the writer lock.
            stopped = self.stop.is_set() and (isinstance(exc, WaitStopped) or "cancelled" in str(exc))
            step = Step(name, action, outcome="stopped" if stopped else "failed",
                        detail=redact_text(f"{type(exc).__name__}: {first}")[:500])
            step.attempts = getattr(exc, "attempts", 1)
        finally:
            if self.job_group:
                for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
                    context.setLocalProperty(key, None)
        if step is None:
            return None
        step.duration_s = round(time.monotonic() - started, 3)
        self.out(step.describe(self.dry_run))
        return step

    def _record(self, steps: list[Step]) -> None:
        ref = resolve_table(self.config, MAINTENANCE_TABLE)
        create_table_if_missing(self.spark, ref, MAINTENANCE_SCHEMA, comment="One row per maintenance step")
        append_rows(self.spark, [s.row() for s in steps], MAINTENANCE_SCHEMA, ref)

    def _retrying(self, ref: TableRef, action, locked: bool):
        """``action()`` retried after a conflicting commit; under the table's writer lock when
        ``locked``. Returns (result, attempts)."""
        def once():
            if not locked:
                return action()
            with writing(ref, stop=self.stop):
                return action()

        attempts = [1]

        def retrying(attempt: int, exc: BaseException) -> None:
            attempts[0] = attempt + 1
            self.out(f"{ref.name}: a concurrent commit won ({type(exc).__name__}); retrying "
                     f"(attempt {attempt + 1} of {self.settings.max_attempts})")

        try:
            return retry_on_conflict(once, self.settings.max_attempts, on_retry=retrying)
        except Exception as exc:
            exc.attempts = attempts[0]  # for the failed step's row
            raise

    def _rewrites_files(self, ref: TableRef) -> bool:
        """Whether the table's flow rewrites files (a MERGE or an overwrite), so that a compaction
        must take turns with it."""
        flow = self.pipeline.producer(ref.name)
        return flow is not None and (flow.kind == "silver" or (flow.kind == "gold" and not flow.streaming)
                                     or flow.kind == "score")

    # -- the steps -----------------------------------------------------------------------------
    def settle(self) -> list[Step]:
        """The settings step alone, on every existing table: `lakehouse run` does it before it
        starts its streams, since a change of a table's metadata fails a concurrent Delta sink's
        commit. (Tables made later get the settings as the session's defaults: delta_defaults.)"""
        steps = [step for ref in self.tables() if (step := self._attempt(ref.name, "settings",
                                                                          lambda r=ref: self.apply_settings(r)))]
        if steps and not self.dry_run:
            self._record(steps)
        return steps

    def apply_settings(self, ref: TableRef) -> Step | None:
        wanted = self.settings.table_properties()
        current = table_properties(self.spark, ref)
        changes = {key: value for key, value in wanted.items() if current.get(key) != value}
        if not changes:
            return None
        step = Step(ref.name, "settings", detail=", ".join(f"{k} = {v}" for k, v in changes.items()))
        if self.dry_run:
            return step
        assignments = ", ".join(f"'{key}' = '{value}'" for key, value in changes.items())
        _, step.attempts = self._retrying(
            ref, lambda: self.spark.sql(f"ALTER TABLE {sql_target(ref)} SET TBLPROPERTIES ({assignments})"), locked=True)
        return step

    def trim(self, ref: TableRef) -> Step | None:
        column = LOG_TABLES.get(ref.name)
        if column is None or self.config.ops.retention is None:
            return None
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=duration_seconds(self.config.ops.retention))
        old = F.col(column) < F.lit(cutoff)
        table = delta_table(self.spark, ref)
        before = table_size(self.spark, ref)
        expired = table.toDF().where(old).count()
        step = Step(ref.name, "retention", version_before=before.version, files_before=before.files,
                    bytes_before=before.bytes, detail=f"{expired:,} rows older than {self.config.ops.retention}")
        if expired == 0:
            step.outcome, step.files_before, step.bytes_before = "nothing to do", None, None
            return step
        if self.dry_run:
            return step
        _, step.attempts = self._retrying(ref, lambda: table.delete(old), locked=False)
        after = table_size(self.spark, ref)
        step.files_after, step.bytes_after, step.version_after = after.files, after.bytes, after.version
        return step

    def compact(self, ref: TableRef) -> Step | None:
        before = table_size(self.spark, ref)
        zorder = self._zorder_keys(ref)
        how = f"Z-order by {', '.join(zorder)}" if zorder else "bin-packing"
        step = Step(ref.name, "compact", files_before=before.files, bytes_before=before.bytes,
                    version_before=before.version, detail=how)
        if before.files < self.settings.compact_min_files:
            step.outcome = "nothing to do"
            step.detail = f"{before.files} files, fewer than maintenance.compact_min_files ({self.settings.compact_min_files})"
            step.files_before = step.bytes_before = None
            return step
        if self.dry_run:
            step.detail = f"{before.files:,} files, {size_text(before.bytes)}, by {how}"
            return step

        # A MERGE target's files stay small: a MERGE rewrites every file one of its keys is in.
        # Files of the size are left alone (minFileSize), so a pass rewrites at most one file's
        # worth of a table besides its new small files.
        file_size = (self.settings.silver_file_mib if self._merge_entity(ref) else self.settings.file_mib) * 1048576

        def optimize():
            builder = delta_table(self.spark, ref).optimize()
            with session_conf(self.spark, {OPTIMIZE_MIN_FILE_SIZE: file_size, OPTIMIZE_MAX_FILE_SIZE: file_size}):
                metrics = (builder.executeZOrderBy(*zorder) if zorder else builder.executeCompaction()).first()
            return metrics, table_size(self.spark, ref)  # still under the writer lock, if taken

        (metrics, after), step.attempts = self._retrying(ref, optimize, locked=self._rewrites_files(ref))
        figures = metrics["metrics"] if metrics is not None else None
        if figures is None or not figures["numFilesRemoved"]:
            step.outcome = "nothing to do"  # no bin had two files (Delta commits nothing then)
            step.files_before = step.bytes_before = None
            return step
        # Appends (bronze, the ops tables) go on meanwhile, so each before/after pair comes from
        # one snapshot: files from the one OPTIMIZE read (totalConsideredFiles: every file of
        # it), bytes from the table right after its commit, less what it added, plus what it
        # removed (an append committed in between counts in both).
        step.files_before = figures["totalConsideredFiles"]
        step.files_after = step.files_before - figures["numFilesRemoved"] + figures["numFilesAdded"]
        step.bytes_after, step.version_after = after.bytes, after.version
        step.bytes_before = after.bytes + figures["filesRemoved"]["totalSize"] - figures["filesAdded"]["totalSize"]
        return step

    def _merge_entity(self, ref: TableRef) -> str | None:
        """The entity whose silver MERGE writes this table (None for any other table)."""
        flow = self.pipeline.producer(ref.name)
        return flow.name if flow is not None and flow.kind == "silver" and ref.name == flow.writes[0] else None

    def _zorder_keys(self, ref: TableRef) -> list[str]:
        entity = self._merge_entity(ref)
        return list(self.config.entity(entity).keys) if entity and self.settings.zorder_silver else []

    def vacuum(self, ref: TableRef) -> Step | None:
        detail = delta_table(self.spark, ref).detail().select("id", "location", "properties").first()
        retention_s = _retention_seconds(detail["properties"])
        retention = duration_text(retention_s)
        step = Step(ref.name, "vacuum")
        before = fs.local_files(ref.path, skip="_delta_log") if ref.is_path else None
        doomed = None

        def nothing_due() -> bool:
            """What VACUUM would delete, from its own dry run: True when nothing."""
            nonlocal doomed
            doomed = {fs.canonical(row[0]) for row in self.spark.sql(f"VACUUM {sql_target(ref)} DRY RUN").collect()}
            step.detail = f"{len(doomed):,} unreferenced files past the retention ({retention})"
            if not doomed:
                step.outcome = "nothing to do"
            return not doomed

        if before is not None and not self._vacuum_may_delete(ref, before, retention_s):
            step.outcome, step.detail = "nothing to do", f"no unreferenced files past the retention ({retention})"
            return step
        # A table on a path of this machine is listed before and after the VACUUM instead of a
        # dry run first (which costs as much as the VACUUM).
        if (before is None or self.dry_run) and nothing_due():
            return step
        held = reader_holds(self.spark, self.pipeline, ref, detail["id"], detail["location"], retention_s)
        if (held is None or held) and doomed is None and nothing_due():
            return step  # a reader behind, but nothing to delete
        if held is None or held:
            # VACUUM cannot be told to spare files, and lengthening the table's retention is a
            # metadata commit that fails every concurrent writer: the table waits for its reader.
            step.outcome = "skipped"
            step.detail = ("a streaming reader's checkpoint starts before the oldest commit in the log"
                           if held is None else
                           f"{held:,} files a streaming reader's checkpoint would still read were removed longer "
                           f"ago than the retention ({retention}) allows; vacuumed once it has read past them")
            return step
        if self.dry_run:
            removed = [path for path in before or {} if path in doomed]
        else:
            _, step.attempts = self._retrying(ref, lambda: self.spark.sql(f"VACUUM {sql_target(ref)}").collect(),
                                              locked=False)
            if before is None:
                return step  # not a path on this machine: the dry run's figure stands
            # Only VACUUM deletes a table's files: what it removed was there and is gone (files written meanwhile aside).
            removed = [path for path in before if not os.path.exists(path)]
            step.detail = f"{len(removed):,} unreferenced files past the retention ({retention})"
            if not removed:
                step.outcome = "nothing to do"
                return step
        if before is not None:
            step.files_before, step.bytes_before = len(before), sum(size for size, _ in before.values())
            step.files_after = step.files_before - len(removed)
            step.bytes_after = step.bytes_before - sum(before[path][0] for path in removed)
        return step

    def _vacuum_may_delete(self, ref: TableRef, files: dict[str, tuple[int, float]], retention_s: float) -> bool:
        """Whether VACUUM might delete a file: one of the table's directory (``files``, listed
        before this looks at the table) that its newest version does not read and that was
        written longer ago than the retention. VACUUM deletes only such files (of those, it keeps
        the ones removed within the retention), so without one it is not run: on two cores it
        costs 2-5 s a table and two commits (VACUUM START and END) even then, and the empty
        directories it would remove wait for a VACUUM that runs. A deletion vector's file counts
        as unreferenced here (only data files are read): VACUUM decides for a table with one."""
        cutoff = time.time() - retention_s
        old = [path for path, (_, written) in files.items() if written < cutoff]
        if not old:
            return False
        current = {fs.canonical(path) for path in read_table(self.spark, ref).inputFiles()}
        return any(path not in current for path in old)

    def clean_landing(self, source: str) -> Step:
        """Archive or delete the landing files of committed micro-batches (``after_ingest``)."""
        done = clean_landing(self.config, self.pipeline.bronze(source), self.dry_run)
        return Step(source, self.config.source(source).after_ingest, outcome="done" if done.done else "nothing to do",
                    files_before=done.present, files_after=done.left,
                    detail=f"{done.done:,} files of committed batches ({size_text(done.bytes)}) of {done.present:,} "
                           f"in {done.landing}")


OPTIMIZE_MIN_FILE_SIZE = "spark.databricks.delta.optimize.minFileSize"  # smaller files are compacted
OPTIMIZE_MAX_FILE_SIZE = "spark.databricks.delta.optimize.maxFileSize"  # the files it writes


def _retention_seconds(properties: dict | None) -> float:
    """A table's delta.deletedFileRetentionDuration (of its properties) in seconds (Delta's default: 7 days)."""
    value = (properties or {}).get("delta.deletedFileRetentionDuration", "interval 7 days")
    seconds = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", value.lower().removeprefix("interval")):
        seconds += duration_seconds(f"{number} {unit}")
    return seconds
