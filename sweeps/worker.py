"""The worker loop: take trials from a shared study until the global budget is met.

Each iteration holds the budget lock while it (1) fails stale trials of dead
workers (queuing their retries), (2) counts finished + running + queued
trials, and (3) creates at most one trial — the objective releases the lock
as soon as its trial exists. So N workers on one storage run exactly
``budget`` COMPLETE/PRUNED trials; trials that FAIL don't count and are
replaced. A worker with nothing to start waits, because a running trial of
another worker may still fail and need replacing.
"""
from __future__ import annotations

import gc
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import RunTag

from . import artifacts, names, outcomes
from .best import best_trial
from .checkpoints import shared_through_mlflow
from .errors import InvalidTrialConfig, SweepFatal, TrackingUnavailable
from .finisher import Deferred, Finisher, Heartbeat, LookAhead, as_told, records_in_background
from .mlflow_globals import mlflow_internals_use
from .objective import Objective, SilentTrials, TrialContext, fail_dead_worker_trials
from .preflight import raise_if_refused
from .recorder import Recorder
from .signals import StopRequest, stop_on_signals
from .spec import SweepSpec
from .stopping import from_spec as study_stop_from
from .storage import (
    BudgetLock,
    budget_lock,
    fail_stale_trials,
    is_transient,
    retried_trial_number,
    safe_filename,
    storage_kind,
)
from .study import (
    OpenedStudy,
    count_states,
    enqueue_known,
    ensure_parent_run,
    set_trial_budget,
    study_uid,
    trial_budget,
)
from .tracking import RUN_RUNNING, Tracker

log = logging.getLogger(__name__)


@dataclass
class WorkerReport:
    trials_run: int = 0
    states: dict[str, int] = field(default_factory=dict)
    budget_met: bool = False
    stopped_by: str = ""


_FROZEN = False  # `freeze_long_lived` ran in this process


class DataCache:
    """Load each distinct dataset once per worker process."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @staticmethod
    def _key(config: Any) -> str:
        import json

        return json.dumps([config.dataset.model_dump(mode="json"), config.seed], sort_keys=True)

    @classmethod
    def seeded(cls, config: Any, data: Any) -> DataCache:
        """A cache that already holds `data` for `config` (loaded by the preflight)."""
        cache = cls()
        if data is not None:
            cache._cache[cls._key(config)] = data
        return cache

    def __call__(self, config: Any) -> Any:
        from siamese_core.data.sources import load_dataset

        key = self._key(config)
        if key not in self._cache:
            self._cache[key] = load_dataset(config)
        return self._cache[key]


def default_checkpoint_root(spec: SweepSpec, study_name: str, parent_run_id: str) -> Path | None:
    """``<study.checkpoint_dir or .siamese-sweep/checkpoints>/<study>-<parent run id>``; None when disabled.

    The parent run id keeps two studies of the same name (say, in different storages) apart.
    """
    base = spec.study.checkpoint_dir
    if base is not None and base.strip().lower() in ("", "none", "off", "false"):
        return None
    return Path(base or ".siamese-sweep/checkpoints").expanduser() / f"{safe_filename(study_name)}-{parent_run_id[:12]}"


def reconcile_runs(study: optuna.Study, tracker: Tracker, seen: set[int], *, experiment_id: str | None = None,
                   parent_run_id: str | None = None) -> int:
    """End MLflow runs left RUNNING by trials that have ended, as `outcomes.ORPHANED_RUN_STATUS`, tagged with the
    trial's reason (none recorded: its worker died); returns how many.

    Two ways a run is left behind: the trial FAILed while its worker could not end the run (the worker died,
    MLflow was down), or the worker died between creating the run and recording its id on the trial (a storage
    restart at that moment): then only the run knows its trial, by its trial-number tag, so with
    `parent_run_id` the sweep's RUNNING runs are looked up too (one query per call).
    """
    fixed = 0
    quick = tracker.retry.within(5.0)  # best-effort and repeated every round: never stall the worker on it
    trials = study.get_trials(deepcopy=False)
    orphans: list[tuple[optuna.trial.FrozenTrial, str]] = []
    for t in trials:
        run_id = t.user_attrs.get(names.TRIAL_ATTR_RUN_ID)
        if t.state == optuna.trial.TrialState.FAIL and run_id and t.number not in seen:
            orphans.append((t, run_id))
    if parent_run_id and experiment_id:
        by_number = {t.number: t for t in trials}
        running = (f"tags.`{names.MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and "
                   f"attributes.status = '{RUN_RUNNING}'")
        found: list[Any] = []
        try:
            found = quick("find running runs", partial(tracker.client.search_runs, [experiment_id],
                                                       filter_string=running, max_results=1000))
        except Exception as exc:  # noqa: BLE001 - best-effort, retried next round
            log.warning("could not look for runs left RUNNING: %s", exc)
        for run in found:
            number = str(run.data.tags.get(names.TAG_TRIAL_NUMBER, ""))
            owner = by_number.get(int(number)) if number.isdigit() else None
            if (owner is not None and owner.state.is_finished()
                    and owner.user_attrs.get(names.TRIAL_ATTR_RUN_ID) != run.info.run_id):
                orphans.append((owner, run.info.run_id))
    for t, run_id in orphans:
        try:
            status = quick("get run", partial(tracker.client.get_run, run_id)).info.status
            if status == RUN_RUNNING:
                reason = t.user_attrs.get(names.TRIAL_ATTR_REASON) or outcomes.STALE_HEARTBEAT.reason
                tags = [RunTag(names.TAG_STATE, outcomes.FAIL), RunTag(names.TAG_REASON, reason)]
                quick("tag run", partial(tracker.client.log_batch, run_id, tags=tags))
                quick("end run", partial(tracker.client.set_terminated, run_id, outcomes.ORPHANED_RUN_STATUS))
                fixed += 1
            if t.user_attrs.get(names.TRIAL_ATTR_RUN_ID) == run_id:
                seen.add(t.number)
        except Exception as exc:  # noqa: BLE001 - reconciliation is best-effort, retried next round
            log.warning("could not reconcile run %s of trial %d: %s", run_id, t.number, exc)
    return fixed


def check_write_access(tracker: Tracker, parent_run_id: str, uid: str) -> None:
    """Before the first trial is asked: a server with permissions that will refuse this user's runs (HTTP 403: the
    experiment is another user's, say the admin's who ran `move`) is a `ConfigError` now, not one failed trial per
    attempt. The write re-states the parent run's study uid: one request per worker, for http(s) servers only."""
    if not tracker.uri.startswith(("http://", "https://")):
        return
    try:
        tracker.retry("check write access", lambda: tracker.client.set_tag(parent_run_id, names.TAG_STUDY_UID, uid))
    except TrackingUnavailable as exc:
        raise_if_refused(exc, tracker.uri)
        log.warning("could not re-state the parent run's study uid: %s", exc)  # the trials' own calls will tell


def link_dashboard(opened: OpenedStudy, tracker: Tracker, parent_run_id: str) -> str | None:
    """Tag the parent run with the study's optuna-dashboard page when ``$SIAMESE_SWEEP_DASHBOARD_URL`` says
    where the dashboard is served (`siamese-sweep dashboard`); best-effort, returns the URL."""
    base = os.environ.get(names.ENV_DASHBOARD_URL, "").strip()
    if not base:
        return None
    try:
        from .storage import make_storage

        # the dashboard's routes use the storage's numeric study id (public storage API; Study keeps it private)
        study_id = make_storage(opened.storage_url).get_study_id_from_name(opened.study.study_name)
        url = names.dashboard_study_url(base, study_id)
        tracker.client.set_tag(parent_run_id, names.TAG_DASHBOARD_URL, url)
        return url
    except Exception as exc:  # noqa: BLE001 - a missing link must not stop the sweep
        log.warning("could not link the parent run to optuna-dashboard: %s", exc)
        return None


def _sleep(seconds: float) -> None:
    """Sleep in short steps so a swallowed stop request is noticed promptly."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        StopRequest.check()
        time.sleep(min(0.25, left))


# While other workers run the study's last trials, an idle worker looks at which trials are running this often
# (one small query) and goes round at once when one ends: it may have to replace a failed trial, else it is done.
# The full round (lock, stale trials, MLflow reconciliation) still waits for `poll_s` (5 s by default), which
# `run --workers 2` used to wait after the last trial: its closing took 5.3-7.0 s in probe runs of 1-minute
# sweeps on 2 cores, 1.7 s now (BENCHMARKS.md §4).
_RUNNING_CHECK_S = 1.0


def _await_running(study: optuna.Study, poll_s: float) -> None:
    """Sleep up to `poll_s`, returning within `_RUNNING_CHECK_S` of a running trial's end."""
    def running() -> set[int] | None:
        try:
            return {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        except Exception:  # noqa: BLE001 - a storage outage is the full round's to handle, as before this check
            return None

    end = time.monotonic() + poll_s
    before = running()
    while (left := end - time.monotonic()) > 0:
        _sleep(min(_RUNNING_CHECK_S if before is not None else poll_s, left))
        if before is not None and time.monotonic() < end and running() not in (before, None):
            return


OnTrial = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
# the study's trials as they will be once the last one is told, and its directions (`take_trials`)
AtLastFinish = Callable[[list[optuna.trial.FrozenTrial], list[optuna.study.StudyDirection]], None]


def run_worker(spec: SweepSpec, opened: OpenedStudy, tracker: Tracker, *, budget: int | None = None,
               timeout: float | None = None, on_trial: OnTrial | None = None,
               checkpoint_root: Path | None = None, poll_s: float | None = None,
               data_cache: DataCache | None = None, at_last_finish: AtLastFinish | None = None) -> WorkerReport:
    """Run trials of `opened.study` in this process until the budget is met, time is up, or it is interrupted
    (`at_last_finish`: see `take_trials`; with ``tracking.finish_in_background`` only).

    MLflow's process-wide tracking URI (user code's fluent calls land in the trial's run) and ``$MLFLOW_RUN_ID``
    are what they were afterwards: a notebook's next `sweeps.sweep` with another store, or its own run, kept
    writing to this one's store (``sweep()`` twice, or ``mlflow.log_metric`` after it: "Run ... not found")."""
    run_id = os.environ.pop(names.ENV_MLFLOW_RUN_ID, None)  # would hijack run creation (it overrides parent_run_id)
    try:
        with mlflow_internals_use(tracker.uri):
            return _run_worker(spec, opened, tracker, budget=budget, timeout=timeout, on_trial=on_trial,
                               checkpoint_root=checkpoint_root, poll_s=poll_s, data_cache=data_cache,
                               at_last_finish=at_last_finish)
    finally:
        if run_id is not None:
            os.environ[names.ENV_MLFLOW_RUN_ID] = run_id


def _run_worker(spec: SweepSpec, opened: OpenedStudy, tracker: Tracker, *, budget: int | None,
                timeout: float | None, on_trial: OnTrial | None, checkpoint_root: Path | None, poll_s: float | None,
                data_cache: DataCache | None, at_last_finish: AtLastFinish | None) -> WorkerReport:
    study = opened.study
    if budget is not None:
        set_trial_budget(study, budget, spec)
    elif names.STUDY_ATTR_BUDGET not in study.user_attrs:
        set_trial_budget(study, spec.study.trials, spec)
    experiment_id, parent_run_id = ensure_parent_run(opened, tracker, spec)
    check_write_access(tracker, parent_run_id, study_uid(study))
    link_dashboard(opened, tracker, parent_run_id)
    if checkpoint_root is None:
        checkpoint_root = default_checkpoint_root(spec, study.study_name, parent_run_id)
    background = records_in_background(spec.tracking.finish_in_background)
    log.info("recording each trial %s (tracking.finish_in_background: %s)",
             "in a background helper process" if background else names.RECORDING_IN_LINE,
             spec.tracking.finish_in_background)
    ctx = TrialContext(spec=spec, tracker=tracker, experiment_id=experiment_id, parent_run_id=parent_run_id,
                       study_name=study.study_name, load_data=data_cache or DataCache(),
                       checkpoint_root=checkpoint_root,
                       share_checkpoints=shared_through_mlflow(spec.tracking.checkpoints, tracker.uri),
                       finisher=Finisher() if background else None,
                       recorder=Recorder(tracker) if background else None)
    objective = Objective(ctx)
    lock = budget_lock(opened.storage_url, study.study_name)
    reconciled: set[int] = set()
    deadline = None if timeout is None else time.monotonic() + timeout
    poll = poll_s if poll_s is not None else min(5.0, float(spec.study.heartbeat_interval))
    if spec.study.enqueue:
        with lock:  # Optuna's skip_if_exists is not atomic across processes: one worker at a time
            enqueue_known(study, spec)
    import siamese_core.training  # noqa: F401 - TensorFlow and Keras: imported before the freeze below

    if spec.tracking.log_plots and not background:
        artifacts.warm_up()  # imported by the first trial's plots anyway; the freeze then covers them too
    freeze_long_lived()
    if ctx.recorder is not None:
        ctx.recorder.start()  # its imports run at idle priority while the first trial trains
    try:
        report = take_trials(study, lock, objective, default_budget=spec.study.trials,
                             max_failures=spec.study.max_failures, poll_s=poll, deadline=deadline,
                             stopper=study_stop_from(spec), on_trial=on_trial,
                             under_lock=lambda: reconcile_runs(study, tracker, reconciled, experiment_id=experiment_id,
                                                               parent_run_id=parent_run_id),
                             tracker_name=repr(tracker), finisher=ctx.finisher,
                             warm_up=artifacts.warm_up if background and spec.tracking.log_plots else None,
                             at_last_finish=at_last_finish,
                             fail_dead=partial(fail_dead_worker_trials, study, max_retries=spec.study.max_retries,
                                               silent=SilentTrials(spec.study.grace_period))
                             if storage_kind(opened.storage_url) == "journal" else None)
    finally:
        if ctx.recorder is not None:
            ctx.recorder.close()
    if report.budget_met:
        clear_finished_checkpoints(study, checkpoint_root)
    return report


def freeze_long_lived() -> None:
    """Move what exists before the first trial (TensorFlow, Keras, MLflow, the data) out of the collector's sight.

    Each trial ends with a full ``gc.collect()`` (its model and arrays hold reference cycles). With TensorFlow
    and MLflow imported that walks ~515,000 objects: 0.20 s per trial measured here, most of the collector's
    cost, for objects that live as long as the process. ``gc.freeze()`` (once per process) leaves them out:
    the same collect then took 2 us. Objects made later, every trial's model among them, are collected as before.

    Only the young generations are collected first: a full collection here took 0.33 s of every sweep's start to
    find 23 unreachable objects among 578,000 (the command is in BENCHMARKS.md §2); those few, already in the
    oldest generation, stay frozen with the rest.
    """
    global _FROZEN
    if not _FROZEN:
        gc.collect(1)  # freeze survivors, not the garbage of the last imports (0.4 ms)
        gc.freeze()
        _FROZEN = True


def take_trials(study: optuna.Study, lock: BudgetLock, objective: Callable[[optuna.Trial], Any], *,
                default_budget: int, max_failures: int, poll_s: float, deadline: float | None = None,
                stopper: Any = None, on_trial: OnTrial | None = None,
                under_lock: Callable[[], Any] | None = None, tracker_name: str = "MLflow",
                finisher: Finisher | None = None, warm_up: Callable[[], None] | None = None,
                at_last_finish: AtLastFinish | None = None,
                fail_dead: Callable[[], Any] | None = None) -> WorkerReport:
    """The coordination loop of one worker, apart from what a trial does (benchmarks/coordination.py runs it
    with an objective that does no training, to measure the storage cost of coordination alone).

    Under `lock`: fail stale trials (and, with `fail_dead`, those of dead workers on a storage without
    heartbeats), run `under_lock` (the worker reconciles MLflow runs), count, and ask for
    at most one trial; `objective` runs after the lock is released. An objective may return a `Deferred`:
    its finish then runs in `finisher`'s background thread while the next trial trains, and the trial is told
    once it is done (the order is explained in `sweeps.finisher`); `warm_up` runs there while the first trial
    trains (imports the recording needs). In a round that hands a job to the background, `under_lock` runs
    there after the job, not under the lock before the ask: the worker's reconcile is a search in MLflow
    and a read of every trial, 0.044 s of each trial's critical path (benchmarks/tracking_profile.py), and it
    needs no lock (two workers ending the same orphaned run both end it the same way).
    `at_last_finish` runs in this thread while the finish of the study's last live trial runs in the background,
    with the study's trials as they will be once it is told (`_as_told`). `deadline` is a ``time.monotonic()`` value.
    """
    report = WorkerReport()
    finisher = finisher if finisher is not None else Finisher()
    heartbeat = Heartbeat(study)
    failures = {"consecutive": 0}
    last_reason = [""]
    last_error: list[BaseException | None] = [None]

    def after_trial(frozen: optuna.trial.FrozenTrial) -> None:
        """Counts and the caller's callback; in the finisher's thread, one trial at a time."""
        report.trials_run += 1
        report.states[frozen.state.name] = report.states.get(frozen.state.name, 0) + 1
        if frozen.state == optuna.trial.TrialState.FAIL:
            failures["consecutive"] += 1
            last_reason[0] = frozen.user_attrs.get(names.TRIAL_ATTR_REASON, "unknown")
        else:
            failures["consecutive"] = 0
        if on_trial is not None:
            on_trial(study, frozen)

    def tell(trial: optuna.Trial, state: optuna.trial.TrialState, values: Any = None,
             error: BaseException | None = None) -> None:
        try:
            frozen = study.tell(trial, values, state=state)
        except ValueError:  # Optuna's "Cannot tell a FAIL trial": ended by another worker's stale-trial check?
            ended = _ended_elsewhere(study, trial.number)
            if ended is None:
                raise
            frozen = ended
            if ended.state == optuna.trial.TrialState.FAIL:
                log.warning("trial %d was failed by another worker while this one ran it: its heartbeat was older "
                            "than study.grace_period (a stalled machine or storage outage). Its retry runs the same "
                            "parameters; this worker goes on.", trial.number)
            else:  # told by hand (Optuna's API on the storage): this worker's outcome is not the recorded one
                log.warning("trial %d was told %s by another process while this one ran it (not by siamese-sweep: "
                            "its MLflow run has this worker's outcome, not that value); this worker goes on.",
                            trial.number, ended.state.name)
        else:
            log_outcome(study, frozen, error)
        finally:
            heartbeat.release(trial)
        after_trial(frozen)
        gc.collect()  # the trial's model and arrays (Optuna's gc_after_trial)

    def settle(trial: optuna.Trial, run: Callable[[], Any]) -> Deferred | None:
        """Run `run` (the objective, or a deferred finish) and tell its outcome; a `Deferred` is returned."""
        try:
            out = run()
        except optuna.TrialPruned as exc:
            tell(trial, optuna.trial.TrialState.PRUNED, error=exc)
            return None
        except BaseException as exc:  # noqa: BLE001 - told FAIL; all but errors of the trial itself go on up
            last_error[0] = exc
            tell(trial, optuna.trial.TrialState.FAIL, error=exc)
            if not isinstance(exc, Exception):
                raise
            return None
        if isinstance(out, Deferred):
            return out
        tell(trial, optuna.trial.TrialState.COMPLETE, values=out)
        return None

    def finish_job(trial: optuna.Trial, deferred: Deferred) -> Callable[[], None]:
        def job() -> None:
            settle(trial, deferred.finish)
        return job

    # the finish of the trial trained last, which starts after the next ask, and that trial as it will be told
    pending: Callable[[], None] | None = warm_up
    pending_complete: optuna.trial.FrozenTrial | None = None
    went_on = False  # past the study.stop check once
    with stop_on_signals(), heartbeat, LookAhead(study) as look_ahead:
        try:
            while True:
                finisher.wait()  # every earlier trial is told: counts, stop rules and the sampler see them
                look_ahead.assume(None)
                if last_reason[0] == outcomes.TRACKING_UNAVAILABLE_AT_START.reason:
                    raise_if_refused(last_error[0])  # not a server that is down: exit 2
                    raise SweepFatal(f"MLflow tracking at {tracker_name} is unreachable")
                if failures["consecutive"] >= max_failures:
                    raise SweepFatal(f"{failures['consecutive']} trials in a row failed (last reason: "
                                     f"{last_reason[0]}); stopping. See 'siamese-sweep status' and the failed "
                                     f"runs in MLflow.")
                StopRequest.check()  # a signal whose exception was swallowed (see sweeps.signals)
                if deadline is not None and time.monotonic() >= deadline:
                    report.stopped_by = "timeout"
                    break
                trial: optuna.Trial | None = None
                unreachable = False
                with lock:
                    fail_stale_trials(study)
                    if fail_dead is not None:
                        fail_dead()
                    if under_lock is not None and pending is None:
                        under_lock()  # else in the background, after the pending finish (`_then` below)
                    counts = count_states(study)
                    target = trial_budget(study, default_budget)
                    if counts.done >= target:
                        report.budget_met, report.stopped_by = True, "budget"
                        break
                    decision = stopper.decision(study) if stopper is not None else None
                    if decision is not None:  # study.stop: the same decision in every worker (shared study)
                        report.stopped_by = decision.reason
                        if study.user_attrs.get(names.STUDY_ATTR_STOPPED) != str(decision):
                            study.set_user_attr(names.STUDY_ATTR_STOPPED, str(decision))
                            log.info("study %s stops before its budget: %s", study.study_name, decision)
                        break
                    if not went_on:  # a `stopped` from before this worker's study.stop let it go on is not true
                        went_on = True
                        if study.user_attrs.get(names.STUDY_ATTR_STOPPED):
                            study.set_user_attr(names.STUDY_ATTR_STOPPED, None)
                    if pending_complete is not None and stopper is not None and stopper.decision(
                            study, assume=[pending_complete]) is not None:
                        pass  # the trial about to finish stops the study: told first, the check above decides
                    elif counts.waiting > 0 or counts.done + counts.running + counts.waiting < target:
                        try:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                                # this loop beats for its trials itself (`Heartbeat`), as study.optimize would
                                warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
                                trial = study.ask()
                        except Exception as exc:  # noqa: BLE001 - only a storage outage is handled here
                            if not is_transient(exc):
                                raise
                            # creating or claiming a trial is not retried by the storage (a lost answer would
                            # leave a phantom trial): one warning, and the loop asks again
                            log.warning("the Optuna storage was unreachable while this worker started a trial "
                                        "(%s); trying again", type(exc).__name__)
                            unreachable = True
                        else:
                            heartbeat.hold(trial)
                            look_ahead.assume(pending_complete)  # its sampler sees the trial about to finish told
                handed: optuna.trial.FrozenTrial | None = None
                if pending is not None:  # asked first (its sampler saw this one as it will be told: `LookAhead`)
                    finisher.submit(_then(pending, under_lock))
                    pending, pending_complete, handed = None, None, pending_complete
                if trial is None and not unreachable and handed is not None and at_last_finish is not None:
                    try:
                        told = _as_told(study, handed)
                        if told is not None:
                            at_last_finish(told, list(study.directions))
                    except Exception as exc:  # noqa: BLE001 - work done ahead; the sweep's end does it anyway
                        log.warning("could not prepare the sweep's end while its last trial was recorded: %s", exc)
                if trial is not None:
                    deferred = settle(trial, partial(objective, trial))
                    if deferred is not None:
                        pending, pending_complete = finish_job(trial, deferred), deferred.as_complete(trial)
                elif unreachable:
                    _sleep(poll_s)
                elif handed is None and not finisher.busy:  # a finish just handed over: the next round waits for it
                    _await_running(study, poll_s)  # other workers are running the remaining trials
        finally:
            lock.release()
            if pending is not None:  # trained: finish it even when the loop ends on an error or a signal
                finisher.submit(pending)
            finisher.wait()
    return report


def _as_told(study: optuna.Study, handed: optuna.trial.FrozenTrial) -> list[optuna.trial.FrozenTrial] | None:
    """The study's trials once `handed` (its values; `Deferred.as_complete`) is told COMPLETE; None while any
    other trial is still running or waiting (then the end is not known yet)."""
    trials = study.get_trials(deepcopy=True)
    live = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    if any(t.state in live and t.number != handed.number for t in trials):
        return None
    # its reports and params as stored; the state and values it will be told
    return [as_told(t, handed.values) if t.number == handed.number else t for t in trials]


def _then(job: Callable[[], None], after: Callable[[], Any] | None) -> Callable[[], None]:
    """`job`, then `after` (if any) in the same background run."""
    if after is None:
        return job

    def both() -> None:
        job()
        after()
    return both


def _ended_elsewhere(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial | None:
    """The trial, if it has been finished by someone else (the stale-heartbeat check of another worker fails a
    trial whose heartbeat is late, e.g. across a storage restart)."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    return trial if trial is not None and trial.state.is_finished() else None


def log_outcome(study: optuna.Study, frozen: optuna.trial.FrozenTrial, error: BaseException | None) -> None:
    """The line Optuna's own optimize loop logs for a finished trial, on Optuna's logger (its verbosity
    applies). Stops (Ctrl-C/SIGTERM, MLflow outages) are one line; a crash of the user's code keeps its
    traceback."""
    logger = optuna.logging.get_logger("optuna.study.study")
    if frozen.state == optuna.trial.TrialState.COMPLETE:
        value = frozen.values[0] if frozen.values and len(frozen.values) == 1 else frozen.values
        best = ""
        if len(study.directions) == 1:
            top = best_trial(study)  # of the trials siamese-sweep measured (`sweeps.best`)
            if top is not None:
                best = f" Best is trial {top.number} with value: {top.value}."
        logger.info("Trial %d finished with value%s: %s and parameters: %s.%s", frozen.number,
                    "" if frozen.values and len(frozen.values) == 1 else "s", value, frozen.params, best)
    elif frozen.state == optuna.trial.TrialState.PRUNED:
        logger.info("Trial %d pruned. %s", frozen.number, error or "")
    else:
        # no traceback where it names nothing the user can act on beyond the message: a stop, an unreachable
        # server, a sampled combination the config refuses (the trace is siamese-sweep's own frames)
        quiet = isinstance(error, (KeyboardInterrupt, TrackingUnavailable, InvalidTrialConfig))
        logger.warning("Trial %d failed with parameters: %s because of the following error: %r.", frozen.number,
                       frozen.params, error, exc_info=None if quiet or error is None else error)


def clear_finished_checkpoints(study: optuna.Study, root: Path | None) -> int:
    """Delete this machine's checkpoints of trials that nothing will resume; returns how many.

    A trial clears its own checkpoint when it ends, unless it is retried; a worker killed mid-trial cannot, and
    a retry that never runs (``max_retries`` used up, budget met) leaves it behind. Once the budget is met, a
    checkpoint whose trial, and every retry of it, has finished is such a leftover.
    """
    if root is None or not root.is_dir():
        return 0
    import shutil

    live = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))
    pending = {t.number for t in live} | {n for n in (retried_trial_number(t) for t in live) if n is not None}
    removed = 0
    for folder in root.glob("trial-*"):
        number = folder.name[len("trial-"):]
        if number.isdigit() and int(number) not in pending:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    try:
        root.rmdir()  # once empty
    except OSError:
        pass
    if removed:
        log.info("removed %d leftover checkpoint folder(s) under %s", removed, root)
    return removed
