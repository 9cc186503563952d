"""Fixtures for the registry tests: small real sweeps on digits, shared by every test of a session.

Two studies share one dataset config (so one test split): ``good`` (3 trials, 2 epochs) and ``weak``
(1 trial, 1 epoch at a tiny learning rate: a clearly worse model). They run against a local SQLite
MLflow store and, for the server tests, against a real ``mlflow server`` on 127.0.0.1.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BASE = {
    "dataset": "digits",
    "epochs": 2,
    "batch_size": 64,
    "pairs": {"pairs_per_epoch": 640, "val_pairs": 200, "test_pairs": 200},
    "encoder": {"depth": 1, "width": 8, "embedding_dim": 16},
}
GOOD = {
    "base": BASE,
    "search_space": {
        "encoder.depth": {"type": "int", "low": 1, "high": 2},
        "learning_rate": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True},
    },
    "study": {"name": "good", "trials": 3, "pruner": "none",
              "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 2}},
    # in line: trial 2 is then sampled by TPE from trials 0 and 1, which gives the models whose validation and
    # test orders disagree (test_promote's champion-vs-challenger case); in the background it is sampled while
    # trial 1 is recorded, and differs
    "tracking": {"log_plots": False, "finish_in_background": False},
}
WEAK = {
    "base": {**BASE, "epochs": 1, "learning_rate": 1e-5, "pairs": {**BASE["pairs"], "pairs_per_epoch": 64}},
    "search_space": {},
    "study": {"name": "weak", "trials": 1, "pruner": "none"},
    "tracking": {"log_plots": False, "registered_model": "weak-models"},
}


@dataclass
class Stores:
    storage: str
    tracking_uri: str
    dir: Path
    kind: str

    def kw(self, **extra: Any) -> dict[str, Any]:
        return {"storage": self.storage, "tracking_uri": self.tracking_uri, **extra}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
        env.update(OPTUNA_STORAGE=self.storage, MLFLOW_TRACKING_URI=self.tracking_uri, TF_CPP_MIN_LOG_LEVEL="3")
        return env


def run_sweep(spec: dict[str, Any], stores: Stores, *, trials: int | None = None) -> Any:
    from sweeps.options import options_from
    from sweeps.runner import run_sweep as run
    from sweeps.spec import spec_from_dict

    s = spec_from_dict(copy.deepcopy(spec))
    opts = options_from(s, trials=trials, storage=stores.storage, tracking_uri=stores.tracking_uri, progress=False)
    return run(s, opts)


def _sweep_both(stores: Stores, good_trials: int) -> Stores:
    run_sweep(GOOD, stores, trials=good_trials)
    run_sweep(WEAK, stores)
    return stores


@pytest.fixture(scope="session")
def sqlite_stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    """Local SQLite Optuna storage + SQLite MLflow tracking/registry store, with both studies swept."""
    d = tmp_path_factory.mktemp("registry-sqlite")
    stores = Stores(f"sqlite:///{d}/optuna.db", f"sqlite:///{d}/mlflow.db", d, "sqlite")
    return _sweep_both(stores, good_trials=3)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``mlflow server`` (SQLite backend, proxied artifacts) on 127.0.0.1."""
    from sweeps.stack import MlflowServer

    d = tmp_path_factory.mktemp("registry-server")
    with MlflowServer(f"sqlite:///{d}/mlflow.db", artifacts_destination=d / "artifacts", workers=1) as server:
        yield server


@pytest.fixture(scope="session")
def server_stores(mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Stores:
    d = tmp_path_factory.mktemp("registry-server-optuna")
    stores = Stores(f"sqlite:///{d}/optuna.db", mlflow_server.url, d, "server")
    return _sweep_both(stores, good_trials=2)


@pytest.fixture(params=["sqlite", "server"])
def stores(request: pytest.FixtureRequest) -> Stores:
    return request.getfixturevalue(f"{request.param}_stores")


def cli(args: list[str], stores: Stores, *, env: dict[str, str] | None = None, timeout: float = 240,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run ``siamese-sweep ARGS`` in a fresh process pointed at `stores` (via the environment)."""
    proc = subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True,
                          env=env or stores.env(), timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"siamese-sweep {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def test_split(stores: Stores, study: str = "good") -> Any:
    """The held-out test split of `study`'s best trial, rebuilt as promotion does."""
    import optuna

    from sweeps import reevaluation as rev
    from sweeps.storage import make_storage

    st = optuna.load_study(study_name=study, storage=make_storage(stores.storage))
    t = st.best_trial
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stores.tracking_uri)
    return rev.build_test_split(rev.trial_config(client, t.user_attrs["mlflow_run_id"]),
                                expected_fingerprint=t.user_attrs["dataset_fingerprint"], what="best trial"), t


test_split.__test__ = False  # a helper, not a test
