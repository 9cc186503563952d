"""Alias and metric validation (before the registry is touched), and which trial `promote` picks."""
from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest

from siamese_core.errors import ConfigError
from sweeps import directions
from sweeps import reevaluation as rev
from sweeps.promotion import pick_candidate, rank_trials
from sweeps.registry import validate_alias, validate_model_name

from .conftest import Stores


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


@pytest.mark.parametrize("name,canon", [("val_auc", "roc_auc"), ("val_roc_auc", "roc_auc"), ("AUC", "roc_auc"),
                                        ("roc_auc", "roc_auc"), ("val_pair_accuracy", "pair_accuracy"),
                                        ("val_eer", "eer"), ("eer", "eer"), (None, None)])
def test_metric_names(name: str | None, canon: str | None) -> None:
    assert rev.selection_metric(name) == (canon, None)


@pytest.mark.parametrize("name,canon", [("test_auc", "roc_auc"), ("test_roc_auc", "roc_auc"),
                                        ("TEST_PAIR_ACCURACY", "pair_accuracy"), ("test_eer", "eer")])
def test_a_test_metric_is_mapped_to_validation_with_a_notice(name: str, canon: str) -> None:
    got, notice = rev.selection_metric(name)
    assert got == canon and f"uses val_{canon}" in notice and "only reported" in notice and "\n" not in notice


def test_unknown_metric_names_the_option() -> None:
    with pytest.raises(ConfigError, match="val_roc_auc") as info:
        rev.canonical_metric("test_f1")
    assert info.value.field == "--metric"
    with pytest.raises(ConfigError):
        rev.canonical_metric("test_val_auc")


def test_eer_is_lower_is_better_and_nan_never_wins() -> None:
    assert directions.better(0.1, 0.2, "eer") and not directions.better(0.2, 0.1, "eer")
    assert directions.better(0.9, 0.8, "roc_auc") and not directions.better(0.8, 0.8, "roc_auc")
    assert not directions.better(float("nan"), 0.1, "roc_auc") and directions.better(0.1, float("nan"), "roc_auc")
    assert rev.objective_counterpart("val_roc_auc") == "roc_auc"
    assert rev.objective_counterpart("val_eer") == "eer"
    assert rev.objective_counterpart("val_loss") == "roc_auc"


def _measured(i: int) -> dict:
    """What a worker records with a trial it measured (`sweeps.best.measured`): its run and its threshold."""
    from sweeps import names

    return {names.TRIAL_ATTR_RUN_ID: f"run-{i}", names.TRIAL_ATTR_THRESHOLD: 0.5}


def _study(trials: list[dict]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i, t in enumerate(trials):
        study.add_trial(optuna.trial.create_trial(value=t["value"], user_attrs={**_measured(i), **t["attrs"]}))
    return study


def test_best_trial_with_error_diagnostics_is_skipped() -> None:
    study = _study([
        {"value": 0.99, "attrs": {"model_uri": "models:/m-a", "diagnostics_errors": ["embedding_collapse"],
                                  "val_roc_auc": 0.5, "test_roc_auc": 0.99}},
        {"value": 0.95, "attrs": {"model_uri": "models:/m-b", "diagnostics_errors": [], "val_roc_auc": 0.93,
                                  "test_roc_auc": 0.90}},
        {"value": 0.97, "attrs": {"diagnostics_errors": [], "val_roc_auc": 0.99}},  # no logged model
        {"value": 0.90, "attrs": {"model_uri": "models:/m-d", "diagnostics_errors": [], "val_roc_auc": 0.97,
                                  "test_roc_auc": 0.80}},
        {"value": 0.80, "attrs": {"model_uri": "models:/m-e", "diagnostics_errors": [], "val_roc_auc": 0.60,
                                  "test_roc_auc": 0.999}},  # best on test: never chosen for it
    ])
    trial, skipped = pick_candidate(study, None)
    assert trial.number == 1
    assert [s["trial"] for s in skipped] == [0, 2]
    assert "embedding_collapse" in skipped[0]["reason"] and "no logged model" in skipped[1]["reason"]
    # by --metric: ranked on the recorded validation metric instead of the objective, never on test
    assert [t.number for t in rank_trials(study, "roc_auc")] == [2, 3, 1, 4, 0]
    assert pick_candidate(study, "roc_auc")[0].number == 3
    assert [t.number for t in rank_trials(study, "eer")][-1] in (0, 1, 2, 3, 4)
    # a trial without val_* attributes (swept before they were recorded): its run's logged value stands in
    old = _study([{"value": 0.9, "attrs": {"model_uri": "models:/m-a", "test_roc_auc": 0.99}},
                  {"value": 0.8, "attrs": {"model_uri": "models:/m-b", "test_roc_auc": 0.70}}])
    logged = {0: {"roc_auc": 0.7}, 1: {"roc_auc": 0.8}}
    assert [t.number for t in rank_trials(old, "roc_auc", recorded=lambda t: logged[t.number])] == [1, 0]


def test_a_val_loss_study_is_ranked_by_the_metric_the_alias_is_decided_on() -> None:
    """A single-objective study of val_loss: promote picked its best by loss (trial 1 here) and described it as
    "chosen by validation roc_auc", the metric it then decided the alias on, where trial 0 is the best."""
    from sweeps import names

    study = optuna.create_study(direction="minimize")
    study.set_user_attr(names.STUDY_ATTR_METRICS, ["val_loss"])
    for i, (loss, auc) in enumerate(((0.050, 0.864), (0.037, 0.837), (0.040, 0.757))):
        study.add_trial(optuna.trial.create_trial(value=loss, user_attrs={"model_uri": "models:/m-x",
                                                                          "val_roc_auc": auc, **_measured(i)}))
    assert [t.number for t in rank_trials(study, None)] == [0, 1, 2]
    assert pick_candidate(study, None)[0].number == 0
    assert [t.number for t in rank_trials(study, "eer")] != []  # --metric still chooses
    # an objective promote re-evaluates still ranks by the study's own values
    auc_study = optuna.create_study(direction="maximize")
    auc_study.set_user_attr(names.STUDY_ATTR_METRICS, ["val_roc_auc"])
    for value, recorded in ((0.80, 0.90), (0.85, 0.70)):
        auc_study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"val_roc_auc": recorded}))
    assert [t.number for t in rank_trials(auc_study, None)] == [1, 0]


def test_no_usable_trial_is_a_clear_error() -> None:
    study = _study([{"value": 0.9, "attrs": {"model_uri": "models:/m-a", "diagnostics_errors": ["nan_loss"]}}])
    with pytest.raises(ConfigError, match="no COMPLETE trial"):
        pick_candidate(study, None)


def test_registry_and_move_clients_bound_mlflows_http_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """`promote` built its client without the bounds a worker's `Tracker` sets: against an unreachable server it
    spent 8 minutes in MLflow's own 7 retries (twice) before its retry budget began to count."""
    from sweeps.move import _RunCopier  # move's source client: the one it does not get from `Tracker`
    from sweeps.registry import client_for
    from sweeps.tracking import MLFLOW_HTTP_DEFAULTS

    for make in (lambda: client_for("http://127.0.0.1:1"), lambda: _RunCopier("http://127.0.0.1:1", "sqlite:///x.db")):
        for key in MLFLOW_HTTP_DEFAULTS:
            monkeypatch.delenv(key, raising=False)
        make()
        assert {key: os.environ.get(key) for key in MLFLOW_HTTP_DEFAULTS} == MLFLOW_HTTP_DEFAULTS


@pytest.mark.parametrize("name", ["..", ".", "..x", "...", "", " "])
def test_model_names_mlflow_refuses_are_refused_first(name: str) -> None:
    """MLflow also refuses a name that resolves to another as a path ('.', '..', '..x'): that was its exception,
    exit 1, after the study had been re-evaluated."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    with pytest.raises(ConfigError) as info:
        validate_model_name(name)
    assert info.value.field == "--model-name"
    with pytest.raises(MlflowException):  # the rule mirrored is MLflow's
        _validate_model_name(name)


@pytest.mark.parametrize("name", ["..x", ".", "a/b", " "])
def test_a_spec_names_its_registered_model_by_the_same_rules(name: str) -> None:
    """A name from the spec reaches the registry unchecked by `promote` (only --model-name is checked there)."""
    from sweeps.spec import spec_from_dict

    with pytest.raises(ConfigError) as info:
        spec_from_dict({"tracking": {"registered_model": name}})
    assert info.value.field == "tracking.registered_model"


@pytest.mark.parametrize("name", ["a..", "x.", "a.b", " ..", "siamese-digits", ".hidden"])
def test_model_names_mlflow_accepts_are_accepted(name: str) -> None:
    from mlflow.utils.validation import _validate_model_name

    _validate_model_name(name)
    assert validate_model_name(name) == name


@pytest.mark.parametrize("name", ["", "..", ".", "..x"])
def test_cli_promote_bad_model_name_exits_2_and_creates_nothing(name: str, sqlite_stores: Stores,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``--model-name ''`` promoted to the default name (exit 0); '..' and '.' were MLflow's exception (exit 1)."""
    from mlflow import MlflowClient

    from sweeps.cli import main

    client = MlflowClient(sqlite_stores.tracking_uri, registry_uri=sqlite_stores.tracking_uri)
    before = sorted(m.name for m in client.search_registered_models())
    capsys.readouterr()
    code = main(["promote", "--study", "weak", "--model-name", name, "--storage", sqlite_stores.storage,
                 "--tracking-uri", sqlite_stores.tracking_uri])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    [line] = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert line.startswith("error: --model-name:") and "Traceback" not in err
    assert sorted(m.name for m in client.search_registered_models()) == before
