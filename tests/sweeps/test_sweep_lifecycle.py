"""Resume, exact budgets, pruning with reasons, crashes, conditional parameters."""
from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient

from sweeps.storage import make_storage
from sweeps.worker import SweepFatal

from .conftest import make_spec_dict, run_small_sweep


def _children(uri: str, experiment_id: str, parent: str) -> list:
    runs = MlflowClient(tracking_uri=uri).search_runs([experiment_id], max_results=200)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


def test_rerunning_resumes_the_study_without_repeating_trials(local_stores: dict[str, str],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    first = run_small_sweep(make_spec_dict(), storage=local_stores["storage"],
                            tracking_uri=local_stores["tracking_uri"], trials=2)
    second = run_small_sweep(make_spec_dict(), storage=local_stores["storage"],
                             tracking_uri=local_stores["tracking_uri"], trials=3)
    assert second.parent_run_id == first.parent_run_id
    study = optuna.load_study(study_name="t", storage=make_storage(local_stores["storage"]))
    assert [t.number for t in study.trials] == [0, 1, 2]
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == 3, "a resumed sampler must not replay the first trials' parameters"
    children = _children(local_stores["tracking_uri"], second.experiment_id, second.parent_run_id)
    assert sorted(int(r.data.tags["siamese_sweep.trial_number"]) for r in children) == [0, 1, 2]
    # the budget is met: running again starts nothing
    third = run_small_sweep(make_spec_dict(), storage=local_stores["storage"],
                            tracking_uri=local_stores["tracking_uri"], trials=3)
    assert third.workers[0].trials_run == 0
    assert len(optuna.load_study(study_name="t", storage=make_storage(local_stores["storage"])).trials) == 3
    assert "more than the budget" not in caplog.text
    # a budget below what is done runs nothing, as asked, and says so (it was silent, exit 0)
    fourth = run_small_sweep(make_spec_dict(), storage=local_stores["storage"],
                             tracking_uri=local_stores["tracking_uri"], trials=2)
    assert fourth.workers[0].trials_run == 0
    assert "study t already has 3 complete or pruned trial(s), more than the budget of 2 given: no trial runs; " \
           "give --trials above 3 to add some" in caplog.text


def test_exploding_learning_rate_is_pruned_with_reason_nan_loss(local_stores: dict[str, str]) -> None:
    # SGD with momentum at lr 10 on unnormalised inputs: the loss overflows to NaN within a few steps
    spec = make_spec_dict(search_space={"loss.margin": {"type": "float", "low": 0.5, "high": 1.5}},
                          base={**make_spec_dict()["base"], "learning_rate": 10.0, "distance": "euclidean",
                                "optimizer": {"name": "sgd", "momentum": 0.9}, "preprocessing": {"normalize": "none"},
                                "encoder": {"depth": 1, "width": 8, "embedding_dim": 16, "batch_norm": False,
                                            "activation": "elu", "l2_normalize": False}})
    result = run_small_sweep(spec, storage=local_stores["storage"], tracking_uri=local_stores["tracking_uri"],
                             trials=2)
    study = optuna.load_study(study_name="t", storage=make_storage(local_stores["storage"]))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(t.user_attrs["reason"] == "nan_loss" for t in study.trials)
    assert all(t.value is None for t in study.trials)  # never COMPLETE with NaN
    for run in _children(local_stores["tracking_uri"], result.experiment_id, result.parent_run_id):
        assert run.info.status == "FAILED"
        assert run.data.tags["siamese_sweep.reason"] == "nan_loss"
        assert run.data.tags["siamese_sweep.state"] == "PRUNED"


def test_crashing_trials_fail_cleanly_and_stop_after_max_failures(local_stores: dict[str, str]) -> None:
    spec = make_spec_dict(base={**make_spec_dict()["base"],
                                "loss": {"type": "crashing:broken_loss", "kind": "pair"}},
                          study={"max_failures": 2})
    with pytest.raises(SweepFatal, match="2 trials in a row failed.*ValueError"):
        run_small_sweep(spec, storage=local_stores["storage"], tracking_uri=local_stores["tracking_uri"], trials=3)
    study = optuna.load_study(study_name="t", storage=make_storage(local_stores["storage"]))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    client = MlflowClient(tracking_uri=local_stores["tracking_uri"])
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED"
        assert run.data.tags["siamese_sweep.reason"] == "ValueError"
        assert "bug in the user's loss" in run.data.tags["siamese_sweep.reason_detail"]
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status != "RUNNING"
    import mlflow

    assert mlflow.active_run() is None  # released while failing: an atexit end_run would mark it FINISHED


def test_conditional_parameters_are_only_sampled_when_active(local_stores: dict[str, str]) -> None:
    spec = make_spec_dict(search_space={
        "loss.type": {"type": "categorical", "choices": ["contrastive", "bce"]},
        "loss.margin": {"type": "categorical", "choices": [0.8], "when": {"loss.type": "contrastive"}},
    }, study={"sampler": {"type": "grid"}, "trials": 2})
    run_small_sweep(spec, storage=local_stores["storage"], tracking_uri=local_stores["tracking_uri"])
    study = optuna.load_study(study_name="t", storage=make_storage(local_stores["storage"]))
    by_type = {t.params["loss.type"]: t for t in study.trials}
    assert set(by_type) == {"contrastive", "bce"}
    assert "loss.margin" in by_type["contrastive"].params
    assert "loss.margin" not in by_type["bce"].params


def test_median_pruner_prunes_with_reason(local_stores: dict[str, str]) -> None:
    # trial 0 learns; trial 1's learning rate is too small to move, so the median pruner stops it after epoch 1
    spec = make_spec_dict(
        search_space={"learning_rate": {"type": "float", "low": 1e-8, "high": 1e-1, "log": True}},
        base={**make_spec_dict()["base"], "epochs": 3},
        study={"trials": 2, "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}})
    study = optuna.create_study(study_name="t", storage=make_storage(local_stores["storage"]), direction="maximize")
    study.enqueue_trial({"learning_rate": 1e-2})
    study.enqueue_trial({"learning_rate": 1e-8})
    result = run_small_sweep(spec, storage=local_stores["storage"], tracking_uri=local_stores["tracking_uri"])
    study = optuna.load_study(study_name="t", storage=make_storage(local_stores["storage"]))
    fast, slow = study.trials
    assert fast.state == optuna.trial.TrialState.COMPLETE
    assert slow.state == optuna.trial.TrialState.PRUNED
    assert slow.user_attrs["reason"] == "pruned"
    assert len(slow.intermediate_values) < 3
    run = MlflowClient(tracking_uri=local_stores["tracking_uri"]).get_run(slow.user_attrs["mlflow_run_id"])
    assert run.data.tags["siamese_sweep.reason"] == "pruned"
    assert run.info.status == "FINISHED"
    # epochs from 0, as MLflow's steps and Optuna's intermediate values count them (the reason counted from 1)
    last = max(slow.intermediate_values)
    assert run.data.tags["siamese_sweep.reason_detail"].startswith(f"pruned at epoch {last}: val_roc_auc=")
    assert result.status["counts"] == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 0, "RUNNING": 0, "WAITING": 0}


def test_a_trial_whose_config_is_refused_still_has_its_trial_number_metric(local_stores: dict[str, str],
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The `trial_number` metric was logged with the params, after the config was accepted: an `invalid_config`
    trial's run had no metric at all, and left MLflow's Compare and Chart views."""
    spec = make_spec_dict(base={**make_spec_dict()["base"], "distance": "sqeuclidean"},
                          search_space={"distance": {"type": "categorical", "choices": ["sqeuclidean", "cosine"]},
                                        "loss.margin": {"type": "float", "low": 0.5, "high": 3.0}},
                          study={"enqueue": [{"distance": "cosine", "loss.margin": 3.0}]})
    optuna.logging.enable_propagation()  # Optuna's logger, where the trial's line goes, to caplog's handler
    try:
        run_small_sweep(spec, storage=local_stores["storage"], tracking_uri=local_stores["tracking_uri"], trials=1)
    finally:
        optuna.logging.disable_propagation()
    study = optuna.load_study(study_name="t", storage=make_storage(local_stores["storage"]))
    trial = study.trials[0]  # the enqueued one (a FAIL does not count against the budget: a trial follows)
    assert (trial.state, trial.user_attrs["reason"]) == (optuna.trial.TrialState.FAIL, "invalid_config")
    run = MlflowClient(tracking_uri=local_stores["tracking_uri"]).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.metrics == {"trial_number": 0.0}
    # its warning names the reason without a traceback of siamese-sweep's own frames
    (failed,) = [r for r in caplog.records if "Trial 0 failed" in r.getMessage()]
    assert "InvalidTrialConfig" in failed.getMessage() and failed.exc_info is None
