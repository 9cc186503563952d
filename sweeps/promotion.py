"""Promote a study's best model to a registry alias, or roll the alias back.

``promote``: pick the best COMPLETE trial (study objective, or ``metric``) without error-severity
diagnostics; rebuild its test split (dataset fingerprint checked); re-evaluate the candidate and the
current alias holder on that one split; register the candidate's LoggedModel as a new version (the
version's source is the trial's own ``models:/<model_id>``: no copy) and move the alias only if the
candidate is strictly better, or ``force``.

Concurrency. ``set_registered_model_alias`` is last-writer-wins, so a plain check-then-set can leave
the alias on a worse version. Every promotion writes its evidence on the versions first:
``siamese.eval.<key>`` (JSON metrics on the split identified by ``key``) and
``siamese.eligible.<alias>`` = ``true`` for a version that won its comparison (the incumbent
counts too). The alias's target is then *defined* as the best eligible version on that key (ties:
the older version), and every promoter converges on it: compute the target, set the alias if it
differs, re-read, repeat. Whoever writes last has just verified the target against every version
tagged before its re-read, and a version tagged later belongs to a promoter that is still converging,
so the final alias is the best version whatever the interleaving.

Rollback: moving the alias records ``siamese.previous.<alias>`` on the new holder (and on the
registered model); ``rollback`` moves the alias back to it, marks the version it leaves
``eligible = rolled_back`` (so later convergence does not bring it back) and records the rollback.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from siamese_core.errors import ConfigError

from . import reevaluation as rev
from .modelio import model_id_from_uri

log = logging.getLogger(__name__)

TAG = "siamese."
ELIGIBLE, PREVIOUS, EVAL = "siamese.eligible.", "siamese.previous.", "siamese.eval."
TRUE = "true"
_ALIAS_OK = re.compile(r"^[A-Za-z0-9_-]+$")
_PAUSE_ENV = "SIAMESE_SWEEP_PROMOTE_PAUSE"  # test hook: seconds to wait between computing and setting the alias
MAX_ROUNDS = 20


def validate_alias(alias: str) -> str:
    """MLflow's alias rules, checked before the registry is touched (`ConfigError` naming --alias)."""
    if not isinstance(alias, str) or not alias:
        raise ConfigError("--alias", "expected a non-empty alias name such as 'champion'")
    if alias.lower() == "latest":
        raise ConfigError("--alias", f"'{alias}' is reserved by MLflow (models:/NAME@latest); choose another name")
    if re.fullmatch(r"[vV]\d+", alias):
        raise ConfigError("--alias", f"'{alias}' is reserved by MLflow (v<number> refers to a version); "
                                     "choose another name")
    if not _ALIAS_OK.match(alias):
        raise ConfigError("--alias", f"expected letters, digits, '_' and '-' only; received: {alias!r}")
    if len(alias) > 255:
        raise ConfigError("--alias", f"expected at most 255 characters; received {len(alias)}")
    return alias


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class PromotionDecision:
    """What `promote` / `rollback` decided (and did, unless ``dry_run``)."""

    action: str                     # "promote" | "keep" | "rollback"
    applied: bool                   # False in a dry run
    model_name: str
    alias: str
    reason: str
    study: str | None = None
    metric: str | None = None       # comparison metric (roc_auc, pair_accuracy, eer)
    higher_is_better: bool = True
    forced: bool = False
    candidate: dict[str, Any] | None = None
    holder: dict[str, Any] | None = None       # the alias holder before
    final_holder: str | None = None            # version holding the alias afterwards
    previous: str | None = None                # what rollback would return to
    split: dict[str, Any] | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------ trials
def _load_study(study_name: str, storage: str) -> Any:
    import optuna

    from .storage import make_storage

    try:
        return optuna.load_study(study_name=study_name, storage=make_storage(storage))
    except KeyError:
        raise ConfigError("--study", f"no study named {study_name!r} in this storage") from None


def _study_metric(study: Any, client: Any = None) -> str | None:
    """The study's (first) objective metric: a study attribute, else the parent run's tag (older sweeps)."""
    from .study import ATTR_METRICS, ATTR_PARENT

    metrics = study.user_attrs.get(ATTR_METRICS)
    if metrics:
        return metrics[0]
    parent = study.user_attrs.get(ATTR_PARENT)
    if client is not None and parent:
        try:
            tag = client.get_run(parent).data.tags.get("optuna.metrics")
        except Exception:  # noqa: BLE001 - fall back to roc_auc
            return None
        return tag.split(",")[0] if tag else None
    return None


def _error_codes(trial: Any, client: Any) -> list[str]:
    from .objective import USER_ATTR_DIAGNOSTIC_ERRORS, USER_ATTR_RUN

    codes = trial.user_attrs.get(USER_ATTR_DIAGNOSTIC_ERRORS)
    if codes is not None:
        return list(codes)
    run_id = trial.user_attrs.get(USER_ATTR_RUN)  # sweeps from before the attr: read the run's tags
    if not run_id:
        return []
    tags = client.get_run(run_id).data.tags
    return sorted(k[len("diagnostics."):] for k, v in tags.items() if k.startswith("diagnostics.") and v == "error")


def rank_trials(study: Any, metric: str | None, client: Any = None) -> list[Any]:
    """COMPLETE trials best first: by the objective (single-objective, no `metric`), else by test_<metric>."""
    import math

    import optuna

    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if metric is None and len(study.directions) == 1:
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        return sorted(complete, key=lambda t: (sign * t.value if t.value is not None and math.isfinite(t.value)
                                               else math.inf, t.number))
    m = metric or rev.objective_counterpart(_study_metric(study, client))
    sign = 1.0 if m in rev.LOWER_IS_BETTER else -1.0

    def key(t: Any) -> tuple[float, int]:
        v = t.user_attrs.get(f"test_{m}")
        return (sign * float(v) if v is not None and math.isfinite(float(v)) else math.inf, t.number)
    return sorted(complete, key=key)


def pick_candidate(study: Any, metric: str | None, client: Any) -> tuple[Any, list[dict[str, Any]]]:
    from .objective import USER_ATTR_MODEL

    skipped = []
    for t in rank_trials(study, metric, client):
        if not t.user_attrs.get(USER_ATTR_MODEL):
            skipped.append({"trial": t.number, "reason": "no logged model (tracking.log_models: false?)"})
            continue
        errors = _error_codes(t, client)
        if errors:
            skipped.append({"trial": t.number, "reason": f"error-severity diagnostics: {', '.join(errors)}"})
            continue
        return t, skipped
    raise ConfigError("--study", f"study {study.study_name!r} has no COMPLETE trial with a logged model and no "
                                 f"error-severity diagnostics (skipped: {skipped or 'none'})")


# ------------------------------------------------------------------ registry helpers
class Registry:
    """The few registry operations promotion needs, on one client and one registered model."""

    def __init__(self, tracking_uri: str, name: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.name = name
        self.uri = tracking_uri

    def exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
            return True
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def ensure(self) -> None:
        from mlflow.exceptions import MlflowException

        if self.exists():
            return
        try:
            self.client.create_registered_model(self.name, description="Siamese models promoted by siamese-sweep")
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise

    def holder(self, alias: str) -> str | None:
        if not self.exists():
            return None
        return _str(self.client.get_registered_model(self.name).aliases.get(alias))

    def versions(self) -> list[Any]:
        return list(self.client.search_model_versions(f"name='{self.name}'"))

    def version(self, version: str) -> Any:
        return self.client.get_model_version(self.name, version)

    def find_version(self, model_id: str, run_id: str | None) -> Any | None:
        source = f"models:/{model_id}"
        for v in self.versions():
            if v.source == source or v.tags.get(f"{TAG}model_id") == model_id:
                return v
        return None

    def register(self, model_uri: str, run_id: str | None, tags: dict[str, str]) -> Any:
        self.ensure()
        model_id = model_id_from_uri(model_uri)
        with rev.global_tracking_uri(self.uri):  # MLflow's SQL registry store resolves models:/ with a default client
            return self.client.create_model_version(self.name, source=model_uri, run_id=run_id, tags=tags,
                                                    model_id=model_id)

    def tag(self, version: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(self.name, version, k, str(v))

    def set_alias(self, alias: str, version: str, previous: str | None) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)
        stamp = {f"{TAG}promoted_at.{alias}": _now()}
        if previous and previous != version:
            stamp[PREVIOUS + alias] = previous
            self.client.set_registered_model_tag(self.name, PREVIOUS + alias, previous)
        self.tag(version, stamp)


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _eval_of(version: Any, key: str) -> dict[str, float] | None:
    raw = version.tags.get(EVAL + key)
    if not raw:
        return None
    try:
        return {k: float(v) for k, v in json.loads(raw).items()}
    except (ValueError, TypeError, AttributeError):
        return None


def best_eligible(reg: Registry, alias: str, key: str, metric: str) -> str | None:
    """The alias's target: the best version marked eligible with metrics on split `key` (ties: older)."""
    best: tuple[float, int] | None = None
    best_version = None
    sign = 1.0 if metric in rev.LOWER_IS_BETTER else -1.0
    for v in reg.versions():
        if v.tags.get(ELIGIBLE + alias) != TRUE:
            continue
        ev = _eval_of(v, key)
        if ev is None or metric not in ev:
            continue
        value = ev[metric]
        rank = (sign * value if math.isfinite(value) else float("inf"), int(v.version))
        if best is None or rank < best:
            best, best_version = rank, str(v.version)
    return best_version


def converge(reg: Registry, alias: str, key: str, metric: str) -> str | None:
    """Set the alias to `best_eligible` until a re-read confirms it (see the module docstring)."""
    for _ in range(MAX_ROUNDS):
        target = best_eligible(reg, alias, key, metric)
        holder = reg.holder(alias)
        if target is None or target == holder:
            return holder
        _test_pause(f"{reg.name}@{alias} -> v{target}")
        reg.set_alias(alias, target, holder)
        log.info("%s@%s -> v%s (was %s)", reg.name, alias, target, f"v{holder}" if holder else "unset")
    return reg.holder(alias)


def _test_pause(what: str) -> None:
    """Test hook: ``$SIAMESE_SWEEP_PROMOTE_PAUSE`` = seconds, or a file to wait for, before an alias write.

    Lets a test force the worst interleaving (a stale write after another promoter has finished)."""
    value = os.environ.get(_PAUSE_ENV)
    if not value:
        return
    print(f"promote: paused before setting {what} (test hook)", file=sys.stderr, flush=True)
    try:
        time.sleep(float(value))
    except ValueError:
        deadline = time.monotonic() + 300
        while not os.path.exists(value) and time.monotonic() < deadline:
            time.sleep(0.2)


# ------------------------------------------------------------------ promote
def default_model_name(study: Any, study_name: str) -> str:
    from .study import ATTR_REGISTERED_MODEL

    return study.user_attrs.get(ATTR_REGISTERED_MODEL) or f"siamese-{study_name}"


def promote(study_name: str, *, storage: str, tracking_uri: str, model_name: str | None = None,
            alias: str = "champion", metric: str | None = None, dry_run: bool = False,
            force: bool = False) -> PromotionDecision:
    """Promote the study's best model to ``models:/<model_name>@<alias>`` if it beats the holder."""
    validate_alias(alias)
    metric_canon = rev.canonical_metric(metric)
    with rev.global_tracking_uri(tracking_uri):  # MLflow internals that use a default client see the same store
        return _promote(study_name, storage=storage, tracking_uri=tracking_uri, model_name=model_name, alias=alias,
                        metric_canon=metric_canon, dry_run=dry_run, force=force)


def _promote(study_name: str, *, storage: str, tracking_uri: str, model_name: str | None, alias: str,
             metric_canon: str | None, dry_run: bool, force: bool) -> PromotionDecision:
    study = _load_study(study_name, storage)
    name = model_name or default_model_name(study, study_name)
    reg = Registry(tracking_uri, name)
    compare = metric_canon or rev.objective_counterpart(_study_metric(study, reg.client))
    trial, skipped = pick_candidate(study, metric_canon, reg.client)

    from .objective import USER_ATTR_MODEL, USER_ATTR_RUN

    run_id = trial.user_attrs.get(USER_ATTR_RUN)
    model_uri = trial.user_attrs[USER_ATTR_MODEL]
    model_id = model_id_from_uri(model_uri)
    recorded_fp = trial.user_attrs.get("dataset_fingerprint") or (
        reg.client.get_run(run_id).data.params.get("dataset.fingerprint") if run_id else None)
    split = rev.build_test_split(rev.trial_config(reg.client, run_id), expected_fingerprint=recorded_fp,
                                 what=f"trial #{trial.number}")
    decision = PromotionDecision(action="keep", applied=False, model_name=name, alias=alias, reason="",
                                 study=study_name, metric=compare, higher_is_better=compare not in rev.LOWER_IS_BETTER,
                                 forced=force, split=split.describe(), skipped=skipped, dry_run=dry_run)
    with tempfile.TemporaryDirectory(prefix="siamese-promote-") as tmp:
        cand_ev = rev.evaluate(rev.load_wrapper(model_uri, tracking_uri=tracking_uri, dst=f"{tmp}/candidate"),
                               split, uri=model_uri)
        existing = reg.find_version(model_id, run_id) if model_id and reg.exists() else None
        holder_version = reg.holder(alias)
        same_model = existing is not None and holder_version == _str(existing.version)
        decision.candidate = {"trial": trial.number, "run_id": run_id, "model_uri": model_uri, "model_id": model_id,
                              "version": _str(existing.version) if existing else None, **cand_ev.to_dict(),
                              "trial_test": {k: trial.user_attrs.get(f"test_{k}") for k in rev.METRICS}}
        holder_ev = None
        if holder_version is not None:
            hv = reg.version(holder_version)
            decision.holder = {"version": holder_version, "model_uri": hv.source, "run_id": hv.run_id,
                               "study": hv.tags.get(f"{TAG}study"), "trial": hv.tags.get(f"{TAG}trial_number")}
            holder_fp = hv.tags.get(f"{TAG}dataset_fingerprint")
            if holder_fp and holder_fp != split.fingerprint and not force:
                raise ConfigError("--alias", f"{name}@{alias} (v{holder_version}) was trained on dataset "
                                             f"{holder_fp[:12]}…, the candidate on {split.fingerprint[:12]}…: their "
                                             f"test splits differ, so they cannot be compared. Use another "
                                             f"--model-name/--alias, or --force to replace it anyway")
            if not same_model and (holder_fp is None or holder_fp == split.fingerprint):
                holder_ev = rev.evaluate(rev.load_wrapper(f"models:/{name}/{holder_version}", tracking_uri=tracking_uri,
                                                          dst=f"{tmp}/holder"), split, uri=f"models:/{name}/{holder_version}")
                decision.holder.update(holder_ev.to_dict())
    c_val = cand_ev.metrics[compare]
    if same_model:
        decision.reason = f"v{holder_version} (this candidate) already holds {name}@{alias}"
    elif holder_version is None:
        decision.action, decision.reason = "promote", f"{name}@{alias} is not set yet"
    elif holder_ev is not None and rev.better(c_val, holder_ev.metrics[compare], compare):
        decision.action = "promote"
        decision.reason = (f"test {compare} {c_val:.4f} {'<' if compare in rev.LOWER_IS_BETTER else '>'} "
                           f"{holder_ev.metrics[compare]:.4f} of v{holder_version}")
    elif force:
        decision.action = "promote"
        decision.reason = (f"forced (test {compare} {c_val:.4f} vs "
                           f"{'n/a' if holder_ev is None else format(holder_ev.metrics[compare], '.4f')} of v{holder_version})")
    else:
        decision.reason = (f"not better: test {compare} {c_val:.4f} vs {holder_ev.metrics[compare]:.4f} of "
                           f"v{holder_version}" if holder_ev is not None else "holder could not be compared")
    decision.final_holder = holder_version
    decision.previous = holder_version if decision.action == "promote" and not same_model else None
    if dry_run:
        return decision

    # ---- apply: evidence first (version tags), then converge on the best eligible version
    tags = _version_tags(study_name, trial, run_id, model_id, split, cand_ev)
    if existing is None:
        mv = reg.register(model_uri, run_id, tags)
        version = _str(mv.version)
    else:
        version = _str(existing.version)
        reg.tag(version, tags)
    decision.candidate["version"] = version
    if holder_ev is not None and holder_version != version:
        reg.tag(holder_version, {EVAL + split.key: rev.metrics_tag(holder_ev), ELIGIBLE + alias: TRUE})
    if decision.action == "promote":
        if force:
            for v in reg.versions():
                if str(v.version) != version and v.tags.get(ELIGIBLE + alias) == TRUE:
                    reg.tag(str(v.version), {ELIGIBLE + alias: f"superseded by forced v{version}"})
        reg.tag(version, {ELIGIBLE + alias: TRUE, f"{TAG}decision.{alias}": decision.reason[:500]})
        final = converge(reg, alias, split.key, compare)
    elif not same_model:
        reg.tag(version, {ELIGIBLE + alias: "false", f"{TAG}decision.{alias}": decision.reason[:500]})
        final = reg.holder(alias)
    else:
        final = holder_version
    decision.applied = True
    decision.final_holder = final
    if final != version and decision.action == "promote":
        decision.reason += f"; a better version (v{final}) holds the alias after concurrent promotions"
    decision.previous = reg.version(final).tags.get(PREVIOUS + alias) if final else None
    return decision


def _version_tags(study_name: str, trial: Any, run_id: str | None, model_id: str | None, split: rev.TestSplit,
                  ev: rev.ModelEvaluation) -> dict[str, str]:
    tags = {f"{TAG}study": study_name, f"{TAG}trial_number": str(trial.number), f"{TAG}run_id": str(run_id),
            f"{TAG}model_id": str(model_id), f"{TAG}dataset_fingerprint": split.fingerprint,
            f"{TAG}eval_key": split.key, f"{TAG}test_pairs": str(split.n_pairs),
            f"{TAG}threshold": repr(float(ev.threshold)), f"{TAG}evaluated_at": _now(),
            EVAL + split.key: rev.metrics_tag(ev)}
    tags.update({f"{TAG}test_{k}": repr(round(float(v), 6)) for k, v in ev.metrics.items()})
    if ev.embeddings_reproduced is not None:
        tags[f"{TAG}embeddings_reproduced"] = str(ev.embeddings_reproduced).lower()
    return tags


# ------------------------------------------------------------------ rollback
def rollback(*, tracking_uri: str, model_name: str | None = None, study_name: str | None = None,
             storage: str | None = None, alias: str = "champion", dry_run: bool = False) -> PromotionDecision:
    """Move the alias back to the version that held it before the current holder."""
    validate_alias(alias)
    with rev.global_tracking_uri(tracking_uri):
        return _rollback(tracking_uri=tracking_uri, model_name=model_name, study_name=study_name, storage=storage,
                         alias=alias, dry_run=dry_run)


def _rollback(*, tracking_uri: str, model_name: str | None, study_name: str | None, storage: str | None,
              alias: str, dry_run: bool) -> PromotionDecision:
    if model_name is None:
        if not study_name:
            raise ConfigError("--model-name", "rollback needs --model-name (or --study to derive it)")
        name = default_model_name(_load_study(study_name, storage), study_name) if storage else f"siamese-{study_name}"
    else:
        name = model_name
    reg = Registry(tracking_uri, name)
    current = reg.holder(alias)
    if current is None:
        raise ConfigError("--alias", f"{name}@{alias} is not set; nothing to roll back")
    previous = reg.version(current).tags.get(PREVIOUS + alias)
    if not previous:
        raise ConfigError("--alias", f"no previous holder recorded for {name}@{alias} (v{current}); nothing to "
                                     f"roll back to")
    decision = PromotionDecision(action="rollback", applied=False, model_name=name, alias=alias, study=study_name,
                                 reason=f"v{previous} held {name}@{alias} before v{current}",
                                 holder={"version": current}, final_holder=current, previous=previous,
                                 dry_run=dry_run)
    try:
        reg.version(previous)
    except Exception as exc:  # noqa: BLE001 - deleted version
        raise ConfigError("--alias", f"previous holder v{previous} of {name}@{alias} no longer exists: {exc}") from None
    if dry_run:
        return decision
    stamp = _now()
    reg.tag(current, {ELIGIBLE + alias: "rolled_back", f"{TAG}rolled_back_at.{alias}": stamp})
    reg.tag(previous, {ELIGIBLE + alias: TRUE})
    reg.client.set_registered_model_alias(name, alias, previous)
    reg.client.set_registered_model_tag(name, f"{TAG}last_rollback.{alias}",
                                        json.dumps({"from": current, "to": previous, "at": stamp}))
    decision.applied, decision.final_holder = True, reg.holder(alias)
    decision.previous = reg.version(previous).tags.get(PREVIOUS + alias)
    if decision.previous:
        reg.client.set_registered_model_tag(name, PREVIOUS + alias, decision.previous)
    else:
        reg.client.delete_registered_model_tag(name, PREVIOUS + alias)
    return decision
