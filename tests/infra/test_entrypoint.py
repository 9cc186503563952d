"""docker/entrypoint.py and write_auth_ini: configs MLflow's own reader accepts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sweeps.cli import build_parser
from sweeps.specs import resolve_spec_path
from sweeps.stack.mlflow_auth import write_auth_ini

ROOT = Path(__file__).resolve().parents[2]
NASTY = "p@ss%w0rd:/é 'q\"#;x"  # every character that breaks naive URLs / ini / TOML


@pytest.fixture(scope="module")
def ep() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stack_entrypoint", ROOT / "docker" / "entrypoint.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _env(**over: str) -> dict[str, str]:
    base = {
        "POSTGRES_PASSWORD": "superuser-" + NASTY,
        "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD": NASTY,
        "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD": "mlflow-" + NASTY,
        "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD": "auth-" + NASTY,
        "SIAMESE_SWEEP_MLFLOW_ADMIN_USERNAME": "admin",
        "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD": "adm%in " + NASTY,
        "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD": "worker-" + NASTY,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 64,
        "SIAMESE_SWEEP_DASHBOARD_PASSWORD": "dash-" + NASTY,
        "SIAMESE_SWEEP_SPEC": "/specs/example.yaml",
        "SIAMESE_SWEEP_STUDY": "s1",
    }
    base.update(over)
    return base


def _read_with_mlflow(path: Path, monkeypatch: pytest.MonkeyPatch):
    """MLflow's own ini reader, loaded without importing the (slow) auth app package."""
    origin = importlib.util.find_spec("mlflow")
    assert origin and origin.submodule_search_locations
    cfg_py = Path(origin.submodule_search_locations[0]) / "server" / "auth" / "config.py"
    spec = importlib.util.spec_from_file_location("mlflow_auth_config_copy", cfg_py)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    read_auth_config = module.read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    return read_auth_config()


def test_pg_url_quotes_credentials(ep: ModuleType) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(ep.pg_url(_env(), "optuna"))
    assert url.drivername == "postgresql+psycopg2"
    parts = (url.username, url.password, url.host, url.port, url.database)
    assert parts == ("optuna", NASTY, "postgres", 5432, "optuna")
    assert make_url(ep.pg_url(_env(), "mlflow_auth")).username == "mlflow_auth"


@pytest.mark.parametrize("value", ["", "change-me-optuna-db-password", "CHANGE-ME"])
def test_missing_or_placeholder_secret_is_refused(ep: ModuleType, value: str) -> None:
    with pytest.raises(SystemExit, match="SIAMESE_SWEEP_OPTUNA_DB_PASSWORD"):
        ep.pg_url(_env(SIAMESE_SWEEP_OPTUNA_DB_PASSWORD=value), "optuna")


@pytest.mark.parametrize("role", ["worker", "mlflow-login", "mlflow-users", "no-such-role"])
def test_bad_configuration_is_one_line_and_exit_2(role: str, tmp_path: Path) -> None:
    """Exit 2 is what the worker Job's podFailurePolicy fails on at once; as ``SystemExit(message)`` every one
    of these exited 1, which the Job retried with back-off up to its backoffLimit."""
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD": "change-me-optuna-db-password",
           "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_TRACKING_PASSWORD_FILE": str(tmp_path / "absent"),
           "MLFLOW_URL": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, str(ROOT / "docker" / "entrypoint.py"), role], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("entrypoint: "), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_does_not_answer_in_time_is_exit_1(ep: ModuleType, tmp_path: Path) -> None:
    """Not bad configuration: the server may still come, so the pod fails and the Job retries it."""
    secret_file = tmp_path / "password"
    secret_file.write_text("a-worker-password-1234\n")
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_TRACKING_PASSWORD_FILE": str(secret_file)}
    with pytest.raises(ep.Unavailable, match="did not accept user") as raised:
        ep.wait_for_login(env, timeout_s=0.5, poll_s=0.1)
    assert raised.value.exit_code == 1
    with pytest.raises(ep.ConfigError) as refused:
        ep.secret({}, "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD")
    assert refused.value.exit_code == 2 and not isinstance(refused.value, ep.Unavailable)


class _StartingMlflow:
    """A stand-in for an MLflow server whose users API answers 503 a few times (its auth database not ready)
    while /health is up, then creates the user; or answers 401 (an admin password MLflow does not have)."""

    def __init__(self, failures: int, status: int = 503) -> None:
        import http.server
        import threading

        self.calls: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                outer.calls.append(self.path)
                if self.path == "/health":
                    code, body = 200, b"OK"
                elif outer.failures > 0:
                    outer.failures -= 1
                    code, body = outer.status, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}'
                elif "/users/get" in self.path:
                    code, body = 404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}'
                else:
                    code, body = 200, b'{"user": {}}'
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            do_GET = do_POST = do_PATCH = _answer

        self.failures, self.status = failures, status
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_users_call_answered_with_a_server_error_is_retried_then_exit_1(ep: ModuleType) -> None:
    """A 503 from the users API (the server answering /health before its auth database) was bad configuration,
    exit 2, which the setup Job does not retry (podFailurePolicy FailJob). Retried now; exit 1 if it lasts."""
    starting = _StartingMlflow(failures=2)
    try:
        assert ep.create_worker_user(_env(MLFLOW_URL=starting.url), timeout_s=30) == ep.DEFAULT_WORKER_USER
        assert sum("/users/create" in c for c in starting.calls) == 1
        lasting = _StartingMlflow(failures=10_000)
        with pytest.raises(ep.Unavailable, match="HTTP 503") as raised:
            ep.create_worker_user(_env(MLFLOW_URL=lasting.url), timeout_s=1)
        assert raised.value.exit_code == 1
        lasting.server.shutdown()
        refused = _StartingMlflow(failures=10_000, status=401)  # bad input: exit 2 at once, with what to do
        with pytest.raises(ep.ConfigError, match="admin password is not the one MLflow has") as wrong:
            ep.create_worker_user(_env(MLFLOW_URL=refused.url), timeout_s=30)
        assert wrong.value.exit_code == 2 and not isinstance(wrong.value, ep.Unavailable)
        refused.server.shutdown()
    finally:
        starting.server.shutdown()


def test_a_server_error_is_an_outage_not_bad_input_and_a_password_change_says_so() -> None:
    """`MlflowUnavailable` under `InputError` would be exit 2 wherever the CLI met it; and a 503 to a password
    change was said as a wrong password."""
    from siamese_core.errors import InfrastructureError, InputError
    from sweeps.stack.mlflow_auth import MlflowUnavailable, change_password

    assert issubclass(MlflowUnavailable, InfrastructureError) and not issubclass(MlflowUnavailable, InputError)
    busy = _StartingMlflow(failures=10_000)
    try:
        with pytest.raises(MlflowUnavailable, match="HTTP 503"):
            change_password(busy.url, username="admin", old="an-old-password-1", new="a-new-password-12")
    finally:
        busy.server.shutdown()


def test_secrets_may_come_from_files(ep: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(NASTY + "\n")
    env = _env(SIAMESE_SWEEP_OPTUNA_DB_PASSWORD="", SIAMESE_SWEEP_OPTUNA_DB_PASSWORD_FILE=str(tmp_path / "pw"))
    assert ep.secret(env, "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD") == NASTY
    with pytest.raises(SystemExit, match="SIAMESE_SWEEP_OPTUNA_DB_PASSWORD_FILE"):
        ep.secret(_env(SIAMESE_SWEEP_OPTUNA_DB_PASSWORD="",
                       SIAMESE_SWEEP_OPTUNA_DB_PASSWORD_FILE=str(tmp_path / "missing")),
                  "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD")


def test_mlflow_ini_is_read_back_by_mlflow(ep: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv, child = ep.mlflow_command(_env(), tmp_path / "cfg")
    ini = Path(child["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini.stat().st_mode & 0o777 == 0o600
    cfg = _read_with_mlflow(ini, monkeypatch)
    assert cfg.admin_username == "admin" and cfg.admin_password == "adm%in " + NASTY
    assert cfg.database_uri == ep.pg_url(_env(), "mlflow_auth")
    assert cfg.default_permission == "READ"
    assert child["MLFLOW_BACKEND_STORE_URI"] == ep.pg_url(_env(), "mlflow")
    for name in ("POSTGRES_PASSWORD", "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD", "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD",
                 "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD", "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD",
                 "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD"):
        assert name not in child, name
    joined = " ".join(argv)
    assert NASTY not in joined and "--app-name basic-auth" in joined and "--serve-artifacts" in joined


def test_short_admin_password_is_refused(ep: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="12 characters"):
        ep.mlflow_command(_env(SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD="short"), tmp_path)


def test_dashboard_runs_guarded_with_the_optuna_role_only(ep: ModuleType) -> None:
    argv, child = ep.dashboard_command(_env(), [])
    assert argv[:2] == ["siamese-sweep", "dashboard"] and "--allow-writes" not in argv
    assert child["OPTUNA_STORAGE"] == ep.pg_url(_env(), "optuna")
    assert child["SIAMESE_SWEEP_DASHBOARD_PASSWORD"] == "dash-" + NASTY
    assert NASTY not in " ".join(argv)
    assert not {"POSTGRES_PASSWORD", "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD",
                "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD"} & set(child)


def test_worker_command_line(ep: ModuleType) -> None:
    argv, child = ep.worker_command(_env(), ["--n-trials", "3"])
    storage = ep.pg_url(_env(), "optuna")
    assert argv == ["siamese-sweep", "worker", "/specs/example.yaml", "--study", "s1", "--n-trials", "3"]
    assert child["OPTUNA_STORAGE"] == storage and child["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert child["MLFLOW_TRACKING_USERNAME"] == "sweeps-worker"
    assert child["MLFLOW_TRACKING_PASSWORD"] == "worker-" + NASTY
    assert NASTY not in " ".join(argv), "passwords must stay off the command line"
    assert not {"POSTGRES_PASSWORD", "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD", "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD",
                "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD", "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD"} & set(child), \
        "a worker holds only what it needs"
    # the quickstart spec, its study name
    bare, _ = ep.worker_command(_env(SIAMESE_SWEEP_SPEC="", SIAMESE_SWEEP_STUDY=""), [])
    assert bare == ["siamese-sweep", "worker", "quickstart"]
    # the quickstart spec under another name: named, so that the first worker creates the study (`worker --study`
    # alone joins only a stored one: exit 2 "no study named ...")
    named, _ = ep.worker_command(_env(SIAMESE_SWEEP_SPEC="", SIAMESE_SWEEP_STUDY="mine"), [])
    assert named == ["siamese-sweep", "worker", "quickstart", "--study", "mine"]
    # `--scale worker=N` on one host: each container saw every core and started a thread per core
    shared, _ = ep.worker_command(_env(SIAMESE_SWEEP_SPEC="", SIAMESE_SWEEP_STUDY="", SIAMESE_SWEEP_THREADS="1"), [])
    assert shared == ["siamese-sweep", "worker", "quickstart", "--threads", "1"]
    assert build_parser().parse_args(shared[1:]).threads == 1
    for bad in ("0", "auto", "2.5"):
        with pytest.raises(ep.ConfigError, match="^entrypoint: SIAMESE_SWEEP_THREADS: expected a positive whole"):
            ep.worker_command(_env(SIAMESE_SWEEP_THREADS=bad), [])
    assert resolve_spec_path(named[2]).is_file() and build_parser().parse_args(named[1:]).study == "mine"
    with pytest.raises(SystemExit, match="SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD"):
        ep.worker_command(_env(SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD=""), [])


def test_worker_user_name_may_come_from_a_file(ep: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "username").write_text("k8s-worker\n")
    _, child = ep.worker_command(_env(SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME_FILE=str(tmp_path / "username")), [])
    assert child["MLFLOW_TRACKING_USERNAME"] == "k8s-worker"
    _, child = ep.worker_command(_env(SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME="plain",
                                      SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME_FILE="/nonexistent"), [])
    assert child["MLFLOW_TRACKING_USERNAME"] == "plain"


def test_the_worker_user_is_never_the_admin(ep: ModuleType) -> None:
    with pytest.raises(SystemExit, match="must not be the admin"):  # before any request: no server here
        ep.create_worker_user(_env(MLFLOW_URL="http://127.0.0.1:9", SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME="admin"),
                              timeout_s=0)


def test_write_auth_ini_is_read_back_by_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_auth_ini(
        tmp_path / "auth.ini",
        admin_username="admin",
        admin_password="adm%in " + NASTY,
        database_uri="postgresql+psycopg2://u:p%40ss@127.0.0.1:5432/mlflow_auth",
        default_permission="EDIT",
    )
    cfg = _read_with_mlflow(path, monkeypatch)
    assert cfg.admin_password == "adm%in " + NASTY
    assert cfg.database_uri == "postgresql+psycopg2://u:p%40ss@127.0.0.1:5432/mlflow_auth"
    assert cfg.default_permission == "EDIT" and cfg.auth_cache_ttl_seconds == 60
    with pytest.raises(ValueError, match="12 characters"):
        write_auth_ini(tmp_path / "x.ini", admin_username="a", admin_password="short", database_uri="sqlite://")
    with pytest.raises(ValueError):
        write_auth_ini(tmp_path / "x.ini", admin_username="a", admin_password="x" * 12 + "\n", database_uri="sqlite://")
