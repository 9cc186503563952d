"""Carry out a `PromotionDecision`: evidence on the registry versions first, then the alias.

``set_registered_model_alias`` is last-writer-wins, so a plain check-then-set can leave the alias on a
worse version when two promoters race. So every promotion writes its evidence first —
``siamese_sweep.eval.<key>`` (metrics on the validation pairs ``key``, which decide; the test metrics are
reported, in the decision and the version's description, never tagged) and ``siamese_sweep.eligible.<alias>`` =
``true`` for a version that won its comparison (the incumbent counts too) — and the alias's target is
*defined* as the best eligible version on the validation key (`decision.best_eligible`). Every promoter converges
on it: compute the target, set the alias if it differs, re-read, repeat. Whoever writes last has just
verified the target against every version tagged before its re-read, and a version tagged later belongs
to a promoter that is still converging, so the final alias is the best version whatever the interleaving.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from .. import names
from ..registry import READY, Registry, same_model
from .decision import PROMOTE, Facts, PromotionDecision, best_eligible

log = logging.getLogger(__name__)

MAX_ROUNDS = 20
MAX_NOTE = 500  # characters of the decision's reason kept on the version


def apply(decision: PromotionDecision, facts: Facts, reg: Registry) -> PromotionDecision:
    """Register (or re-tag) the candidate, mark who is eligible, converge the alias; returns `decision` updated."""
    alias, key = facts.alias, facts.decided_on.key
    eligible = names.per_alias(names.TAG_ELIGIBLE_PREFIX, alias)
    note = names.per_alias(names.TAG_DECISION_PREFIX, alias)
    candidate, holder = facts.candidate, facts.holder
    tags = version_tags(facts)
    if candidate.version is None:
        version = reg.register(candidate.model_uri, candidate.run_id, tags, description=version_description(facts))
    else:
        version = candidate.version
        reg.tag(version, tags)
        reg.describe(version, version_description(facts))
    assert decision.candidate is not None
    decision.candidate["version"] = version
    if holder is not None and holder.val is not None and holder.version != version:
        reg.tag(holder.version, {names.TAG_EVAL_PREFIX + key: holder.val.metrics_json(),
                                 eligible: names.ELIGIBLE_TRUE})
    if decision.lifts_hold:  # a human released the rollback's hold (--lift-rollback or --force)
        reg.set_model_tag(names.per_alias(names.TAG_HOLD_PREFIX, alias), None)
        log.info("%s: rollback hold lifted", facts.target)
    if decision.action == PROMOTE:
        if facts.force:
            for v in reg.versions():
                if str(v.version) != version and v.tags.get(eligible) == names.ELIGIBLE_TRUE:
                    reg.tag(str(v.version), {eligible: f"superseded by forced v{version}"})
        reg.tag(version, {eligible: names.ELIGIBLE_TRUE, note: decision.reason[:MAX_NOTE]})
        final = converge(reg, alias=alias, key=key, metric=facts.metric)
    elif not facts.same_model:
        # a version a rollback left stays marked so (the next routine promote wrote "false" over it)
        was = reg.version(version).tags.get(eligible) if candidate.version is not None else None
        mark = was if was == names.ELIGIBLE_ROLLED_BACK else names.ELIGIBLE_FALSE
        reg.tag(version, {eligible: mark, note: decision.reason[:MAX_NOTE]})
        final = reg.holder(alias)
    else:
        final = decision.final_holder
    decision.applied, decision.final_holder = True, final
    holding = reg.version(final) if final else None
    if final != version and decision.action == PROMOTE:
        if holding is not None and same_model(holding, reg.version(version)):
            # e.g. two versions an older release registered from one model: equal scores, the older one wins
            decision.reason += f"; v{final}, registered from the same model, holds the alias"
        elif reg.hold(alias) is not None:  # a rollback landed while this promotion converged
            decision.reason += f"; a rollback holds the alias at v{final}"
        else:
            decision.reason += f"; a better version (v{final}) holds the alias after concurrent promotions"
    previous_tag = names.per_alias(names.TAG_PREVIOUS_PREFIX, alias)
    decision.previous = holding.tags.get(previous_tag) if holding is not None else None
    return decision


def version_tags(facts: Facts) -> dict[str, str]:
    """The few tags a registered version carries: what `promote` reads back to find and decide (study, trial,
    the data fingerprints, the metrics on the validation pairs ``siamese_sweep.eval.<key>`` that rank eligible
    versions) and the threshold a user needs at a glance.

    Nothing MLflow already shows: the run and the logged model are the version's ``run_id``, ``model_id`` and
    ``source``; the test metrics are on that logged model and in the description (`version_description`)."""
    c, val = facts.candidate, facts.decided_on
    tags = {names.TAG_STUDY: facts.study, names.TAG_TRIAL_NUMBER: str(c.trial),
            names.TAG_THRESHOLD: repr(float(c.val.threshold)), names.TAG_DATASET_FINGERPRINT: val.fingerprint,
            names.TAG_EVAL_PREFIX + val.key: c.val.metrics_json()}
    if facts.study_uid:
        tags[names.TAG_STUDY_UID] = facts.study_uid
    if val.eval_fingerprint:
        tags[names.TAG_EVAL_FINGERPRINT] = val.eval_fingerprint
    return tags


def version_description(facts: Facts) -> str:
    """One line a person reads in the registry: where the version came from and how it scored."""
    c, split = facts.candidate, facts.reported_on
    m = c.test.metrics
    scores = ", ".join(f"{label} {float(m[k]):.4f}" for k, label in
                       (("roc_auc", "AUC"), ("pair_accuracy", "accuracy"), ("eer", "EER")) if k in m)
    val = c.val.metrics.get(facts.metric)
    chosen = f"; chosen by validation {facts.metric} {float(val):.4f}" if val is not None else ""
    return (f"study {facts.study}, trial {c.trial}: test {scores} at threshold {float(c.test.threshold):.4g} "
            f"({split.n_pairs} test pairs, dataset {split.fingerprint[:12]}){chosen}")


def converge(reg: Registry, *, alias: str, key: str, metric: str) -> str | None:
    """Set the alias to the best eligible version until a re-read confirms it (see the module docstring); never
    while a rollback holds the alias."""
    written = None  # the version this promoter last pointed the alias at
    for _ in range(MAX_ROUNDS):
        if (hold := reg.hold(alias)) is not None:  # a rollback since this promoter decided
            return _keep_hold(reg, alias, hold, written)
        ready = [(str(v.version), dict(v.tags)) for v in reg.versions() if str(v.status or READY) == READY]
        target = best_eligible(ready, alias=alias, key=key, metric=metric)  # an alias only points at READY versions
        holder = reg.holder(alias)
        if target is None or target == holder:
            return holder
        _test_pause(f"{reg.name}@{alias} -> v{target}")
        reg.move_alias(alias, target, holder)
        written = target
        log.info("%s@%s -> v%s (was %s)", reg.name, alias, target, f"v{holder}" if holder else "unset")
    return reg.holder(alias)


def _keep_hold(reg: Registry, alias: str, hold: dict[str, Any], written: str | None) -> str | None:
    """The alias where the rollback put it: a rollback that landed between this promoter's check and its write
    had its alias move undone by that write (its hold is recorded before it moves the alias). Only this
    promoter's own write is undone: an alias someone moved since (another rollback, a human's --lift-rollback)
    stays theirs."""
    held, holder = hold.get("version"), reg.holder(alias)
    if held is None or str(held) == holder or written is None or holder != written:
        return holder
    if str(held) not in {str(v.version) for v in reg.versions()}:  # deleted since: nothing to point at
        return holder
    if reg.hold(alias) != hold:  # changed meanwhile (a second rollback, a lift): theirs to say
        return reg.holder(alias)
    reg.set_alias(alias, str(held))
    log.warning("%s@%s -> v%s: a rollback holds the alias there (this promotion's write came after it)",
                reg.name, alias, held)
    return reg.holder(alias)


def _test_pause(what: str) -> None:
    """Test hook: ``$SIAMESE_SWEEP_PROMOTE_PAUSE`` = seconds, or a file to wait for, before an alias write.

    Lets a test force the worst interleaving (a stale write after another promoter has finished)."""
    value = os.environ.get(names.ENV_PROMOTE_PAUSE)
    if not value:
        return
    print(f"promote: paused before setting {what} (test hook)", file=sys.stderr, flush=True)
    try:
        time.sleep(float(value))
    except ValueError:
        deadline = time.monotonic() + 300
        while not os.path.exists(value) and time.monotonic() < deadline:
            time.sleep(0.2)
