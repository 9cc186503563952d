"""Item 6: an exploding learning rate is PRUNED with reason ``nan_loss`` — never COMPLETE with NaN — and
the sweep goes on to the next trial."""
from __future__ import annotations

import math
from pathlib import Path

import optuna
from mlflow import MlflowClient

from .harness import S, load_study, spec_dict


def test_exploding_learning_rate_is_pruned_as_nan_loss_and_the_sweep_continues(tmp_path: Path) -> None:
    from sweeps.options import options_from
    from sweeps.runner import run_sweep
    from sweeps.spec import spec_from_dict
    from sweeps.storage import make_storage

    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    data = spec_dict(tmp_path, name="nan", trials=2,
                     base={"epochs": 2, "optimizer": {"name": "sgd", "momentum": 0.9},
                           "distance": "euclidean", "loss": {"margin": 1.0},  # an unbounded loss
                           "preprocessing": {"normalize": "none"},
                           "encoder": {"depth": 1, "width": 8, "embedding_dim": 16, "batch_norm": False,
                                       "activation": "elu", "l2_normalize": False}},  # unbounded distances
                     space={"learning_rate": {"type": "categorical", "choices": [10.0, 0.005]}},
                     tracking={"log_models": False})
    study = optuna.create_study(study_name="nan", storage=make_storage(storage), direction="maximize")
    study.enqueue_trial({"learning_rate": 10.0})   # explodes within a few steps
    study.enqueue_trial({"learning_rate": 0.005})  # trains
    spec = spec_from_dict(data)
    result = run_sweep(spec, options_from(spec, storage=storage, tracking_uri=uri, progress=False))

    assert result.budget_met
    exploded, sane = load_study(storage, "nan").trials
    assert exploded.state == S.PRUNED and exploded.value is None
    assert exploded.user_attrs["reason"] == "nan_loss"
    assert sane.state == S.COMPLETE and math.isfinite(sane.value)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(exploded.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["siamese_sweep.reason"] == "nan_loss" and run.data.tags["siamese_sweep.state"] == "PRUNED"
    assert "learning" in run.data.tags["siamese_sweep.reason_detail"].lower()  # says what to change
    assert all(math.isfinite(v) for v in run.data.metrics.values())     # no NaN ever reaches MLflow
    assert not list((tmp_path / "checkpoints").glob("*/trial-*")), "pruned and completed trials keep no checkpoint"
