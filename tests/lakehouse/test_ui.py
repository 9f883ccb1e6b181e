"""`lakehouse ui` (lakehouse/ui.py, lakehouse/ui_data.py): the operations page in headless Chromium
on a pipeline's data and a trained model; and the page over a data directory with nothing yet."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request

import pytest
from pyspark.sql import functions as F

from lakehouse.pipeline import Pipeline
from lakehouse.run_state import publish, read_state
from lakehouse.table_reader import DirectReader
from lakehouse.tables import read_table, resolve_table
from lakehouse.ui import create_app, render
from lakehouse.ui_data import overview
from tests.conftest import REPO

ARTIFACTS = REPO / "test-artifacts"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_over_a_data_directory_with_nothing_yet(config):
    page = overview(DirectReader(config), config)
    assert not page["run"]["live"] and page["flows"] and page["training"]["runs"] == []
    tables = [n for n in page["graph"]["nodes"] if n["kind"] not in ("source", "model")]
    assert tables and all(n["version"] is None and n["state"] == "stopped" for n in tables)
    assert render(page)  # draws without data


def test_a_failed_flow_shows_its_error_while_the_run_is_live(config):
    publish(config, {"silver.telemetry": {"state": "failed", "error": "a fail expectation broke", "restarts": 0},
                     "bronze.telemetry": {"state": "running", "error": None, "restarts": 0}})
    assert read_state(config)["live"]  # this process published it, just now
    nodes = {n["id"]: n for n in overview(DirectReader(config), config)["graph"]["nodes"]}
    assert nodes["bronze.telemetry"]["state"] == "running"
    assert nodes["silver.telemetry"]["state"] == "failed" and "fail expectation" in nodes["silver.telemetry"]["error"]
    publish(config, {"silver.telemetry": {"state": "failed", "error": "broke", "restarts": 0}}, stopped=True)
    nodes = {n["id"]: n for n in overview(DirectReader(config), config)["graph"]["nodes"]}
    assert nodes["silver.telemetry"]["state"] == "failed" and nodes["bronze.telemetry"]["state"] == "stopped"


@pytest.mark.slow
@pytest.mark.browser
def test_the_operations_page_shows_the_pipeline_in_a_real_browser(spark, trained):
    """Headless Chromium opens the page: the graph's nodes with their rows, a chart per flow, the
    quarantine reasons, the champion, a batch's Data Docs page; no console error, no request
    leaves 127.0.0.1, and the page refreshes itself."""
    import mlflow
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    from werkzeug.serving import make_server

    from lakehouse.quality import build_data_docs
    from ml.tracking import CHAMPION, tracking_uri

    config, _ = trained
    assert build_data_docs(spark, config) is not None  # the batches' validation pages, linked from the page
    rows = {name: read_table(spark, resolve_table(config, name)).count()
            for name in ("bronze.telemetry", "silver.telemetry", "gold.telemetry_features")}
    quarantine = read_table(spark, resolve_table(config, "silver.telemetry_quarantine"))
    top_reason = (quarantine.select(F.explode("reasons").alias("reason")).groupBy("reason").count()
                  .orderBy(F.desc("count"), "reason").first()["reason"])
    champion = mlflow.MlflowClient(tracking_uri(config)).get_model_version_by_alias(
        config.training.registered_model, CHAMPION)

    port = _free_port()
    server = make_server("127.0.0.1", port, create_app(config, refresh_s=1.0).server, threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    ARTIFACTS.mkdir(exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,3200"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        base = f"http://127.0.0.1:{port}"
        data = json.loads(urllib.request.urlopen(f"{base}/api/overview", timeout=60).read())
        assert {"graph", "flows", "quality", "training"} <= set(data)
        driver.get(base)
        wait = WebDriverWait(driver, 90)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#graph .main-svg")))
        flows = [flow.query_name for flow in Pipeline(config).inputs_first() if flow.streaming]
        # One read of the page as drawn (it is redrawn every second: element handles go stale).
        seen = driver.execute_script("""
            const text = id => (document.getElementById(id) || {}).textContent || "";
            const link = document.querySelector('#batches a');
            return {graph: text('graph'), reasons: text('reasons'), champion: text('champion'),
                    stamp: text('run-state'), link: link ? link.href : null,
                    charts: arguments[0].map(q => document.querySelectorAll('#flow-' + q + ' .main-svg').length)};
        """, flows)
        for name, count in rows.items():  # each node's label: its name, then its rows
            assert name in seen["graph"] and f"{count:,} rows" in seen["graph"], (name, count, seen["graph"])
        assert all(seen["charts"]), dict(zip(flows, seen["charts"], strict=True))  # a chart for each flow
        assert top_reason in seen["reasons"]
        assert f"version {champion.version}" in seen["champion"]
        time.sleep(0.5)  # the charts draw
        driver.save_screenshot(str(ARTIFACTS / "operations_page.png"))

        assert seen["link"].startswith(f"{base}/data-docs/validations/")
        assert b"telemetry" in urllib.request.urlopen(seen["link"], timeout=30).read()
        wait.until(lambda d: d.execute_script(
            "return (document.getElementById('run-state') || {}).textContent") not in (seen["stamp"], None))

        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
        requested = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])")
        assert requested and all(url.startswith(base) for url in requested), requested
    finally:
        driver.quit()
        server.shutdown()
    assert os.path.getsize(ARTIFACTS / "operations_page.png") > 20_000


@pytest.mark.slow
@pytest.mark.browser
def test_the_data_docs_render_with_the_network_off(spark, trained):
    """The GX site's pages load their scripts, styles and fonts from the site itself: opened in
    headless Chromium whose every outside request fails, the index lists the suite's validations,
    and a validation page names its run, time, batch and GX version."""
    import great_expectations
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lakehouse.quality import build_data_docs

    config, _ = trained
    index = build_data_docs(spark, config)
    pages = sorted(index.parent.rglob("*.html"))
    for page in pages:
        text = page.read_text()
        assert not re.search(r'<(?:script|link|img)\b[^>]*(?:src|href)="https?://', text), page
    batches = {r["batch_id"] for r in read_table(spark, resolve_table(config, "ops.quality_results")).collect()}

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200",
                 "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"):  # no way out
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(index.as_uri())
        wait = WebDriverWait(driver, 60)
        # The validations' rows, drawn by bootstrap-table from the page's data.
        wanted = [f"telemetry-batch-{b}" for b in sorted(batches)]
        wait.until(lambda d: all(name in d.find_element(By.TAG_NAME, "body").text for name in wanted))
        driver.save_screenshot(str(ARTIFACTS / "data_docs_index_offline.png"))
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]

        def open_first_validation(d) -> bool:
            # bootstrap-table may redraw its rows between finding one and clicking it, so the row is
            # looked up again whenever it went stale; a row opens its validation page.
            row = next((r for r in d.find_elements(By.CSS_SELECTOR, "table tbody tr") if wanted[0] in r.text), None)
            if row is not None:
                row.click()
            return row is not None

        WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,)).until(open_first_validation)
        page_text = "return document.body.textContent.replace(/\\s+/g, ' ')"  # the Info table starts folded
        wait.until(lambda d: "Run Name" in d.execute_script(page_text))
        body = driver.execute_script(page_text)
        assert "__none__" not in body and "silver_telemetry batch" in body and great_expectations.__version__ in body
        bootstrap = driver.execute_script("return getComputedStyle(document.body).fontFamily")
        assert "apple-system" in bootstrap or "Segoe UI" in bootstrap  # Bootstrap's stylesheet applies
        driver.save_screenshot(str(ARTIFACTS / "data_docs_validation_offline.png"))
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
