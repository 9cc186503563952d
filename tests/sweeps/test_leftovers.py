"""Checkpoints that nothing will resume are removed once the study's budget is met."""
from __future__ import annotations

from pathlib import Path

import optuna

from sweeps.worker import clear_finished_checkpoints


def test_only_checkpoints_of_live_trials_survive(tmp_path: Path) -> None:
    study = optuna.create_study()
    for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL):
        t = study.ask()
        study.tell(t, 1.0 if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    study.ask()  # trial 2 is still RUNNING (another worker)
    root = tmp_path / "checkpoints" / "study-abc"
    for n in (0, 1, 2, 7):
        (root / f"trial-{n}").mkdir(parents=True)
        (root / f"trial-{n}" / "epoch.keras").write_bytes(b"x")
    assert clear_finished_checkpoints(study, root) == 3
    assert sorted(p.name for p in root.iterdir()) == ["trial-2"]


def test_the_empty_root_is_removed_and_a_missing_one_is_fine(tmp_path: Path) -> None:
    study = optuna.create_study()
    root = tmp_path / "checkpoints" / "study-abc"
    (root / "trial-0").mkdir(parents=True)
    assert clear_finished_checkpoints(study, root) == 1 and not root.exists()
    assert clear_finished_checkpoints(study, root) == 0
    assert clear_finished_checkpoints(study, None) == 0
