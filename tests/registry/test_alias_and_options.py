"""Alias and metric validation (before the registry is touched), and which trial `promote` picks."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from siamese_core.errors import ConfigError
from sweeps import directions
from sweeps import reevaluation as rev
from sweeps.promotion import pick_candidate, rank_trials
from sweeps.registry import validate_alias


@pytest.mark.parametrize("alias", ["latest", "LATEST", "Latest", "v1", "V22", "v007"])
def test_reserved_aliases_are_refused(alias: str) -> None:
    with pytest.raises(ConfigError, match="reserved") as info:
        validate_alias(alias)
    assert info.value.field == "--alias"


@pytest.mark.parametrize("alias", ["a.b", "a b", "a/b", "champ@1", "", "x" * 256, "ümlaut"])
def test_invalid_aliases_are_refused(alias: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_alias(alias)
    assert info.value.field == "--alias"


@pytest.mark.parametrize("alias", ["champion", "challenger", "v", "vx", "a-b", "prod_2", "1"])
def test_valid_aliases(alias: str) -> None:
    assert validate_alias(alias) == alias


@pytest.mark.parametrize("alias", ["latest", "v3", "a.b"])
def test_cli_bad_alias_exits_2_without_touching_the_registry(alias: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from sweeps.cli import main

    db = tmp_path / "mlflow.db"
    code = main(["promote", "--study", "s", "--alias", alias, "--tracking-uri", f"sqlite:///{db}",
                 "--storage", f"sqlite:///{tmp_path}/optuna.db"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--alias" in err and alias in err
    assert "Traceback" not in err
    assert not db.exists() and not (tmp_path / "optuna.db").exists()


def test_cli_rollback_bad_alias_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sweeps.cli import main

    assert main(["promote", "--rollback", "--model-name", "m", "--alias", "Latest",
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert "reserved" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("name,canon", [("test_auc", "roc_auc"), ("test_roc_auc", "roc_auc"), ("AUC", "roc_auc"),
                                        ("test_pair_accuracy", "pair_accuracy"), ("test_eer", "eer"),
                                        ("eer", "eer"), (None, None)])
def test_metric_names(name: str | None, canon: str | None) -> None:
    assert rev.canonical_metric(name) == canon


def test_unknown_metric_names_the_option() -> None:
    with pytest.raises(ConfigError, match="test_roc_auc") as info:
        rev.canonical_metric("test_f1")
    assert info.value.field == "--metric"


def test_eer_is_lower_is_better_and_nan_never_wins() -> None:
    assert directions.better(0.1, 0.2, "eer") and not directions.better(0.2, 0.1, "eer")
    assert directions.better(0.9, 0.8, "roc_auc") and not directions.better(0.8, 0.8, "roc_auc")
    assert not directions.better(float("nan"), 0.1, "roc_auc") and directions.better(0.1, float("nan"), "roc_auc")
    assert rev.objective_counterpart("val_roc_auc") == "roc_auc"
    assert rev.objective_counterpart("val_eer") == "eer"
    assert rev.objective_counterpart("val_loss") == "roc_auc"


def _study(trials: list[dict]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for t in trials:
        study.add_trial(optuna.trial.create_trial(value=t["value"], user_attrs=t["attrs"]))
    return study


def test_best_trial_with_error_diagnostics_is_skipped() -> None:
    study = _study([
        {"value": 0.99, "attrs": {"model_uri": "models:/m-a", "diagnostics_errors": ["embedding_collapse"],
                                  "test_roc_auc": 0.5}},
        {"value": 0.95, "attrs": {"model_uri": "models:/m-b", "diagnostics_errors": [], "test_roc_auc": 0.93}},
        {"value": 0.97, "attrs": {"diagnostics_errors": [], "test_roc_auc": 0.99}},  # no logged model
        {"value": 0.90, "attrs": {"model_uri": "models:/m-d", "diagnostics_errors": [], "test_roc_auc": 0.97}},
    ])
    trial, skipped = pick_candidate(study, None)
    assert trial.number == 1
    assert [s["trial"] for s in skipped] == [0, 2]
    assert "embedding_collapse" in skipped[0]["reason"] and "no logged model" in skipped[1]["reason"]
    # by --metric: ranked on the recorded test metric instead of the objective
    assert [t.number for t in rank_trials(study, "roc_auc")] == [2, 3, 1, 0]
    assert pick_candidate(study, "roc_auc")[0].number == 3
    assert [t.number for t in rank_trials(study, "eer")][-1] in (0, 1, 2, 3)


def test_no_usable_trial_is_a_clear_error() -> None:
    study = _study([{"value": 0.9, "attrs": {"model_uri": "models:/m-a", "diagnostics_errors": ["nan_loss"]}}])
    with pytest.raises(ConfigError, match="no COMPLETE trial"):
        pick_candidate(study, None)
