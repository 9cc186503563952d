"""Shared fixtures: a tiny, fast digits config, and real PostgreSQL / MLflow servers.

The server fixtures (moved here from tests/infra so the distributed and reliability suites share
one PostgreSQL and one MLflow server per session) are thin: the logic lives in ``sweeps.stack``.
Without PostgreSQL binaries those tests skip locally but fail under CI=true, so a CI that forgot
``apt-get install postgresql`` cannot go green.
"""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from siamese_core.data.cache import ENV_DATA_CACHE
from sweeps import scratch

if TYPE_CHECKING:
    from sweeps.stack import MlflowServer, PostgresServer

FIXTURES = Path(__file__).parent / "fixtures"

# One data cache for the session (its sub-processes inherit it): nothing is written into the user's ~/.cache,
# and every process after the first reads digits without importing sklearn.datasets (siamese_core.data.cache).
# In this process's scratch folder: removed at exit, or, after a killed run, by the next siamese-sweep command
# (a plain mkdtemp with an atexit removal was left in /tmp by every killed run: 7 of them on one machine).
if not os.environ.get(ENV_DATA_CACHE):
    os.environ[ENV_DATA_CACHE] = str(scratch.mkdtemp("siamese-test-data-cache-"))
scratch.root()  # now, in the real $TMPDIR, in every xdist worker too: not first in a test's patched tempfile.tempdir

# tests/fixtures/user_code holds tiny importable user encoders/losses (`user_code.encoders:tiny`)
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))


@pytest.fixture(scope="session", autouse=True)
def scratch_working_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs in a scratch directory, not in the checkout it was started from.

    A SQLite MLflow store without an artifact root puts its artifacts in ``./mlruns`` of the working directory
    (MLflow's default), so the suite's in-process sweeps left about 300 runs' plots and models in the checkout's
    ``mlruns/`` on every run; the sub-processes inherit this directory too. Session-scoped so that module- and
    session-scoped fixtures that run sweeps are inside it as well."""
    started_in = Path.cwd()
    scratch = tmp_path_factory.mktemp("cwd")
    os.chdir(scratch)
    try:
        yield scratch
    finally:
        os.chdir(started_in)


@pytest.fixture(autouse=True)
def no_secret_outlives_its_test() -> Iterator[None]:
    """A test leaves the secret variables in ``os.environ`` as it found them.

    Code that reads ``NAME_FILE`` sets ``NAME`` in ``os.environ`` itself, past monkeypatch: an MLflow admin
    password left there by a test of test_stack_cli.py made a later file's MLflow setup log in with it (HTTP 401).
    The serial order ran that file last; pytest-xdist runs the files in another order, so a leak fails here, in
    the test that made it."""
    from sweeps.names import SECRET_ENV

    before = {name: os.environ.get(name) for name in SECRET_ENV}
    yield
    changed = sorted(name for name in SECRET_ENV if os.environ.get(name) != before[name])
    assert not changed, f"the test left {changed} changed in os.environ"


@pytest.fixture(autouse=True)
def no_signal_handler_outlives_its_test() -> Iterator[None]:
    """A test leaves SIGINT and SIGTERM as it found them: the servers and CLIs later tests start inherit an
    ignored signal (a caught one resets on exec), so a leak would change what a later, unrelated test sees."""
    stops = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.getsignal(sig) for sig in stops}
    yield
    changed = sorted(sig.name for sig in stops if signal.getsignal(sig) != before[sig])
    assert not changed, f"the test left the handlers of {changed} changed"


TINY = {
    "dataset": {"name": "digits"},
    "epochs": 1,
    "batch_size": 64,
    "pairs": {"pairs_per_epoch": 640, "val_pairs": 300, "test_pairs": 300},
    "encoder": {"depth": 1, "width": 8, "embedding_dim": 16},
    "seed": 0,
}


@pytest.fixture(scope="session")
def make_tiny():
    """Factory: a fresh dict of the tiny digits config, with top-level keys replaced by `overrides`."""
    import copy

    def make(**overrides) -> dict:
        return {**copy.deepcopy(TINY), **overrides}
    return make


@pytest.fixture
def tiny_dict(make_tiny) -> dict:
    """A plain dict of the tiny digits config (copy; safe to mutate)."""
    return make_tiny()


@pytest.fixture
def tiny_config():
    """`TrainConfig` for the tiny digits run: one epoch, 640 pairs, a one-block conv encoder."""
    from siamese_core import TrainConfig

    return TrainConfig.from_dict(TINY)


@pytest.fixture(scope="session")
def digits_data():
    """Digits loaded and split once per session (seed 0, sample split)."""
    from siamese_core import TrainConfig
    from siamese_core.data.sources import load_dataset

    return load_dataset(TrainConfig.from_dict(TINY))


# ---------------------------------------------------------------- real servers

def _require_postgres_binaries() -> None:
    from sweeps.stack import find_pg_bin_dir

    try:
        find_pg_bin_dir()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL 127.0.0.1 server; ``.url`` is the app database, ``create_database()`` adds more."""
    from sweeps.stack import PostgresServer

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
    from sweeps.stack import MlflowServer

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
