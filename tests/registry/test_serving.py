"""``mlflow models serve -m models:/NAME@champion`` answers the documented requests (real HTTP on 127.0.0.1)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sweeps.promotion import promote

from .conftest import Stores

pytestmark = pytest.mark.slow
DOC = Path(__file__).resolve().parents[2] / "docs" / "registry.md"
NAME = "served"


def documented_request(marker: str) -> dict[str, Any]:
    """The JSON block that follows ``<!-- request:MARKER -->`` in docs/registry.md."""
    text = DOC.read_text()
    m = re.search(rf"<!-- request:{marker} -->\s*```json\n(.*?)\n```", text, re.DOTALL)
    assert m, f"no request:{marker} block in {DOC}"
    return json.loads(m.group(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except (urllib.error.URLError, OSError):
        return 0


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def server(sqlite_stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> Any:
    promote("good", **sqlite_stores.kw(model_name=NAME))
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**sqlite_stores.env(), "MLFLOW_TRACKING_URI": sqlite_stores.tracking_uri}
    with open(log, "w") as fh:  # the server gets its own process group: uvicorn is a child
        proc = subprocess.Popen(["mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
                                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while _get(f"{base}/ping") != 200:
            assert proc.poll() is None, f"mlflow models serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"/ping never answered:\n{log.read_text()[-3000:]}"
            time.sleep(1.0)
        yield {"url": base, "proc": proc, "log": log}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_invocations_answer_the_documented_pair_request(server: dict, sqlite_stores: Stores) -> None:
    import mlflow.pyfunc

    from sweeps.registry import download_model

    body = documented_request("pairs")
    status, out = _post(f"{server['url']}/invocations", body)
    assert status == 200, out
    preds = out["predictions"]
    assert len(preds) == 2 and all(set(p) == {"distance", "score", "same"} for p in preds)
    split = body["dataframe_split"]
    frame = pd.DataFrame(split["data"], columns=split["columns"])
    local = download_model(f"models:/{NAME}@champion", tracking_uri=sqlite_stores.tracking_uri,
                           dst=str(server["log"].parent / "model"))
    model = mlflow.pyfunc.load_model(local)
    expected = model.predict(frame)
    np.testing.assert_allclose([p["distance"] for p in preds], expected["distance"], rtol=1e-5)
    np.testing.assert_allclose([p["score"] for p in preds], expected["score"], rtol=1e-5)
    assert [p["same"] for p in preds] == expected["same"].tolist()
    thr = model.unwrap_python_model().threshold
    assert [p["same"] for p in preds] == [p["distance"] <= thr for p in preds]

    status, out = _post(f"{server['url']}/invocations", {**body, "params": {"threshold": 1e9}})
    assert status == 200 and all(p["same"] for p in out["predictions"])
    records = {"dataframe_records": [dict(zip(split["columns"], row, strict=True)) for row in split["data"]]}
    status, out = _post(f"{server['url']}/invocations", records)
    assert status == 200 and len(out["predictions"]) == 2


def test_invocations_embed_mode_and_bad_requests(server: dict) -> None:
    status, out = _post(f"{server['url']}/invocations", documented_request("embed"))
    assert status == 200, out
    [pred] = out["predictions"]
    assert len(pred["embedding"]) == 16 and all(isinstance(v, float) for v in pred["embedding"])
    status, out = _post(f"{server['url']}/invocations",
                        {"dataframe_split": {"columns": ["left"], "data": [[[[[0]] * 8] * 8]]}})
    assert status >= 400 and "right" in str(out)
    cell = [[[0.0]] * 8] * 8
    huge = [[[1e300]] * 8] * 8
    status, out = _post(f"{server['url']}/invocations",
                        {"dataframe_split": {"columns": ["left", "right"], "data": [[cell, huge]]}})
    assert status == 400 and "beyond" in str(out), out
    assert "Traceback" not in str(out) and "stack_trace" not in str(out)
