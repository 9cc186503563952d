"""`sweeps.sweep`: the Python API a notebook calls (tiny real sweeps on digits), also from a non-main thread."""
from __future__ import annotations

import signal
import threading
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from siamese_core.errors import ConfigError
from sweeps.storage import make_storage

from .conftest import make_spec_dict

TINY = {"epochs": 1, "pairs": {"pairs_per_epoch": 320, "val_pairs": 120, "test_pairs": 120}}


def _spec(**study) -> dict:
    spec = make_spec_dict(study={"name": "api", "trials": 2, **study})
    spec["base"] = {**spec["base"], **TINY}
    spec["search_space"] = {k: v for k, v in spec["search_space"].items() if k != "loader"}
    return spec


def test_sweep_from_python_then_resumed_from_a_non_main_thread(tmp_path: Path) -> None:
    import sweeps

    storage, uri = f"journal:///{tmp_path}/study.log", f"sqlite:///{tmp_path}/mlflow.db"
    result = sweeps.sweep(_spec(), storage=storage, tracking_uri=uri, progress=False)
    assert result.finished and result.budget_met and result.stopped_by == "budget"
    assert result.status["counts"]["COMPLETE"] + result.status["counts"]["PRUNED"] == 2
    assert result.best is not None and set(result.best_params) == {"loss.margin", "encoder.depth", "learning_rate"}
    assert isinstance(result.best_value, float)

    # a notebook's background thread: Python refuses signal.signal there (ValueError), so the sweep
    # must not install handlers, and the main thread's own handler stays as it was
    seen: dict = {}
    before = signal.getsignal(signal.SIGTERM)

    def resume() -> None:
        try:
            seen["result"] = sweeps.sweep(_spec(), trials=3, storage=storage, tracking_uri=uri, progress=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            seen["error"] = exc

    thread = threading.Thread(target=resume)
    thread.start()
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in seen, seen.get("error")
    assert signal.getsignal(signal.SIGTERM) is before
    again = seen["result"]
    assert again.finished and again.parent_run_id == result.parent_run_id
    study = optuna.load_study(study_name="api", storage=make_storage(storage))
    assert len([t for t in study.trials if t.state.is_finished()]) == 3
    runs = MlflowClient(uri).search_runs([again.experiment_id])
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]) == 3


def test_sweep_refuses_bad_input_before_creating_anything(tmp_path: Path) -> None:
    import sweeps

    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    for bad in ({"trials": 0}, {"trials": "3"}, {"workers": 1.5}, {"timeout": float("nan")}, {"threads": True}):
        with pytest.raises(ConfigError, match=next(iter(bad))):  # "3" was a TypeError, 1.5 ran one worker
            sweeps.sweep(_spec(), storage=storage, tracking_uri=uri, **bad)
    with pytest.raises(ConfigError, match=r"study\.sampler\.type"):
        sweeps.sweep(_spec(sampler={"type": "bayes"}), storage=storage, tracking_uri=uri)
    assert list(tmp_path.iterdir()) == []


def test_resolve_spec_takes_objects_mappings_w_and_b_configs_paths_and_builtin_names(tmp_path: Path) -> None:
    import yaml

    from sweeps import SweepSpec, resolve_spec

    spec = resolve_spec(_spec(), {"study.trials": 5})
    assert isinstance(spec, SweepSpec) and spec.study.trials == 5
    assert resolve_spec(spec) is spec
    assert resolve_spec(spec, {"search_space.loss.margin.high": 1.2}).search_space["loss.margin"].high == 1.2
    wandb = {"method": "random", "metric": {"name": "val_roc_auc", "goal": "maximize"}, "run_cap": 4,
             "parameters": {"learning_rate": {"min": 1e-3, "max": 1e-2, "distribution": "log_uniform_values"}}}
    converted = resolve_spec(wandb)
    assert converted.study.sampler.type == "random" and converted.study.trials == 4
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec()))
    assert resolve_spec(path).study.name == resolve_spec(str(path)).study.name == "api"
    assert resolve_spec("digits-smoke").base.dataset.name == "digits"
