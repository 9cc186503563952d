"""`reconcile_runs` ends the MLflow runs of trials that have ended but could not end their runs, including a run
its trial never recorded (the worker died between creating the run and writing its id to the storage: the case a
short soak once left RUNNING), and leaves the runs of trials still running alone. Real SQLite stores."""
from __future__ import annotations

from pathlib import Path

import optuna

from sweeps import names, outcomes
from sweeps.tracking import Tracker
from sweeps.worker import reconcile_runs

S = optuna.trial.TrialState


def _sweep(tmp_path: Path) -> tuple[optuna.Study, Tracker, str, str]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="rec", storage=f"sqlite:///{tmp_path}/optuna.db")
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = tracker.experiment_id("rec")
    parent = tracker.create_parent_run(experiment_id, "rec")
    return study, tracker, experiment_id, parent


def _status(tracker: Tracker, run_id: str) -> str:
    return str(tracker.client.get_run(run_id).info.status)


def test_a_run_its_ended_trial_never_recorded_is_ended_and_a_running_trials_run_is_not(tmp_path: Path) -> None:
    study, tracker, experiment_id, parent = _sweep(tmp_path)
    lost = study.ask()  # its worker created the run, then the storage refused the run id: the trial FAILed
    lost_run = tracker.start_trial_run(experiment_id, parent, study_name="rec", trial_number=lost.number).run_id
    study.tell(lost, state=S.FAIL)
    live = study.ask()  # created its run a moment ago and is training: its run id may not be recorded yet
    live_run = tracker.start_trial_run(experiment_id, parent, study_name="rec", trial_number=live.number).run_id

    fixed = reconcile_runs(study, tracker, set(), experiment_id=experiment_id, parent_run_id=parent)

    assert fixed == 1
    assert _status(tracker, lost_run) == outcomes.ORPHANED_RUN_STATUS
    tags = tracker.client.get_run(lost_run).data.tags
    assert (tags[names.TAG_STATE], tags[names.TAG_REASON]) == ("FAIL", outcomes.STALE_HEARTBEAT.reason)
    assert _status(tracker, live_run) == "RUNNING"
    assert _status(tracker, parent) == "RUNNING"  # the parent run is not a trial's
    # idempotent: nothing left to end on the next round
    assert reconcile_runs(study, tracker, set(), experiment_id=experiment_id, parent_run_id=parent) == 0


def test_a_failed_trials_recorded_run_is_ended_once_with_its_reason(tmp_path: Path) -> None:
    study, tracker, experiment_id, parent = _sweep(tmp_path)
    trial = study.ask()
    run_id = tracker.start_trial_run(experiment_id, parent, study_name="rec", trial_number=trial.number).run_id
    trial.set_user_attr(names.TRIAL_ATTR_RUN_ID, run_id)
    trial.set_user_attr(names.TRIAL_ATTR_REASON, outcomes.TRACKING_UNAVAILABLE.reason)
    study.tell(trial, state=S.FAIL)
    done = study.ask()  # a COMPLETE trial's own run is never touched (its worker ended it FINISHED)
    done_run = tracker.start_trial_run(experiment_id, parent, study_name="rec", trial_number=done.number).run_id
    done.set_user_attr(names.TRIAL_ATTR_RUN_ID, done_run)
    study.tell(done, 1.0)
    seen: set[int] = set()

    assert reconcile_runs(study, tracker, seen, experiment_id=experiment_id, parent_run_id=parent) == 1
    assert _status(tracker, run_id) == outcomes.ORPHANED_RUN_STATUS
    assert tracker.client.get_run(run_id).data.tags[names.TAG_REASON] == outcomes.TRACKING_UNAVAILABLE.reason
    assert _status(tracker, done_run) == "RUNNING"
    assert seen == {trial.number}
