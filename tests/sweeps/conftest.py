"""Fixtures for sweep tests: small real sweeps on digits, real MLflow stores and servers."""
from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
for sub in ("sweep_code",):
    if str(FIXTURES / sub) not in sys.path:
        sys.path.insert(0, str(FIXTURES / sub))

SMALL_SPEC: dict[str, Any] = {
    "base": {
        "dataset": "digits",
        "epochs": 2,
        "batch_size": 64,
        "pairs": {"pairs_per_epoch": 640, "val_pairs": 200, "test_pairs": 200},
        "encoder": {"depth": 1, "width": 8, "embedding_dim": 16},
    },
    "search_space": {
        "loss.margin": {"type": "float", "low": 0.5, "high": 1.5},
        "encoder.depth": {"type": "int", "low": 1, "high": 2},
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "loader": {"type": "categorical", "choices": ["memory", "tfdata", "custom"]},
    },
    "study": {"name": "t", "trials": 3, "pruner": "none", "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 2}},
}


def make_spec_dict(**sections: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SMALL_SPEC)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict) and key != "search_space":
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


@pytest.fixture
def spec_dict():
    return make_spec_dict


@pytest.fixture
def local_stores(tmp_path: Path) -> dict[str, str]:
    """A fresh SQLite Optuna storage and SQLite MLflow store in a temp dir."""
    return {"storage": f"sqlite:///{tmp_path}/optuna.db", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "dir": str(tmp_path)}


@pytest.fixture(scope="session")
def mlflow_server_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts), once per session."""
    from sweeps.stack import MlflowServer

    d = tmp_path_factory.mktemp("mlflow-server")
    with MlflowServer(f"sqlite:///{d}/mlflow.db", artifacts_destination=d / "artifacts", workers=1) as server:
        yield server


def run_small_sweep(spec_data: dict[str, Any], *, storage: str, tracking_uri: str, trials: int | None = None,
                    study: str | None = None, workers: int = 1) -> Any:
    from sweeps.options import options_from
    from sweeps.runner import run_sweep
    from sweeps.spec import spec_from_dict

    spec = spec_from_dict(spec_data)
    opts = options_from(spec, trials=trials, storage=storage, tracking_uri=tracking_uri, study_name=study,
                        workers=workers, progress=False)
    return run_sweep(spec, opts)
