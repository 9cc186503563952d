"""``promote --rollback``: the alias goes back to the version it replaced.

The version it leaves is marked ``siamese_sweep.eligible.<alias> = rolled_back``, so a later convergence
does not bring it back, and the alias is *held* (``siamese_sweep.hold.<alias>`` on the registered model):
routine promotions keep it where the operator put it until a human lifts the hold (``promote
--lift-rollback``) or forces a promotion (``--force``). Both are recorded before the alias moves.
"""
from __future__ import annotations

import json

from .. import names
from ..registry import Registry, now
from .decision import PromotionDecision, RollbackFacts


def gather_rollback(reg: Registry, alias: str, *, study: str | None) -> RollbackFacts:
    current = reg.holder(alias)
    previous = None if current is None else reg.version(current).tags.get(
        names.per_alias(names.TAG_PREVIOUS_PREFIX, alias))
    exists = False
    if previous:
        try:
            reg.version(previous)
            exists = True
        except Exception:  # noqa: BLE001 - a deleted version (MLflow raises RESOURCE_DOES_NOT_EXIST)
            exists = False
    return RollbackFacts(reg.name, alias, study, current, previous, exists)


def apply_rollback(decision: PromotionDecision, reg: Registry) -> PromotionDecision:
    alias = decision.alias
    current, previous = decision.final_holder, decision.previous
    assert current is not None and previous is not None
    previous_tag = names.per_alias(names.TAG_PREVIOUS_PREFIX, alias)
    eligible = names.per_alias(names.TAG_ELIGIBLE_PREFIX, alias)
    stamp = now()
    reg.tag(current, {eligible: names.ELIGIBLE_ROLLED_BACK,
                      names.per_alias(names.TAG_ROLLED_BACK_AT_PREFIX, alias): stamp})
    reg.tag(previous, {eligible: names.ELIGIBLE_TRUE})
    reg.set_model_tag(names.per_alias(names.TAG_HOLD_PREFIX, alias),
                      json.dumps({"version": previous, "from": current, "at": stamp}))
    reg.set_alias(alias, previous)
    reg.set_model_tag(names.per_alias(names.TAG_LAST_ROLLBACK_PREFIX, alias),
                      json.dumps({"from": current, "to": previous, "at": stamp}))
    decision.applied, decision.final_holder = True, reg.holder(alias)
    decision.previous = reg.version(previous).tags.get(previous_tag)
    reg.set_model_tag(previous_tag, decision.previous or None)
    return decision
