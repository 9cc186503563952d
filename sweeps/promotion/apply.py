"""Carry out a `PromotionDecision`: evidence on the registry versions first, then the alias.

``set_registered_model_alias`` is last-writer-wins, so a plain check-then-set can leave the alias on a
worse version when two promoters race. So every promotion writes its evidence first —
``siamese_sweep.eval.<key>`` (metrics on the split ``key``) and ``siamese_sweep.eligible.<alias>`` =
``true`` for a version that won its comparison (the incumbent counts too) — and the alias's target is
*defined* as the best eligible version on that key (`decision.best_eligible`). Every promoter converges
on it: compute the target, set the alias if it differs, re-read, repeat. Whoever writes last has just
verified the target against every version tagged before its re-read, and a version tagged later belongs
to a promoter that is still converging, so the final alias is the best version whatever the interleaving.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from .. import names
from ..registry import Registry, now
from .decision import PROMOTE, Facts, PromotionDecision, best_eligible

log = logging.getLogger(__name__)

MAX_ROUNDS = 20
MAX_NOTE = 500  # characters of the decision's reason kept on the version


def apply(decision: PromotionDecision, facts: Facts, reg: Registry) -> PromotionDecision:
    """Register (or re-tag) the candidate, mark who is eligible, converge the alias; returns `decision` updated."""
    alias, key = facts.alias, facts.split.key
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
    if holder is not None and holder.evaluation is not None and holder.version != version:
        reg.tag(holder.version, {names.TAG_EVAL_PREFIX + key: holder.evaluation.metrics_json(),
                                 eligible: names.ELIGIBLE_TRUE})
    if decision.action == PROMOTE:
        if facts.force:
            for v in reg.versions():
                if str(v.version) != version and v.tags.get(eligible) == names.ELIGIBLE_TRUE:
                    reg.tag(str(v.version), {eligible: f"superseded by forced v{version}"})
        reg.tag(version, {eligible: names.ELIGIBLE_TRUE, note: decision.reason[:MAX_NOTE]})
        final = converge(reg, alias=alias, key=key, metric=facts.metric)
    elif not facts.same_model:
        reg.tag(version, {eligible: names.ELIGIBLE_FALSE, note: decision.reason[:MAX_NOTE]})
        final = reg.holder(alias)
    else:
        final = decision.final_holder
    decision.applied, decision.final_holder = True, final
    if final != version and decision.action == PROMOTE:
        decision.reason += f"; a better version (v{final}) holds the alias after concurrent promotions"
    previous_tag = names.per_alias(names.TAG_PREVIOUS_PREFIX, alias)
    decision.previous = reg.version(final).tags.get(previous_tag) if final else None
    return decision


def version_tags(facts: Facts) -> dict[str, str]:
    """What a registered version records about where it came from and how it scored."""
    c, split = facts.candidate, facts.split
    ev = c.evaluation
    tags = {names.TAG_STUDY: facts.study, names.TAG_TRIAL_NUMBER: str(c.trial), names.TAG_RUN_ID: str(c.run_id),
            names.TAG_MODEL_ID: str(c.model_id), names.TAG_DATASET_FINGERPRINT: split.fingerprint,
            names.TAG_EVAL_KEY: split.key, names.TAG_TEST_PAIRS: str(split.n_pairs),
            names.TAG_THRESHOLD: repr(float(ev.threshold)), names.TAG_EVALUATED_AT: now(),
            names.TAG_EVAL_PREFIX + split.key: ev.metrics_json()}
    tags.update({names.TAG_TEST_METRIC_PREFIX + k: repr(round(float(v), 6)) for k, v in ev.metrics.items()})
    if ev.embeddings_reproduced is not None:
        tags[names.TAG_EMBEDDINGS_REPRODUCED] = str(ev.embeddings_reproduced).lower()
    return tags


def version_description(facts: Facts) -> str:
    """One line a person reads in the registry: where the version came from and how it scored."""
    c, split = facts.candidate, facts.split
    m = c.evaluation.metrics
    scores = ", ".join(f"{label} {float(m[k]):.4f}" for k, label in
                       (("roc_auc", "AUC"), ("pair_accuracy", "accuracy"), ("eer", "EER")) if k in m)
    return (f"study {facts.study}, trial {c.trial}: test {scores} at threshold {float(c.evaluation.threshold):.4g} "
            f"({split.n_pairs} test pairs, dataset {split.fingerprint[:12]})")


def converge(reg: Registry, *, alias: str, key: str, metric: str) -> str | None:
    """Set the alias to the best eligible version until a re-read confirms it (see the module docstring)."""
    for _ in range(MAX_ROUNDS):
        target = best_eligible([(str(v.version), dict(v.tags)) for v in reg.versions()], alias=alias, key=key,
                               metric=metric)
        holder = reg.holder(alias)
        if target is None or target == holder:
            return holder
        _test_pause(f"{reg.name}@{alias} -> v{target}")
        reg.move_alias(alias, target, holder)
        log.info("%s@%s -> v%s (was %s)", reg.name, alias, target, f"v{holder}" if holder else "unset")
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
