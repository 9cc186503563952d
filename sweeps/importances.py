"""Parameter importances: one evaluator for the sweep report and the study plots (PNG and HTML).

Optuna 5's ``plot_param_importances`` defaults to PED-ANOVA while the report used fANOVA, so one sweep's parent
run showed two rankings: on a 12-trial TPE study of three parameters (tests/sweeps/test_importances.py) PED-ANOVA
put ``b`` first (0.52) and fANOVA ``a`` (0.80); with ten-odd trials PED-ANOVA's top 10 % is one or two trials
(its docstring asks for at least five). The report, the PNG and the HTML plot now all use fANOVA with seed 0
(the same trials give the same numbers), and its forest is fitted once per set of complete trials, not once
for each of them.
"""
from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.importance import BaseImportanceEvaluator, FanovaImportanceEvaluator

log = logging.getLogger(__name__)

# the fewest complete trials the report, the PNG and the HTML plot show importances for (the report asked for 3
# while the plots began at 2: a parent run with the plots had a report without them)
MIN_COMPLETE = 2
# below this many complete trials the report says its ranking is a rough guide: on the 3-parameter study of
# tests/sweeps/test_importances.py (TPE, seeds 0-9), the first n trials' top parameter was the one of 40 trials
# for 2 seeds in 10 at n=3, 6 at n=5 and all 10 from n=8 on (`python benchmarks/importance_stability.py`, §8)
FEW_FOR_A_RANKING = 8
SEED = 0  # fANOVA's random forest: a fixed seed, so a report and its plots can be compared across runs

_LOCK = threading.Lock()  # the worker's thread draws ahead while the finisher's thread refreshes plots
_LAST: dict[tuple[Any, ...], dict[str, float]] = {}  # the last study's key -> its raw fANOVA importances


def _key(study: optuna.Study, params: list[str] | None) -> tuple[Any, ...]:
    """What fANOVA reads of a study: its complete trials' values, params and distributions."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return (tuple(params) if params is not None else None,
            tuple((t.number, tuple(t.values or ()), tuple(sorted(t.params.items())),
                   tuple(sorted((k, repr(d)) for k, d in t.distributions.items()))) for t in complete))


class SharedFanova(BaseImportanceEvaluator):
    """fANOVA (seed `SEED`) whose result for the last set of trials is kept: the report, the PNG and the HTML
    plot of one study fit the forest once. A `target` (multi-objective plots) is computed without the memory."""

    def __init__(self) -> None:
        self._inner = FanovaImportanceEvaluator(seed=SEED)

    def evaluate(self, study: optuna.Study, params: list[str] | None = None, *,
                 target: Callable[[optuna.trial.FrozenTrial], float] | None = None) -> dict[str, float]:
        with _LOCK:  # one fit at a time: the inner evaluator keeps its forest between fit and importances
            if target is not None:
                return self._inner.evaluate(study, params=params, target=target)
            key = _key(study, params)
            if key not in _LAST:
                got = self._inner.evaluate(study, params=params)
                _LAST.clear()
                _LAST[key] = {k: float(v) for k, v in got.items()}
            return dict(_LAST[key])


def evaluator() -> SharedFanova:
    """The evaluator every importance the project shows goes through (`plot_param_importances(evaluator=...)`)."""
    return SharedFanova()


def parameter_importances(study: optuna.Study) -> dict[str, float]:
    """Normalised importances of a single-objective study ({} when they cannot be computed, e.g. a parameter
    with a single value in every trial, or for several objectives: the report points to the Pareto front)."""
    if len(study.directions) > 1:  # Optuna's advice to pass a target was logged on every multi-objective sweep
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = optuna.importance.get_param_importances(study, evaluator=evaluator())
    except Exception as exc:  # noqa: BLE001 - importances are best-effort, never a failed sweep
        log.info("no parameter importances: %s", exc)
        return {}
    return {k: float(v) for k, v in got.items()}
