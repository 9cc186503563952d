"""Interactive study plots on the parent run: real Optuna studies, a real SQLite MLflow store."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from siamese_core.errors import ConfigError
from sweeps.spec import spec_from_dict
from sweeps.study_plots import log_study_html, plot_refresher
from sweeps.tracking import Tracker

from .conftest import make_spec_dict

DISTS = {"loss.margin": FloatDistribution(0.5, 1.5), "encoder.depth": IntDistribution(1, 2),
         "loader": CategoricalDistribution(["memory", "tfdata"])}


def _add_trial(study: optuna.Study, rng: random.Random) -> optuna.trial.FrozenTrial:
    study.add_trial(optuna.trial.create_trial(
        params={"loss.margin": rng.uniform(0.5, 1.5), "encoder.depth": rng.randint(1, 2),
                "loader": rng.choice(["memory", "tfdata"])},
        distributions=DISTS, value=rng.random(), intermediate_values={0: rng.random(), 1: rng.random()}))
    return study.trials[-1]


@pytest.fixture
def parent(tmp_path: Path) -> tuple[Tracker, str]:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    return tracker, tracker.create_parent_run(tracker.experiment_id("plots"), "s")


def _html(tracker: Tracker, run_id: str) -> dict[str, str]:
    paths = [a.path for a in tracker.client.list_artifacts(run_id, "study")]
    return {p: Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=p, tracking_uri=tracker.uri))
            .read_text() for p in paths}


def test_refresher_logs_the_html_plots_every_n_finished_trials(parent: tuple[Tracker, str]) -> None:
    tracker, run_id = parent
    study, rng = optuna.create_study(direction="maximize"), random.Random(0)
    refresh = plot_refresher(tracker, run_id, 2)
    refresh(study, _add_trial(study, rng))
    assert _html(tracker, run_id) == {}  # one finished trial of every 2: nothing yet
    assert not refresh.up_to_date(study)
    refresh(study, _add_trial(study, rng))
    assert refresh.up_to_date(study)  # the end of the sweep need not log them again
    files = _html(tracker, run_id)
    assert set(files) == {"study/optimization_history.html", "study/parallel_coordinate.html",
                          "study/intermediate_values.html", "study/param_importances.html"}
    for text in files.values():
        assert "<html>" in text and 'class="plotly-graph-div"' in text
    before = files["study/optimization_history.html"]
    refresh(study, _add_trial(study, rng))
    assert not refresh.up_to_date(study)  # a third trial since
    refresh(study, _add_trial(study, rng))  # the 4th trial: the history now has four points
    assert _html(tracker, run_id)["study/optimization_history.html"] != before


def test_the_refresher_leaves_the_sweeps_last_trial_to_the_plots_drawn_ahead(parent: tuple[Tracker, str]) -> None:
    """The trial whose study plots were drawn while it was recorded (the sweep's last): its end logs them."""
    tracker, run_id = parent
    study, rng = optuna.create_study(direction="maximize"), random.Random(2)
    refresh = plot_refresher(tracker, run_id, 1, last_drawn=lambda: 1)
    refresh(study, _add_trial(study, rng))  # trial 0: refreshed
    assert refresh.up_to_date(study) and len(_html(tracker, run_id)) == 3  # one trial: no importances yet
    refresh(study, _add_trial(study, rng))  # trial 1, drawn ahead: not refreshed
    assert not refresh.up_to_date(study) and len(_html(tracker, run_id)) == 3
    refresh(study, _add_trial(study, rng))  # trial 2 (a retry after trial 1 failed, say): refreshed again
    assert refresh.up_to_date(study) and len(_html(tracker, run_id)) == 4


def test_plots_every_zero_never_refreshes_and_no_complete_trial_logs_nothing(parent: tuple[Tracker, str]) -> None:
    tracker, run_id = parent
    study, rng = optuna.create_study(), random.Random(1)
    refresh = plot_refresher(tracker, run_id, 0)
    for _ in range(3):
        refresh(study, _add_trial(study, rng))
    assert _html(tracker, run_id) == {}
    empty = optuna.create_study()
    empty.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    assert log_study_html(empty, tracker, run_id) == []


def test_plots_every_must_not_be_negative() -> None:
    assert spec_from_dict(make_spec_dict()).tracking.plots_every == 5
    with pytest.raises(ConfigError, match="plots_every"):
        spec_from_dict(make_spec_dict(tracking={"plots_every": -1}))


def test_a_running_sweep_refreshes_the_parent_plots_before_it_ends(local_stores: dict[str, Any]) -> None:
    """finalize=False (what `run --workers N` children do): any HTML on the parent came from the refresher."""
    from sweeps.options import options_from
    from sweeps.runner import run_sweep

    spec = spec_from_dict(make_spec_dict(study={"trials": 2}, tracking={"plots_every": 1}))
    opts = options_from(spec, storage=local_stores["storage"], tracking_uri=local_stores["tracking_uri"],
                        progress=False)
    opts.finalize = False
    result = run_sweep(spec, opts)
    tracker = Tracker(local_stores["tracking_uri"])
    names = {a.path for a in tracker.client.list_artifacts(result.parent_run_id)}
    assert "trials.csv" not in names  # the end-of-sweep summary did not run
    assert "study/optimization_history.html" in _html(tracker, result.parent_run_id)
    assert tracker.client.get_run(result.parent_run_id).info.status == "RUNNING"

