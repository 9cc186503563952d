"""MLflow basic auth, standard library only: the auth ini, and the users workers log in as.

One module for the two places that configure MLflow's auth — `sweeps.stack` (no Docker) and
``docker/entrypoint.py`` (the compose images, which copy this file next to the entrypoint because the MLflow
image does not contain the project) — so the two can't drift apart.
"""
from __future__ import annotations

import base64
import configparser
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TypedDict
from urllib.parse import quote

__all__ = ["MIN_PASSWORD_LENGTH", "AuthConfigError", "MlflowUnavailable", "auth_ini_text", "auth_request",
           "change_password", "ensure_user", "write_auth_ini"]

MIN_PASSWORD_LENGTH = 12  # mlflow.utils.validation._validate_password refuses shorter ones
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


try:  # inside the project every error is a SiameseError; the MLflow image has only this file
    from siamese_core.errors import InfrastructureError as _ProjectOutage
    from siamese_core.errors import InputError as _ProjectError
except ImportError:  # the MLflow image (tests/infra/test_k8s_manifests.py imports this file so)
    class _ProjectError(Exception):  # type: ignore[no-redef]
        """Bare ``Exception`` as a first base before ``ValueError`` has no consistent MRO: the import failed."""

    class _ProjectOutage(Exception):  # type: ignore[no-redef]
        """The same, for `MlflowUnavailable`."""


class AuthConfigError(_ProjectError, ValueError):
    """A value the auth ini cannot hold, or that MLflow would refuse (bad input: exit 2)."""


class MlflowUnavailable(_ProjectOutage, RuntimeError):
    """MLflow answered a users call with a server error (5xx: still starting, its database away): worth a retry,
    not bad input (the images' entrypoint exits 1 for it, which the Job retries; 2 fails the Job)."""


def _ini_value(name: str, value: str) -> str:
    """Escape for ConfigParser's BasicInterpolation, which MLflow's reader uses."""
    if "\n" in value or "\r" in value or value != value.strip():
        raise AuthConfigError(f"{name} must not contain newlines or surrounding whitespace")
    return value.replace("%", "%%")


def auth_ini_text(*, admin_username: str, admin_password: str, database_uri: str, default_permission: str = "READ",
                  auth_cache_ttl_seconds: int = 60) -> str:
    """MLflow's basic-auth config (format of mlflow/server/auth/basic_auth.ini), checked by reading it back.

    ``admin_password`` only bootstraps the admin user on an empty auth database; MLflow 3.17 ships no default
    password and refuses ``password1234``.
    """
    if len(admin_password) < MIN_PASSWORD_LENGTH:
        raise AuthConfigError(f"MLflow requires admin passwords of at least {MIN_PASSWORD_LENGTH} characters")
    if default_permission not in PERMISSIONS:
        raise AuthConfigError(f"Expected default_permission in {', '.join(PERMISSIONS)}, "
                              f"received: default_permission={default_permission!r}")
    values = {
        "default_permission": default_permission,
        "database_uri": database_uri,
        "admin_username": admin_username,
        "admin_password": admin_password,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        # PBKDF2 per request costs ~0.3 s on 2 cores; cache verified credentials for a minute.
        "auth_cache_ttl_seconds": str(int(auth_cache_ttl_seconds)),
    }
    text = "[mlflow]\n" + "".join(f"{k} = {_ini_value(k, v)}\n" for k, v in values.items())
    parsed = configparser.ConfigParser()
    parsed.read_string(text)
    if parsed["mlflow"]["admin_password"] != admin_password or parsed["mlflow"]["database_uri"] != database_uri:
        raise AuthConfigError("auth ini did not round-trip through configparser")
    return text


def write_auth_ini(path: Path, **kwargs: object) -> Path:
    """`auth_ini_text` written to `path` with mode 0600 (created 0600, never briefly readable)."""
    text = auth_ini_text(**kwargs)  # type: ignore[arg-type]
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
    return path


def auth_request(url: str, path: str, *, username: str, password: str, method: str = "GET",
                 body: dict[str, object] | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """One call to MLflow's REST API as `username` (basic auth); returns (HTTP status, body)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                 headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class _Credentials(TypedDict):
    """Basic-auth keyword arguments of `auth_request`."""

    username: str
    password: str


def ensure_user(url: str, *, admin_username: str, admin_password: str, username: str, password: str) -> bool:
    """Create the non-admin MLflow user `username` (or reset its password); True when it was created.

    Workers log as this user, not as the admin: they can create experiments, runs and models and read the
    others', but cannot create users or delete experiments they did not create — the server answers 403.
    An existing user that was made an admin is made a plain user again. Idempotent.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthConfigError(f"MLflow requires passwords of at least {MIN_PASSWORD_LENGTH} characters")
    if username == admin_username:
        raise AuthConfigError(f"the workers' MLflow user must not be the admin ({admin_username!r})")
    admin: _Credentials = {"username": admin_username, "password": admin_password}
    status, body = auth_request(url, f"/api/2.0/mlflow/users/get?username={quote(username)}", **admin)
    if status >= 500:
        raise MlflowUnavailable(f"could not look up MLflow user {username!r}: HTTP {status} "
                                f"{body[:200].decode(errors='replace')}")
    created = status != 200
    was_admin = not created and bool(json.loads(body or b"{}").get("user", {}).get("is_admin"))
    if created:
        status, body = auth_request(url, "/api/2.0/mlflow/users/create", method="POST",
                                    body={"username": username, "password": password}, **admin)
    else:
        status, body = auth_request(url, "/api/2.0/mlflow/users/update-password", method="PATCH",
                                    body={"username": username, "password": password}, **admin)
    if status == 200 and was_admin:
        status, body = auth_request(url, "/api/2.0/mlflow/users/update-admin", method="PATCH",
                                    body={"username": username, "is_admin": False}, **admin)
    if status >= 500:
        raise MlflowUnavailable(f"could not {'create' if created else 'update'} MLflow user {username!r}: HTTP "
                                f"{status} {body[:200].decode(errors='replace')}")
    if status != 200:
        hint = ("; the admin password is not the one MLflow has (it takes the configured one only on an empty auth "
                "database: change it through MLflow, docs/cluster.md)" if status == 401 else "")
        raise AuthConfigError(f"could not {'create' if created else 'update'} MLflow user {username!r}: HTTP {status} "
                              f"{body[:200].decode(errors='replace')}{hint}")
    return created


def change_password(url: str, *, username: str, old: str, new: str) -> None:
    """Change `username`'s MLflow password from `old` to `new`, logged in as that user with `old`.

    The ini's admin password only creates the admin on an empty auth database, so a new one given to a stack
    that has run before must be set through the API (MLflow lets a user change its own password). Done
    already (an earlier start changed it, then stopped before it saved it) counts as done."""
    if len(new) < MIN_PASSWORD_LENGTH:
        raise AuthConfigError(f"MLflow requires passwords of at least {MIN_PASSWORD_LENGTH} characters")
    status, body = auth_request(url, "/api/2.0/mlflow/users/update-password", method="PATCH",
                                body={"username": username, "password": new, "current_password": old},
                                username=username, password=old)  # a user's own change must repeat the old one
    if status == 200:
        return
    if status >= 500:  # not a wrong password: a server still starting, or its database away
        raise MlflowUnavailable(f"could not change MLflow user {username!r}'s password: HTTP {status} "
                                f"{body[:200].decode(errors='replace')}")
    check, _ = auth_request(url, f"/api/2.0/mlflow/users/get?username={quote(username)}", username=username,
                            password=new)
    if check != 200:
        raise AuthConfigError(f"could not change MLflow user {username!r}'s password: HTTP {status} with the saved "
                              f"one ({body[:200].decode(errors='replace')}), HTTP {check} with the new one; give "
                              "the password MLflow has")
