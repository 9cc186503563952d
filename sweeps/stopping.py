"""``study.stop``: end a whole study before its trial budget (W&B's ``metric.target``, plus patience).

`StudyStop` reads only the shared study, so every worker — in this process, in ``run --workers N``, on
other machines — reaches the same decision from the same storage: each checks it before starting a
trial, and trials already running finish normally (like ``optuna.Study.stop``). It is also an
ordinary Optuna callback for a plain ``study.optimize(..., callbacks=[StudyStop(target=0.95)])``.
"""
from __future__ import annotations

import datetime
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from siamese_core.errors import ConfigError

from .best import split_complete

if TYPE_CHECKING:
    from .spec import SweepSpec

_DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
_EPOCH = datetime.datetime.min


@dataclass(frozen=True)
class StopDecision:
    reason: str   # "target" or "patience"
    detail: str   # one line for logs, `status` and the study's `stopped` attribute

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class StudyStop:
    """Stop once the best value reaches `target`, or after `patience_trials` finished trials without a new best."""

    def __init__(self, *, target: float | None = None, patience_trials: int | None = None) -> None:
        if target is None and patience_trials is None:
            raise ConfigError("study.stop", "needs target and/or patience_trials")
        if target is not None and (isinstance(target, bool) or not isinstance(target, numbers.Real)
                                   or not math.isfinite(target)):
            raise ConfigError("study.stop.target", f"expected a finite number; received: {target!r}")
        patience = patience_trials
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, numbers.Integral)
                                     or patience < 1):
            raise ConfigError("study.stop.patience_trials", f"expected a whole number >= 1; received: {patience!r}")
        self.target = target
        self.patience_trials = patience_trials

    def decision(self, study: optuna.Study, *, assume: Sequence[optuna.trial.FrozenTrial] = ()) -> StopDecision | None:
        """None while the study should go on; `assume`: finished trials not yet told (a worker's trial whose
        recording runs in the background), so the study stops after the same trial as it would in line."""
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        stored = study.get_trials(deepcopy=False, states=_DONE)
        trials = stored + list(assume)
        # the measured ones (`sweeps.best`): a value told through Optuna's API stopped the study at a "target" its
        # status never showed; an assumed trial is this worker's own, measured, its recording still running
        complete = [t for t in split_complete(study, stored)[0] + list(assume)
                    if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
        best = None
        if complete:
            best = (max if maximize else min)(complete, key=lambda t: float(t.value or 0.0))
        reached = best is not None and best.value is not None and self.target is not None and (
            best.value >= self.target if maximize else best.value <= self.target)
        if reached and best is not None:
            return StopDecision("target", f"trial {best.number} reached {best.value:.6g} "
                                          f"({'>=' if maximize else '<='} target {self.target:g})")
        if self.patience_trials is not None:
            since = (best.datetime_complete or _EPOCH) if best is not None else _EPOCH
            later = [t for t in trials
                     if (best is None or t.number != best.number) and (t.datetime_complete or _EPOCH) >= since]
            if len(later) >= self.patience_trials:
                where = f"trial {best.number} ({best.value:.6g})" if best is not None else "any complete trial"
                return StopDecision("patience", f"{len(later)} finished trials without improving on {where} "
                                                f"(patience_trials {self.patience_trials})")
        return None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.decision(study) is not None:
            study.stop()


def from_spec(spec: SweepSpec) -> StudyStop | None:
    """The spec's ``study.stop`` (None when it has none)."""
    stop = spec.study.stop
    if stop is None:
        return None
    return StudyStop(target=stop.target, patience_trials=stop.patience_trials)
