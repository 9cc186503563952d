"""MlflowServer: real ``mlflow server`` with basic auth on PostgreSQL, restart, clean stop."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sweeps.stack import MlflowServer, PostgresServer
from sweeps.stack._process import alive, descendants, group_members

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def _get(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_health_is_open_but_api_needs_credentials(mlflow_server_pg: MlflowServer) -> None:
    srv = mlflow_server_pg
    assert _get(srv.url + "/health") == 200
    assert _get(srv.url + SEARCH) == 401
    assert _get(srv.url + SEARCH, auth=(srv.admin_username, "wrong-password-123")) == 401
    assert _get(srv.url + SEARCH, auth=("admin", "password1234")) == 401  # no default password
    assert _get(srv.url + SEARCH, auth=(srv.admin_username, srv.admin_password)) == 200


def test_client_with_env_credentials_logs_metrics_and_artifacts(
    mlflow_server_pg: MlflowServer, mlflow_env: dict[str, str], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    assert set(mlflow_env) == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    client = MlflowClient(tracking_uri=mlflow_env["MLFLOW_TRACKING_URI"])
    exp_id = client.create_experiment("infra-auth")
    run = client.create_run(exp_id)
    client.log_batch(run.info.run_id, metrics=[], params=[])
    for step in range(3):
        client.log_metric(run.info.run_id, "val_loss", 1.0 / (step + 1), step=step)
    note = tmp_path / "note.json"
    note.write_text(json.dumps({"ok": True}))
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)

    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1, 2]
    # Proxied artifacts: the server wrote the file into --artifacts-destination.
    stored = list(Path(mlflow_server_pg.artifacts_destination).rglob("note.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text()) == {"ok": True}


def test_restart_keeps_data_port_and_credentials(mlflow_server_pg: MlflowServer, mlflow_env: dict[str, str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_env["MLFLOW_TRACKING_URI"])
    exp_id = client.create_experiment("infra-restart")
    run = client.create_run(exp_id)
    client.log_metric(run.info.run_id, "acc", 0.5, step=0)
    port, old_pid = mlflow_server_pg.port, mlflow_server_pg.pid

    mlflow_server_pg.restart()

    assert mlflow_server_pg.port == port and mlflow_server_pg.pid != old_pid
    assert not alive(old_pid)  # type: ignore[arg-type]
    assert client.get_experiment(exp_id).name == "infra-restart"
    assert client.get_metric_history(run.info.run_id, "acc")[0].value == 0.5
    client.log_metric(run.info.run_id, "acc", 0.7, step=1)  # and it still takes writes
    assert _get(mlflow_server_pg.url + SEARCH) == 401


def test_secrets_stay_out_of_argv_and_log(mlflow_server_pg: MlflowServer, postgres_server: PostgresServer) -> None:
    pids = [mlflow_server_pg.pid, *descendants(mlflow_server_pg.pid)]  # type: ignore[arg-type]
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert postgres_server.password not in cmdline
        assert mlflow_server_pg.admin_password not in cmdline
    log = mlflow_server_pg.log_path.read_text(errors="replace")
    assert postgres_server.password not in log and mlflow_server_pg.admin_password not in log
    ini = mlflow_server_pg.auth_config_path
    assert ini.stat().st_mode & 0o777 == 0o600


def test_stop_leaves_no_process_and_removes_state_dir(tmp_path: Path) -> None:
    """SQLite backend, two uvicorn workers: the whole tree must go, with the temp state dir."""
    srv = MlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", workers=2).start()
    pid = srv.pid
    assert pid is not None
    tree = descendants(pid)
    assert len(tree) >= 2, f"expected uvicorn supervisor and workers, got {tree}"
    state = srv.state_dir
    srv.stop()
    assert not alive(pid)
    assert [p for p in tree if alive(p)] == []
    assert group_members(pid) == []
    assert not state.exists()
    assert not srv.health()
