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
  the winner better ("not shown").

Each trial also keeps its validation pairs' similarity ranks, labels and outcomes (`encode_per_pair`, the trial
attr ``per_pair_validation``). When every ranked trial has them for the same pairs, the lead is tested **paired**
on those pairs instead: DeLong, DeLong & Clarke-Pearson (1988) for the difference of two ROC AUCs, the paired
difference of per-pair outcomes for pair accuracy, and for EER (which has no closed form) a paired bootstrap: the
same resamples of the pairs, positives and negatives apart, score every trial. A lead above two errors of the
difference is "clear". Two trials that rank the pairs alike have a small paired error, so the paired test
separates leads the bound above cannot (tests/sweeps/test_margin.py checks DeLong's and the bootstrap's error of a
difference against Monte Carlo).

All of these treat pairs as independent; validation pairs reuse images, which makes the true error larger, and
Hanley & McNeil overstates it by up to a quarter near AUC 0.97 for binormal scores (tests/sweeps/test_margin.py
compares it with Monte Carlo). Each trial is compared with the winner on its own, without a correction for the
number of trials compared.
"""
from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from siamese_core.data.types import EVAL_POSITIVE_FRACTION

from . import names

CLEAR_IN_ERRORS = 2.0 * math.sqrt(2.0)  # a lead of two errors of the difference even for uncorrelated trials
PAIRED_CLEAR_IN_ERRORS = 2.0            # paired: the error of the difference itself is known
# A trial keeps its per-pair outcomes up to this many validation pairs: 2 bytes of rank and 2 bits per pair,
# base64 (2,000 pairs: 6.1 KB of JSON in the trial's row; 20,000: 60 KB, under MySQL's 64 KB TEXT, where Optuna
# keeps user attrs as JSON). Larger validation sets fall back to the unpaired bound (whose error falls with the
# square root of the count).
MAX_PER_PAIR = 20_000
# The paired EER test's resamples: a bootstrap error from B draws is itself off by about 1/sqrt(2 B), 5 % here.
# Each trial costs B cumulative sums over its pairs: `best_margin` on 500 trials of 2,000 pairs took 3.4-4.1 s
# (ad hoc, AMD EPYC), DeLong 0.24 s.
BOOTSTRAP_DRAWS = 200
BOOTSTRAP_SEED = 0  # fixed: `status` run twice on the same study says the same thing
_COUNT_BITS = 20
_LOW = (1 << _COUNT_BITS) - 1
# the metrics with a paired test: its name (kept in the report's margin) and what the report says of it
_PAIRED_TESTS = {
    "val_roc_auc": ("DeLong", "DeLong's paired test over those pairs gives the lead"),
    "val_pair_accuracy": ("paired outcomes", "compared pair by pair, the lead has"),
    "val_eer": ("paired bootstrap",
                f"a paired bootstrap over those pairs ({BOOTSTRAP_DRAWS:,} resamples) gives the lead"),
}
_SAYS = dict(_PAIRED_TESTS.values())


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


def encode_per_pair(similarity: np.ndarray, labels: np.ndarray, correct: np.ndarray) -> dict[str, Any] | None:
    """A trial's validation pairs as its attr keeps them: the rank of each pair's `similarity` (higher: more
    alike; ties kept), its label (same = 1) and whether the calibrated threshold decided it right. None for more
    than `MAX_PER_PAIR` pairs or a non-finite similarity (no AUC to compare)."""
    s = np.asarray(similarity, dtype=np.float64).reshape(-1)
    y, ok = np.asarray(labels).reshape(-1).astype(bool), np.asarray(correct).reshape(-1).astype(bool)
    if not 0 < len(s) <= MAX_PER_PAIR or len(y) != len(s) or len(ok) != len(s) or not np.isfinite(s).all():
        return None
    _, rank = np.unique(s, return_inverse=True)  # dense ranks: the order and the ties are all an AUC needs
    return {"n": len(s), "rank": _b64(rank.astype("<u2").tobytes()), "label": _b64(np.packbits(y).tobytes()),
            "correct": _b64(np.packbits(ok).tobytes())}


def decode_per_pair(attr: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(rank, label, correct) from `encode_per_pair`'s dict; None for anything else."""
    try:
        n = int(attr["n"])
        rank = np.frombuffer(base64.b64decode(attr["rank"]), dtype="<u2").astype(np.int64)
        label = np.unpackbits(np.frombuffer(base64.b64decode(attr["label"]), dtype=np.uint8))[:n].astype(bool)
        correct = np.unpackbits(np.frombuffer(base64.b64decode(attr["correct"]), dtype=np.uint8))[:n].astype(bool)
    except (KeyError, TypeError, ValueError):
        return None
    return (rank, label, correct) if len(rank) == len(label) == len(correct) == n else None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def delong(similarities: list[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUCs of several scorings of the same pairs and their covariance (DeLong et al. 1988)."""
    aucs, v10, v01 = _structural(similarities, labels)
    return aucs, np.atleast_2d(np.cov(v10)) / v10.shape[1] + np.atleast_2d(np.cov(v01)) / v01.shape[1]


def _structural(similarities: list[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong's structural components in Sun & Xu's (2014) midrank form: for each scoring, each positive's share
    of negatives it outranks (``v10``) and each negative's share of positives that outrank it (``v01``)."""
    y = np.asarray(labels).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    v10, v01 = np.empty((len(similarities), m)), np.empty((len(similarities), n))
    for k, s in enumerate(similarities):
        x, z = np.asarray(s, dtype=np.float64)[y], np.asarray(s, dtype=np.float64)[~y]
        both = _midranks(np.concatenate([x, z]))
        v10[k] = (both[:m] - _midranks(x)) / n          # negatives below each positive (ties count half)
        v01[k] = 1.0 - (both[m:] - _midranks(z)) / m    # positives above each negative
    return v10.mean(axis=1), v10, v01


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their positions."""
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def equal_error_rates(ranks: list[np.ndarray], labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """EER of each scoring of the same pairs (higher rank: more alike) with the pairs counted `weights` times, one
    row of `weights` per resample: shape (rows, scorings). `siamese_core.verification.equal_error_rate`'s
    definition (linear interpolation between the two ROC points where false rejects meet false accepts),
    vectorised over the resamples."""
    y = np.asarray(labels).astype(bool)
    w = np.atleast_2d(np.asarray(weights)).astype(np.int64)
    # one cumulative sum per scoring carries both counts: positives in the low bits, negatives above them (a
    # class of up to 2**20 pairs); saves a second sum and gather
    packed = np.where(y, w, w << _COUNT_BITS)
    out = np.empty((len(w), len(ranks)))
    for k, r in enumerate(ranks):
        r = np.asarray(r)
        order = np.argsort(-r, kind="stable")
        ends = np.r_[np.flatnonzero(np.diff(r[order])), len(order) - 1]  # the ROC's points: each tie's last pair
        counts = np.cumsum(packed[:, order], axis=1)[:, ends]
        tp, fp = counts & _LOW, counts >> _COUNT_BITS
        p, n = tp[:, -1:], fp[:, -1:]
        # false rejects - false accepts = 1 - (tp n + fp p) / (p n) falls from 1 (nothing accepted) to -1
        crossed = (tp * n + fp * p < p * n).sum(axis=1, keepdims=True)  # the first point at or below 0
        hi = np.take_along_axis(counts, crossed, axis=1)
        lo = np.where(crossed > 0, np.take_along_axis(counts, np.maximum(crossed - 1, 0), axis=1), 0)
        fpr_lo, fpr_hi = (lo >> _COUNT_BITS) / n, (hi >> _COUNT_BITS) / n
        d0, d1 = 1.0 - (lo & _LOW) / p - fpr_lo, 1.0 - (hi & _LOW) / p - fpr_hi
        t = np.divide(d0, d0 - d1, out=np.zeros(d0.shape), where=d0 != d1)
        out[:, k] = (fpr_lo + t * (fpr_hi - fpr_lo))[:, 0]
    return out


def bootstrap_weights(labels: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """`draws` resamples of the pairs as counts (draws, pairs), positives and negatives apart: every resample keeps
    the validation set's class counts, as every sweep's validation pairs do."""
    y = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    w = np.zeros((draws, len(y)), dtype=np.int32)
    for part in (np.flatnonzero(y), np.flatnonzero(~y)):
        w[:, part] = rng.multinomial(len(part), np.full(len(part), 1.0 / len(part)), size=draws)
    return w


@dataclass(frozen=True)
class Margin:
    """The best trial's lead over the runner-up, in the objective's units and in sampling errors."""

    metric: str
    best: int                    # trial numbers
    runner_up: int
    lead: float                  # >= 0, in the objective's direction
    val_pairs: int
    sampling_error: float        # of one trial's score (the best's)
    clear_above: float           # unpaired: CLEAR_IN_ERRORS x sampling_error; paired: 2 x difference_error
    within: tuple[int, ...]      # the other trials whose lead is not shown: within `clear_above` (paired: their own)
    paired: bool = False         # tested on the trials' per-pair validation outcomes
    difference_error: float | None = None  # paired: the standard error of the lead over the runner-up

    @property
    def verdict(self) -> str:
        return "clear" if self.lead > self.clear_above else "not shown"

    @property
    def method(self) -> str:
        return _PAIRED_TESTS[self.metric][0] if self.paired and self.metric in _PAIRED_TESTS else "unpaired bound"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "best": self.best, "runner_up": self.runner_up, "lead": self.lead,
                "val_pairs": self.val_pairs, "sampling_error": self.sampling_error, "clear_above": self.clear_above,
                "within": list(self.within), "verdict": self.verdict, "paired": self.paired,
                "difference_error": self.difference_error, "method": self.method}


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
    kept = decode_per_pair(best.user_attrs.get(names.TRIAL_ATTR_PER_PAIR_VAL))
    counted = best.user_attrs.get(names.TRIAL_ATTR_VAL_PAIRS)
    if kept is not None:  # the pairs it was scored on: a small split's are fewer than asked (each pair once)
        n, positives = len(kept[1]), int(kept[1].sum())
    elif isinstance(counted, dict) and int(counted.get("pairs") or 0) > 0:  # too many pairs to keep their outcomes
        n, positives = int(counted["pairs"]), int(counted.get("positives") or 0)
    else:  # balanced whatever the training pairs' pairs.positive_fraction (its 0.15 gave 300 positives of 2,000)
        n = int(best.params.get("pairs.val_pairs", pairs["val_pairs"]))
        positives = round(n * EVAL_POSITIVE_FRACTION)
    se = sampling_error(str(metrics[0]), values[0], positives, n - positives)
    if se is None:
        return None
    paired = _paired(str(metrics[0]), ranked)
    if paired is not None:
        return paired
    clear_above = CLEAR_IN_ERRORS * se
    within = tuple(t.number for t, v in zip(ranked[1:], values[1:], strict=True) if abs(v - values[0]) <= clear_above)
    return Margin(str(metrics[0]), best.number, ranked[1].number, abs(values[0] - values[1]), n, se, clear_above,
                  within)


def _paired(metric: str, ranked: list[optuna.trial.FrozenTrial]) -> Margin | None:
    """The margin tested on the trials' per-pair outcomes; None unless every trial has them for the same pairs
    (equal eval fingerprints and labels) and they reproduce each trial's score."""
    if metric not in _PAIRED_TESTS:
        return None
    kept = [decode_per_pair(t.user_attrs.get(names.TRIAL_ATTR_PER_PAIR_VAL)) for t in ranked]
    prints = {t.user_attrs.get(names.TRIAL_ATTR_EVAL_FINGERPRINT) for t in ranked}
    if any(k is None for k in kept) or len(prints) != 1:
        return None
    outcomes = [k for k in kept if k is not None]
    label = outcomes[0][1]
    if any(not np.array_equal(k[1], label) for k in outcomes) or min(label.sum(), (~label).sum()) < 2:
        return None
    if metric == "val_roc_auc":
        values, v10, v01 = _structural([k[0] for k in outcomes], label)
        leads = values[0] - values[1:]
        # var(a - b) is the variance of the components' differences (= var a + var b - 2 cov(a, b)): linear in
        # the number of trials, where the whole covariance matrix would be quadratic
        errors = np.sqrt((v10[0] - v10[1:]).var(axis=1, ddof=1) / v10.shape[1]
                         + (v01[0] - v01[1:]).var(axis=1, ddof=1) / v01.shape[1])
        own = math.sqrt(v10[0].var(ddof=1) / v10.shape[1] + v01[0].var(ddof=1) / v01.shape[1])
    elif metric == "val_eer":  # lower is better: the lead is the others' EER above the best's
        ranks = [k[0] for k in outcomes]
        values = equal_error_rates(ranks, label, np.ones((1, len(label))))[0]
        if not _reproduce(values, ranked):
            return None  # checked before the resamples, which cost 200 times as much
        drawn = equal_error_rates(ranks, label, bootstrap_weights(label))
        leads = values[1:] - values[0]
        errors = (drawn[:, 1:] - drawn[:, :1]).std(axis=0, ddof=1)
        own = float(drawn[:, 0].std(ddof=1))
    else:
        correct = np.array([k[2] for k in outcomes], dtype=np.float64)
        differences = correct[0] - correct[1:]
        leads = differences.mean(axis=1)
        errors = differences.std(axis=1, ddof=1) / math.sqrt(correct.shape[1])
        values = correct.mean(axis=1)
        own = math.sqrt(values[0] * (1.0 - values[0]) / correct.shape[1])
    if not _reproduce(values, ranked):
        return None
    clear = PAIRED_CLEAR_IN_ERRORS * errors
    within = tuple(t.number for t, lead, c in zip(ranked[1:], leads, clear, strict=True) if lead <= c)
    return Margin(metric, ranked[0].number, ranked[1].number, float(leads[0]), len(label), own, float(clear[0]),
                  within, paired=True, difference_error=float(errors[0]))


def _reproduce(values: np.ndarray, ranked: list[optuna.trial.FrozenTrial]) -> bool:
    """Do the kept outcomes give each trial's value? If not, they are not what the trials were scored on."""
    return bool(np.allclose(values, [float(t.value) for t in ranked], rtol=0.0, atol=1e-6))  # type: ignore[arg-type]


def describe(margin: Mapping[str, Any]) -> str:
    """Two sentences for the report, from `Margin.to_dict` (what the report keeps)."""
    head = f"Trial {margin['best']} leads trial {margin['runner_up']} by {margin['lead']:.3g} in `{margin['metric']}`"
    if margin.get("paired"):
        test = _SAYS.get(str(margin.get("method")), _SAYS["paired outcomes"])
        head += (f", both scored on the same {margin['val_pairs']:,} validation pairs; {test} a standard error of "
                 f"{margin['difference_error']:.2g}.")
        band = "within two errors of the best"
    else:
        head += (f"; one trial's score on {margin['val_pairs']:,} validation pairs has a sampling error of about "
                 f"{margin['sampling_error']:.2g}.")
        band = "within it"
    if margin["verdict"] == "clear":
        return head + f" The lead is clear: above {margin['clear_above']:.2g}, two errors of the difference."
    within = list(margin["within"])
    shown = ", ".join(str(n) for n in within[:12]) + (" …" if len(within) > 12 else "")
    return (head + f" **Not shown to be better**: a lead below {margin['clear_above']:.2g} can be sampling noise, "
            f"and {len(within)} trial(s) are {band} ({shown}). More `pairs.val_pairs` tell them apart (the error "
            "falls with the square root of the count); the test scores are not for choosing.")


def one_line(margin: Mapping[str, Any] | None) -> str:
    """`describe` in one line, for `status`, `run`'s summary and `promote` ("" without a margin)."""
    if not margin:
        return ""
    paired = bool(margin.get("paired"))  # paired over the same validation pairs: the lead's own error
    said = "clear" if margin["verdict"] == "clear" else (
        f"not shown to be better; {len(margin['within'])} trial(s) within "
        + ("two errors" if paired else f"{margin['clear_above']:.2g}"))
    error = (f"paired error {margin['difference_error']:.2g} on the same" if paired else
             f"sampling error {margin['sampling_error']:.2g} on")
    return (f"lead over trial #{margin['runner_up']}: {margin['lead']:.6f} ({said}; {error} "
            f"{margin['val_pairs']:,} validation pairs)")

