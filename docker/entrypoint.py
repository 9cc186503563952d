#!/usr/bin/env python3
"""Entrypoint for the compose services: ``entrypoint.py {mlflow|dashboard|worker} [ARGS...]``.

Why a script rather than a ``command:`` line: credentials arrive as separate
variables from ``.env`` and must be URL-quoted into database URLs, written to
0600 config files (MLflow auth ini, optuna-dashboard TOML) instead of argv, and
rejected clearly when missing or still the ``change-me`` placeholder.
Standard library only: the mlflow and dashboard images don't contain the project.
"""

from __future__ import annotations

import configparser
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

PLACEHOLDER_PREFIX = "change-me"
MIN_MLFLOW_PASSWORD = 12  # mlflow.utils.validation._validate_password


class ConfigError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"entrypoint: {message}")


def require(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise ConfigError(f"{name} is not set; copy .env.example to .env and fill it in")
    if value.lower().startswith(PLACEHOLDER_PREFIX):
        raise ConfigError(f"{name} still has the placeholder value from .env.example; set a real secret in .env")
    return value


def pg_url(env: Mapping[str, str], database: str, *, driver: str = "psycopg2") -> str:
    """``postgresql+psycopg2://user:pw@host:port/db`` with user and password URL-quoted."""
    user = quote(env.get("POSTGRES_USER") or "sweeps", safe="")
    password = quote(require(env, "POSTGRES_PASSWORD"), safe="")
    host = env.get("POSTGRES_HOST") or "postgres"
    port = env.get("POSTGRES_PORT_INTERNAL") or "5432"
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return f"{scheme}://{user}:{password}@{host}:{port}/{database}"


def _private_file(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def _ini_value(name: str, value: str) -> str:
    if "\n" in value or "\r" in value or value != value.strip():
        raise ConfigError(f"{name} must not contain newlines or surrounding whitespace")
    return value.replace("%", "%%")  # mlflow reads the ini with BasicInterpolation


def mlflow_auth_ini(env: Mapping[str, str]) -> str:
    """MLflow 3.17 basic-auth ini (format of mlflow/server/auth/basic_auth.ini)."""
    password = require(env, "MLFLOW_ADMIN_PASSWORD")
    if len(password) < MIN_MLFLOW_PASSWORD:
        raise ConfigError(f"MLFLOW_ADMIN_PASSWORD must be at least {MIN_MLFLOW_PASSWORD} characters")
    values = {
        "default_permission": env.get("MLFLOW_DEFAULT_PERMISSION") or "READ",
        "database_uri": pg_url(env, env.get("MLFLOW_AUTH_DB") or "mlflow_auth"),
        "admin_username": env.get("MLFLOW_ADMIN_USERNAME") or "admin",
        "admin_password": password,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        "auth_cache_ttl_seconds": env.get("MLFLOW_AUTH_CACHE_TTL_SECONDS") or "60",
    }
    text = "[mlflow]\n" + "".join(f"{k} = {_ini_value(k, v)}\n" for k, v in values.items())
    parsed = configparser.ConfigParser()
    parsed.read_string(text)
    assert parsed["mlflow"]["admin_password"] == password
    return text


def mlflow_command(env: Mapping[str, str], config_dir: Path) -> tuple[list[str], dict[str, str]]:
    child = dict(env)
    child["MLFLOW_FLASK_SERVER_SECRET_KEY"] = require(env, "MLFLOW_FLASK_SERVER_SECRET_KEY")
    child["MLFLOW_BACKEND_STORE_URI"] = pg_url(env, env.get("MLFLOW_DB") or "mlflow")
    child["MLFLOW_AUTH_CONFIG_PATH"] = str(_private_file(config_dir, "basic_auth.ini", mlflow_auth_ini(env)))
    child.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # These would override the ini; the ini is the single source.
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        child.pop(name, None)
    for name in ("MLFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD"):  # now in the ini / URL only
        child.pop(name, None)
    argv = [
        "mlflow", "server",
        "--host", "0.0.0.0",
        "--port", env.get("MLFLOW_PORT_INTERNAL") or "5000",
        "--workers", env.get("MLFLOW_WORKERS") or "2",
        "--artifacts-destination", env.get("MLFLOW_ARTIFACTS_DESTINATION") or "/mlartifacts",
        "--serve-artifacts",
        "--app-name", "basic-auth",
    ]  # fmt: skip
    return argv, child


def dashboard_command(env: Mapping[str, str], config_dir: Path) -> tuple[list[str], dict[str, str]]:
    storage = env.get("OPTUNA_STORAGE") or pg_url(env, env.get("OPTUNA_DB") or "optuna")
    toml = f"[optuna_dashboard]\nstorage = {json.dumps(storage)}\n"  # a JSON string is a valid TOML basic string
    path = _private_file(config_dir, "optuna-dashboard.toml", toml)
    child = {k: v for k, v in env.items() if k not in ("POSTGRES_PASSWORD", "OPTUNA_STORAGE")}
    port = env.get("OPTUNA_DASHBOARD_PORT_INTERNAL") or "8080"
    argv = ["optuna-dashboard", "--from-config", str(path), "--host", "0.0.0.0", "--port", port]
    return argv, child


def worker_command(env: Mapping[str, str], extra: list[str]) -> tuple[list[str], dict[str, str]]:
    child = dict(env)
    storage = env.get("OPTUNA_STORAGE") or pg_url(env, env.get("OPTUNA_DB") or "optuna")
    child["OPTUNA_STORAGE"] = storage
    child.pop("POSTGRES_PASSWORD", None)
    child["MLFLOW_TRACKING_URI"] = env.get("MLFLOW_TRACKING_URI") or "http://mlflow:5000"
    require(env, "MLFLOW_TRACKING_PASSWORD")
    # Empty SWEEP_SPEC = the built-in quickstart spec; empty SWEEP_STUDY = the spec's study.name.
    # URLs travel in the environment (the CLI reads OPTUNA_STORAGE / MLFLOW_TRACKING_URI): argv is visible in `ps`.
    argv = ["siamese-sweep", "worker", *([env["SWEEP_SPEC"]] if env.get("SWEEP_SPEC") else [])]
    if env.get("SWEEP_STUDY"):
        argv += ["--study", env["SWEEP_STUDY"]]
    argv += list(extra)
    return argv, child


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("mlflow", "dashboard", "worker"):
        raise ConfigError("usage: entrypoint.py {mlflow|dashboard|worker} [extra args]")
    role, extra = argv[0], argv[1:]
    env = dict(os.environ)
    config_dir = Path(env.get("STACK_CONFIG_DIR") or tempfile.mkdtemp(prefix=f"{role}-"))
    if role == "mlflow":
        cmd, child = mlflow_command(env, config_dir)
        cmd += extra
    elif role == "dashboard":
        cmd, child = dashboard_command(env, config_dir)
        cmd += extra
    else:
        cmd, child = worker_command(env, extra)
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, child)


if __name__ == "__main__":
    main(sys.argv[1:])
