"""deploy/k8s/base/mlflow-create-worker-user.py against a real MLflow basic-auth server on PostgreSQL.

The mlflow-setup Job runs this script; here it runs as a subprocess with its Secrets as files.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "mlflow-create-worker-user.py"


def _run(server, tmp: Path, worker_password: str) -> subprocess.CompletedProcess[str]:
    tmp.mkdir()
    files = {}
    for name, value in (("admin", server.admin_password), ("username", "sweep-worker"), ("password", worker_password)):
        path = tmp / name
        path.write_text(value + "\n")  # Secrets made from files often end with a newline
        files[name] = str(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=server.url, MLFLOW_ADMIN_USERNAME=server.admin_username,
               MLFLOW_ADMIN_PASSWORD_FILE=files["admin"], MLFLOW_TRACKING_USERNAME_FILE=files["username"],
               MLFLOW_TRACKING_PASSWORD_FILE=files["password"], SETUP_TIMEOUT_SECONDS="60")
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


def test_creates_a_non_admin_worker_user_idempotently(mlflow_server_pg, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from mlflow.server import get_app_client

    first = _run(mlflow_server_pg, tmp_path / "first", "first-pass-word-123")
    assert first.returncode == 0, first.stderr
    assert "created MLflow user 'sweep-worker'" in first.stdout
    again = _run(mlflow_server_pg, tmp_path / "again", "second-pass-word-456")
    assert again.returncode == 0, again.stderr
    assert "exists: password reset" in again.stdout
    for out in (first, again):
        assert "pass-word" not in out.stdout + out.stderr
        assert mlflow_server_pg.admin_password not in out.stdout + out.stderr

    # the worker logs in with the new password, creates the sweep's experiment and a run
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "sweep-worker")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "second-pass-word-456")
    client = MlflowClient(tracking_uri=mlflow_server_pg.url)
    run = client.create_run(client.create_experiment("k8s-setup-check"))
    client.log_metric(run.info.run_id, "x", 1.0)
    client.set_terminated(run.info.run_id)
    with pytest.raises(Exception, match="(?i)permission|403|admin"):  # not an admin: cannot manage users
        get_app_client("basic-auth", tracking_uri=mlflow_server_pg.url).create_user("intruder", "some-pass-word-789")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", mlflow_server_pg.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_server_pg.admin_password)
    assert get_app_client("basic-auth", tracking_uri=mlflow_server_pg.url).get_user("sweep-worker").is_admin is False


def test_postgres_initdb_script_makes_one_role_per_database(tmp_path: Path) -> None:
    """deploy/k8s/base/postgres-initdb.sh on a real PostgreSQL: optuna reaches only optuna, mlflow only its two.

    A server of its own: the session's one already holds databases named mlflow and mlflow_auth.
    """
    import psycopg2

    from sweeps.stack import PostgresServer

    secrets = tmp_path / "secrets"
    for role in ("optuna", "mlflow"):
        (secrets / f"{role}-db").mkdir(parents=True)
        (secrets / f"{role}-db" / "password").write_text(f"{role}-pass-word-0123")
    script = (SCRIPT.parent / "postgres-initdb.sh").read_text().replace("/var/run/secrets/siamese-sweep", str(secrets))
    with PostgresServer(user="app", database="app", fsync=False) as pg:
        admin = pg.connect_admin()  # the superuser over the private socket, as the image runs init scripts
        socket_dir = admin.info.host
        admin.close()
        env = {**os.environ, "POSTGRES_USER": "postgres", "PGHOST": socket_dir, "PGPORT": str(pg.port),
               "PATH": f"{pg.bin_dir}{os.pathsep}{os.environ['PATH']}"}
        res = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr

        def connects(role: str, database: str) -> bool:
            try:
                psycopg2.connect(host=pg.host, port=pg.port, user=role, dbname=database,
                                 password=f"{role}-pass-word-0123").close()
                return True
            except psycopg2.OperationalError:
                return False

        assert connects("optuna", "optuna")
        assert not connects("optuna", "mlflow") and not connects("optuna", "mlflow_auth")
        assert connects("mlflow", "mlflow") and connects("mlflow", "mlflow_auth") and not connects("mlflow", "optuna")
