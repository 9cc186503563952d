"""docker/entrypoint.py and write_auth_ini: configs MLflow's own reader accepts."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from sweeps.stack.mlflow_server import write_auth_ini

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
        "POSTGRES_USER": "sweeps",
        "POSTGRES_PASSWORD": NASTY,
        "MLFLOW_ADMIN_USERNAME": "admin",
        "MLFLOW_ADMIN_PASSWORD": "adm%in " + NASTY,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 64,
        "SWEEP_SPEC": "/specs/example.yaml",
        "SWEEP_STUDY": "s1",
        "MLFLOW_TRACKING_PASSWORD": "adm%in " + NASTY,
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
    assert parts == ("sweeps", NASTY, "postgres", 5432, "optuna")


@pytest.mark.parametrize("value", ["", "change-me-postgres-password", "CHANGE-ME"])
def test_missing_or_placeholder_secret_is_refused(ep: ModuleType, value: str) -> None:
    with pytest.raises(SystemExit, match="POSTGRES_PASSWORD"):
        ep.pg_url(_env(POSTGRES_PASSWORD=value), "optuna")


def test_mlflow_ini_is_read_back_by_mlflow(ep: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv, child = ep.mlflow_command(_env(), tmp_path / "cfg")
    ini = Path(child["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini.stat().st_mode & 0o777 == 0o600
    cfg = _read_with_mlflow(ini, monkeypatch)
    assert cfg.admin_username == "admin" and cfg.admin_password == "adm%in " + NASTY
    assert cfg.database_uri == ep.pg_url(_env(), "mlflow_auth")
    assert cfg.default_permission == "READ"
    assert child["MLFLOW_BACKEND_STORE_URI"] == ep.pg_url(_env(), "mlflow")
    assert "POSTGRES_PASSWORD" not in child and "MLFLOW_ADMIN_PASSWORD" not in child
    joined = " ".join(argv)
    assert NASTY not in joined and "--app-name basic-auth" in joined and "--serve-artifacts" in joined


def test_short_admin_password_is_refused(ep: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="12 characters"):
        ep.mlflow_command(_env(MLFLOW_ADMIN_PASSWORD="short"), tmp_path)


def test_dashboard_toml_keeps_url_off_argv(ep: ModuleType, tmp_path: Path) -> None:
    argv, child = ep.dashboard_command(_env(), tmp_path)
    toml_path = Path(argv[argv.index("--from-config") + 1])
    assert tomllib.loads(toml_path.read_text())["optuna_dashboard"]["storage"] == ep.pg_url(_env(), "optuna")
    assert NASTY not in " ".join(argv) and "POSTGRES_PASSWORD" not in child


def test_worker_command_line(ep: ModuleType) -> None:
    argv, child = ep.worker_command(_env(), ["--n-trials", "3"])
    storage = ep.pg_url(_env(), "optuna")
    assert argv == ["siamese-sweep", "worker", "/specs/example.yaml", "--study", "s1", "--n-trials", "3"]
    assert child["OPTUNA_STORAGE"] == storage and child["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert NASTY not in " ".join(argv), "passwords must stay off the command line"
    bare, _ = ep.worker_command(_env(SWEEP_SPEC="", SWEEP_STUDY=""), [])  # quickstart spec, its study name
    assert bare == ["siamese-sweep", "worker"]
    with pytest.raises(SystemExit, match="MLFLOW_TRACKING_PASSWORD"):
        ep.worker_command(_env(MLFLOW_TRACKING_PASSWORD=""), [])


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
