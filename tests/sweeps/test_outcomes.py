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
