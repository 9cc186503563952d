"""Create or join an Optuna study, and find (or create) its MLflow parent run.

Exactly one process creates a study: ``optuna.create_study`` fails with
`DuplicatedStudyError` for the others, so the creator is the leader that
creates the parent run and records its id in the study's user attributes.
Joiners wait for that id, so every trial nests under one parent run.
"""
from __future__ import annotations

import bisect
import json
import logging
import time
import uuid
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import optuna

from siamese_core.errors import ConfigError

from . import best as ranking
from . import names, outcomes, pruners, samplers
from .errors import TrackingUnavailable
from .liveness import gone_from_here
from .margin import best_margin
from .options import given_storage
from .secrets import mask_url
from .space import grid_combinations
from .spec import DEFAULT_STORAGE, SweepSpec, enqueued_params, spec_differences, spec_from_data
from .storage import holds_no_study, make_storage, require_existing, retried_trial_number, sqlite_path
from .tracking import Tracker

log = logging.getLogger(__name__)


def optuna_sampler(spec: SweepSpec, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler. `seed_offset` keeps parallel or resumed workers from replaying one random stream."""
    s = spec.study.sampler
    seed = None if s.seed is None else s.seed + seed_offset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return samplers.get(s.type).build(spec, seed)


def optuna_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """The spec's pruner."""
    return pruners.get(spec.study.pruner.type).build(spec)


def load_study(study_name: str, storage: str, *, field: str | None = None) -> optuna.Study:
    """An existing study (`ConfigError` naming --study if there is none), for status and promote; `field`: where
    `storage` came from (`make_storage`)."""
    require_existing(storage, field or "--storage")  # opening it would create an empty database or journal file
    try:
        return optuna.load_study(study_name=study_name, storage=make_storage(storage, field=field))
    except KeyError:
        raise ConfigError("--study", f"no study named {study_name!r} in this storage") from None


def unfinished_move(study: optuna.Study) -> bool:
    """A study `siamese-sweep move` began to copy here and did not finish (its trials are half there)."""
    return bool(study.user_attrs.get(names.STUDY_ATTR_MOVING))


def refuse_unfinished_move(study: optuna.Study) -> None:
    """A `ConfigError` for a half-moved study: a run began at trial 0, promote picked a best of the trials copied
    so far (trial 0 of 4, 0.9894, where the study's best was 0.9907)."""
    if unfinished_move(study):
        raise ConfigError("--study", f"study {study.study_name!r} is a move that did not finish (its copy was "
                                     f"interrupted): run the same `siamese-sweep move` again with --replace-runs")


@dataclass
class OpenedStudy:
    study: optuna.Study
    created: bool
    storage_url: str
    parent_found: bool = False  # its stored parent run was found in the tracking store (checked once)


def open_study(spec: SweepSpec, *, storage_url: str, study_name: str, seed_offset: int = 0,
               create: bool = True, storage_given_as: str = "--storage") -> OpenedStudy:
    """Create the study (this process becomes the leader) or load it if it exists."""
    study_spec = spec.study
    storage = make_storage(storage_url, heartbeat_interval=study_spec.heartbeat_interval,
                           grace_period=study_spec.grace_period, max_retries=study_spec.max_retries,
                           field=storage_given_as)
    directions = list(study_spec.objective_directions)
    created = False
    if create:
        try:
            study = optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                        sampler=optuna_sampler(spec, seed_offset=seed_offset),
                                        pruner=optuna_pruner(spec))
            # the spec first: a joiner that finds none on a study without trials waits for it (`check_same_spec`)
            study.set_user_attr(names.STUDY_ATTR_SPEC, spec.portable())
            study.set_user_attr(names.STUDY_ATTR_SPEC_HASH, spec.identity())
            study.set_user_attr(names.STUDY_ATTR_LEADER, True)
            study.set_user_attr(names.STUDY_ATTR_UID, uuid.uuid4().hex)
            study.set_user_attr(names.STUDY_ATTR_METRICS, list(study_spec.objective_metrics))  # read by `promote`
            if spec.tracking.registered_model:
                study.set_user_attr(names.STUDY_ATTR_REGISTERED_MODEL, spec.tracking.registered_model)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            pass
    if not created:
        try:
            existing = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            raise ConfigError("study.name", f"no study named {study_name!r} in this storage; start it with "
                                            f"'siamese-sweep run'") from None
        refuse_unfinished_move(existing)  # its trials half there: a run began at trial 0
        check_same_spec(existing, spec)
        have = [d.name.lower() for d in existing.directions]
        if have != directions:
            raise ConfigError("study.direction", f"study {study_name!r} exists with directions {have}; this spec "
                                                 f"asks for {directions}. Use another --study name.")
        n_existing = len(existing.trials)
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  sampler=optuna_sampler(spec, seed_offset=seed_offset + n_existing),
                                  pruner=optuna_pruner(spec))
    return OpenedStudy(study, created, storage_url)


# how long a joiner waits for the spec of a study without trials: its creator writes it right after creating it
# (one storage write; a PostgreSQL round trip is milliseconds, a locked SQLite file can take seconds)
SPEC_WAIT_S = 15.0


def check_same_spec(study: optuna.Study, spec: SweepSpec, *, wait_s: float = SPEC_WAIT_S) -> None:
    """`ConfigError` (exit 2) if `study` was created with another spec: its trials would not compare.

    A study created before specs were stored adopts the first joiner's spec. One without trials and without a
    spec may be one another process has just created and is writing its spec to: that is waited for (adopted at
    once, in 1 of 6 starts of two specs at the same moment the second joined the first's study, its spec
    replacing the creator's).
    """
    attrs = _attrs_once_created(study, wait_s)
    if attrs.get(names.STUDY_ATTR_SPEC_HASH) is None:
        study.set_user_attr(names.STUDY_ATTR_SPEC, spec.portable())
        study.set_user_attr(names.STUDY_ATTR_SPEC_HASH, spec.identity())
        return
    _refuse_if_another(study.study_name, attrs, spec)


def _attrs_once_created(study: optuna.Study, wait_s: float) -> dict[str, Any]:
    """The study's user attrs once its creator has written its spec, or after `wait_s`: a study with no attrs
    and no trials may be one another process has just created, and one with the spec but not yet its hash is
    being written (`open_study` writes the spec first). Other attrs (a move's mark, a plain study's own) are no
    creator writing: not waited for (a plain study with attrs waited 15 s for its refusal)."""
    def being_written(attrs: dict[str, Any]) -> bool:
        return not attrs or (names.STUDY_ATTR_SPEC in attrs and names.STUDY_ATTR_SPEC_HASH not in attrs)

    deadline = time.monotonic() + wait_s
    attrs = study.user_attrs
    while being_written(attrs) and not study.get_trials(deepcopy=False) and time.monotonic() < deadline:
        time.sleep(0.2)
        attrs = study.user_attrs
    return attrs


def _refuse_if_another(study_name: str, attrs: dict[str, Any], spec: SweepSpec) -> None:
    """`ConfigError` if the study's stored spec (in its user `attrs`) is not `spec`."""
    stored = attrs.get(names.STUDY_ATTR_SPEC_HASH)
    if stored is None or stored == spec.identity():
        return
    diff = spec_differences(attrs.get(names.STUDY_ATTR_SPEC) or {}, spec.portable())
    if not diff and attrs.get(names.STUDY_ATTR_SPEC):  # only fields newer than the study, at their defaults
        return
    shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
    raise ConfigError("spec", f"study {study_name!r} was created with another spec (differs in: "
                              f"{shown or 'its stored hash'}); join it without a spec, which runs the one stored "
                              f"with it ('siamese-sweep worker --study {study_name}'; from Python: "
                              f"sweep(study_name={study_name!r})), or use another --study name")


def refuse_another_spec(storage_url: str, study_name: str, spec: SweepSpec, *, field: str | None = None) -> bool:
    """`check_same_spec` without opening a study for writing: for `slurm submit`, whose tasks' workers would each
    refuse the spec. No such study (or a storage that holds none): nothing to compare, False."""
    if holds_no_study(storage_url, field):
        return False
    try:
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage_url, field=field))
    except KeyError:
        return False
    _refuse_if_another(study_name, study.user_attrs, spec)
    return True


def stored_spec(storage_url: str, study_name: str, overrides: dict[str, Any] | None = None, *,
                missing_ok: bool = False, field: str | None = None) -> SweepSpec | None:
    """The spec `study_name` was created with (`SweepSpec.portable`, stored with the study), with ``--set``
    overrides applied (which then must not change its identity). Without such a study: None if `missing_ok`
    (`run --study NEW` starts the quickstart), else `ConfigError` naming --study. A study that exists without a
    stored spec is a `ConfigError` either way: `run --study` and ``sweep(study_name=)`` without a spec filled a
    plain Optuna study with the quickstart's trials and stored the quickstart as its spec, and a half-moved one
    (killed between create and mark; waited for first, as `check_same_spec` waits, since its creator may be
    writing the spec) could then never be moved."""
    missing = ConfigError("--study", f"no study named {study_name!r} in {mask_url(storage_url)}; start it with "
                                     f"'siamese-sweep run SPEC --study {study_name}', or pass the spec file")
    if holds_no_study(storage_url, field):
        if missing_ok:
            return None
        raise missing  # opening it would create an empty database or journal file, or Optuna's tables in one
    try:
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage_url, field=field))
    except KeyError:
        if missing_ok:
            return None
        raise missing from None
    attrs = _attrs_once_created(study, SPEC_WAIT_S)
    refuse_unfinished_move(study)  # before its spec is there: the move names the fix, a spec file did not
    if not attrs and not study.get_trials(deepcopy=False):
        raise ConfigError("--study", f"study {study_name!r} is empty, with no spec stored (made by plain Optuna, "
                                     f"or by a move or run killed as it created it): pass its spec file, or "
                                     f"finish such a move with 'siamese-sweep move ... --replace-runs'")
    data = attrs.get(names.STUDY_ATTR_SPEC)
    if not isinstance(data, dict):
        raise ConfigError("--study", f"study {study_name!r} has no stored spec (created by plain Optuna or by an "
                                     f"older version): pass the spec file its trials ran with ('quickstart' for "
                                     f"the built-in one)")
    data = {**data, "study": {**data.get("study", {}), "name": study_name, "storage": storage_url}}
    return spec_from_data(data, overrides, stored=True)


def spec_stored_with(storage: str | None, study_name: str, overrides: dict[str, Any], *,
                     missing_ok: bool) -> SweepSpec | None:
    """`stored_spec` of a study named by --study (``sweep(study_name=)``) in the storage of --storage
    (``sweep(storage=)``), else of $OPTUNA_STORAGE, else the default file: one place for `run`, `worker` and the
    Python call, which resumed with the quickstart's spec and was refused where `run --study` resumed."""
    url, given_as = given_storage(storage)
    return stored_spec(url or DEFAULT_STORAGE, study_name, overrides, missing_ok=missing_ok, field=given_as)


def wrong_tracking_store(study_name: str, parent: str, uri: str) -> str:
    return (f"study {study_name!r} logs to another MLflow tracking store: its parent run {parent} is not in "
            f"{mask_url(uri)} (or was deleted for good there); give the --tracking-uri it was run with")


def _require_parent_run(study_name: str, parent: str, tracker: Tracker) -> None:
    """A `ConfigError` for a study resumed against a tracking store without its parent run: the trials failed
    against it, one by one, and the study was left with a FAIL, a retry queued and its budget changed."""
    try:
        tracker.retry("find the parent run", lambda: tracker.client.get_run(parent))
    except TrackingUnavailable as exc:
        code = getattr(exc.__cause__, "error_code", "")
        if code == "RESOURCE_DOES_NOT_EXIST":
            raise ConfigError("--tracking-uri", wrong_tracking_store(study_name, parent, tracker.uri)) from None
        if code == "PERMISSION_DENIED":  # a server with logins answers so for a run it does not have, too
            raise ConfigError("--tracking-uri", (
                f"study {study_name!r}: MLflow at {mask_url(tracker.uri)} refuses to read its parent run {parent} "
                "(HTTP 403, its answer for a run it does not have as well as for one this user may not read); "
                "give the --tracking-uri the study was run with, or this user READ on its experiment")) from None
        raise


def require_its_tracking_store(opened: OpenedStudy, tracking_uri: str) -> None:
    """A `ConfigError` before the tracking store is opened, for an existing study whose parent run cannot be in a
    SQLite tracking file that does not exist (a resume from another folder: MLflow's client created the file,
    the trial failed, and the study was left with a FAIL, a retry queued and its budget changed)."""
    parent = opened.study.user_attrs.get(names.STUDY_ATTR_PARENT_RUN_ID)
    path = sqlite_path(tracking_uri)
    if parent and path is not None and not path.exists():
        raise ConfigError("--tracking-uri", wrong_tracking_store(opened.study.study_name, parent, tracking_uri))


def ensure_parent_run(opened: OpenedStudy, tracker: Tracker, spec: SweepSpec, *,
                      wait_s: float = 60.0) -> tuple[str, str]:
    """(experiment id, parent run id) for this study; created by the study's leader."""
    study = opened.study
    attrs = study.user_attrs
    if attrs.get(names.STUDY_ATTR_PARENT_RUN_ID):
        parent = attrs[names.STUDY_ATTR_PARENT_RUN_ID]
        if not (opened.created or opened.parent_found):
            _require_parent_run(study.study_name, parent, tracker)
            opened.parent_found = True
        return attrs[names.STUDY_ATTR_EXPERIMENT_ID], parent
    if not opened.created:
        # a siamese-sweep leader creates the parent right after the study; a study made elsewhere has no leader
        if not attrs.get(names.STUDY_ATTR_LEADER):
            time.sleep(2.0)
            attrs = study.user_attrs
            wait_s = wait_s if attrs.get(names.STUDY_ATTR_LEADER) else 0.0
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            time.sleep(1.0)
            attrs = study.user_attrs
            if attrs.get(names.STUDY_ATTR_PARENT_RUN_ID):
                return attrs[names.STUDY_ATTR_EXPERIMENT_ID], attrs[names.STUDY_ATTR_PARENT_RUN_ID]
        log.warning("study %s has no parent run after %.0fs; creating one", study.study_name, wait_s)
    exp_id = tracker.experiment_id(spec.experiment_for(study.study_name))
    uid = study_uid(study)
    # only this very study's parent (one whose creator died before recording it): a study of the same name in
    # another storage is another study, and reusing its parent would mix (and de-duplicate away) its runs
    # a study this process has just created has a new identity: no run can carry it yet (the parent run's part of
    # the sweep's start: 0.19 s -> 0.07 s, benchmarks/tracking_profile.py --clock, BENCHMARKS.md §2)
    existing = [] if opened.created else tracker.find_runs(
        exp_id, f"tags.`{names.TAG_ROLE}` = '{names.ROLE_PARENT}' and tags.`{names.TAG_STUDY_UID}` = '{uid}'")
    if existing:
        parent = sorted(existing, key=lambda r: (r.info.start_time, r.info.run_id))[0].info.run_id
    else:
        parent = tracker.create_parent_run(exp_id, study.study_name, tags={
            names.TAG_STUDY_UID: uid,
            names.TAG_STORAGE: mask_url(opened.storage_url),
            names.TAG_DIRECTIONS: ",".join(spec.study.objective_directions),
            names.TAG_METRICS: ",".join(spec.study.objective_metrics)})
    study.set_user_attr(names.STUDY_ATTR_EXPERIMENT_ID, exp_id)
    study.set_user_attr(names.STUDY_ATTR_PARENT_RUN_ID, parent)
    return exp_id, parent


def study_uid(study: optuna.Study) -> str:
    """The study's random identity (set at creation; a study made by an older version or by plain Optuna gets
    one on first use, which joiners then read)."""
    uid = study.user_attrs.get(names.STUDY_ATTR_UID)
    if not uid:
        uid = uuid.uuid4().hex
        study.set_user_attr(names.STUDY_ATTR_UID, uid)
    return str(uid)


def enqueue_known(study: optuna.Study, spec: SweepSpec) -> int:
    """Queue ``study.enqueue``'s configurations unless the study already has them (a resume, another
    worker): Optuna's ``skip_if_exists``. Returns how many were queued now. Call under the budget lock."""
    before = len(study.get_trials(deepcopy=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for params in enqueued_params(spec, strict=False):  # checked when the spec was read (a stored one: laxer)
            study.enqueue_trial(params, skip_if_exists=True)
    queued = len(study.get_trials(deepcopy=False)) - before
    if queued:
        log.info("study %s: queued %d known configuration(s) from study.enqueue", study.study_name, queued)
    return queued


def trial_budget(study: optuna.Study, default: int) -> int:
    return int(study.user_attrs.get(names.STUDY_ATTR_BUDGET, default))


def set_trial_budget(study: optuna.Study, budget: int, spec: SweepSpec | None = None) -> None:
    """Store the study's global COMPLETE + PRUNED budget (`run --trials`, `worker --trials`). One below what the
    study has done is kept (it is what the user asked), with a warning: `worker --trials 3` on a study of 4 done
    trials ran nothing and exited 0 without a word. With `spec`'s grid sampler, at most its combinations (and
    enqueued trials), each run once: a budget above it (the default 10 over a grid of 4) re-ran combinations, and
    Optuna only warned."""
    before = study.user_attrs.get(names.STUDY_ATTR_BUDGET)
    combinations = grid_combinations(spec) if spec is not None else None
    # an entry enqueued twice is queued once (`enqueue_known`: skip_if_exists)
    enqueued = len({json.dumps(e, sort_keys=True, default=str) for e in spec.study.enqueue}) if spec else 0
    if combinations is not None and budget > combinations + enqueued:
        cap = combinations + enqueued
        if before is None or int(before) != cap:  # said once, by whichever process stores it first
            log.warning("the grid has %d combination(s)%s, each run once: the study's budget is %d trials, not %d",
                        combinations, f" and {enqueued} enqueued trial(s)" if enqueued else "", cap, budget)
        budget = cap
    study.set_user_attr(names.STUDY_ATTR_BUDGET, int(budget))
    if before is not None and int(before) != int(budget):
        log.warning("study %s: trial budget %s -> %d", study.study_name, before, budget)
    done = count_states(study).done
    if budget < done:
        log.warning("study %s already has %d complete or pruned trial(s), more than the budget of %d given: no "
                    "trial runs; give --trials above %d to add some", study.study_name, done, budget, done)


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    fail: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def done(self) -> int:
        return self.complete + self.pruned

    def as_dict(self) -> dict[str, int]:
        return {"COMPLETE": self.complete, "PRUNED": self.pruned, "FAIL": self.fail, "RUNNING": self.running,
                "WAITING": self.waiting}


def count_states(study: optuna.Study) -> Counts:
    c = Counts()
    S = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False):
        if t.state == S.COMPLETE:
            c.complete += 1
        elif t.state == S.PRUNED:
            c.pruned += 1
        elif t.state == S.FAIL:
            c.fail += 1
        elif t.state == S.RUNNING:
            c.running += 1
        elif t.state == S.WAITING:
            c.waiting += 1
    return c


TPE_DEFAULT_STARTUP = 10  # Optuna's TPESampler default, for a stored spec's sampler that does not say


def startup_trials(study: optuna.Study) -> int | None:
    """How many of the study's first trials its sampler drew at random (`sampler.n_startup_trials`); None for a
    sampler without a start-up phase (random, grid, NSGA-II), and for a study that stores no spec: its sampler
    is not in the storage (a plain Optuna RandomSampler study was said to have "10 random start-up trials")."""
    spec = study.user_attrs.get(names.STUDY_ATTR_SPEC)
    if not isinstance(spec, dict):
        return None
    sampler = (spec.get("study") or {}).get("sampler") or {}
    kind = sampler.get("type")
    if isinstance(kind, str) and kind in samplers.names() and not samplers.get(kind).startup_phase:
        return None
    n = sampler.get("n_startup_trials")
    return int(n) if isinstance(n, int) else TPE_DEFAULT_STARTUP


def retried_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """The numbers of the trials that have a retry: every entry of every retry's ``retry_history`` (its
    ``failed_trial`` names the first trial of the chain only, not a retry that was retried again)."""
    return {int(n) for t in trials for n in (t.system_attrs.get(names.SYSTEM_ATTR_RETRY_HISTORY) or [])}


def reasons_of(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]
               ) -> Callable[[optuna.trial.FrozenTrial], str]:
    """The reason of a PRUNED or FAIL trial: the one it recorded, else what ended it. In a study siamese-sweep
    runs (its spec is stored) every path records one but Optuna's heartbeat, which fails a dead worker's trial
    and queues a retry; a FAIL that has a retry was failed that way too. Any other FAIL is
    `outcomes.UNRECORDED`: a plain Optuna study's ValueError read as "its worker died" (`stale_heartbeat`)."""
    heartbeat_only = names.STUDY_ATTR_SPEC in study.user_attrs
    retried = retried_numbers(trials)

    def reason(t: optuna.trial.FrozenTrial) -> str:
        recorded = t.user_attrs.get(names.TRIAL_ATTR_REASON)
        if recorded is not None:
            return str(recorded)
        if t.state != optuna.trial.TrialState.FAIL:
            return outcomes.PRUNED.reason
        return outcomes.STALE_HEARTBEAT.reason if heartbeat_only or t.number in retried else outcomes.UNRECORDED
    return reason


@dataclass(frozen=True)
class BestPhase:
    """Did the search find the best trial, one of the sampler's random start-up trials, or `study.enqueue`?"""

    startup_trials: int | None        # None: the sampler has no start-up phase
    phase: str | None                 # "start-up", "search" or "enqueued"; None without a start-up phase
    best_startup_value: float | None  # the best value among the start-up trials (None: none completed)
    searched: int = 0                 # finished (COMPLETE or PRUNED) trials past the start-up: 0, no search yet


def best_phase(study: optuna.Study, best: optuna.trial.FrozenTrial,
               trials: list[optuna.trial.FrozenTrial], *, not_ranked: Collection[int] = ()) -> BestPhase:
    """`best`'s phase in a single-objective `study`; `trials` are its trials as the caller read them (status and
    report share this; only COMPLETE and PRUNED ones count). The values of `not_ranked` trials (told outside
    siamese-sweep, `sweeps.best`) are not the start-up's best; they still count where the sampler counts them."""
    startup = startup_trials(study)
    if startup is None:
        return BestPhase(None, None, None)
    S = optuna.trial.TrialState
    finished = sorted(t.number for t in trials if t.state in (S.COMPLETE, S.PRUNED))

    def random_start(t: optuna.trial.FrozenTrial) -> bool:
        # TPE's rule: it draws at random while fewer than `startup` trials are COMPLETE or PRUNED, so a FAIL in
        # the start-up moves the search's first trial on (by trial number, #5 was called "search" when trial 0
        # had failed and #5 was drawn at random). Counted as a worker asks one trial after another; with parallel
        # workers an earlier trial may still have been running, and CMA-ES and GP count COMPLETE ones only: an
        # approximation there. A retry repeats its original's parameters, so it is judged as its original.
        history = t.system_attrs.get(names.SYSTEM_ATTR_RETRY_HISTORY)
        number = int(history[0]) if history else retried_trial_number(t)
        return bisect.bisect_left(finished, t.number if number is None else number) < startup

    early = [float(t.value) for t in trials if t.state == S.COMPLETE and random_start(t)
             and t.value is not None and t.number not in not_ranked
             and t.system_attrs.get(names.SYSTEM_ATTR_FIXED_PARAMS) is None]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    searched = sum(1 for t in trials if t.state in (S.COMPLETE, S.PRUNED) and not random_start(t))
    phase = ("enqueued" if best.system_attrs.get(names.SYSTEM_ATTR_FIXED_PARAMS) is not None
             else "start-up" if random_start(best) else "search")
    return BestPhase(startup, phase, (max(early) if maximize else min(early)) if early else None, searched)


def study_status(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, the best trial(s), and why trials were pruned or failed."""
    counts = count_states(study)
    out: dict[str, Any] = {"study": study.study_name, "counts": counts.as_dict(),
                           "budget": study.user_attrs.get(names.STUDY_ATTR_BUDGET),
                           "directions": [d.name.lower() for d in study.directions],
                           "metrics": study.user_attrs.get(names.STUDY_ATTR_METRICS),  # None: a plain study
                           "parent_run_id": study.user_attrs.get(names.STUDY_ATTR_PARENT_RUN_ID),
                           "stopped": study.user_attrs.get(names.STUDY_ATTR_STOPPED),
                           "move_unfinished": unfinished_move(study)}
    trials = study.get_trials(deepcopy=False)
    complete, told = ranking.split_complete(study, trials)
    # COMPLETE with a value siamese-sweep never measured (Optuna's own tell or add_trial): shown, never the best
    out["not_ranked"] = [t.number for t in told]
    if len(study.directions) == 1:
        out["best"] = None  # the key is always there (`status --json` had none before a trial completed)
    if complete:
        if len(study.directions) == 1:
            best = ranking.best_of(study, complete)
            assert best is not None
            out["best"] = _trial_summary(best)
            phase = best_phase(study, best, trials, not_ranked=out["not_ranked"])
            out["startup_trials"], out["best"]["phase"] = phase.startup_trials, phase.phase
            out["best_startup_value"], out["search_trials"] = phase.best_startup_value, phase.searched
            lead = best_margin(study, complete)  # is its lead over the runner-up more than sampling noise?
            out["margin"] = None if lead is None else lead.to_dict()
        else:
            out["best_trials"] = [_trial_summary(t) for t in ranking.pareto_front(study, complete)]
    reason = reasons_of(study, trials)
    # epoch: the last one reported (counted from 0, as the prune message and the MLflow step); None before any
    out["reasons"] = {t.number: {"state": t.state.name, "reason": reason(t), "epoch": t.last_step}
                      for t in trials if t.state in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)}
    # after a kill -9 the trial reads RUNNING until a worker's check fails it: say which ones have no worker left
    out["running"] = {t.number: {"worker": t.user_attrs.get(names.TRIAL_ATTR_WORKER), "epoch": t.last_step,
                                 "worker_gone": gone_from_here(t)}
                      for t in trials if t.state == optuna.trial.TrialState.RUNNING}
    return out


def _trial_summary(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    test = names.TRIAL_ATTR_TEST_PREFIX
    return {"number": t.number, "value": t.value if t.values and len(t.values) == 1 else None,
            "values": t.values, "params": t.params, "run_id": t.user_attrs.get(names.TRIAL_ATTR_RUN_ID),
            "model_uri": t.user_attrs.get(names.TRIAL_ATTR_MODEL_URI),
            "test": {k[len(test):]: v for k, v in t.user_attrs.items() if k.startswith(test)}}
