"""``mlflow models serve -m models:/NAME@champion`` answers the documented requests (real HTTP on 127.0.0.1), runs
no pickle planted in the model's artifacts, and deploy/serving's nginx bounds the request body in front of it."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sweeps.promotion import promote

from .conftest import Stores

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "registry.md"
NGINX_TEMPLATE = ROOT / "deploy" / "serving" / "scoring.conf.template"
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


def _post(url: str, body: dict[str, Any] | bytes) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class _Marker:
    """Unpickling this writes a file: what a tampered python_model.pkl could do on the serving host."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def _artifact_dir(stores: Stores, name: str) -> Path:
    """The local directory the champion's logged model was written to (the sqlite stores keep files locally)."""
    from mlflow import MlflowClient

    from sweeps.registry import model_id_from_uri

    client = MlflowClient(tracking_uri=stores.tracking_uri)
    source = client.get_model_version_by_alias(name, "champion").source
    location = client.get_logged_model(model_id_from_uri(source)).artifact_location
    path = Path(urllib.parse.urlparse(location).path if location.startswith("file:") else location)
    assert (path / "MLmodel").is_file(), path
    return path


@pytest.fixture(scope="module")
def server(sqlite_stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> Any:
    promote("good", **sqlite_stores.kw(model_name=NAME))
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    # an attacker with write access to the artifact store drops pickles next to the model
    marker = log.parent / "marker"
    planted = [_artifact_dir(sqlite_stores, NAME) / "python_model.pkl",
               _artifact_dir(sqlite_stores, NAME) / "artifacts" / "state.pkl"]
    for path in planted:
        path.write_bytes(pickle.dumps(_Marker(str(marker))))
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
        yield {"url": base, "proc": proc, "log": log, "marker": marker}
    finally:
        for path in planted:
            path.unlink(missing_ok=True)
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
    status, out = _post(f"{server['url']}/invocations",  # a JSON null recursed without end: RecursionError
                        {"dataframe_split": {"columns": ["left", "right"], "data": [[None, cell]]}})
    assert status == 400 and "column 'left', row 0" in str(out) and "NoneType" in str(out), out
    assert "stack_trace" not in str(out) and "Recursion" not in str(out)
    status, out = _post(f"{server['url']}/invocations",  # misspelt: the served model never sees "rigth"
                        {"dataframe_split": {"columns": ["left", "rigth"], "data": [[cell, cell]]}})
    assert status == 400 and "missing ['right']" in str(out) and "check the spelling" in str(out), out
    on_255 = [[[255.0]] * 8] * 8  # whole pixels on another scale than the model's 0..16 (served: its model_config)
    status, out = _post(f"{server['url']}/invocations",
                        {"dataframe_split": {"columns": ["left", "right"], "data": [[on_255, cell]]}})
    assert status == 400 and "the model was trained on 0..16" in str(out), out


def _rows(n: int) -> bytes:
    """A valid ``dataframe_split`` request of `n` pairs of zero 8x8x1 digits."""
    cell = json.dumps([[[0]] * 8] * 8, separators=(",", ":"))
    row = f"[{cell},{cell}]"
    return ('{"dataframe_split": {"columns": ["left", "right"], "data": [' + ",".join([row] * n) + "]}}").encode()


def test_served_model_runs_no_planted_pickle(server: dict) -> None:
    status, out = _post(f"{server['url']}/invocations", documented_request("pairs"))
    assert status == 200, out
    assert not server["marker"].exists()


def _render(template: str, values: dict[str, str]) -> str:
    """What envsubst (the official nginx image's templates) does for these variables."""
    out = re.sub(r"\$\{(SCORING_[A-Z_]+)\}", lambda m: values[m.group(1)], template)
    assert "${" not in out
    return out


@pytest.fixture(scope="module")
def proxy(server: dict, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """deploy/serving/scoring.conf.template in a real nginx (one process, temp paths under tmp)."""
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        pytest.skip("nginx is not installed")
    d = tmp_path_factory.mktemp("nginx")
    port = _free_port()
    upstream = server["url"].removeprefix("http://")
    (d / "scoring.conf").write_text(_render(NGINX_TEMPLATE.read_text(), {
        "SCORING_LISTEN": f"127.0.0.1:{port}", "SCORING_UPSTREAM": upstream, "SCORING_MAX_BODY": "256k"}))
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # every temp dir nginx creates at start-up
    temp = "\n".join(f"    {kind}_temp_path {d / kind};" for kind in kinds)
    (d / "nginx.conf").write_text(f"""daemon off;
master_process off;
pid {d / 'nginx.pid'};
error_log {d / 'error.log'} warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    include {d / 'scoring.conf'};
}}
""")
    proc = subprocess.Popen([nginx, "-e", str(d / "error.log"), "-p", str(d), "-c", str(d / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while _get(f"{base}/ping") != 200:
            assert proc.poll() is None, (d / "error.log").read_text()
            assert time.monotonic() < deadline, (d / "error.log").read_text()
            time.sleep(0.2)
        yield {"url": base}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _invocations_seen(server: dict) -> int:
    return server["log"].read_text().count("POST /invocations")


def test_nginx_template_refuses_an_oversized_body_before_mlflow_sees_it(server: dict, proxy: dict) -> None:
    status, out = _post(f"{proxy['url']}/invocations", documented_request("pairs"))
    assert status == 200 and len(out["predictions"]) == 2, out
    seen = _invocations_seen(server)
    assert seen >= 1  # uvicorn's access log names each request it received
    big = _rows(600)  # 330 kB: above the 256k limit of this test
    assert len(big) > 256 * 1024
    status, out = _post(f"{proxy['url']}/invocations", big)
    assert status == 413, out
    err = json.loads(out)
    assert err["error_code"] == "REQUEST_TOO_LARGE" and "larger than 256k" in err["message"]
    assert _invocations_seen(server) == seen  # never forwarded: the scoring server parsed nothing
    small = _rows(400)  # 220 kB: under the limit, forwarded and answered
    assert len(small) < 256 * 1024
    status, out = _post(f"{proxy['url']}/invocations", small)
    assert status == 200 and len(out["predictions"]) == 400
    assert _get(f"{proxy['url']}/") == 0  # nothing else of the server is exposed (404)
