"""Real-server fixtures for distributed-sweep tests.

Thin on purpose: the logic lives in ``sweeps.stack`` so these can move to the
top-level tests/conftest.py unchanged. Each server starts once per session.
Without PostgreSQL binaries the tests skip locally but fail under CI=true, so
a CI that forgot ``apt-get install postgresql`` cannot go green.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from sweeps.stack import MlflowServer, PostgresServer, find_pg_bin_dir


def _require_postgres_binaries() -> None:
    try:
        find_pg_bin_dir()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL 127.0.0.1 server; ``.url`` is the app database, ``create_database()`` adds more."""
    _require_postgres_binaries()
    with PostgresServer(user="sweeps", database="sweeps", fsync=False) as pg:
        yield pg


@pytest.fixture(scope="session")
def mlflow_server_pg(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """``mlflow server`` with basic auth on PostgreSQL (databases ``mlflow`` and ``mlflow_auth``).

    Clients use ``mlflow_server_pg.env()``; tests may ``restart()`` it (same port, same stores).
    """
    backend = postgres_server.create_database("mlflow")
    auth_db = postgres_server.create_database("mlflow_auth")
    server = MlflowServer(
        backend,
        auth=True,
        auth_database_uri=auth_db,
        artifacts_destination=tmp_path_factory.mktemp("mlartifacts"),
        workers=1,
    )
    with server:
        yield server


@pytest.fixture
def mlflow_env(mlflow_server_pg: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point MLflow clients in this test at ``mlflow_server_pg`` (env vars, as a worker would)."""
    env = mlflow_server_pg.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return env
