#!/usr/bin/env python3
"""Entrypoint of the images: ``entrypoint.py {mlflow|mlflow-users|mlflow-login|dashboard|worker} [ARGS...]``.

The compose services run it, and so do the Kubernetes mlflow Deployment and mlflow-setup Job (deploy/k8s),
which give every secret as ``NAME_FILE``.

Why a script rather than a ``command:`` line: credentials arrive as separate variables (or ``NAME_FILE``
files, as Docker/Kubernetes secrets) and must be URL-quoted into database URLs, written to 0600 config files
(the MLflow auth ini) instead of argv, and rejected clearly when missing or still the ``change-me``
placeholder. Least privilege: each service gets only its own credentials —

* ``mlflow``: the ``mlflow`` and ``mlflow_auth`` database roles, the MLflow admin password;
* ``mlflow-users`` (one-shot; the compose service and the Kubernetes ``mlflow-setup`` Job): the admin
  password, to create the workers' non-admin MLflow user;
* ``mlflow-login`` (the Kubernetes worker Job's init container): the workers' MLflow user, to wait until the
  server accepts it (compose orders the services instead);
* ``dashboard``/``worker``: the ``optuna`` database role (+ the workers' MLflow user); never the PostgreSQL
  superuser, never the MLflow admin.

Standard library only (plus ``mlflow_auth``, copied next to this file in the MLflow image): that image does
not contain the project.
"""

from __future__ import annotations

import http.client
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit

try:  # the worker image has the project installed
    from sweeps.stack.mlflow_auth import AuthConfigError, MlflowUnavailable, auth_ini_text, auth_request, ensure_user
except ImportError:  # the MLflow image: a copy beside this file
    from mlflow_auth import (  # type: ignore[no-redef]
        AuthConfigError,
        MlflowUnavailable,
        auth_ini_text,
        auth_request,
        ensure_user,
    )

PLACEHOLDER_PREFIX = "change-me"
# database -> (role, the variable holding its password)
DATABASES = {
    "optuna": ("optuna", "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD"),
    "mlflow": ("mlflow", "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD"),
    "mlflow_auth": ("mlflow_auth", "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD"),
}
DEFAULT_WORKER_USER = "sweeps-worker"
# how long a worker pod waits for the mlflow-setup Job to create its user: that Job waits up to 300 s for the
# server, then is restarted; a worker that logged in first was refused (exit 2), which fails the whole Job
LOGIN_WAIT_S = 900.0


class ConfigError(SystemExit):
    """Bad configuration: one line, exit 2, the CLI's code for "every retry would fail alike" (the worker Job's
    podFailurePolicy fails the Job on it). As a plain ``SystemExit(message)`` it exited 1, which the Job retried
    with back-off up to its backoffLimit."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(f"entrypoint: {message}")


class Unavailable(ConfigError):
    """A server that did not answer, or accept a login, in time: exit 1, which is retried (it may still come)."""

    exit_code = 1


def secret(env: Mapping[str, str], name: str) -> str:
    """`name` from the environment, or from the file named by ``NAME_FILE``; refused if missing or a placeholder."""
    value = env.get(name, "")
    path = env.get(name + "_FILE", "")
    if not value and path:
        try:
            value = Path(path).read_text().removesuffix("\n")
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{name} is not set; copy .env.example to .env and fill it in")
    if value.lower().startswith(PLACEHOLDER_PREFIX):
        raise ConfigError(f"{name} still has the placeholder value from .env.example; set a real secret in .env")
    return value


def setting(env: Mapping[str, str], name: str, default: str = "") -> str:
    """A non-secret value (a user name): `name`, else the file named by ``NAME_FILE``, else `default`."""
    value = env.get(name, "")
    path = env.get(name + "_FILE", "")
    if not value and path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return value or default


def pg_url(env: Mapping[str, str], database: str, *, driver: str = "psycopg2") -> str:
    """``postgresql+psycopg2://ROLE:pw@host:port/DATABASE`` as the database's own role, credentials URL-quoted."""
    role, password_var = DATABASES[database]
    password = quote(secret(env, password_var), safe="")
    host = env.get("POSTGRES_HOST") or "postgres"
    port = env.get("POSTGRES_PORT_INTERNAL") or "5432"
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return f"{scheme}://{quote(role, safe='')}:{password}@{host}:{port}/{database}"


def _private_file(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def _scrub(env: Mapping[str, str]) -> dict[str, str]:
    """The child's environment without any secret it does not need (the caller adds back what it does)."""
    names = [*(v for _, v in DATABASES.values()), "POSTGRES_PASSWORD", "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD",
             "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
             "SIAMESE_SWEEP_DASHBOARD_PASSWORD"]
    drop = set(names) | {n + "_FILE" for n in names}
    return {k: v for k, v in env.items() if k not in drop}


def mlflow_command(env: Mapping[str, str], config_dir: Path) -> tuple[list[str], dict[str, str]]:
    try:
        ini = auth_ini_text(admin_username=env.get("SIAMESE_SWEEP_MLFLOW_ADMIN_USERNAME") or "admin",
                            admin_password=secret(env, "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD"),
                            database_uri=pg_url(env, "mlflow_auth"),
                            default_permission=env.get("MLFLOW_DEFAULT_PERMISSION") or "READ",
                            auth_cache_ttl_seconds=int(env.get("MLFLOW_AUTH_CACHE_TTL_SECONDS") or 60))
    except AuthConfigError as exc:
        raise ConfigError(str(exc)) from None
    child = _scrub(env)
    child["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret(env, "MLFLOW_FLASK_SERVER_SECRET_KEY")
    child["MLFLOW_BACKEND_STORE_URI"] = pg_url(env, "mlflow")
    child["MLFLOW_AUTH_CONFIG_PATH"] = str(_private_file(config_dir, "basic_auth.ini", ini))
    child.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):  # would override the ini
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


def create_worker_user(env: Mapping[str, str], *, timeout_s: float = 300.0) -> str:
    """Wait for the MLflow server, then create (or re-password, and demote) the workers' non-admin user.

    Returns its name. The ``mlflow-users`` compose service and the Kubernetes ``mlflow-setup`` Job run this.
    """
    import urllib.request

    url = env.get("MLFLOW_URL") or "http://mlflow:5000"
    username = setting(env, "SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME", DEFAULT_WORKER_USER)
    admin_username = env.get("SIAMESE_SWEEP_MLFLOW_ADMIN_USERNAME") or "admin"
    if username == admin_username:  # re-passwording it would change the admin's password
        raise ConfigError(f"SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME: the workers' MLflow user must not be the admin "
                          f"({admin_username!r})")
    admin_password = secret(env, "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD")
    password = secret(env, "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD")
    deadline = time.monotonic() + timeout_s
    while True:  # the server may still be starting
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise Unavailable(f"MLflow at {url} did not answer within {timeout_s:.0f} s") from None
            time.sleep(2)
    while True:  # answering /health, it may still fail a users call (its auth database not ready): retried
        try:
            ensure_user(url, admin_username=admin_username, admin_password=admin_password, username=username,
                        password=password)
            return username
        except AuthConfigError as exc:
            raise ConfigError(str(exc)) from None
        except (MlflowUnavailable, OSError) as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"MLflow at {url}: {exc}") from None
            time.sleep(2)


def wait_for_login(env: Mapping[str, str], *, timeout_s: float = LOGIN_WAIT_S, poll_s: float = 2.0) -> str:
    """Wait until the MLflow server accepts the workers' login (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``, or
    their ``*_FILE``); returns the user name. Exit 1 after `timeout_s` (the Job retries the pod). One line per
    change of what the server answers; never the password."""
    url = (env.get("MLFLOW_TRACKING_URI") or "http://mlflow:5000").rstrip("/")
    if urlsplit(url).scheme not in ("http", "https"):  # urllib's "unknown url type" would be waited on for 15 min
        raise ConfigError("MLFLOW_TRACKING_URI must start with http:// or https:// (the MLflow server's URL)")
    username = setting(env, "MLFLOW_TRACKING_USERNAME", DEFAULT_WORKER_USER)
    password = secret(env, "MLFLOW_TRACKING_PASSWORD")
    deadline, said = time.monotonic() + timeout_s, ""
    while True:
        try:
            status, _ = auth_request(url, "/api/2.0/mlflow/experiments/search?max_results=1", username=username,
                                     password=password, timeout=10)
            seen = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:  # not up: refused, DNS, timeout, a cut answer
            reason = getattr(exc, "reason", exc)
            status, seen = 0, type(reason).__name__ if isinstance(reason, BaseException) else str(reason)
        if status == 200:
            return username
        if seen != said:
            hint = ": the mlflow-setup Job creates it" if status == 401 else ""
            print(f"entrypoint: waiting for MLflow at {url} to accept user {username!r} ({seen}{hint})", flush=True)
            said = seen
        if time.monotonic() > deadline:
            raise Unavailable(f"MLflow at {url} did not accept user {username!r} within {timeout_s:.0f} s "
                              f"(last answer: {seen})")
        time.sleep(poll_s)


def dashboard_command(env: Mapping[str, str], extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """`siamese-sweep dashboard`: password-guarded and read-only; storage and password via the environment."""
    child = _scrub(env)
    child["OPTUNA_STORAGE"] = env.get("OPTUNA_STORAGE") or pg_url(env, "optuna")
    child["SIAMESE_SWEEP_DASHBOARD_PASSWORD"] = secret(env, "SIAMESE_SWEEP_DASHBOARD_PASSWORD")
    port = env.get("OPTUNA_DASHBOARD_PORT_INTERNAL") or "8080"
    return ["siamese-sweep", "dashboard", "--host", "0.0.0.0", "--port", port, *extra], child


def worker_command(env: Mapping[str, str], extra: list[str]) -> tuple[list[str], dict[str, str]]:
    child = _scrub(env)
    child["OPTUNA_STORAGE"] = env.get("OPTUNA_STORAGE") or pg_url(env, "optuna")
    child["MLFLOW_TRACKING_URI"] = env.get("MLFLOW_TRACKING_URI") or "http://mlflow:5000"
    child["MLFLOW_TRACKING_USERNAME"] = setting(env, "SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME", DEFAULT_WORKER_USER)
    child["MLFLOW_TRACKING_PASSWORD"] = secret(env, "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD")
    # Empty SIAMESE_SWEEP_SPEC = the built-in quickstart spec; empty SIAMESE_SWEEP_STUDY = the spec's study.name.
    # The spec is always named: `worker --study NAME` alone joins only a study that exists already, so the first
    # worker of a new study named in SIAMESE_SWEEP_STUDY would exit 2 and the service stop after its restarts.
    # URLs travel in the environment (the CLI reads OPTUNA_STORAGE / MLFLOW_TRACKING_URI): argv is visible in `ps`.
    argv = ["siamese-sweep", "worker", env.get("SIAMESE_SWEEP_SPEC") or "quickstart"]
    if env.get("SIAMESE_SWEEP_STUDY"):
        argv += ["--study", env["SIAMESE_SWEEP_STUDY"]]
    threads = env.get("SIAMESE_SWEEP_THREADS", "").strip()
    if threads:  # `--scale worker=N` on one host: each container saw every core
        if not threads.isdigit() or int(threads) < 1:  # the CLI's refusal named a --threads nobody typed
            raise ConfigError(f"SIAMESE_SWEEP_THREADS: expected a positive whole number; received: {threads!r}")
        argv += ["--threads", threads]
    argv += list(extra)
    return argv, child


def main(argv: list[str]) -> None:
    roles = ("mlflow", "mlflow-users", "mlflow-login", "dashboard", "worker")
    if not argv or argv[0] not in roles:
        raise ConfigError(f"usage: entrypoint.py {{{'|'.join(roles)}}} [extra args]")
    role, extra = argv[0], argv[1:]
    env = dict(os.environ)
    if role == "mlflow-users":
        print(f"entrypoint: MLflow user {create_worker_user(env)!r} is ready", flush=True)
        return
    if role == "mlflow-login":
        # PID 1 of its container: the kernel ignores a SIGTERM it has no handler for, so a drain or a delete
        # waited out the grace period and SIGKILLed it (137, which the Job counts); 143 is ignored there
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        print(f"entrypoint: MLflow accepts user {wait_for_login(env)!r}", flush=True)
        return
    if role == "mlflow":
        config_dir = Path(env.get("STACK_CONFIG_DIR") or tempfile.mkdtemp(prefix="mlflow-"))
        cmd, child = mlflow_command(env, config_dir)
        cmd += extra
    elif role == "dashboard":
        cmd, child = dashboard_command(env, extra)
    else:
        cmd, child = worker_command(env, extra)
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, child)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as exc:
        print(exc, file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
