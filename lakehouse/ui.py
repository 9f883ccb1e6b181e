"""`lakehouse ui`: the operations page, a live local web page on 127.0.0.1 (Plotly Dash).

One page, redrawn every ``--refresh`` seconds from lakehouse/ui_data.py's figures:

- the graph: sources -> bronze -> silver (+ quarantine) -> gold -> model, each node with its
  version, rows, freshness and state, and a table of the same with any error;
- per streaming flow: R (records/s), B = R/S, batch duration, backlog or consumer lag, and the
  p95 freshness of what it writes, over its recent batches;
- quality: each entity's pass rate per batch (each batch linked to its Data Docs page, served
  here from the site `lakehouse quality docs` builds), the top quarantine reasons with an example
  raw record, and the bad files;
- training: the runs with their loss curves, the champion and its input versions, links into
  the MLflow UI (``--mlflow-url``, or the tracking server's own address).

Everything it loads (Dash's and Plotly's scripts) comes from the installed packages: the page
makes no request outside 127.0.0.1. ``GET /api/overview`` returns the page's figures as JSON.
"""

from __future__ import annotations

import logging
import math

from lakehouse.config import LakehouseConfig
from lakehouse.formatting import duration_text
from lakehouse.ui_data import as_json, data_docs_root, overview

STATE_COLOURS = {"running": "#2e7d32", "idle": "#546e7a", "building": "#1565c0", "waiting": "#ef6c00",
                 "starting": "#1565c0", "failed": "#c62828", "stopped": "#9e9e9e"}
KIND_COLOURS = {"source": "#8d6e63", "bronze": "#a1887f", "silver": "#90a4ae", "quarantine": "#e57373",
                "gold": "#fbc02d", "model": "#7e57c2", "score": "#fbc02d"}


def _count(value) -> str:
    return "-" if value is None else f"{value:,}"


def _table(headers: list[str], rows: list[list], table_id: str):
    from dash import html

    return html.Table([html.Thead(html.Tr([html.Th(h) for h in headers])),
                       html.Tbody([html.Tr([html.Td(cell) for cell in row]) for row in rows])],
                      id=table_id, className="grid")


def graph_figure(graph: dict):
    """The flow graph as a Plotly figure: a column per depth, an arrow per edge, a node per table."""
    import plotly.graph_objects as go

    nodes = graph["nodes"]
    per_column: dict[int, list[dict]] = {}
    for node in nodes:
        per_column.setdefault(node["column"], []).append(node)
    where = {}
    for column, members in per_column.items():
        for i, node in enumerate(members):
            where[node["id"]] = (column, -(i - (len(members) - 1) / 2))
    figure = go.Figure()
    for start, end in graph["edges"]:
        (x0, y0), (x1, y1) = where[start], where[end]
        figure.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", text="",
                              showarrow=True, arrowhead=2, arrowwidth=1.2, arrowcolor="#90a4ae", standoff=18,
                              startstandoff=18)
    labels = []
    for node in nodes:
        lines = [f"<b>{node['label']}</b>"]
        if node["kind"] == "model":
            lines.append(f"champion v{node['version']}" if node.get("version") else "no champion yet")
        elif node["kind"] != "source":
            lines.append(f"{_count(node.get('rows'))} rows · v{node['version']}" if node.get("version") is not None
                         else "not created yet")
            if node.get("age_s") is not None:
                lines.append(f"last commit {duration_text(node['age_s'])} ago")
        if node.get("state"):
            lines.append(node["state"])
        labels.append("<br>".join(lines))
    figure.add_trace(go.Scatter(
        x=[where[n["id"]][0] for n in nodes], y=[where[n["id"]][1] for n in nodes], mode="markers+text",
        text=labels, textposition="bottom center", hoverinfo="text", hovertext=[n.get("error") or n["label"] for n in nodes],
        marker={"size": 26, "color": [KIND_COLOURS.get(n["kind"], "#607d8b") for n in nodes],
                "line": {"width": 4, "color": [STATE_COLOURS.get(n.get("state"), "#ffffff") for n in nodes]}}))
    figure.update_layout(height=160 + 95 * max(len(m) for m in per_column.values()), showlegend=False,
                         margin={"l": 20, "r": 20, "t": 10, "b": 10}, plot_bgcolor="white",
                         xaxis={"visible": False, "range": [-0.5, max(per_column) + 0.5]},
                         yaxis={"visible": False, "range": [-max(len(m) for m in per_column.values()) / 2 - 0.6,
                                                            max(len(m) for m in per_column.values()) / 2]})
    return figure


def flow_figure(flow: dict):
    """R, B, batch duration, backlog and p95 freshness of one flow over its recent batches."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    batches = flow["batches"]
    times = [b["time"] for b in batches]
    unit = next((b["backlog_unit"] for b in reversed(batches) if b["backlog_unit"]), None)
    titles = ["R: records/s", "B: records/s per channel", "batch duration (s)",
              f"backlog ({unit})" if unit else "backlog", "p95 freshness (s)"]
    figure = make_subplots(rows=1, cols=5, subplot_titles=titles, horizontal_spacing=0.05)
    for col, key in enumerate(("records_per_second", "per_channel", "duration_s", "backlog"), start=1):
        figure.add_trace(go.Scatter(x=times, y=[b[key] for b in batches], mode="lines+markers", name=key,
                                    marker={"size": 4}), row=1, col=col)
    for table, rows in flow["freshness"].items():
        for measure in ("event_p95_s", "ingest_p95_s", "window_p95_s"):
            values = [r[measure] for r in rows]
            if any(v is not None and not math.isnan(v) for v in values):
                figure.add_trace(go.Scatter(x=[r["time"] for r in rows], y=values, mode="lines+markers",
                                            name=f"{table} {measure.removesuffix('_p95_s')}", marker={"size": 4}),
                                 row=1, col=5)
    figure.update_layout(height=260, showlegend=False, margin={"l": 30, "r": 10, "t": 40, "b": 30})
    figure.update_annotations(font_size=12)
    return figure


def pass_rate_figure(pass_rates: dict):
    import plotly.graph_objects as go

    figure = go.Figure()
    for entity, batches in pass_rates.items():
        figure.add_trace(go.Scatter(x=[b["time"] for b in batches], y=[b["pass_rate"] for b in batches],
                                    mode="lines+markers", name=entity,
                                    text=[f"batch {b['batch_id']}: {b['quarantined']:,} of {b['rows']:,} quarantined"
                                          for b in batches]))
    figure.update_layout(height=260, yaxis={"title": "pass rate", "range": [0, 1.02]},
                         margin={"l": 50, "r": 10, "t": 10, "b": 30})
    return figure


def loss_figure(runs: list[dict]):
    import plotly.graph_objects as go

    figure = go.Figure()
    for run in runs:
        if run["loss"]:
            figure.add_trace(go.Scatter(x=[p[0] for p in run["loss"]], y=[p[1] for p in run["loss"]], mode="lines",
                                        name=(run["name"] or run["run_id"]) + (" (champion)" if run["champion"] else "")))
    figure.update_layout(height=280, xaxis={"title": "step"}, yaxis={"title": "train loss"},
                         margin={"l": 50, "r": 10, "t": 10, "b": 40})
    return figure


def render(page: dict):
    """The page's content for one refresh."""
    from dash import dcc, html

    run = page["run"]
    graph, quality, training = page["graph"], page["quality"], page["training"]
    header = html.P(["pipeline ", html.B("running" if run["live"] else "not running (no `lakehouse run` publishing)"),
                     f" · read at {page['generated_at']} in {page['seconds']:.2f}s"], id="run-state")
    nodes = _table(["table", "kind", "version", "rows", "last commit (UTC)", "state", "error"],
                   [[n["label"], n["kind"], _count(n.get("version")), _count(n.get("rows")), n.get("last_commit") or "-",
                     n.get("state") or "-", n.get("error") or ""] for n in graph["nodes"] if n["kind"] != "source"],
                   "nodes")
    flows = [html.Div([html.H3(f"{f['flow']} ({f['query']})"),
                       html.P(f"landed, not read yet: {f['landed_not_read']:,} files")
                       if f["landed_not_read"] is not None else None,
                       dcc.Graph(figure=flow_figure(f), id=f"flow-{f['query']}", config={"displaylogo": False})],
                      className="flow") for f in page["flows"]]
    recent = [(entity, b) for entity, batches in quality["pass_rates"].items() for b in batches[-10:]]
    batches = _table(["entity", "batch", "rows", "quarantined", "pass rate", "Data Docs"],
                     [[entity, b["batch_id"], _count(b["rows"]), _count(b["quarantined"]),
                       "-" if b["pass_rate"] is None else f"{b['pass_rate']:.1%}",
                       html.A("validation", href=f"/data-docs/{b['data_docs']}", target="_blank") if b["data_docs"]
                       else "run `lakehouse quality docs`"] for entity, b in recent], "batches")
    reasons = _table(["entity", "reason", "rows", "example raw record"],
                     [[r["entity"], r["reason"], _count(r["count"]), html.Code(r["example"] or "")]
                      for r in quality["reasons"]], "reasons")
    bad = _table(["source", "file", "reason", "detail", "recorded (UTC)"],
                 [[b["source"], b["path"], b["reason"], b["detail"] or "", b["recorded_at"]] for b in quality["bad_files"]],
                 "bad-files")
    champion = training.get("champion")
    champion_block = html.Div(
        [html.B(f"champion: {champion['model']} version {champion['version']}"),
         html.Span(f" · val RMSE {champion['val_rmse']:.4g}" if champion.get("val_rmse") is not None else ""),
         html.Br(), html.Span(f"inputs: {champion['inputs']}"),
         html.Span([" · ", html.A("in MLflow", href=champion["link"], target="_blank")]) if champion.get("link") else None]
        if champion else [html.Span(training.get("note") or "no champion yet")], id="champion")
    runs = _table(["run", "started (UTC)", "status", "val RMSE", "inputs", ""],
                  [[html.A(r["name"] or r["run_id"], href=r["link"], target="_blank") if r["link"] else r["name"] or r["run_id"],
                    r["started"], r["status"], "-" if r["val_rmse"] is None else f"{r['val_rmse']:.4g}", r["inputs"] or "-",
                    "champion" if r["champion"] else ""] for r in training["runs"]], "runs")
    return [
        header,
        html.H2("Graph"), dcc.Graph(figure=graph_figure(graph), id="graph", config={"displaylogo": False}), nodes,
        html.H2("Flows"), *flows,
        html.H2("Quality"),
        dcc.Graph(figure=pass_rate_figure(quality["pass_rates"]), id="pass-rate", config={"displaylogo": False}),
        html.P(html.A("Data Docs index", href="/data-docs/index.html", target="_blank")) if quality["data_docs_index"] else None,
        batches, html.H3("Top quarantine reasons"), reasons, html.H3("Bad files"), bad,
        html.H2("Training"), champion_block,
        dcc.Graph(figure=loss_figure(training["runs"]), id="loss", config={"displaylogo": False}), runs,
    ]


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #263238; }
table.grid { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
table.grid th, table.grid td { border-bottom: 1px solid #cfd8dc; padding: 3px 8px; text-align: left; vertical-align: top; }
table.grid code { font-size: 12px; word-break: break-all; }
h2 { border-bottom: 2px solid #455a64; padding-bottom: 2px; margin-top: 1.2em; }
.error { color: #c62828; }
"""


def create_app(config: LakehouseConfig, refresh_s: float = 5.0, mlflow_ui: str | None = None):
    """The Dash application (its Flask server is ``app.server``)."""
    from dash import Dash, Input, Output, dcc, html
    from flask import Response, abort, send_from_directory

    from lakehouse.table_reader import DirectReader

    def figures() -> dict:
        return overview(DirectReader(config), config, mlflow_ui)  # a reader per refresh: each sees new versions

    app = Dash(__name__, title="lakehouse", update_title=None, serve_locally=True)
    app.index_string = app.index_string.replace("{%css%}", "{%css%}<style>" + STYLE + "</style>")
    app.layout = html.Div([html.H1(f"lakehouse · {config.env}"), html.Div(id="content"),
                           dcc.Interval(id="tick", interval=int(refresh_s * 1000), n_intervals=0)])

    @app.callback(Output("content", "children"), Input("tick", "n_intervals"))
    def refresh(_):
        try:
            return render(figures())
        except Exception as exc:  # noqa: BLE001 - a table mid-commit, say: the next refresh tries again
            return [html.P(f"could not read the pipeline: {type(exc).__name__}: {exc}", className="error")]

    @app.server.route("/api/overview")
    def api_overview():
        return Response(as_json(figures()), mimetype="application/json")

    @app.server.route("/data-docs/<path:page>")
    def data_docs(page: str):
        root = data_docs_root(config)
        if not root.is_dir():
            abort(404)
        return send_from_directory(root, page)

    return app


def serve(config: LakehouseConfig, port: int, refresh_s: float, mlflow_ui: str | None) -> None:
    """Serve the page on 127.0.0.1:``port`` until interrupted."""
    import flask.cli

    from lakehouse.table_reader import DirectReader

    for name in ("werkzeug", "dash", "dash.dash"):  # no line per request, no banners: the one line below
        logging.getLogger(name).setLevel(logging.WARNING)
    flask.cli.show_server_banner = lambda *args, **kwargs: None
    app = create_app(config, refresh_s, mlflow_ui)
    page = overview(DirectReader(config), config, mlflow_ui)  # the first read loads MLflow's client: before serving
    print(f"lakehouse ui: {len(page['graph']['nodes'])} nodes, {len(page['flows'])} flows read in {page['seconds']:.1f}s",
          flush=True)
    print(f"lakehouse ui: http://127.0.0.1:{port}/ (refreshes every {refresh_s:g}s; Ctrl-C stops it)", flush=True)
    app.run(host="127.0.0.1", port=port, debug=False)
