"""Create (or update) the MLflow user the sweep workers log as: not an admin.

Run once by the mlflow-setup Job, as the MLflow admin, against the basic-auth server. Every
credential is read from a mounted Secret file; nothing is printed but user names. Idempotent:
rerunning it resets the worker's password to the one in its Secret.

A new user gets the server's default permission (MLFLOW_DEFAULT_PERMISSION=READ) on experiments it
did not create, and MANAGE on those it creates: the first worker creates the sweep's experiment,
and all workers share this one user, so they can log runs to it and nothing else.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def read(env_name: str) -> str:
    path = os.environ[env_name]
    value = Path(path).read_text().strip()
    if not value:
        raise SystemExit(f"create_worker_user: {env_name} names an empty file: {path}")
    return value


def main() -> int:
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    uri = os.environ["MLFLOW_TRACKING_URI"]
    # the admin's credentials, for this process only (the MLflow client reads these two variables)
    os.environ["MLFLOW_TRACKING_USERNAME"] = os.environ.get("MLFLOW_ADMIN_USERNAME", "admin")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = read("MLFLOW_ADMIN_PASSWORD_FILE")
    username, password = read("MLFLOW_TRACKING_USERNAME_FILE"), read("MLFLOW_TRACKING_PASSWORD_FILE")
    client = get_app_client("basic-auth", tracking_uri=uri)
    deadline = time.monotonic() + float(os.environ.get("SETUP_TIMEOUT_SECONDS", "300"))
    while True:  # the server may still be starting
        try:
            client.create_user(username=username, password=password)
            print(f"created MLflow user {username!r} (not an admin)")
            return 0
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                client.update_user_password(username=username, password=password)
                client.update_user_admin(username=username, is_admin=False)
                print(f"MLflow user {username!r} exists: password reset from its Secret, admin=false")
                return 0
            if time.monotonic() > deadline:
                raise
            print(f"waiting for MLflow: {exc.error_code}", file=sys.stderr)
        except OSError as exc:  # connection refused while the server starts
            if time.monotonic() > deadline:
                raise
            print(f"waiting for MLflow: {type(exc).__name__}", file=sys.stderr)
        time.sleep(5)


if __name__ == "__main__":
    sys.exit(main())
