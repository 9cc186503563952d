"""Gather what `decide` needs from the study and the registry: the candidate, the alias holder, both scored.

The candidate is the best COMPLETE trial (by the objective, or by a recorded *validation* metric) that
logged a model and has no error-severity diagnostics. Both models are re-evaluated on the candidate's
validation pairs (which decide) and test pairs (reported only), rebuilt from its config (the dataset
fingerprint must match the one recorded in training). Nothing here ranks or chooses by a test metric.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import optuna

from siamese_core.errors import ConfigError

from .. import names
from ..best import measured, split_complete
from ..directions import sort_key
from ..margin import best_margin
from ..reevaluation import (
    METRICS,
    REPORT_SPLIT,
    SELECTION_SPLIT,
    EvalPairs,
    build_eval_pairs,
    evaluate,
    has_counterpart,
    load_wrapper,
    objective_counterpart,
    trial_config,
)
from ..registry import Registry, model_id_from_uri, version_uri
from ..study import load_study, refuse_unfinished_move
from .decision import Candidate, Facts, Holder, Split

log = logging.getLogger(__name__)
Recorded = Callable[[optuna.trial.FrozenTrial], "dict[str, float]"]


def study_metric(study: optuna.Study) -> str | None:
    """The study's (first) objective metric, as the sweep recorded it."""
    metrics = study.user_attrs.get(names.STUDY_ATTR_METRICS)
    return metrics[0] if metrics else None


def model_name_for(study: optuna.Study, study_name: str) -> str:
    """The spec's ``tracking.registered_model``, else ``siamese-<study>``."""
    return study.user_attrs.get(names.STUDY_ATTR_REGISTERED_MODEL) or names.default_registered_model(study_name)


def by_objective(study: optuna.Study) -> bool:
    """Whether `promote` ranks trials by the study's objective value: one objective, one it re-evaluates (a study
    that did not record its metric: its objective, as before metrics were recorded)."""
    first = study_metric(study)
    return len(study.directions) == 1 and (first is None or has_counterpart(first))


def rank_trials(study: optuna.Study, metric: str | None, *,
                recorded: Recorded | None = None) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials best first: by the objective (single-objective, no `metric`, an objective `promote`
    re-evaluates), else by the validation metric ``val_<metric>`` the trial recorded — never by a test metric.
    An objective it does not re-evaluate (``val_loss``, ``params``) ranks by ``val_roc_auc``: the trial is then
    chosen by the metric the alias is decided on, which the registry's description names.

    `recorded(trial)` supplies the validation metrics of a trial that has no ``val_<metric>`` attribute (studies
    swept before it was recorded: the last ``val_<metric>`` of its MLflow run).
    """
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if metric is None and by_objective(study):
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        return sorted(complete, key=lambda t: (sign * t.value if t.value is not None and math.isfinite(t.value)
                                               else math.inf, t.number))
    m = metric or objective_counterpart(study_metric(study))
    attr = names.TRIAL_ATTR_VAL_PREFIX + m

    def value(t: optuna.trial.FrozenTrial) -> float | None:
        v = t.user_attrs.get(attr)
        if v is None and recorded is not None:
            v = recorded(t).get(m)
        return v
    return sorted(complete, key=lambda t: (sort_key(value(t), m), t.number))


def _recorded_val(client: Any) -> Recorded:
    """The last validation metrics a trial's MLflow run logged (for trials without ``val_*`` attributes)."""
    def read(t: optuna.trial.FrozenTrial) -> dict[str, float]:
        run_id = t.user_attrs.get(names.TRIAL_ATTR_RUN_ID)
        if not run_id:
            return {}
        try:
            logged = client.get_run(run_id).data.metrics
        except Exception as exc:  # noqa: BLE001 - a deleted run: the trial ranks last
            log.info("trial #%d: cannot read run %s (%s)", t.number, run_id, type(exc).__name__)
            return {}
        return {k: float(logged[f"val_{k}"]) for k in METRICS if f"val_{k}" in logged}
    return read


def pick_candidate(study: optuna.Study, metric: str | None, *, recorded: Recorded | None = None
                   ) -> tuple[optuna.trial.FrozenTrial, list[dict[str, Any]]]:
    """The best trial `promote` may use, and the better ones it skipped (with why)."""
    skipped = []
    for t in rank_trials(study, metric, recorded=recorded):
        if not measured(t):
            skipped.append({"trial": t.number, "reason": "no results recorded by a siamese-sweep worker (told "
                                                         "COMPLETE through Optuna's own API?)"})
            continue
        if not t.user_attrs.get(names.TRIAL_ATTR_RUN_ID):  # read below: a deleted attribute was a KeyError (exit 1)
            skipped.append({"trial": t.number, "reason": "no MLflow run (a run `move` could not copy, or an "
                                                         "attribute deleted)"})
            continue
        if not t.user_attrs.get(names.TRIAL_ATTR_MODEL_URI):
            skipped.append({"trial": t.number, "reason": "no logged model (tracking.log_models: false?)"})
            continue
        errors = list(t.user_attrs.get(names.TRIAL_ATTR_DIAGNOSTIC_ERRORS) or [])
        if errors:
            skipped.append({"trial": t.number, "reason": f"error-severity diagnostics: {', '.join(errors)}"})
            continue
        return t, skipped
    raise ConfigError("--study", f"study {study.study_name!r} has no COMPLETE trial with a logged model and no "
                                 f"error-severity diagnostics (skipped: {skipped or 'none'})")


def gather(study_name: str, *, storage: str, tracking_uri: str, model_name: str | None, alias: str,
           metric: str | None, force: bool, workdir: str, lift_hold: bool = False,
           storage_given_as: str = "--storage") -> tuple[Facts, Registry]:
    """`Facts` for `decide`, and the registry `apply` writes to. Models are downloaded under `workdir`."""
    study = load_study(study_name, storage, field=storage_given_as)  # a refusal names where it came from
    refuse_unfinished_move(study)
    first = study_metric(study)
    if metric is None and not by_objective(study) and not has_counterpart(first):
        # the (first) objective (val_loss, params, latency_ms) has no re-evaluated counterpart: said, not decided in
        # silence (a val_loss study's best by loss was promoted, described as "chosen by validation roc_auc")
        log.warning("the study's %sobjective, %s, is not a metric promote re-evaluates: it picks the trial and "
                    "decides by val %s (choose with --metric)", "first " if len(study.directions) > 1 else "",
                    first, objective_counterpart(first))
    reg = Registry(tracking_uri, model_name or model_name_for(study, study_name))
    trial, skipped = pick_candidate(study, metric, recorded=_recorded_val(reg.client))
    run_id: str = trial.user_attrs[names.TRIAL_ATTR_RUN_ID]  # a measured trial has its run (`pick_candidate`)
    model_uri = trial.user_attrs[names.TRIAL_ATTR_MODEL_URI]
    model_id = model_id_from_uri(model_uri)
    pairs = build_eval_pairs(trial_config(reg.client, run_id), what=f"trial #{trial.number}",
                             expected_fingerprint=trial.user_attrs.get(names.TRIAL_ATTR_DATASET_FINGERPRINT))
    val, test = pairs[SELECTION_SPLIT], pairs[REPORT_SPLIT]
    current = reg.holder(alias)
    found = reg.registered_from(model_id) if model_id else []
    # of several versions registered from this model (concurrent promotes of an older release), the one that holds
    # the alias: taking another ranked the model against itself, and tagged that version ineligible
    existing = next((v for v in found if str(v.version) == current), found[0] if found else None)
    wrapper = load_wrapper(model_uri, tracking_uri=tracking_uri, dst=f"{workdir}/candidate")
    candidate = Candidate(
        trial=trial.number, run_id=run_id, model_uri=model_uri, model_id=model_id,
        version=None if existing is None else str(existing.version),
        val=evaluate(wrapper, val, uri=model_uri), test=evaluate(wrapper, test, uri=model_uri),
        trial_test={k: trial.user_attrs.get(names.TRIAL_ATTR_TEST_PREFIX + k) for k in METRICS},
        trial_val={k: trial.user_attrs.get(names.TRIAL_ATTR_VAL_PREFIX + k) for k in METRICS})
    holder = None
    if current is not None:
        hv = reg.version(current)
        fingerprint = hv.tags.get(names.TAG_DATASET_FINGERPRINT)
        h_val = h_test = None
        if current != candidate.version and fingerprint in (None, val.fingerprint):  # else nothing to compare
            uri = version_uri(reg.name, current)
            h_wrapper = load_wrapper(uri, tracking_uri=tracking_uri, dst=f"{workdir}/holder")
            h_val, h_test = evaluate(h_wrapper, val, uri=uri), evaluate(h_wrapper, test, uri=uri)
        holder = Holder(version=current, model_uri=hv.source, run_id=hv.run_id, study=hv.tags.get(names.TAG_STUDY),
                        trial=hv.tags.get(names.TAG_TRIAL_NUMBER), dataset_fingerprint=fingerprint,
                        val=h_val, test=h_test)
    facts = Facts(model_name=reg.name, alias=alias, study=study_name, force=force, decided_on=_split(val),
                  reported_on=_split(test), metric=metric or objective_counterpart(study_metric(study)),
                  candidate=candidate, holder=holder, skipped=skipped, hold=reg.hold(alias), lift_hold=lift_hold,
                  study_uid=study.user_attrs.get(names.STUDY_ATTR_UID), lead=_lead(study, trial, metric))
    return facts, reg


def _lead(study: optuna.Study, candidate: optuna.trial.FrozenTrial, metric: str | None) -> dict[str, Any] | None:
    """The study's margin (`sweeps.margin`) when the candidate is the trial it is about: the study's best by
    its objective, ranked by that objective (None for a candidate that is not, or a study without a margin)."""
    if not by_objective(study) or (metric is not None and metric != objective_counterpart(study_metric(study))):
        return None
    lead = best_margin(study, split_complete(study)[0])  # as `status` measures it: among the measured trials
    return lead.to_dict() if lead is not None and lead.best == candidate.number else None


def _split(pairs: EvalPairs) -> Split:
    return Split(pairs.fingerprint, pairs.key, pairs.n_pairs, pairs.which, pairs.eval_fingerprint)
