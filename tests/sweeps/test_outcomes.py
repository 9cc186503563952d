"""The outcome table is data: documented as it is, classified in one place, spoken in Optuna's and MLflow's terms."""
from __future__ import annotations

import optuna
import pytest
from mlflow.entities import RunStatus

from siamese_core.errors import ConfigError, TrainingFailed
from sweeps import outcomes
from sweeps.errors import Interrupted, InvalidTrialConfig, NonFiniteObjective, TrackingUnavailable


def test_the_module_docstring_shows_the_real_table() -> None:
    assert outcomes.table() in (outcomes.__doc__ or "")


def test_states_and_statuses_are_optunas_and_mlflows() -> None:
    for o in outcomes.OUTCOMES:
        assert optuna.trial.TrialState[o.state].is_finished()
        if o.run_status is not None:
            assert RunStatus.to_string(RunStatus.from_string(o.run_status)) == o.run_status
    assert len({o.reason for o in outcomes.OUTCOMES if not o.reason.startswith("<")}) == len(outcomes.OUTCOMES) - 2


def test_every_reason_the_code_produces_is_a_row() -> None:
    reasons = {o.reason for o in outcomes.OUTCOMES}
    assert {"completed", "pruned", "nan_metric", "invalid_config", "tracking_unavailable",
            "tracking_unavailable_at_start", "interrupted", "stale_heartbeat"} <= reasons


@pytest.mark.parametrize("exc, kw, reason, state, status, retried", [
    (optuna.TrialPruned("epoch 2"), {}, "pruned", "PRUNED", "FINISHED", False),
    (TrainingFailed("nan_loss", "loss is NaN"), {}, "nan_loss", "PRUNED", "FAILED", False),
    (TrainingFailed("collapse", "one point"), {"stop_requested": True}, "collapse", "PRUNED", "FAILED", False),
    (NonFiniteObjective("[nan]"), {}, "nan_metric", "PRUNED", "FAILED", False),
    (InvalidTrialConfig("margin"), {}, "invalid_config", "FAIL", "FAILED", False),
    (ValueError("bug"), {}, "ValueError", "FAIL", "FAILED", False),
    (ConfigError("hypermodel", "x"), {}, "ConfigError", "FAIL", "FAILED", False),
    (TrackingUnavailable("down"), {}, "tracking_unavailable", "FAIL", "KILLED", True),
    (TrackingUnavailable("down"), {"run_started": False}, "tracking_unavailable_at_start", "FAIL", None, True),
    (Interrupted("signal 15"), {}, "interrupted", "FAIL", "KILLED", True),
    (KeyboardInterrupt(), {}, "interrupted", "FAIL", "KILLED", True),
    # a signal's exception can surface as another type: the stop wins
    (RuntimeError("wrapped"), {"stop_requested": True}, "interrupted", "FAIL", "KILLED", True),
])
def test_classify(exc: BaseException, kw: dict, reason: str, state: str, status: str | None, retried: bool) -> None:
    o = outcomes.classify(exc, **kw)
    assert (o.reason, o.state, o.run_status, o.retried) == (reason, state, status, retried)


def test_only_outside_stops_are_retried_and_the_reconciler_ends_what_the_trial_cannot() -> None:
    retried = {o.reason for o in outcomes.OUTCOMES if o.retried}
    assert retried == {"tracking_unavailable", "tracking_unavailable_at_start", "interrupted", "stale_heartbeat",
                       "dead_worker"}
    left = [o for o in outcomes.OUTCOMES if not o.ends_run and o.run_status is not None]
    assert {o.reason for o in left} == {"tracking_unavailable", "stale_heartbeat", "dead_worker"}
    assert {o.run_status for o in left} == {outcomes.ORPHANED_RUN_STATUS}


def test_a_new_exception_type_is_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows carry the exception types that lead to them: adding a reason is adding a row (before CRASH)."""
    class DiskFull(OSError):
        pass

    row = outcomes.Outcome("disk_full", "FAIL", "FAILED", True, True, "no space left", raised_by=(DiskFull,))
    monkeypatch.setattr(outcomes, "OUTCOMES", (*outcomes.OUTCOMES[:-1], row, outcomes.CRASH))
    assert outcomes.classify(DiskFull()) is row
    assert outcomes.classify(OSError()).reason == "OSError"


def _wrapped(message: str) -> TrackingUnavailable:
    """What `Tracker.retry` raises for an MLflow error that retrying cannot fix."""
    from mlflow.exceptions import MlflowException

    try:
        try:
            raise MlflowException(message)
        except MlflowException as cause:
            raise TrackingUnavailable(f"MLflow create trial run failed: {cause}") from cause
    except TrackingUnavailable as exc:
        return exc


def test_a_refusal_says_whether_the_password_or_the_permission_was_refused(monkeypatch) -> None:
    from sweeps.preflight import refusal

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "sweeps-worker")
    denied = refusal(_wrapped("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 403 != "
                              "200. Response body: 'Permission denied'"), "http://u:secret@127.0.0.1:5000")
    assert denied is not None and "denied user 'sweeps-worker'" in denied and "403" in denied
    assert "secret" not in denied and "127.0.0.1:5000" in denied
    bad_password = refusal(_wrapped("API request to endpoint /api/2.0/mlflow/runs/create failed with error code "
                                    "401 != 200. Response body: 'You are not authenticated.'"))
    assert bad_password is not None and "refused the credentials" in bad_password and "403" not in bad_password
    assert refusal(_wrapped("Max retries exceeded with url: http://127.0.0.1:56403/api (Connection refused)")) is None
    assert refusal(None) is None


def test_a_worker_refused_its_trial_runs_exits_2_and_asks_no_second_trial(local_stores, spec_dict,
                                                                            monkeypatch) -> None:
    """A 403 at a trial's start (permissions changed under a running sweep) was "MLflow tracking ... is
    unreachable" (exit 1, so a supervisor started the worker again, one FAIL trial per attempt)."""
    from sweeps.tracking import Tracker

    from .conftest import run_small_sweep

    def denied(*args, **kwargs):
        raise _wrapped("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 403 != 200. "
                       "Response body: 'Permission denied'")

    monkeypatch.setattr(Tracker, "start_trial_run", denied)
    with pytest.raises(ConfigError, match="denied user .* 403"):
        run_small_sweep(spec_dict(), storage=local_stores["storage"], tracking_uri=local_stores["tracking_uri"],
                        trials=3)
    trials = optuna.load_study(study_name="t", storage=local_stores["storage"]).trials
    assert [(t.state.name, t.user_attrs.get("reason")) for t in trials] == \
        [("FAIL", "tracking_unavailable_at_start"), ("WAITING", None)]  # its retry, for a worker that may write


def test_a_pruned_trial_keeps_the_errors_its_training_found() -> None:
    """The failure map reads them (`sweeps.report`): collapse prunes a trial whose run also has constant_output."""
    from siamese_core.findings import Finding
    from sweeps import names
    from sweeps.callbacks import MlflowEpochLogger
    from sweeps.objective import TrialAttempt

    logger = MlflowEpochLogger(run=None)  # type: ignore[arg-type]  # its tags fail: logged, never raised
    study = optuna.create_study()
    trial = study.ask()
    attempt = TrialAttempt(ctx=None, trial=trial)  # type: ignore[arg-type]
    attempt._heard = logger.errors
    for code, severity in (("collapse", "error"), ("constant_output", "error"), ("no_learning", "warning")):
        try:
            logger.on_finding(Finding(code=code, severity=severity, message=code))
        except AttributeError:  # the run is None here: only the collection is under test
            pass
    outcome = outcomes.classify(TrainingFailed("collapse", "one point"), stop_requested=False, run_started=False)
    attempt.conclude(outcome)
    assert study.trials[0].user_attrs[names.TRIAL_ATTR_DIAGNOSTIC_ERRORS] == ["collapse", "constant_output"]
    assert study.trials[0].user_attrs[names.TRIAL_ATTR_REASON] == "collapse"


def test_a_run_whose_tracking_failed_is_ended_when_the_server_answers_again_at_once(tmp_path) -> None:
    """A server that answers but cannot store artifacts (a full disk): the trial failed `tracking_unavailable`
    and its run stayed RUNNING after the sweep's exit, "ended KILLED once MLflow answers" by a rerun that may
    never come. One short try ends it now."""
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from sweeps import names
    from sweeps.objective import TrialAttempt
    from sweeps.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    exp = tracker.experiment_id("t")
    parent = tracker.create_parent_run(exp, "s", tags={})
    study = optuna.create_study()
    trial = study.ask()
    ctx = SimpleNamespace(tracker=tracker, share_checkpoints=False,
                          spec=SimpleNamespace(study=SimpleNamespace(max_retries=2)))
    attempt = TrialAttempt(ctx=ctx, trial=trial)  # type: ignore[arg-type]
    attempt.mlflow_run = tracker.start_trial_run(exp, parent, study_name="s", trial_number=0)
    exc = TrackingUnavailable("MLflow log artifact failed: ... (Caused by ResponseError('too many 500 error "
                              "responses'))")
    outcome = outcomes.classify(exc, stop_requested=False, run_started=True)
    assert outcome.reason == "tracking_unavailable" and not outcome.ends_run
    attempt._fail(outcome, exc)
    run = MlflowClient(uri).get_run(attempt.mlflow_run.run_id)
    assert run.info.status == RunStatus.to_string(RunStatus.KILLED)
    assert run.data.tags[names.TAG_REASON] == "tracking_unavailable"
    assert "too many 500 error responses" in run.data.tags[names.TAG_REASON_DETAIL]


def test_a_stop_while_mlflow_refused_ends_the_run_with_one_short_try(tmp_path, monkeypatch) -> None:
    """A Ctrl-C while MLflow was down: the trial's `TrackingUnavailable` is classified `interrupted`, whose run
    was ended the long way, each of its three calls retried for the whole budget (8 min to exit, past any
    scheduler's grace period). MLflow refused already: one short try, as for `tracking_unavailable`."""
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from sweeps import names
    from sweeps.objective import TrialAttempt
    from sweeps.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    exp = tracker.experiment_id("t")
    parent = tracker.create_parent_run(exp, "s", tags={})
    trial = optuna.create_study().ask()
    ctx = SimpleNamespace(tracker=tracker, share_checkpoints=False,
                          spec=SimpleNamespace(study=SimpleNamespace(max_retries=2)))
    attempt = TrialAttempt(ctx=ctx, trial=trial)  # type: ignore[arg-type]
    attempt.mlflow_run = tracker.start_trial_run(exp, parent, study_name="s", trial_number=0)
    monkeypatch.setattr(attempt, "_end_run", lambda *a, **k: pytest.fail("ended the long way"))
    exc = TrackingUnavailable("MLflow log artifacts failed: Connection refused")
    outcome = outcomes.classify(exc, stop_requested=True, run_started=True)
    assert outcome.reason == "interrupted" and outcome.ends_run
    attempt._fail(outcome, exc)
    run = MlflowClient(uri).get_run(attempt.mlflow_run.run_id)
    assert run.info.status == RunStatus.to_string(RunStatus.KILLED)
    assert run.data.tags[names.TAG_REASON] == "interrupted"
