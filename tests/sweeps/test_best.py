"""The best trial is one siamese-sweep measured (`sweeps.best`): a value told through Optuna's own API was the best
of `status`, `report`, the parent run and `SweepResult`, with a "clear" lead, while `promote` skipped it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweeps import names
from sweeps.best import best_trial, measured, pareto_front, split_complete
from sweeps.promotion import pick_candidate
from sweeps.report import build_report, render_markdown
from sweeps.storage import make_storage
from sweeps.study import study_status

X = optuna.distributions.FloatDistribution(0.0, 1.0)


def _attrs(i: int) -> dict:
    return {names.TRIAL_ATTR_RUN_ID: f"run-{i}", names.TRIAL_ATTR_THRESHOLD: 0.5,
            names.TRIAL_ATTR_MODEL_URI: f"models:/m-{i}", names.TRIAL_ATTR_DIAGNOSTIC_ERRORS: []}


def _study(storage: str | None = None) -> optuna.Study:
    """Three measured trials (0.90, 0.93, 0.91), then one added by hand at 0.999: the review's case B."""
    study = optuna.create_study(study_name="told", storage=storage and make_storage(storage), direction="maximize")
    study.set_user_attr(names.STUDY_ATTR_METRICS, ["val_roc_auc"])
    study.set_user_attr(names.STUDY_ATTR_SPEC, {"base": {"pairs": {"val_pairs": 200, "positive_fraction": 0.5}},
                                                "study": {"sampler": {"type": "tpe", "n_startup_trials": 2}}})
    for i, v in enumerate([0.90, 0.93, 0.91]):
        study.add_trial(optuna.trial.create_trial(params={"x": i / 10}, distributions={"x": X}, value=v,
                                                  user_attrs=_attrs(i)))
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": X}, value=0.999))
    return study


def test_a_trial_told_by_optunas_api_is_shown_but_never_the_best() -> None:
    study = _study()
    assert study.best_trial.number == 3  # Optuna's own choice, which status, report and the parent run took
    assert best_trial(study).number == 1
    status = study_status(study)
    assert status["best"]["number"] == 1 and status["not_ranked"] == [3]
    assert status["margin"]["best"] == 1 and status["margin"]["runner_up"] == 2  # never "a clear lead over #1"
    report = build_report(study, status)
    assert report.best["number"] == 1
    assert any("#3 told COMPLETE outside siamese-sweep" in n for n in report.notes)
    assert "Trial 3" not in render_markdown(report)
    trial, skipped = pick_candidate(study, None)
    assert trial.number == 1 and [s["trial"] for s in skipped] == [3]
    assert "told COMPLETE through Optuna's own API" in skipped[0]["reason"]  # was "no logged model (...)"


def test_promote_skips_a_told_trial_and_one_without_its_run_with_the_reason() -> None:
    """A trial whose run id attribute is gone was a KeyError in `promote` (exit 1); a told one was "no logged
    model (tracking.log_models: false?)". A measured trial whose run `move` could not copy (its id dropped,
    its results kept) is still the best of `status`: the diff review of session 46."""
    study = _study()
    study.add_trial(optuna.trial.create_trial(params={"x": 0.6}, distributions={"x": X}, value=0.98,
                                              user_attrs={**_attrs(4), names.TRIAL_ATTR_RUN_ID: ""}))
    trial, skipped = pick_candidate(study, None)
    assert trial.number == 1
    assert [(s["trial"], s["reason"].split(" (")[0]) for s in skipped] == [
        (3, "no results recorded by a siamese-sweep worker"), (4, "no MLflow run")]
    status = study_status(study)
    assert status["best"]["number"] == 4 and status["best"]["run_id"] == "" and status["not_ranked"] == [3]


def test_a_told_value_neither_stops_the_study_nor_shows_in_the_progress_bar() -> None:
    from sweeps.runner import _postfix
    from sweeps.stopping import StudyStop

    study = _study()
    assert StudyStop(target=0.95).decision(study) is None  # "target: trial 3 reached 0.999": every worker stopped
    assert _postfix(study) == "best=0.9300"
    measured_high = optuna.trial.create_trial(params={"x": 0.7}, distributions={"x": X}, value=0.96,
                                              user_attrs=_attrs(4))
    decision = StudyStop(target=0.95).decision(study, assume=[measured_high])
    assert decision is not None and decision.reason == "target"  # the worker's own, told next: as in line


def test_status_names_the_trials_it_does_not_rank(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    _study(url)
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "status", "--study", "told", "--storage", url],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "best trial #1: value=0.9300" in done.stdout, done.stdout
    assert ("not ranked: trial(s) #3 told COMPLETE outside siamese-sweep (Optuna's own tell or add_trial): no "
            "results recorded by a worker") in done.stdout, done.stdout


def test_a_plain_optuna_study_ranks_every_complete_trial() -> None:
    study = optuna.create_study(direction="minimize")
    for v in (0.3, 0.1, 0.1, 0.2):
        study.add_trial(optuna.trial.create_trial(params={"x": v}, distributions={"x": X}, value=v))
    assert split_complete(study)[1] == [] and best_trial(study).number == 1  # the first of a tie, as Optuna
    assert study_status(study)["not_ranked"] == []


@pytest.mark.parametrize("with_told", [False, True])
def test_the_pareto_front_is_of_the_measured_trials(with_told: bool) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr(names.STUDY_ATTR_METRICS, ["val_roc_auc", "params"])
    for i, values in enumerate([(0.90, 100.0), (0.95, 200.0), (0.93, 300.0), (0.90, 100.0)]):
        study.add_trial(optuna.trial.create_trial(params={"x": i / 10}, distributions={"x": X}, values=values,
                                                  user_attrs=_attrs(i)))
    if with_told:  # dominates #0, #1 and #3: Optuna's front is this trial alone
        study.add_trial(optuna.trial.create_trial(params={"x": 0.9}, distributions={"x": X}, values=(0.99, 50.0)))
        assert [t.number for t in study.best_trials] == [4]
    ranked, told = split_complete(study)
    assert [t.number for t in pareto_front(study, ranked)] == [0, 1, 3]  # #2 is dominated by #1; a tie stays
    assert [t.number for t in told] == ([4] if with_told else [])
    assert [b["number"] for b in study_status(study)["best_trials"]] == [0, 1, 3]
    assert all(measured(t) for t in ranked)


def test_the_studys_plots_and_importances_draw_a_told_trial_as_failed() -> None:
    """The optimization history drew 0.999 as the best value, and fANOVA ranked parameters by it (the final
    review of session 46)."""
    from sweeps.best import ranked_view
    from sweeps.study_plots import plot_recipes

    study = _study()
    for i in range(4, 8):  # enough complete trials for the importances
        study.add_trial(optuna.trial.create_trial(params={"x": i / 10}, distributions={"x": X}, value=0.8 + i / 100,
                                                  user_attrs=_attrs(i)))
    view = ranked_view(study)
    assert [t.number for t in view.trials] == [t.number for t in study.trials]  # numbers kept
    assert view.trials[3].state == optuna.trial.TrialState.FAIL and view.trials[3].values is None
    assert view.best_trial.number == best_trial(study).number == 1
    assert ranked_view(optuna.create_study()) is not None and ranked_view(view) is view  # nothing told: itself
    import optuna.visualization as plotly

    figure = plot_recipes(study)["optimization_history"](plotly)
    best_line = [trace for trace in figure.data if trace.name == "Best Value"][0]
    assert max(best_line.y) == pytest.approx(0.93), list(best_line.y)
