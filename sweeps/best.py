"""Which COMPLETE trials a study's best is chosen from: the ones siamese-sweep measured.

Optuna's `Study.best_trial` ranks every COMPLETE trial by its value, whoever told it. A value told through Optuna's
own API — `study.tell(n, 0.999)` from another process while trial n still trained, `study.add_trial` — was then
the best that `run`, `status`, `report`, the parent run and `SweepResult` showed, with a "clear" lead over trials
scored on the validation pairs, while `promote` skipped it. `status`, `report`, the parent run and `promote` now
choose among the trials siamese-sweep trained and recorded, and name the others.
"""
from __future__ import annotations

from collections.abc import Iterable

import optuna

from . import names

COMPLETE = optuna.trial.TrialState.COMPLETE


def sweeps_study(study: optuna.Study) -> bool:
    """A study siamese-sweep created (its objective metrics recorded); a plain Optuna study ranks as Optuna does."""
    return bool(study.user_attrs.get(names.STUDY_ATTR_METRICS))


def measured(t: optuna.trial.FrozenTrial) -> bool:
    """A trial siamese-sweep trained and recorded: its decision threshold is written by its worker with its
    results, just before its tell (`sweeps.objective`). A trial told COMPLETE by another process while it trained
    never got it; one added with `study.add_trial` has none. (Its run id is not the sign: `move` drops the id of
    a run it could not copy, and the trial's results stay.)"""
    return names.TRIAL_ATTR_THRESHOLD in t.user_attrs


def split_complete(study: optuna.Study, trials: Iterable[optuna.trial.FrozenTrial] | None = None
                   ) -> tuple[list[optuna.trial.FrozenTrial], list[optuna.trial.FrozenTrial]]:
    """(the COMPLETE trials with values the best is chosen from, the COMPLETE ones it is not: told outside
    siamese-sweep); of a plain study, every COMPLETE trial is in the first list."""
    source = study.get_trials(deepcopy=False) if trials is None else trials
    complete = [t for t in source if t.state == COMPLETE and t.values]
    if not sweeps_study(study):
        return complete, []
    return [t for t in complete if measured(t)], [t for t in complete if not measured(t)]


def best_of(study: optuna.Study, ranked: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    """The best of `ranked` in a single-objective study (the lowest number on a tie), None if there is none."""
    if not ranked:
        return None
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return min(ranked, key=lambda t: (sign * float(t.values[0]), t.number))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best trial siamese-sweep measured (single objective), None if there is none yet."""
    return best_of(study, split_complete(study)[0])


def ranked_view(study: optuna.Study) -> optuna.Study:
    """`study` itself, or, when some trials were told outside siamese-sweep, an in-memory copy in which they are
    FAIL (no value): Optuna's plots and importances read every COMPLETE trial, and the optimization history drew
    0.999 as the best value. Every trial is copied, in order, so the numbers stay."""
    told = {t.number for t in split_complete(study)[1]}
    if not told:
        return study
    view = optuna.create_study(directions=study.directions, study_name=study.study_name)
    for key, value in study.user_attrs.items():
        view.set_user_attr(key, value)
    view.add_trials([t if t.number not in told else optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL, params=t.params, distributions=t.distributions,
        user_attrs=t.user_attrs, system_attrs=t.system_attrs, intermediate_values=t.intermediate_values)
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)])
    return view


def pareto_front(study: optuna.Study, ranked: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials of `ranked` no other one of them dominates (multi-objective), by number. Optuna's
    `best_trials` is the front of every COMPLETE trial: a trial told outside siamese-sweep could hide measured
    ones behind it."""
    signs = [-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
    costs = {t.number: [s * float(v) for s, v in zip(signs, t.values, strict=True)] for t in ranked}

    def dominated(a: list[float]) -> bool:
        return any(all(x <= y for x, y in zip(b, a, strict=True)) and b != a for b in costs.values())

    return sorted((t for t in ranked if not dominated(costs[t.number])), key=lambda t: t.number)
