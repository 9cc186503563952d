"""The soak's short version: 3 workers on a private PostgreSQL + MLflow server, one fault of each kind (worker
SIGKILL, worker SIGTERM, MLflow restart, PostgreSQL restart): the exact budget, nothing left RUNNING, every
COMPLETE trial with a complete run, both killed trials retried, no trial lost and no traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from .soak import KINDS, soak

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_a_short_soak_with_every_fault_kind_keeps_the_core_promises(tmp_path: Path) -> None:
    # short gaps, paced (the k-th fault also waits for k finished trials) and 6 epochs a trial: all four faults
    # land before the budget is met, spread over the sweep
    result = soak(tmp_path, workers=3, trials=8, faults=len(KINDS), seed=1, gap=(2.0, 4.0), kinds=KINDS,
                  epochs=6, timeout=900, paced=True)
    print(result.table())
    assert sum(result.faults.values()) == len(KINDS), result.table()
    # the two worker faults hit running trials: both were retried (SIGKILL via the heartbeat, SIGTERM at once)
    assert result.retried >= 2 and result.worker_exits.get(130) == 1, "\n".join([result.table(), *result.stuck])
    assert result.budget_error == 0 and not result.left_running and not result.runs_left_running, result.table()
    assert not result.complete_but_incomplete_run, "\n".join(result.complete_but_incomplete_run)
    # a PostgreSQL restart no longer costs a trial or prints a traceback: the storage's calls wait it out
    # (sweeps.storage.RetryingStorage; deterministic tests in test_storage_outage.py)
    assert not result.lost and not result.tracebacks, "\n".join([result.table(), *result.lost.values(),
                                                                 *result.traceback_texts])

