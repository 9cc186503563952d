"""The workers' MLflow user, created as the Kubernetes mlflow-setup Job (and the compose mlflow-users service) does.

Both run ``python /usr/local/bin/stack-entrypoint mlflow-users`` in the MLflow image: docker/entrypoint.py's
``create_worker_user``, with every credential from a ``*_FILE`` Secret file here, as in the Job.
(The PostgreSQL init script, shared the same way, is tested in test_compose.py.)
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.py"
WORKER = "sweeps-worker-k8s"  # not the session's other users


@pytest.fixture(scope="module")
def ep() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stack_entrypoint_k8s", ENTRYPOINT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _secret_files(tmp: Path, **values: str) -> dict[str, str]:
    """``NAME_FILE`` variables naming files that hold the values, as a Secret volume does."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {}
    for name, value in values.items():
        path = tmp / name.lower()
        path.write_text(value + "\n")  # Secrets made from files often end with a newline
        env[name + "_FILE"] = str(path)
    return env


def _setup(ep: ModuleType, server, tmp: Path, worker_password: str, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> str:
    """`stack-entrypoint mlflow-users` with the mlflow-setup Job's variables; returns what it printed."""
    env = {"MLFLOW_URL": server.url, "SIAMESE_SWEEP_MLFLOW_ADMIN_USERNAME": server.admin_username,
           **_secret_files(tmp, SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD=server.admin_password,
                           SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME=WORKER,
                           SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD=worker_password)}
    for name in [n for n in __import__("os").environ if n.startswith("MLFLOW_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ep.main(["mlflow-users"])
    out = capsys.readouterr()
    return out.out + out.err


@pytest.mark.slow
@pytest.mark.postgres
def test_creates_a_non_admin_worker_user_idempotently(ep: ModuleType, mlflow_server_pg, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient
    from mlflow.server import get_app_client

    server = mlflow_server_pg

    def as_user(username: str, password: str):
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        return get_app_client("basic-auth", tracking_uri=server.url)

    first = _setup(ep, server, tmp_path / "first", "first-pass-word-123", monkeypatch, capsys)
    assert f"MLflow user {WORKER!r} is ready" in first
    assert as_user(server.admin_username, server.admin_password).get_user(WORKER).is_admin is False
    # made an admin by hand: rerunning the Job (new password from its Secret) makes it a plain user again
    as_user(server.admin_username, server.admin_password).update_user_admin(WORKER, True)
    assert as_user(server.admin_username, server.admin_password).get_user(WORKER).is_admin is True
    again = _setup(ep, server, tmp_path / "again", "second-pass-word-456", monkeypatch, capsys)
    assert f"MLflow user {WORKER!r} is ready" in again
    for out in (first, again):
        assert "pass-word" not in out and server.admin_password not in out
    assert as_user(server.admin_username, server.admin_password).get_user(WORKER).is_admin is False

    # the worker logs in with the new password (not the old one), creates the sweep's experiment and a run
    as_user(WORKER, "second-pass-word-456")
    client = MlflowClient(tracking_uri=server.url)
    run = client.create_run(client.create_experiment("k8s-setup-check"))
    client.log_metric(run.info.run_id, "x", 1.0)
    client.set_terminated(run.info.run_id)
    with pytest.raises(Exception, match="(?i)permission|403|admin"):  # not an admin: cannot manage users
        as_user(WORKER, "second-pass-word-456").create_user("intruder", "some-pass-word-789")
    as_user(WORKER, "first-pass-word-123")
    with pytest.raises(Exception, match="(?i)401|unauthori[sz]ed|credentials"):
        MlflowClient(tracking_uri=server.url).search_experiments()


def test_the_job_command_works_in_the_mlflow_image_layout(tmp_path: Path) -> None:
    """docker/mlflow/Dockerfile: stack-entrypoint with mlflow_auth.py beside it and no project installed.

    A Secret file that cannot be read stops the Job at once (exit 1, naming the variable), before it waits
    for the server.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(ENTRYPOINT, bin_dir / "stack-entrypoint")
    shutil.copy(ROOT / "sweeps" / "stack" / "mlflow_auth.py", bin_dir / "mlflow_auth.py")
    image_python = ("import runpy, sys; sys.modules['sweeps'] = None; sys.path.insert(0, sys.argv[1]); "
                    "sys.argv = [sys.argv[1] + '/stack-entrypoint', *sys.argv[2:]]; "
                    "runpy.run_path(sys.argv[0], run_name='__main__')")
    env = {"PATH": "/usr/bin:/bin", "MLFLOW_URL": "http://127.0.0.1:9",
           **_secret_files(tmp_path / "secrets", SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD="admin-pass-word-0",
                           SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME=WORKER),
           "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD_FILE": str(tmp_path / "secrets" / "missing")}
    res = subprocess.run([sys.executable, "-c", image_python, str(bin_dir), "mlflow-users"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stderr  # bad configuration: the Job's code for "do not retry"
    assert "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD_FILE: cannot read" in res.stderr
    assert "admin-pass-word" not in res.stderr


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_pod_waits_for_its_login_until_the_setup_job_has_made_it(ep: ModuleType, mlflow_server_pg,
                                                                          tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The worker Job's init container (`stack-entrypoint mlflow-login`, worker-job.yaml): without it a worker
    that reached MLflow before the mlflow-setup Job had made its user was refused (exit 2) and FailJob ended
    the sweep."""
    import threading

    server, user = mlflow_server_pg, WORKER + "-late"
    login = {"MLFLOW_TRACKING_URI": server.url,
             **_secret_files(tmp_path / "login", MLFLOW_TRACKING_USERNAME=user,
                             MLFLOW_TRACKING_PASSWORD="late-pass-word-321")}
    result: dict[str, object] = {}

    def wait() -> None:
        try:
            result["user"] = ep.wait_for_login(login, timeout_s=120, poll_s=0.2)
        except SystemExit as exc:
            result["exit"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()
    waiter.join(3)
    assert waiter.is_alive() and not result  # refused (401): still waiting, not failed
    admin = {"MLFLOW_URL": server.url, "SIAMESE_SWEEP_MLFLOW_ADMIN_USERNAME": server.admin_username,
             "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD": server.admin_password,
             "SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME": user, "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD": "late-pass-word-321"}
    assert ep.create_worker_user(admin) == user  # the mlflow-setup Job, later
    waiter.join(30)
    assert not waiter.is_alive() and result == {"user": user}
    out = capsys.readouterr().out
    assert f"to accept user {user!r} (HTTP 401: the mlflow-setup Job creates it)" in out
    assert "late-pass-word" not in out


def test_the_login_wait_ends_with_143_on_sigterm(tmp_path: Path) -> None:
    """The init container's Python is PID 1, which the kernel shields from a SIGTERM without a handler: a drain
    waited out the grace period and SIGKILLed it (137, counted against backoffLimit; 143 is ignored)."""
    env = {"PATH": os.environ["PATH"], "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
           **_secret_files(tmp_path, MLFLOW_TRACKING_USERNAME="w", MLFLOW_TRACKING_PASSWORD="pass-word-0123")}
    proc = subprocess.Popen([sys.executable, str(ENTRYPOINT), "mlflow-login"], env=env, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert "waiting for MLflow at http://127.0.0.1:9" in proc.stdout.readline()  # in its loop, handler set
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143 and time.monotonic() - started < 10


def test_the_login_wait_gives_up_with_exit_1_and_no_password(ep: ModuleType, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    login = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
             **_secret_files(tmp_path, MLFLOW_TRACKING_USERNAME="w", MLFLOW_TRACKING_PASSWORD="pass-word-0123")}
    with pytest.raises(SystemExit) as stop:
        ep.wait_for_login(login, timeout_s=0.5, poll_s=0.1)
    assert "did not accept user 'w' within 0 s (last answer: ConnectionRefusedError)" in str(stop.value.code)
    assert isinstance(stop.value.code, str)  # a message: exit status 1, the Job retries the pod
    out = capsys.readouterr().out
    assert out.count("waiting for MLflow at http://127.0.0.1:9") == 1 and "pass-word" not in out


def test_the_login_wait_refuses_a_url_without_scheme_at_once(ep: ModuleType, tmp_path: Path) -> None:
    # urllib answers "unknown url type" each poll: the pod waited 15 minutes for a typo (and named the URL,
    # which may carry a password)
    login = {"MLFLOW_TRACKING_URI": "user:pass-word-0123@mlflow:5000",
             **_secret_files(tmp_path, MLFLOW_TRACKING_USERNAME="w", MLFLOW_TRACKING_PASSWORD="pass-word-0123")}
    started = time.monotonic()
    with pytest.raises(SystemExit) as stop:
        ep.wait_for_login(login, timeout_s=60, poll_s=0.1)
    assert time.monotonic() - started < 15  # at once, not after timeout_s
    assert "must start with http:// or https://" in str(stop.value.code) and "pass-word" not in str(stop.value.code)
