"""Spec conventions users bring along: ``study.stop``, ``study.enqueue`` and W&B sweep files (read
directly or through ``siamese-sweep convert``). Real sweeps on digits, real SQLite storages."""
from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from sweeps.cli import main
from sweeps.stopping import StudyStop
from sweeps.storage import make_storage

from .conftest import make_spec_dict, run_small_sweep

TINY = {"epochs": 1, "pairs": {"pairs_per_epoch": 320, "val_pairs": 120, "test_pairs": 120}}
SPACE = {"loss.margin": {"type": "float", "low": 0.5, "high": 1.5},
         "encoder.depth": {"type": "int", "low": 1, "high": 2},
         "loader": {"type": "categorical", "choices": ["memory", "custom"]}}


def _spec(**study) -> dict:
    spec = make_spec_dict(search_space=dict(SPACE), study={"name": "conv", **study})
    spec["base"] = {**spec["base"], **TINY}
    return spec


def _stores(tmp_path: Path) -> tuple[str, str]:
    return f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"


# ------------------------------------------------------------------ study.stop
def _finished(study: optuna.Study, values: list[float | None]) -> None:
    """Add finished trials (None = PRUNED), one per value, through the public add_trial."""
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for v in values:
        state = optuna.trial.TrialState.COMPLETE if v is not None else optuna.trial.TrialState.PRUNED
        study.add_trial(optuna.trial.create_trial(state=state, value=v, params={"x": 0.5}, distributions=dist))


def test_the_stop_decision_is_read_from_the_shared_storage(tmp_path: Path) -> None:
    """Target (direction-aware) and patience, decided from the storage alone: any worker sees the same."""
    url = f"sqlite:///{tmp_path}/s.db"
    mine = optuna.create_study(study_name="s", storage=url, direction="maximize")
    other = optuna.load_study(study_name="s", storage=url)  # another worker's handle
    target, patience = StudyStop(target=0.9), StudyStop(patience_trials=2)
    _finished(mine, [0.5, 0.7])
    assert target.decision(other) is None and patience.decision(other) is None
    _finished(mine, [0.6, None])  # two finished trials (one pruned) without beating 0.7
    assert patience.decision(other).reason == "patience" and target.decision(other) is None
    _finished(mine, [0.95])
    decision = target.decision(other)
    assert decision.reason == "target" and "trial 4" in decision.detail
    assert patience.decision(other) is None  # a new best resets the patience

    low = optuna.create_study(study_name="m", storage=url, direction="minimize")
    _finished(low, [0.5])
    assert StudyStop(target=0.6).decision(low).reason == "target"
    assert StudyStop(target=0.4).decision(low) is None


def test_a_reached_target_stops_the_sweep_before_its_budget(tmp_path: Path) -> None:
    storage, uri = _stores(tmp_path)
    # any trial reaches val_roc_auc >= 0: the study stops after its first trial instead of running 4
    result = run_small_sweep(_spec(trials=4, stop={"target": 0.0}), storage=storage, tracking_uri=uri)
    assert result.stopped_by == "target" and result.finished and not result.budget_met
    assert result.status["counts"]["COMPLETE"] == 1 and result.status["stopped"].startswith("target: trial 0")
    assert MlflowClient(uri).get_run(result.parent_run_id).info.status == "FINISHED"
    study = optuna.load_study(study_name="conv", storage=make_storage(storage))
    assert len(study.trials) == 1 and study.user_attrs["stopped"] == result.status["stopped"]
    # resumed as the README says, with the stop rule raised on the command line: the study goes on to its budget
    # (study.stop was part of the spec's identity: the resume was refused, "created with another spec")
    assert main(["run", "--study", "conv", "--storage", storage, "--tracking-uri", uri, "--quiet",
                 "--set", "study.stop.target=2.0"]) == 0
    study = optuna.load_study(study_name="conv", storage=make_storage(storage))
    assert len(study.trials) == 4 and not study.user_attrs.get("stopped")


@pytest.mark.slow  # two worker processes, each importing TensorFlow: minutes on 2 busy cores
def test_parallel_worker_processes_stop_together(tmp_path: Path) -> None:
    """Two worker processes: each reads the reached target from the shared study and starts nothing more."""
    storage, uri = _stores(tmp_path)
    result = run_small_sweep(_spec(trials=8, stop={"target": 0.0}), storage=storage, tracking_uri=uri, workers=2)
    assert result.stopped_by == "target" and result.finished
    done = result.status["counts"]["COMPLETE"] + result.status["counts"]["PRUNED"]
    assert 1 <= done <= 2 and result.status["counts"]["RUNNING"] == 0  # at most the trials already started
    assert MlflowClient(uri).get_run(result.parent_run_id).info.status == "FINISHED"


# ------------------------------------------------------------------ study.enqueue
KNOWN = [{"loss.margin": 1.25, "encoder.depth": 2, "loader": "custom"},
         {"loss.margin": 0.75, "encoder.depth": 1, "loader": "memory"}]


def test_enqueued_configs_are_the_first_trials_and_a_resume_does_not_queue_them_again(tmp_path: Path) -> None:
    storage, uri = _stores(tmp_path)
    run_small_sweep(_spec(trials=2, enqueue=KNOWN), storage=storage, tracking_uri=uri)
    run_small_sweep(_spec(trials=3, enqueue=KNOWN), storage=storage, tracking_uri=uri)  # resume: one more
    study = optuna.load_study(study_name="conv", storage=make_storage(storage))
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.params for t in trials[:2]] == KNOWN
    assert len(trials) == 3 and trials[2].params not in KNOWN
    assert all(t.state.is_finished() for t in trials)  # nothing left WAITING


def test_a_bad_enqueued_config_exits_2_naming_the_entry_and_creates_nothing(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    storage, uri = _stores(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(trials=2, enqueue=[KNOWN[0], {"loss.margin": 3.0}])))
    assert main(["run", str(spec), "--storage", storage, "--tracking-uri", uri, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: study.enqueue[1].loss.margin:") and "[0.5, 1.5]" in err[0]
    assert [p.name for p in tmp_path.iterdir()] == ["spec.yaml"]  # no optuna.db, mlflow.db, checkpoints


# ------------------------------------------------------------------ W&B files
WANDB = {
    "program": "train.py",
    "method": "random",
    "name": "from-wandb",
    "metric": {"name": "val_roc_auc", "goal": "maximize"},
    "run_cap": 2,
    "parameters": {
        "dataset": {"value": "digits"},
        "epochs": {"value": 1},
        "batch_size": {"value": 64},
        "pairs": {"parameters": {"pairs_per_epoch": {"value": 320}, "val_pairs": {"value": 120},
                                 "test_pairs": {"value": 120}}},
        "encoder": {"parameters": {"depth": {"min": 1, "max": 2}, "width": {"value": 8},
                                   "embedding_dim": {"value": 16}}},
        "learning_rate": {"min": 1e-3, "max": 1e-2, "distribution": "log_uniform_values"},
    },
}


def test_a_wandb_sweep_file_runs_directly(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                          capsys: pytest.CaptureFixture) -> None:
    storage, uri = _stores(tmp_path)
    path = tmp_path / "wandb.yaml"
    path.write_text(yaml.safe_dump(WANDB))
    with caplog.at_level(logging.INFO, logger="sweeps.spec"):
        code = main(["run", str(path), "--storage", storage, "--tracking-uri", uri, "--quiet"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert any("W&B sweep file" in r.getMessage() for r in caplog.records)
    study = optuna.load_study(study_name="from-wandb", storage=make_storage(storage))
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(done) == 2  # run_cap -> the trial budget
    assert {"encoder.depth", "learning_rate"} <= set(done[0].params)
    runs = MlflowClient(uri).search_runs([study.user_attrs["mlflow_experiment_id"]])
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId"))
    assert child.data.params["epochs"] == "1" and child.data.params["pairs.pairs_per_epoch"] == "320"


def test_convert_prints_or_writes_the_spec_and_refuses_what_is_not_wandb(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    from sweeps.spec import load_spec

    src = tmp_path / "wandb.yaml"
    src.write_text(yaml.safe_dump({**WANDB, "metric": {**WANDB["metric"], "target": 0.97},
                                   "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3}}))
    assert main(["convert", str(src), "--study-name", "renamed"]) == 0
    out = capsys.readouterr()
    data = yaml.safe_load(out.out)
    assert data["study"]["name"] == "renamed" and data["study"]["trials"] == 2
    assert data["study"]["stop"] == {"target": 0.97}
    assert data["study"]["pruner"] == {"type": "hyperband", "min_resource": 1, "reduction_factor": 3}
    assert "program ignored" in out.err

    dest = tmp_path / "spec.yaml"
    assert main(["convert", str(src), "-o", str(dest)]) == 0
    spec = load_spec(dest)
    assert spec.study.stop.target == 0.97 and spec.study.pruner.type == "hyperband"
    assert spec.search_space["encoder.depth"].high == 2

    ours = tmp_path / "ours.yaml"
    ours.write_text(yaml.safe_dump(_spec()))
    capsys.readouterr()
    assert main(["convert", str(ours), "-o", str(tmp_path / "x.yaml")]) == 2
    assert "not a W&B sweep file" in capsys.readouterr().err and not (tmp_path / "x.yaml").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"method": "random", "parameters": {"lr": {"min": 1, "max": 2}}}))
    assert main(["convert", str(bad), "-o", str(tmp_path / "y.yaml")]) == 2
    assert "search_space.lr" in capsys.readouterr().err and not (tmp_path / "y.yaml").exists()
    # a range that no trial could use (a float bound on an integer field): refused as `run` refuses it; it was
    # written, and `run` then exited 2
    bad.write_text(yaml.safe_dump({"method": "random", "parameters": {"encoder.depth": {"min": 1, "max": 3.5}}}))
    assert main(["convert", str(bad), "-o", str(tmp_path / "y.yaml")]) == 2
    err = capsys.readouterr().err
    assert "search_space.encoder.depth.type: encoder.depth is a whole number in the train config" in err
    assert not (tmp_path / "y.yaml").exists()
    # keys W&B does not know (typos) are noted, not dropped in silence
    bad.write_text(yaml.safe_dump({"method": "random", "foo": 1,
                                   "parameters": {"learning_rate": {"min": 0.001, "max": 0.01, "scale": 2}}}))
    assert main(["convert", str(bad)]) == 0
    err = capsys.readouterr().err
    assert "note: foo ignored: not a W&B sweep key" in err
    assert "note: parameters.learning_rate.scale ignored: not a W&B parameter key" in err
