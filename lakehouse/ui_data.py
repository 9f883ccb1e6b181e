"""The figures of the operations page (`lakehouse ui`, lakehouse/ui.py), read without a JVM.

:func:`overview` gathers, as one JSON-able dict (also served at ``/api/overview``):

- ``graph``: sources -> bronze -> silver (+ quarantine) -> gold -> model -> predictions, each
  node with its version, rows, freshness and state (lakehouse/run_state.py: running, idle,
  waiting, failed with the error; ``stopped`` when no `lakehouse run` is publishing);
- ``flows``: per streaming query, its recent batches from ops.stream_progress (R, B = R/S, batch
  duration, backlog or consumer lag) and the p95 freshness of the tables it writes (ops.freshness);
- ``quality``: each entity's pass rate per batch (ops.silver_batches) with its Data Docs page,
  the top quarantine reasons with counts and an example raw record, and the bad files;
- ``training``: the recent runs with their loss curves, the champion and its input versions,
  and links into the MLflow UI.

Tables are read by lakehouse.table_reader.DirectReader (delta-rs and DuckDB); the runs by
MLflow's client from the configured tracking store.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from lakehouse.config import LakehouseConfig
from lakehouse.freshness import FRESHNESS_TABLE
from lakehouse.landing import BAD_FILES_TABLE
from lakehouse.pipeline import SCORE, TRAIN, Pipeline
from lakehouse.progress import STREAM_PROGRESS_TABLE
from lakehouse.run_state import read_state
from lakehouse.silver_tables import SILVER_BATCHES_TABLE
from lakehouse.status import file_backlog, kafka_partitions, source_backlog

BATCHES_SHOWN = 200  # per flow and per table, the newest
REASONS_SHOWN = 10
EXAMPLE_CHARS = 300  # of an example raw record


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(timezone.utc).isoformat(timespec="seconds")


def overview(reader, config: LakehouseConfig, mlflow_ui: str | None = None) -> dict:
    """Everything the page shows, from the tables as they are now."""
    began = time.monotonic()
    state = read_state(config)
    freshness = _freshness(reader)
    trained = training(config, mlflow_ui)
    page = {
        "generated_at": _iso(datetime.now(timezone.utc)),
        "run": {"live": state["live"], "updated_at": state.get("updated_at")},
        "graph": graph(reader, config, state, freshness, trained.get("champion")),
        "flows": flows(reader, config, freshness),
        "quality": quality(reader, config),
        "training": trained,
    }
    page["seconds"] = round(time.monotonic() - began, 3)
    return page


# -- the graph ----------------------------------------------------------------------------------


def graph(reader, config: LakehouseConfig, state: dict, freshness: dict[str, list[dict]],
          champion: dict | None = None) -> dict:
    """Nodes (id, kind, column, version, rows, last commit, age, state, error) and edges; the
    model's version is its champion's."""
    pipeline = Pipeline(config)
    flows_state = state.get("flows", {})
    nodes, edges, column = [], [], {}

    def node(node_id: str, kind: str, at: int, **figures):
        column[node_id] = at
        nodes.append({"id": node_id, "kind": kind, "column": at, **figures})

    for name, source in config.sources.items():
        node(f"source:{name}", "source", 0, label=f"{name} ({source.kind})")
    for flow in pipeline.inputs_first():
        upstream = [f"source:{flow.name}"] if flow.kind == "bronze" else list(flow.inputs)
        if flow.kind == SCORE:
            upstream = [f"model:{flow.name}"]
        at = 1 + max((column.get(u, 0) for u in upstream), default=0)
        run = flows_state.get(flow.id, {})
        flow_state = run.get("state") if state["live"] else ("failed" if run.get("state") == "failed" else "stopped")
        if flow.kind == TRAIN:
            node(f"model:{flow.name}", "model", at, label=flow.name, state=flow_state, error=run.get("error"),
                 version=champion["version"] if champion else None, rows=None, last_commit=None, age_s=None)
            edges += [(u, f"model:{flow.name}") for u in upstream]
            continue
        for table in flow.writes:
            kind = "quarantine" if table.endswith("_quarantine") else flow.kind
            node(table, kind, at, label=table, state=flow_state, error=run.get("error"),
                 **_table_figures(reader, table, freshness))
            edges += [(u, table) for u in upstream]
    return {"nodes": nodes, "edges": [list(edge) for edge in dict.fromkeys(edges) if edge[0] in column]}


def _table_figures(reader, table: str, freshness: dict[str, list[dict]]) -> dict:
    if not reader.exists(table):
        return {"version": None, "rows": None, "last_commit": None, "age_s": None}
    rows = reader.count(table)
    newest = (freshness.get(table) or [None])[-1]
    committed = newest["commit_time"] if newest else None
    return {"version": reader.table(table).version(), "rows": rows, "last_commit": _iso(committed),
            "age_s": None if committed is None else round((datetime.now(timezone.utc) - committed).total_seconds(), 1)}


# -- flows --------------------------------------------------------------------------------------


def _freshness(reader) -> dict[str, list[dict]]:
    """Each table's newest ops.freshness rows, oldest first."""
    if not reader.exists(FRESHNESS_TABLE):
        return {}
    rows = reader.rows("SELECT table_name, commit_time, rows, event_p95_s, ingest_p95_s, window_p95_s FROM "
                       "(SELECT *, row_number() OVER (PARTITION BY table_name ORDER BY commit_time DESC) AS n "
                       f"FROM {{t}}) AS newest WHERE n <= {BATCHES_SHOWN} ORDER BY commit_time", FRESHNESS_TABLE)
    by_table: dict[str, list[dict]] = {}
    for row in rows:
        by_table.setdefault(row["table_name"], []).append(row)
    return by_table


def flows(reader, config: LakehouseConfig, freshness: dict[str, list[dict]]) -> list[dict]:
    """Per streaming flow (inputs first): its recent batches and its tables' p95 freshness."""
    progress: dict[str, list[dict]] = {}
    if reader.exists(STREAM_PROGRESS_TABLE):
        rows = reader.rows(
            "SELECT query_name, batch_id, batch_time, batch_duration_ms, num_input_rows, records_per_second, "
            "num_input_files, progress_json FROM (SELECT *, row_number() OVER (PARTITION BY query_name "
            f"ORDER BY batch_time DESC) AS n FROM {{t}}) AS newest WHERE n <= {BATCHES_SHOWN} ORDER BY batch_time",
            STREAM_PROGRESS_TABLE)
        for row in rows:
            progress.setdefault(row["query_name"], []).append(row)
    found = []
    for flow in Pipeline(config).inputs_first():
        if not flow.streaming:
            continue
        batches = []
        for row in progress.get(flow.query_name, []):
            channels = row["num_input_files"] or kafka_partitions(row["progress_json"])
            rate = row["records_per_second"]
            backlog = source_backlog(row["progress_json"])
            batches.append({
                "batch_id": row["batch_id"], "time": _iso(row["batch_time"]), "records": row["num_input_rows"],
                "records_per_second": rate, "per_channel": rate / channels if rate is not None and channels else None,
                "duration_s": None if row["batch_duration_ms"] is None else row["batch_duration_ms"] / 1000,
                "backlog": backlog[0] if backlog else None, "backlog_unit": backlog[1] if backlog else None,
            })
        waiting = None
        if flow.kind == "bronze" and config.source(flow.name).kind == "files":
            waiting = file_backlog(config, flow)
        found.append({
            "flow": flow.id, "query": flow.query_name, "kind": flow.kind, "batches": batches,
            "landed_not_read": waiting,
            "freshness": {table: [{"time": _iso(r["commit_time"]), "event_p95_s": r["event_p95_s"],
                                   "ingest_p95_s": r["ingest_p95_s"], "window_p95_s": r["window_p95_s"]}
                                  for r in freshness.get(table, [])]
                          for table in flow.writes if table in freshness},
        })
    return found


# -- quality ------------------------------------------------------------------------------------


def quality(reader, config: LakehouseConfig) -> dict:
    """Pass rate per entity and batch, top quarantine reasons with an example, bad files."""
    docs = data_docs_pages(config)
    pass_rates: dict[str, list[dict]] = {}
    if reader.exists(SILVER_BATCHES_TABLE):
        rows = reader.rows("SELECT entity, batch_id, bronze_rows, quarantined, recorded_at FROM (SELECT *, "
                           "row_number() OVER (PARTITION BY entity ORDER BY recorded_at DESC) AS n FROM {t}) "
                           f"AS newest WHERE n <= {BATCHES_SHOWN} ORDER BY recorded_at", SILVER_BATCHES_TABLE)
        for row in rows:
            total = row["bronze_rows"] or 0
            pass_rates.setdefault(row["entity"], []).append({
                "batch_id": row["batch_id"], "time": _iso(row["recorded_at"]), "rows": total,
                "quarantined": row["quarantined"],
                "pass_rate": None if not total else round((total - (row["quarantined"] or 0)) / total, 4),
                "data_docs": docs.get((row["entity"], row["batch_id"])),
            })
    reasons = []
    for entity in config.entities:
        table = f"silver.{entity}_quarantine"
        if not reader.exists(table):
            continue
        for row in reader.rows(
                "SELECT reason, count(*) AS n, any_value(example) AS example FROM (SELECT unnest(reasons) AS reason, "
                f"left(value, {EXAMPLE_CHARS}) AS example FROM {{t}}) AS flat GROUP BY reason ORDER BY n DESC, "
                f"reason LIMIT {REASONS_SHOWN}", table):
            reasons.append({"entity": entity, "reason": row["reason"], "count": row["n"], "example": row["example"]})
    bad = []
    if reader.exists(BAD_FILES_TABLE):
        bad = [{"source": r["source"], "path": r["path"], "reason": r["reason"], "detail": r["detail"],
                "recorded_at": _iso(r["recorded_at"])}
               for r in reader.rows("SELECT * FROM {t} ORDER BY recorded_at DESC LIMIT 50", BAD_FILES_TABLE)]
    return {"pass_rates": pass_rates, "reasons": sorted(reasons, key=lambda r: -r["count"]), "bad_files": bad,
            "data_docs_index": "index.html" if data_docs_root(config).joinpath("index.html").is_file() else None}


def data_docs_root(config: LakehouseConfig) -> Path:
    """Where `lakehouse quality docs` builds the GX site (lakehouse/quality.py)."""
    return Path(config.storage.data_dir, "quality", "gx", "uncommitted", "data_docs", "local_site")


def data_docs_pages(config: LakehouseConfig) -> dict[tuple[str, int], str]:
    """(entity, batch) -> the validation page's path inside the site (named ``<entity>-batch-<id>.html``)."""
    root = data_docs_root(config)
    pages = {}
    for page in sorted(root.glob("validations/**/*-batch-*.html")):
        entity, _, batch = page.stem.rpartition("-batch-")
        if batch.isdigit():
            pages[(entity, int(batch))] = page.relative_to(root).as_posix()
    return pages


# -- training -----------------------------------------------------------------------------------


RUNS_SHOWN = 10


def training(config: LakehouseConfig, mlflow_ui: str | None) -> dict:
    """The recent runs (loss curves), the champion and its inputs, from the tracking store."""
    if config.training is None:
        return {"runs": [], "champion": None}
    from ml.tracking import CHAMPION, quiet_mlflow, tracking_uri

    quiet_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(config)
    if uri.startswith("sqlite:") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return {"runs": [], "champion": None, "note": "no training run yet"}
    client = MlflowClient(tracking_uri=uri)
    ui = mlflow_ui or (uri if uri.startswith(("http://", "https://")) else None)
    try:
        experiment = client.get_experiment_by_name(config.training.experiment.replace("{env}", config.env))
        runs = [] if experiment is None else client.search_runs([experiment.experiment_id], max_results=RUNS_SHOWN,
                                                                order_by=["attributes.start_time DESC"])
        try:
            champion = client.get_model_version_by_alias(config.training.model_name, CHAMPION)
        except MlflowException:
            champion = None
        shown = []
        for run in runs:
            loss = client.get_metric_history(run.info.run_id, "train_loss")
            link = f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" if ui else None
            shown.append({
                "run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
                "started": _iso(datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc)),
                "val_rmse": run.data.metrics.get("val_rmse"), "inputs": run.data.tags.get("input_tables"),
                "champion": champion is not None and champion.run_id == run.info.run_id, "link": link,
                "loss": [[m.step, m.value] for m in sorted(loss, key=lambda m: m.step)],
            })
        best = None
        if champion is not None:
            tags = client.get_run(champion.run_id).data
            best = {"model": config.training.model_name, "version": champion.version, "run_id": champion.run_id,
                    "inputs": tags.tags.get("input_tables"), "val_rmse": tags.metrics.get("val_rmse"),
                    "link": f"{ui}/#/models/{config.training.model_name}/versions/{champion.version}" if ui else None}
        return {"runs": shown, "champion": best, "mlflow_ui": ui}
    except MlflowException as exc:
        return {"runs": [], "champion": None, "note": f"the tracking store cannot be read: {str(exc).splitlines()[0]}"}


def as_json(page: dict) -> str:
    return json.dumps(page, default=str)
