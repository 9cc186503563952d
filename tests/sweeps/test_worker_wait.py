"""A worker with nothing left to ask waits for the trials other workers run, and notices their end promptly."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from sweeps.storage import budget_lock, make_storage
from sweeps.worker import WorkerReport, take_trials

# The full round's period in these tests. A worker that waited for it would take at least this long; one that
# notices the other trial's end takes ~1-4 s here. The bound leaves room for a loaded machine: in CI, at the
# end of the whole suite, a 10 s bound on the whole run with a replacement trial failed at 13.3 s, while the
# run without one passed in the same process. The replacement's closing gc.collect() walks the whole pytest
# process's heap (a worker freezes its long-lived objects first: `freeze_long_lived`), so only the wait is timed.
_POLL_S = 60.0
_PROMPT_S = 20.0


def _beside_another_worker(tmp_path: Path, other_ends: optuna.trial.TrialState,
                           objective: Callable[[optuna.Trial], float]) -> tuple[WorkerReport, float, float]:
    """Run a worker (budget 1) while another worker's trial runs, and ends as `other_ends` after 1 s; with its
    start and the seconds it took (`time.monotonic()`). _POLL_S is the full round's period (lock, stale trials,
    MLflow): the end of a running trial must not wait for it (`run --workers 2` spent ~5 s after the last trial
    this way)."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="idle", storage=make_storage(url))
    other = study.ask()
    values = 0.5 if other_ends == optuna.trial.TrialState.COMPLETE else None
    ender = threading.Timer(1.0, lambda: study.tell(other, values, state=other_ends))
    ender.start()
    t0 = time.monotonic()
    report = take_trials(study, budget_lock(url, "idle"), objective, default_budget=1, max_failures=3,
                         poll_s=_POLL_S)
    elapsed = time.monotonic() - t0
    ender.join()
    return report, t0, elapsed


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_an_idle_worker_ends_soon_after_the_last_running_trial_not_a_poll_later(tmp_path: Path) -> None:
    def objective(trial: optuna.Trial) -> float:
        raise AssertionError("the budget is taken: this worker must not run a trial")

    report, _, elapsed = _beside_another_worker(tmp_path, optuna.trial.TrialState.COMPLETE, objective)
    assert report.budget_met and report.trials_run == 0
    assert 1.0 <= elapsed < _PROMPT_S, elapsed


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_an_idle_worker_replaces_a_trial_that_failed_elsewhere(tmp_path: Path) -> None:
    ran: list[tuple[int, float]] = []

    def objective(trial: optuna.Trial) -> float:
        ran.append((trial.number, time.monotonic()))
        return 0.25

    report, t0, _ = _beside_another_worker(tmp_path, optuna.trial.TrialState.FAIL, objective)
    # the budget counts COMPLETE and PRUNED: the failed trial is replaced
    assert report.budget_met and [number for number, _ in ran] == [1]
    # what is timed is the wait for the other trial's end, up to the replacement's start; the time the
    # replacement's own closing takes is the trial's (benchmarks/tracking_overhead.py measures it)
    started = ran[0][1] - t0
    assert 1.0 <= started < _PROMPT_S, started


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_idle_check_leaves_a_storage_outage_to_the_full_round(tmp_path: Path) -> None:
    """The check every second must not end an idle worker on a storage error it would have slept through."""
    from sweeps.worker import _await_running

    url = f"sqlite:///{tmp_path}/optuna.db"
    storage = make_storage(url)
    study = optuna.create_study(study_name="idle", storage=storage)
    study.ask()
    (tmp_path / "optuna.db").rename(tmp_path / "away.db")  # the database is gone: every query fails now
    (tmp_path / "optuna.db").write_bytes(b"not a database" * 100)
    storage.dispose_connections()
    with pytest.raises(Exception):  # noqa: B017, PT011 - Optuna's error type for this is an internal one
        study.get_trials(deepcopy=False)
    t0 = time.monotonic()
    _await_running(study, 1.5)  # sleeps its time, as before, instead of raising
    assert time.monotonic() - t0 >= 1.4
