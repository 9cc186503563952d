"""What we log is what users see: the MLflow UI, in headless Chromium, for a finished sweep.

Debian's chromium driven by Playwright (never `playwright install`, which downloads).
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any

import pytest

from .conftest import make_spec_dict, run_small_sweep

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
TRIALS = 2


@pytest.fixture(scope="module")
def browser() -> Any:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def ui_sweep(mlflow_server_sqlite: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("ui")
    result = run_small_sweep(make_spec_dict(study={"trials": TRIALS}), storage=f"sqlite:///{d}/optuna.db",
                             tracking_uri=mlflow_server_sqlite.url, study="ui-study")
    return {"url": mlflow_server_sqlite.url, "exp": result.experiment_id, "parent": result.parent_run_id}


def _wait_text(page: Any, text: str, timeout_s: float = 60) -> None:
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout_s * 1000)


def test_parent_run_lists_its_child_runs(browser: Any, ui_sweep: dict[str, Any]) -> None:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(f"{ui_sweep['url']}/#/experiments/{ui_sweep['exp']}/runs?workflowType=machine_learning",
              wait_until="load")
    _wait_text(page, "study-ui-study")
    _wait_text(page, f"{TRIALS + 1} matching runs")
    assert "trial-0" not in page.inner_text("body")  # children are nested, collapsed under the parent
    page.locator("[role=row]", has_text="study-ui-study").locator("button").first.click()
    for n in range(TRIALS):
        _wait_text(page, f"trial-{n}")
    page.close()


def test_per_epoch_metric_chart_renders(browser: Any, ui_sweep: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ui_sweep["url"])
    child = next(r for r in client.search_runs([ui_sweep["exp"]])
                 if r.data.tags.get("mlflow.parentRunId") == ui_sweep["parent"])
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(f"{ui_sweep['url']}/#/experiments/{ui_sweep['exp']}/runs/{child.info.run_id}/model-metrics"
              "?workflowType=machine_learning", wait_until="load")
    _wait_text(page, "Model metrics")
    page.get_by_placeholder("Search metric charts").fill("val_roc_auc")
    legend = f"{child.info.run_name} (val_roc_auc)"
    _wait_text(page, legend)
    deadline = time.monotonic() + 60
    traces = 0
    while time.monotonic() < deadline and traces == 0:
        traces = page.locator(".js-plotly-plot .scatterlayer .trace").count()
        time.sleep(0.5)
    assert traces >= 1, "the val_roc_auc chart drew no line"
    # the chart plots one point per epoch: as many x positions as logged steps
    points = page.locator(".js-plotly-plot .scatterlayer .trace .points path").count()
    assert points == len(client.get_metric_history(child.info.run_id, "val_roc_auc"))
    page.close()


def _headers(page: Any, wanted: str, timeout_s: float = 60) -> list[str]:
    """The grid's column headers once `wanted` is among them (the grids render columns lazily)."""
    deadline = time.monotonic() + timeout_s
    headers: list[str] = []
    while time.monotonic() < deadline:
        headers = page.locator("[role=columnheader]").all_inner_texts()
        if any(wanted in h for h in headers):
            break
        time.sleep(0.5)
    return headers


def _digest(ui_sweep: dict[str, Any]) -> str:
    from mlflow import MlflowClient

    child = next(r for r in MlflowClient(tracking_uri=ui_sweep["url"]).search_runs([ui_sweep["exp"]])
                 if r.data.tags.get("mlflow.parentRunId") == ui_sweep["parent"])
    return child.inputs.dataset_inputs[0].dataset.digest


def test_models_tab_lists_trial_models_with_test_metrics_per_dataset(browser: Any, ui_sweep: dict[str, Any]) -> None:
    """MLflow 3's Models tab: one model per trial, named after it, with test metric columns under the dataset."""
    page = browser.new_page(viewport={"width": 4000, "height": 900})  # wide: the grid skips off-screen columns
    page.goto(f"{ui_sweep['url']}/#/experiments/{ui_sweep['exp']}/models?workflowType=machine_learning",
              wait_until="load")
    for n in range(TRIALS):
        _wait_text(page, f"trial-{n}")
    headers = _headers(page, "test_roc_auc")
    assert "test_roc_auc" in headers and "test_pair_accuracy" in headers and "test_eer" in headers, headers
    assert any(h.startswith("Dataset:") and f"digits (#{_digest(ui_sweep)})" in h for h in headers), headers
    page.close()


def test_runs_table_dataset_column_names_the_dataset(browser: Any, ui_sweep: dict[str, Any]) -> None:
    page = browser.new_page(viewport={"width": 1800, "height": 1000})
    page.goto(f"{ui_sweep['url']}/#/experiments/{ui_sweep['exp']}/runs?workflowType=machine_learning",
              wait_until="load")
    _wait_text(page, "study-ui-study")
    page.locator("[role=row]", has_text="study-ui-study").locator("button").first.click()
    digest = _digest(ui_sweep)
    _wait_text(page, f"digits ({digest})")
    rows = [r for r in page.locator("[role=row]").all_inner_texts() if f"digits ({digest})" in r]
    assert len(rows) == TRIALS, rows  # each trial's row, not "-"; the parent run has no dataset
    page.close()


def test_parent_run_shows_the_sweep_report(browser: Any, ui_sweep: dict[str, Any]) -> None:
    """The report.md artifact is listed on the parent run and its page renders in the artifact viewer."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(f"{ui_sweep['url']}/#/experiments/{ui_sweep['exp']}/runs/{ui_sweep['parent']}/artifacts"
              "?workflowType=machine_learning", wait_until="load")
    _wait_text(page, "report.md")
    page.get_by_text("report.md", exact=True).first.click()
    _wait_text(page, "Sweep report: ui-study")
    _wait_text(page, "Failure map")
    page.close()
