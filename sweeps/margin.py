"""Is the best trial's lead real? Its lead over the runner-up against the validation score's sampling error.

A sweep returns the trial with the best validation score, and the next trial is often behind by less than the
score moves when the validation pairs are drawn again: the quickstart's seed 0 picked trial 5 over trial 3 by
0.000002 of validation ROC AUC on 2,000 pairs (BENCHMARKS.md §0), where one score's sampling error is about
0.004 (``sampling_error("val_roc_auc", 0.967, 1000, 1000)``). The report says which trials the sweep cannot
tell apart from the winner, from the study alone:

- one trial's sampling error `se` on the validation pairs: Hanley & McNeil (1982) for ROC AUC, binomial for
  pair accuracy and EER (`sampling_error`);
- two trials scored on the same pairs are correlated (correlation rho >= 0), so the error of their difference is
  sqrt(2 (1 - rho)) se <= sqrt(2) se. Without the per-pair scores rho is unknown: a lead above
  ``2 sqrt(2) se`` is two errors of the difference whatever rho is ("clear"); below it the sweep has not shown
  the winner better ("not shown": a paired test on the same pairs, e.g. DeLong's, might still separate them).

Both formulas treat pairs as independent; validation pairs reuse images, which makes the true error larger, and
Hanley & McNeil overstates it by up to a quarter near AUC 0.97 for binormal scores (tests/sweeps/test_margin.py
compares it with Monte Carlo).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from . import names

CLEAR_IN_ERRORS = 2.0 * math.sqrt(2.0)  # a lead of two errors of the difference even for uncorrelated trials


def sampling_error(metric: str, value: float, positives: int, negatives: int) -> float | None:
    """The standard error of one trial's `metric` (``val_roc_auc``, ``val_pair_accuracy``, ``val_eer``) on
    `positives` + `negatives` validation pairs; None for a metric without a formula here (a loss, a trial cost)."""
    n = positives + negatives
    if positives < 1 or negatives < 1 or not math.isfinite(value):
        return None
    kind = metric.removeprefix("val_")
    if kind == "roc_auc":
        a = min(max(value, 0.0), 1.0)
        q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
        var = (a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)) / (positives * negatives)
        return math.sqrt(max(var, 0.0))
    if kind in ("pair_accuracy", "eer"):
        p = min(max(value, 0.0), 1.0)
        return math.sqrt(p * (1 - p) / n)
    return None


@dataclass(frozen=True)
class Margin:
    """The best trial's lead over the runner-up, in the objective's units and in sampling errors."""

    metric: str
    best: int                    # trial numbers
    runner_up: int
    lead: float                  # >= 0, in the objective's direction
    val_pairs: int
    sampling_error: float        # of one trial's score
    clear_above: float           # CLEAR_IN_ERRORS x sampling_error
    within: tuple[int, ...]      # the other trials whose score is within `clear_above` of the best's

    @property
    def verdict(self) -> str:
        return "clear" if self.lead > self.clear_above else "not shown"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "best": self.best, "runner_up": self.runner_up, "lead": self.lead,
                "val_pairs": self.val_pairs, "sampling_error": self.sampling_error, "clear_above": self.clear_above,
                "within": list(self.within), "verdict": self.verdict}


def best_margin(study: optuna.Study, complete: list[optuna.trial.FrozenTrial]) -> Margin | None:
    """The margin of a single-objective study's best trial; None with fewer than two complete trials, an objective
    that is not a validation score with a formula above, or a study without its spec (the pairs' count)."""
    metrics = study.user_attrs.get(names.STUDY_ATTR_METRICS) or []
    spec = study.user_attrs.get(names.STUDY_ATTR_SPEC) or {}
    pairs = ((spec.get("base") or {}).get("pairs") or {}) if isinstance(spec, dict) else {}
    scored = [t for t in complete if t.value is not None and math.isfinite(t.value)]
    if len(metrics) != 1 or len(scored) < 2 or "val_pairs" not in pairs:
        return None
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(scored, key=lambda t: float(t.value), reverse=maximize)  # type: ignore[arg-type]
    values = [float(t.value) for t in ranked]  # type: ignore[arg-type]
    best = ranked[0]
    n = int(best.params.get("pairs.val_pairs", pairs["val_pairs"]))
    fraction = float(best.params.get("pairs.positive_fraction", pairs.get("positive_fraction", 0.5)))
    positives = round(n * fraction)
    se = sampling_error(str(metrics[0]), values[0], positives, n - positives)
    if se is None:
        return None
    clear_above = CLEAR_IN_ERRORS * se
    within = tuple(t.number for t, v in zip(ranked[1:], values[1:], strict=True) if abs(v - values[0]) <= clear_above)
    return Margin(str(metrics[0]), best.number, ranked[1].number, abs(values[0] - values[1]), n, se, clear_above,
                  within)


def describe(margin: Mapping[str, Any]) -> str:
    """Two sentences for the report, from `Margin.to_dict` (what the report keeps)."""
    head = (f"Trial {margin['best']} leads trial {margin['runner_up']} by {margin['lead']:.3g} in "
            f"`{margin['metric']}`; one trial's score on {margin['val_pairs']:,} validation pairs has a sampling "
            f"error of about {margin['sampling_error']:.2g}.")
    if margin["verdict"] == "clear":
        return head + f" The lead is clear: above {margin['clear_above']:.2g}, two errors of the difference."
    within = list(margin["within"])
    shown = ", ".join(str(n) for n in within[:12]) + (" …" if len(within) > 12 else "")
    return (head + f" **Not shown to be better**: a lead below {margin['clear_above']:.2g} can be sampling noise, "
            f"and {len(within)} trial(s) are within it ({shown}). More `pairs.val_pairs` tell them apart (the "
            "error falls with the square root of the count); the test scores are not for choosing.")
