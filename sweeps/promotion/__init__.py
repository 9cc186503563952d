"""Promote a study's best model to a registry alias, or roll the alias back.

``promote`` = `gather` -> `decide` -> `apply`:

* `gather` (Optuna + MLflow, read only): the best COMPLETE trial (study objective, or the validation
  ``metric`` the trials recorded) that logged a model and has no error-severity diagnostics; its
  validation and test pairs rebuilt (dataset fingerprint checked); the candidate and the current alias
  holder re-evaluated on both.
* `decide` (pure): promote if the alias is unset, if the candidate is strictly better **on the
  validation pairs**, or ``force``. The test metrics are reported, never used to choose: a model chosen
  by its test score would carry that score biased upward.
* `apply` (registry writes, skipped in a dry run): register the candidate's LoggedModel as a new version
  (its source is the trial's own ``models:/<model_id>``: no copy), write the evidence, converge the alias
  (see `sweeps.promotion.apply` for why concurrent promoters end on the best version).

Moving the alias records ``siamese_sweep.previous.<alias>`` on the new holder (and on the registered
model); ``rollback`` moves the alias back to it and *holds* it there (``siamese_sweep.hold.<alias>`` on the
registered model): routine promotions keep the alias until a human lifts the hold (``lift_hold``,
``--lift-rollback``) or forces a promotion.
"""
from __future__ import annotations

import logging

from siamese_core.errors import ConfigError

from .. import names, scratch
from ..errors import python_arguments
from ..mlflow_globals import mlflow_internals_use
from ..reevaluation import selection_metric
from ..registry import DEFAULT_ALIAS, Registry, validate_alias, validate_model_name
from ..study import load_study
from ..tracking import require_mlflow_store
from .apply import apply, converge
from .decision import Candidate, Facts, Holder, PromotionDecision, RollbackFacts, Split, decide, decide_rollback
from .gather import gather, model_name_for, pick_candidate, rank_trials
from .rollback import apply_rollback, gather_rollback

__all__ = ["promote", "rollback", "gather", "decide", "apply", "converge", "decide_rollback", "PromotionDecision",
           "Facts", "Candidate", "Holder", "Split", "RollbackFacts", "pick_candidate", "rank_trials",
           "validate_alias"]

log = logging.getLogger(__name__)


@python_arguments
def promote(study_name: str, *, storage: str, tracking_uri: str, model_name: str | None = None,
            alias: str = DEFAULT_ALIAS, metric: str | None = None, dry_run: bool = False,
            force: bool = False, lift_hold: bool = False, storage_given_as: str = "--storage") -> PromotionDecision:
    """Promote the study's best model to ``models:/<model_name>@<alias>`` if it beats the holder on validation.

    `lift_hold`: release a rollback's hold on the alias, then decide as usual. `storage_given_as`: where
    `storage` came from (``$OPTUNA_STORAGE``, a spec's ``study.storage``), named by a refusal.
    `metric`: the selection metric (``val_roc_auc``, ``roc_auc``, ...; a ``test_*`` name is mapped to its
    validation counterpart with a logged notice, see `sweeps.reevaluation.selection_metric`).
    """
    validate_alias(alias)
    if model_name is not None:
        validate_model_name(model_name)
    require_mlflow_store(tracking_uri)
    metric, notice = selection_metric(metric)
    if notice:
        log.warning("%s", notice)
    with mlflow_internals_use(tracking_uri), scratch.temporary_directory("siamese-promote-") as tmp:
        facts, reg = gather(study_name, storage=storage, tracking_uri=tracking_uri, model_name=model_name,
                            alias=alias, metric=metric, force=force, workdir=tmp,
                            lift_hold=lift_hold, storage_given_as=storage_given_as)
        decision = decide(facts)
        decision.dry_run = dry_run
        return decision if dry_run else apply(decision, facts, reg)


@python_arguments
def rollback(*, tracking_uri: str, model_name: str | None = None, study_name: str | None = None,
             storage: str | None = None, alias: str = DEFAULT_ALIAS, dry_run: bool = False,
             storage_given_as: str = "--storage") -> PromotionDecision:
    """Move the alias back to the version that held it before the current holder."""
    validate_alias(alias)
    if model_name is not None:
        validate_model_name(model_name)
    require_mlflow_store(tracking_uri)
    with mlflow_internals_use(tracking_uri):
        if model_name is None:
            if not study_name:
                raise ConfigError("--model-name", "rollback needs --model-name (or --study to derive it)")
            model_name = (model_name_for(load_study(study_name, storage, field=storage_given_as), study_name)
                          if storage
                          else names.default_registered_model(study_name))
        reg = Registry(tracking_uri, model_name)
        decision = decide_rollback(gather_rollback(reg, alias, study=study_name))
        decision.dry_run = dry_run
        return decision if dry_run else apply_rollback(decision, reg)
