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
