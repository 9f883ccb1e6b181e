"""ops.ingested_files: the files a bronze batch read, kept in its checkpoint until appended together.

A file source's bronze batch (lakehouse.landing) writes the rows of the files it read, once
bronze has their lines, to ``<checkpoint>/lakehouse/ingested/<batch>.json`` (:func:`journal`):
one small file, where a Delta commit to ops.ingested_files per batch cost 0.15-0.3 s of every
micro-batch (bench/RESULTS.md, issue 16). :class:`IngestedJournal` appends what batches
journaled to ops.ingested_files in one commit, off the batches' path, whenever the progress
recorder flushes (lakehouse/progress.py: every ``streaming.progress_flush_seconds`` and when the
query stops), then deletes those files. So a file read is in ops.ingested_files within that
interval; in the meantime, and after a crash until the query runs again, its row waits here.

Exactly once:

- only batches the checkpoint has committed are appended: a batch redone after a crash writes
  its file again, and it was never appended before its commit;
- files found when the query starts are what a crash left: appended once the first flush runs,
  except the rows the table already holds (appended, then the crash came before the deletion:
  matched by batch, path and the row's own ``ingested_at``, which a reset checkpoint's older
  rows with the same batch ids do not share).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from lakehouse import fs
from lakehouse.checkpoints import logged_batches
from lakehouse.config import LakehouseConfig
from lakehouse.redaction import redact_text
from lakehouse.row_appends import append_rows
from lakehouse.tables import read_table, resolve_table, table_exists

INGESTED_FILES_TABLE = "ops.ingested_files"
INGESTED_FILES_SCHEMA = StructType(
    [
        StructField("source", StringType()),
        StructField("path", StringType()),  # as bronze names files (_source_file)
        StructField("size", LongType()),  # bytes on disk when read (compressed size for .gz etc.)
        StructField("modification_time", TimestampType()),
        StructField("lines", LongType()),  # rows it gave bronze
        StructField("batch_id", LongType()),
        StructField("ingested_at", TimestampType()),
    ]
)
JOURNAL = "lakehouse/ingested"  # under the query's checkpoint
_TIMES = ("modification_time", "ingested_at")


def _folder(checkpoint: str) -> str:
    return f"{checkpoint.rstrip('/')}/{JOURNAL}"


def journal(spark: SparkSession, checkpoint: str, batch_id: int, rows: list[tuple]) -> None:
    """Keep one batch's ops.ingested_files rows (tuples of INGESTED_FILES_SCHEMA, times aware UTC)
    in the checkpoint; a redone batch's replace its earlier ones."""
    names = INGESTED_FILES_SCHEMA.fieldNames()
    records = [{name: (_micros(value) if name in _TIMES else value) for name, value in zip(names, row, strict=True)}
               for row in rows]
    fs.write_atomic(spark, f"{_folder(checkpoint)}/{batch_id}.json", json.dumps(records).encode("utf-8"))


def journaled_batches(spark: SparkSession, checkpoint: str) -> list[int]:
    """Batches whose rows wait in the checkpoint, in order."""
    return sorted(int(name[:-5]) for name in fs.list_names(spark, _folder(checkpoint))
                  if name.endswith(".json") and name[:-5].isdigit())


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def _micros(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // _MICROSECOND


def _time(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + micros * _MICROSECOND


def _read(spark: SparkSession, checkpoint: str, batch_id: int) -> list[tuple]:
    data = fs.read_bytes(spark, f"{_folder(checkpoint)}/{batch_id}.json")
    if data is None:
        return []
    return [tuple(_time(record[name]) if name in _TIMES else record[name] for name in INGESTED_FILES_SCHEMA.fieldNames())
            for record in json.loads(data)]


class IngestedJournal:
    """Appends the journaled rows of one bronze query's committed batches to ops.ingested_files
    (:meth:`append`, the progress recorder's flush action for the query)."""

    def __init__(self, spark: SparkSession, config: LakehouseConfig, source_name: str, checkpoint: str):
        self.config, self.source_name, self.checkpoint = config, source_name, checkpoint
        # Rows left by a crash may be in the table already: the first append looks.
        self.recovering = bool(journaled_batches(spark, checkpoint))

    def _due(self, spark: SparkSession) -> tuple[list[int], list[tuple]]:
        """The journaled batches the checkpoint has committed, and their rows."""
        waiting = journaled_batches(spark, self.checkpoint)
        committed = logged_batches(self.checkpoint, "commits", spark) if waiting else []
        batches = [b for b in waiting if committed and b <= committed[-1]]
        return batches, [row for batch_id in batches for row in _read(spark, self.checkpoint, batch_id)]

    def append(self, spark: SparkSession) -> int:
        """Append the rows of every journaled batch the checkpoint has committed, in one commit,
        and delete their files; returns the rows appended. Until every file is deleted, the next
        append looks in the table first (a failed deletion would otherwise append its rows again)."""
        batches, rows = self._due(spark)
        if not batches:
            return 0
        ref = resolve_table(self.config, INGESTED_FILES_TABLE)
        self.recovering, recovering = True, self.recovering
        if recovering:
            rows = self._not_in(spark, ref, rows)
        if rows:
            append_rows(spark, rows, INGESTED_FILES_SCHEMA, ref)
        for batch_id in batches:
            fs.delete(spark, f"{_folder(self.checkpoint)}/{batch_id}.json")
        self.recovering = False
        return len(rows)

    def flush(self, spark: SparkSession) -> int:
        """:meth:`append` as the progress recorder's flush action: a failure is printed, not
        raised (the streams go on; the rows wait in the checkpoint for the next flush)."""
        try:
            return self.append(spark)
        except Exception as exc:  # noqa: BLE001 - observability rows: the next flush tries again
            print(f"lakehouse: {INGESTED_FILES_TABLE} not appended for source {self.source_name} (its rows wait in "
                  f"the checkpoint; the next flush retries): {type(exc).__name__}: "
                  f"{redact_text(str(exc).splitlines()[0] if str(exc) else '')}",
                  file=sys.stderr, flush=True)
            return 0

    def waiting(self, spark: SparkSession) -> list[tuple]:
        """Rows of committed batches that wait in the checkpoint and are not in the table yet
        (read-only: `lakehouse reconcile` counts them with the table's)."""
        _, rows = self._due(spark)
        return self._not_in(spark, resolve_table(self.config, INGESTED_FILES_TABLE), rows)

    def _not_in(self, spark: SparkSession, ref, rows: list[tuple]) -> list[tuple]:
        """The rows the table does not hold yet (same source, batch, path and ingest time)."""
        if not rows or not table_exists(spark, ref):
            return rows
        batch_of, path_of, at_of = (INGESTED_FILES_SCHEMA.fieldNames().index(n) for n in ("batch_id", "path", "ingested_at"))
        held = {
            (r["batch_id"], r["path"], r["at"])
            for r in read_table(spark, ref)
            .where((F.col("source") == self.source_name)
                   & F.col("batch_id").isin(sorted({row[batch_of] for row in rows}))
                   & (F.col("ingested_at") >= F.lit(min(row[at_of] for row in rows))))
            .select("batch_id", "path", F.unix_micros("ingested_at").alias("at")).collect()
        }
        return [row for row in rows if (row[batch_of], row[path_of], _micros(row[at_of])) not in held]
