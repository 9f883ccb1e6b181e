"""Which tables maintenance keeps (lakehouse/maintenance.py) and `lakehouse status` sizes: every
table the pipeline writes, then the ops tables; and which ops tables are logs, trimmed to
``ops.retention``."""

from __future__ import annotations

from lakehouse.config import LakehouseConfig
from lakehouse.errors import UsageError
from lakehouse.freshness import FRESHNESS_TABLE
from lakehouse.landing import BAD_FILES_TABLE, INGESTED_FILES_TABLE
from lakehouse.maintenance_steps import MAINTENANCE_TABLE
from lakehouse.pipeline import Pipeline
from lakehouse.progress import STREAM_PROGRESS_TABLE
from lakehouse.quality import QUALITY_RESULTS_TABLE
from lakehouse.silver_tables import SILVER_BATCHES_TABLE

# ops tables that are logs of the run: trimmed to ops.retention by the column that dates a row
LOG_TABLES = {
    STREAM_PROGRESS_TABLE: "batch_time",
    FRESHNESS_TABLE: "commit_time",
    QUALITY_RESULTS_TABLE: "validated_at",
    MAINTENANCE_TABLE: "started_at",
}
OPS_TABLES = (*LOG_TABLES, SILVER_BATCHES_TABLE, INGESTED_FILES_TABLE, BAD_FILES_TABLE)


def maintained_tables(config: LakehouseConfig) -> list[str]:
    """Every table the pipeline writes (inputs first), then the ops tables: the tables maintenance
    keeps and `lakehouse status` sizes, whether they exist yet or not."""
    return list(dict.fromkeys([table for flow in Pipeline(config).inputs_first() for table in flow.writes]
                              + list(OPS_TABLES)))


def check_table_names(config: LakehouseConfig, names: list[str]) -> None:
    """Raise UsageError for a name that is not one of :func:`maintained_tables` (no Spark needed)."""
    known = maintained_tables(config)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"maintain: no such table {unknown[0]} (tables: {', '.join(known)})")
