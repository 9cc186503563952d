"""What `promote` decides, as a pure function of plain data: no MLflow, no Optuna, no clock.

`gather` turns a study and the registry into `Facts`; `decide(facts)` returns the `PromotionDecision`;
`apply` carries it out. `best_eligible` is the rule every concurrent promoter converges on.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from siamese_core.errors import ConfigError

from .. import names
from ..directions import better, lower_is_better
from ..reevaluation import Evaluation

PROMOTE, KEEP, ROLLBACK = "promote", "keep", "rollback"


@dataclass(frozen=True)
class Split:
    """The fixed pairs of one split that both models are scored on: validation (decides) or test (reported)."""

    fingerprint: str   # the dataset's
    key: str           # identifies (dataset, pairs): evaluations with one key compare
    n_pairs: int
    which: str = "val"                   # "val": the decision is made on it; "test": only reported
    eval_fingerprint: str | None = None  # names the data split and its val/test tuples (as trials record it)

    def describe(self) -> dict[str, Any]:
        return {"split": self.which, "dataset_fingerprint": self.fingerprint,
                "eval_fingerprint": self.eval_fingerprint, "eval_key": self.key, "pairs": self.n_pairs}


@dataclass(frozen=True)
class Candidate:
    """The study's best eligible trial and its model, scored on the validation pairs (decides) and the test
    pairs (reported only)."""

    trial: int
    run_id: str | None
    model_uri: str
    model_id: str | None
    version: str | None                  # the version already registered from this model, if any
    val: Evaluation                      # re-scored on the rebuilt validation pairs: decides
    test: Evaluation                     # re-scored on the rebuilt test pairs: reported only
    trial_test: dict[str, float | None]  # the test metrics the trial recorded itself
    trial_val: dict[str, float | None] = field(default_factory=dict)  # ... and its last-epoch validation metrics

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "run_id": self.run_id, "model_uri": self.model_uri, "model_id": self.model_id,
                "version": self.version, **_scores(self.val, self.test), "trial_val": self.trial_val,
                "trial_test": self.trial_test}


@dataclass(frozen=True)
class Holder:
    """The version the alias points at now."""

    version: str
    model_uri: str | None
    run_id: str | None
    study: str | None
    trial: str | None
    dataset_fingerprint: str | None
    val: Evaluation | None = None   # None: it is the candidate, or was trained on other data
    test: Evaluation | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"version": self.version, "model_uri": self.model_uri, "run_id": self.run_id, "study": self.study,
               "trial": self.trial}
        return out if self.val is None else {**out, **_scores(self.val, self.test)}


def _scores(val: Evaluation, test: Evaluation | None) -> dict[str, Any]:
    """How a model scored: ``val_metrics`` decided, ``test_metrics`` are the reported estimate."""
    return {"uri": val.uri, "threshold": val.threshold, "val_metrics": val.metrics,
            "test_metrics": None if test is None else test.metrics,
            "embeddings_reproduced": None if test is None else test.embeddings_reproduced}


@dataclass(frozen=True)
class Facts:
    """Everything `decide` needs, gathered from the study and the registry."""

    model_name: str
    alias: str
    study: str
    metric: str                # comparison metric: roc_auc, pair_accuracy or eer (on `decided_on`)
    force: bool
    decided_on: Split          # the candidate's validation pairs: selection and the decision
    reported_on: Split         # its test pairs: reported, never used to choose
    candidate: Candidate
    holder: Holder | None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    hold: dict[str, Any] | None = None  # set by ``--rollback``: {version, from, at}; routine promotions keep the alias
    lift_hold: bool = False             # ``--lift-rollback``: a human releases the hold, then the usual comparison
    study_uid: str | None = None        # the study's identity beyond its name (recorded on the version)
    lead: dict[str, Any] | None = None  # the candidate's lead over the study's runner-up (`sweeps.margin`)

    @property
    def same_model(self) -> bool:
        """The candidate's model already holds the alias."""
        return (self.holder is not None and self.candidate.version is not None
                and self.holder.version == self.candidate.version)

    @property
    def target(self) -> str:
        return f"{self.model_name}@{self.alias}"


@dataclass
class PromotionDecision:
    """What `promote` / `rollback` decided (and did, unless ``dry_run``)."""

    action: str                     # PROMOTE | KEEP | ROLLBACK
    applied: bool                   # False in a dry run
    model_name: str
    alias: str
    reason: str
    study: str | None = None
    metric: str | None = None       # comparison metric (roc_auc, pair_accuracy, eer), on the validation pairs
    higher_is_better: bool = True
    forced: bool = False
    candidate: dict[str, Any] | None = None
    holder: dict[str, Any] | None = None       # the alias holder before
    final_holder: str | None = None            # version holding the alias afterwards
    previous: str | None = None                # what rollback would return to
    hold: dict[str, Any] | None = None         # the rollback hold on the alias (before this decision)
    lifts_hold: bool = False                   # this decision releases it (--force or --lift-rollback)
    decided_on: dict[str, Any] | None = None   # the validation pairs that chose the trial and decided
    reported_on: dict[str, Any] | None = None  # the test pairs, reported only
    skipped: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    lead: dict[str, Any] | None = None  # the candidate's lead over the study's runner-up: is the winner real?

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(facts: Facts) -> PromotionDecision:
    """Promote the candidate if the alias is unset, if it beats the holder on the same validation pairs, or if
    forced. The test metrics are carried along for the report and never consulted.

    A rollback holds: while the alias carries a hold, nothing but ``force`` or ``lift_hold`` (a human) moves it.
    A holder trained on other data cannot be compared: `ConfigError`, unless forced.
    """
    c_val, metric, holder = facts.candidate.val.metrics[facts.metric], facts.metric, facts.holder
    if holder is not None and not _same_data(holder, facts.decided_on) and not facts.force:
        raise ConfigError("--alias", f"{facts.target} (v{holder.version}) was trained on dataset "
                                     f"{(holder.dataset_fingerprint or '')[:12]}…, the candidate on "
                                     f"{facts.decided_on.fingerprint[:12]}…: their validation and test splits "
                                     f"differ, so they cannot be compared. Use another --model-name/--alias, or "
                                     f"--force to replace it anyway")
    h_val = None if holder is None or holder.val is None else holder.val.metrics[metric]
    action, reason = KEEP, ""
    held = facts.hold is not None and not (facts.force or facts.lift_hold)
    if facts.same_model:
        reason = f"v{holder.version} (this candidate) already holds {facts.target}"  # type: ignore[union-attr]
    elif held:
        hold = facts.hold or {}
        reason = (f"{facts.target} is held at v{hold.get('version')} by a rollback from v{hold.get('from')} "
                  f"({hold.get('at')}); a routine promotion does not move it: --lift-rollback releases the hold "
                  f"(then better on validation wins), --force promotes regardless")
    elif holder is None:
        action, reason = PROMOTE, f"{facts.target} is not set yet"
    elif h_val is not None and better(c_val, h_val, metric):
        action = PROMOTE
        reason = f"val {metric} {c_val:.4f} {'<' if lower_is_better(metric) else '>'} {h_val:.4f} of v{holder.version}"
    elif facts.force:
        action = PROMOTE
        reason = (f"forced (val {metric} {c_val:.4f} vs {'n/a' if h_val is None else format(h_val, '.4f')} "
                  f"of v{holder.version})")
    else:
        reason = (f"not better: val {metric} {c_val:.4f} vs {h_val:.4f} of v{holder.version}" if h_val is not None
                  else "holder could not be compared")
    current = None if holder is None else holder.version
    return PromotionDecision(
        action=action, applied=False, model_name=facts.model_name, alias=facts.alias, reason=reason,
        study=facts.study, metric=metric, higher_is_better=not lower_is_better(metric), forced=facts.force,
        candidate=facts.candidate.to_dict(), holder=None if holder is None else holder.to_dict(),
        final_holder=current, previous=current if action == PROMOTE and not facts.same_model else None,
        hold=facts.hold, lifts_hold=facts.hold is not None and (facts.force or facts.lift_hold),
        decided_on=facts.decided_on.describe(), reported_on=facts.reported_on.describe(),
        skipped=list(facts.skipped), lead=facts.lead)


def _same_data(holder: Holder, split: Split) -> bool:
    return holder.dataset_fingerprint is None or holder.dataset_fingerprint == split.fingerprint


def eval_of(tags: dict[str, str], key: str) -> dict[str, float] | None:
    """The metrics a version's tags record on the pairs `key` (None if absent or unreadable)."""
    raw = tags.get(names.TAG_EVAL_PREFIX + key)
    if not raw:
        return None
    try:
        return {k: float(v) for k, v in json.loads(raw).items()}
    except (ValueError, TypeError, AttributeError):
        return None


def best_eligible(versions: list[tuple[str, dict[str, str]]], *, alias: str, key: str, metric: str) -> str | None:
    """The alias's target: among (version, tags) marked eligible with metrics on the pairs `key` (promotion passes
    the validation pairs' key), the best (ties: the older version)."""
    best: tuple[float, int] | None = None
    best_version = None
    eligible = names.per_alias(names.TAG_ELIGIBLE_PREFIX, alias)
    for version, tags in versions:
        if tags.get(eligible) != names.ELIGIBLE_TRUE:
            continue
        ev = eval_of(tags, key)
        if ev is None or metric not in ev:
            continue
        value = ev[metric]
        sign = 1.0 if lower_is_better(metric) else -1.0
        rank = (sign * value if math.isfinite(value) else math.inf, int(version))
        if best is None or rank < best:
            best, best_version = rank, str(version)
    return best_version


@dataclass(frozen=True)
class RollbackFacts:
    """The alias now, and the version it replaced."""

    model_name: str
    alias: str
    study: str | None
    current: str | None        # the version the alias points at
    previous: str | None       # the version it replaced (recorded when the alias moved)
    previous_exists: bool


def decide_rollback(facts: RollbackFacts) -> PromotionDecision:
    """Move the alias back to `previous`; `ConfigError` when there is nothing to go back to."""
    target = f"{facts.model_name}@{facts.alias}"
    if facts.current is None:
        raise ConfigError("--alias", f"{target} is not set; nothing to roll back")
    if not facts.previous:
        raise ConfigError("--alias", f"no previous holder recorded for {target} (v{facts.current}); nothing to "
                                     f"roll back to")
    if not facts.previous_exists:
        raise ConfigError("--alias", f"previous holder v{facts.previous} of {target} no longer exists")
    return PromotionDecision(action=ROLLBACK, applied=False, model_name=facts.model_name, alias=facts.alias,
                             study=facts.study, reason=f"v{facts.previous} held {target} before v{facts.current}",
                             holder={"version": facts.current}, final_holder=facts.current, previous=facts.previous)
