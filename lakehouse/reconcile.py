"""Reconciliation: every bronze row is in silver, in the quarantine, or counted as a duplicate.

``lakehouse reconcile --source S`` checks, for the entities that read S: bronze rows = rows the
silver queries took in = silver + quarantined + duplicates (+ CSV header lines); and, for a file
source, that the lines of the files read equal bronze's rows, naming bad and changed files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse.config import LakehouseConfig
from lakehouse.landing import INGESTED_FILES_TABLE, bad_files, changed_files
from lakehouse.landing_journal import INGESTED_FILES_SCHEMA, IngestedJournal
from lakehouse.pipeline import Pipeline
from lakehouse.silver_tables import SILVER_BATCHES_TABLE
from lakehouse.table_reader import SparkReader
from lakehouse.tables import read_table, resolve_table, table_exists


@dataclass
class Reconciliation:
    source: str
    entities: list[str]
    bronze_rows: int
    refined_rows: int  # bronze rows the silver queries have taken in
    silver_rows: int
    quarantined: int
    duplicates: int
    skipped: int = 0  # CSV header lines: not records
    bronze_tables: list[str] | None = None  # every bronze table the entities read (default: the source's)
    # File sources: lines of the files read into bronze, per source, against bronze's rows.
    landed: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # source -> (files, lines, bronze rows)
    bad_files: list = field(default_factory=list)  # ops.bad_files rows: never in bronze, named here
    changed_files: list = field(default_factory=list)  # landing.ChangedFile: changed after ingest

    @property
    def accounted(self) -> int:
        return self.silver_rows + self.quarantined + self.duplicates + self.skipped

    @property
    def difference(self) -> int:
        return self.refined_rows - self.accounted

    @property
    def landing_holds(self) -> bool:
        return all(lines == rows for _, lines, rows in self.landed.values())

    @property
    def holds(self) -> bool:
        return self.difference == 0 and self.bronze_rows == self.refined_rows and self.landing_holds

    def describe(self) -> str:
        lines = []
        for name, (files, landed_lines, rows) in self.landed.items():
            lines.append(f"landing files of {name}: {files:,} read, {landed_lines:,} lines; bronze.{name}: {rows:,} rows"
                         + ("" if landed_lines == rows else
                            f"  NOT RECONCILED: {rows - landed_lines:+,} rows against the files' lines"))
        if self.bad_files:
            lines.append(f"bad files (not read, so not in bronze; see ops.bad_files): {len(self.bad_files):,}")
            lines += [f"  {row['path']}: {row['reason']} ({row['detail']})" for row in self.bad_files]
        lines += [
            f"{' + '.join(self.bronze_tables or [f'bronze.{self.source}'])}: {self.bronze_rows:,} rows, "
            f"{self.refined_rows:,} refined into "
            f"{', '.join('silver.' + e for e in self.entities)}",
            f"silver {self.silver_rows:,} + quarantined {self.quarantined:,} + duplicates {self.duplicates:,}"
            + (f" + header lines {self.skipped:,}" if self.skipped else "") + f" = {self.accounted:,}",
        ]
        if self.bronze_rows != self.refined_rows:
            lines.append(f"NOT RECONCILED: {self.bronze_rows - self.refined_rows:,} bronze rows not refined yet")
        if self.difference:
            lines.append(f"NOT RECONCILED: {self.difference:+,} rows refined but in none of silver, quarantine, duplicates")
        if self.changed_files:
            lines.append(f"WARNING: {len(self.changed_files):,} landing file(s) changed after they were read; what "
                         "changed is not in bronze (landing files must not change: land new data as new files)")
            lines += [f"  {c.path}: {c.size_read:,} -> {c.size_now:,} bytes, modified {c.mtime_read} -> {c.mtime_now} UTC"
                      for c in self.changed_files]
        if self.holds:
            lines.append("reconciled: every bronze row is in silver, in quarantine, or counted as a duplicate"
                         + (" or a header line" if self.skipped else "")
                         + ("; every landed line of a file read is in bronze" if self.landed else ""))
        return "\n".join(lines)


def reconcile(spark: SparkSession, config: LakehouseConfig, source: str) -> Reconciliation:
    """bronze = silver + quarantine + duplicates, for the entities that read ``source``; and, for
    file sources, the lines of the files read = bronze rows, with bad and changed files named."""
    entities = [name for name, e in config.entities.items() if source in e.sources]
    bronze_rows = 0
    bronze_sources = sorted({s for e in entities for s in config.entity(e).sources} or {source})
    landed, bad, changed = {}, [], []
    ingested_ref = resolve_table(config, INGESTED_FILES_TABLE)
    for name in bronze_sources:
        ref = resolve_table(config, f"bronze.{name}")
        rows = read_table(spark, ref).count() if table_exists(spark, ref) else 0
        bronze_rows += rows
        if config.source(name).kind == "files" and table_exists(spark, ingested_ref):
            files = read_table(spark, ingested_ref).where(F.col("source") == name).agg(
                F.count("*").alias("files"), F.sum("lines").alias("lines")).first()
            # Files of committed batches whose rows still wait in the checkpoint (appended at the
            # recorder's next flush, or the query's next start after a crash): bronze has their lines.
            waiting = IngestedJournal(spark, config, name, Pipeline(config).bronze(name).checkpoint).waiting(spark)
            lines_at = INGESTED_FILES_SCHEMA.fieldNames().index("lines")
            landed[name] = (files["files"] + len(waiting),
                            (files["lines"] or 0) + sum(row[lines_at] or 0 for row in waiting), rows)
            bad += bad_files(spark, config, name)
            changed += changed_files(SparkReader(spark, config), name)
    refined = silver_rows = quarantined = duplicates = skipped = 0
    batches_ref = resolve_table(config, SILVER_BATCHES_TABLE)
    for entity in entities:
        silver_ref = resolve_table(config, f"silver.{entity}")
        if not table_exists(spark, silver_ref):
            continue
        silver_rows += read_table(spark, silver_ref).count()
        quarantined += read_table(spark, resolve_table(config, f"silver.{entity}_quarantine")).count()
        batches = read_table(spark, batches_ref)
        sums = batches.where(F.col("entity") == entity).agg(
            F.sum("bronze_rows").alias("refined"), F.sum("duplicates").alias("duplicates"),
            F.sum("skipped" if "skipped" in batches.columns else F.lit(0)).alias("skipped")).first()
        refined += sums["refined"] or 0
        duplicates += sums["duplicates"] or 0
        skipped += sums["skipped"] or 0
    return Reconciliation(source, entities, bronze_rows, refined, silver_rows, quarantined, duplicates, skipped,
                          [f"bronze.{name}" for name in bronze_sources], landed, bad, changed)
