"""A trial's finishing work off the training critical path, and the heartbeat of the trials a worker holds.

With ``tracking.finish_in_background`` (`records_in_background`), what is left of a trial once it has trained
and been scored — its plots, its logged model, its final metrics, ending its MLflow run, telling Optuna, the
after-trial callbacks — runs in one background thread while the next trial trains. The CPU-heavy part (plots, the
model directory and their uploads) is done by a helper process at idle priority (`sweeps.recorder`), which this
thread waits for: in a thread of the worker that work held the GIL and took the CPU the training uses, and
saved little (+6.9 % over no tracking against +7.3 % in line, BENCHMARKS.md §2).

The order is what keeps sweeps reproducible and "Optuna COMPLETE => MLflow run complete" true:

* a trial is told only when its finish is done: a COMPLETE trial's run is FINISHED with its model and plots;
* the next trial is asked *before* the previous one's finish starts, and only after every earlier one was
  told; its sampler sees the trial just trained as it will be told (`LookAhead`), so it sees the same trials
  as in line whatever the finish takes, and a seeded sweep is the same sweep in both modes;
* a pruner decides only after the pending finish is told (`Finisher.wait` from `OptunaReporter`), so a
  pruning decision never depends on how long a finish took.

One job at a time: `submit` first waits for the previous one. An exception in a job is raised again by the
next `wait` (in the worker's thread), so storage trouble while telling stops the worker as it did before.
"""
from __future__ import annotations

import copy
import datetime
import logging
import math
import threading
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

import optuna

from . import names

log = logging.getLogger(__name__)


def records_in_background(setting: bool | str) -> bool:
    """``tracking.finish_in_background`` for this worker process, "auto" decided by its cores.

    The helper runs at idle priority: it is free only where a core is idle. A worker whose TensorFlow pools span
    two or more cores and all it may use leaves gaps between ops (a 2-thread trial on 2 cores used 12.5 CPU s
    in 8.3 s), and there the background finish was faster: 8.70 s per trial against 8.95 s in line. On one core,
    or on a share of them (``--workers N``, ``--threads`` below the usable cores: other workers take the rest),
    the helper's own cost (its imports, the staged files read back) comes on top of the recording: +14.4 %
    against +10.8 % in line beside a no-tracking sweep (benchmarks/tracking_overhead.py, sequential and
    ``--side-by-side``, BENCHMARKS.md §2).
    """
    if setting != "auto":
        return bool(setting)
    from siamese_core.cpus import usable_cores
    from siamese_core.runtime import thread_counts

    cores = usable_cores()
    threads = thread_counts()[0] or cores  # 0: TensorFlow's default, a thread per core
    return cores >= 2 and threads >= cores


@dataclass(frozen=True)
class Deferred:
    """What an objective returns when the rest of its trial should run in the background: `finish` returns
    the objective value(s), or raises as the objective would have (`optuna.TrialPruned`, any error);
    `values` are what it will return if it succeeds (stop rules read them before it is told)."""

    finish: Callable[[], Any]
    values: float | list[float]

    def as_complete(self, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        """`trial` as it will be once told COMPLETE (for `sweeps.stopping.StudyStop.decision`)."""
        values = self.values if isinstance(self.values, list) else [self.values]
        frozen = optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=values,
                                           params=trial.params, distributions=trial.distributions)
        frozen.number = trial.number
        return frozen


def as_told(stored: optuna.trial.FrozenTrial, values: list[float] | None) -> optuna.trial.FrozenTrial:
    """A copy of `stored` (its params, reports and attributes as stored) told COMPLETE with `values`, and measured
    (`sweeps.best`): its worker writes the threshold with its results just before the tell. Without it the study
    plots drawn ahead showed the last trial as failed (`sweeps.best.ranked_view`)."""
    told = copy.copy(stored)
    told.state, told.values = optuna.trial.TrialState.COMPLETE, values
    told.user_attrs = {names.TRIAL_ATTR_THRESHOLD: math.nan, **stored.user_attrs}
    told.datetime_complete = stored.datetime_complete or datetime.datetime.now()
    return told


class LookAhead:
    """Show the trial just trained, still RUNNING while its finish runs, as it will be told to the sampler of the
    next trial — which a sequential loop would have asked after that tell.

    Without it the background mode changed a seeded sweep: TPE counted one trial fewer towards its random
    start-up and, with ``constant_liar``, weighed the trial just trained as a running one (its worst), so the
    sweep left the start-up a trial later and drew other parameters (tests/sweeps/test_finisher.py).

    Samplers read trials through ``Study._get_trials`` (TPE from the per-ask cache and, with ``constant_liar``,
    from the storage; GP, CMA-ES, QMC and NSGA-II the same way; the grid sampler reads the storage itself, and
    counts a running trial's point as taken, so it needs nothing here); Optuna has no public hook for
    what a sampler sees, so this shadows that one method on the study while a worker runs, and only for the
    worker's own thread (its sampler; the finisher's tell and callbacks read the storage as it is). A trial
    already told (or failed) is shown as stored. The test above pins the behaviour: the same seed gives the same
    trials, values and states with the finish in line and in the background.
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study = study
        self._thread = threading.get_ident()
        self._assumed: optuna.trial.FrozenTrial | None = None
        self._own: Callable[..., list[optuna.trial.FrozenTrial]] = study._get_trials

    def __enter__(self) -> LookAhead:
        self._before = vars(self._study).get("_get_trials")  # another loop's, on this study object (else None)
        self._study._get_trials = self._get_trials  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._before is None:
            vars(self._study).pop("_get_trials", None)  # the class's method again
        else:
            self._study._get_trials = self._before  # type: ignore[method-assign]
        self._assumed = None

    def assume(self, told: optuna.trial.FrozenTrial | None) -> None:
        """From now on, in this thread, show trial ``told.number`` as `told` says while it is RUNNING (None: none)."""
        self._assumed = told

    def _get_trials(self, deepcopy: bool = True, states: Container[optuna.trial.TrialState] | None = None,
                    use_cache: bool = False) -> list[optuna.trial.FrozenTrial]:
        assumed = self._assumed
        if assumed is None or threading.get_ident() != self._thread:
            return self._own(deepcopy, states, use_cache)
        shown = [as_told(t, assumed.values) if t.number == assumed.number and t.state == optuna.trial.TrialState.RUNNING
                 else t for t in self._own(False, None, use_cache)]
        if states is not None:
            shown = [t for t in shown if t.state in states]
        return copy.deepcopy(shown) if deepcopy else shown


class Finisher:
    """One background job at a time; the worker's thread waits for it before anything that must see it."""

    def __init__(self, name: str = "siamese-sweep-finish") -> None:
        self.name = name
        self._done: threading.Event | None = None  # set when the current job has ended
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._done is not None and not self._done.is_set()

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` in the background, once the previous job is done."""
        self.wait()
        done = threading.Event()
        self._done = done
        threading.Thread(target=self._run, args=(job, done), name=self.name, daemon=True).start()

    def _run(self, job: Callable[[], None], done: threading.Event) -> None:
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - handed to the worker's thread by `wait`
            self._error = exc
        finally:
            done.set()

    def wait(self) -> None:
        """Block until the current job is done; raise its exception, if it had one.

        An event, not `Thread.join`: a signal's exception raised inside ``join`` made CPython 3.11 mark the job's
        thread stopped (the bpo-45274 branch of ``_wait_for_tstate_lock``), so the clean-up's next wait returned
        at once, the helper was killed and the interpreter exited under the still-running job (an abort, exit 134,
        the trial and its run left RUNNING)."""
        done = self._done
        if done is not None:
            done.wait()
            self._done = None
        error, self._error = self._error, None
        if error is not None:
            raise error


class Heartbeat:
    """Optuna's heartbeat for every trial this worker holds: the one training in the worker's thread and the
    one finishing in the background. ``study.optimize`` beats only while its objective runs; a trial told
    after a background finish must beat until it is told, or another worker's ``fail_stale_trials`` fails it.
    On a journal storage, which Optuna gives no heartbeat, the beat is the trial's ``siamese_sweep_beat`` system
    attr, rewritten every ``beat_interval``; `sweeps.objective.SilentTrials` fails a trial whose beat stops.

    Optuna has no public accessor for a study's storage or a trial's id; its own optimize loop uses
    ``study._storage`` and ``trial._trial_id`` the same way (``optuna/study/_optimize.py``).
    tests/sweeps/test_finisher.py pins that a trial held here is not failed as stale.
    """

    def __init__(self, study: optuna.Study) -> None:
        storage: Any = study._storage  # RDBStorage (and its cache) implement Optuna's BaseHeartbeat
        self._optuna_beats = hasattr(storage, "record_heartbeat")
        # a journal storage has no heartbeat of Optuna's: the beat is a system attr (`names.SYSTEM_ATTR_BEAT`)
        interval = (storage.get_heartbeat_interval() if self._optuna_beats
                    else getattr(storage, "beat_interval", None))
        self._storage = storage
        self.interval: float | None = float(interval) if interval else None
        self._held: dict[int, int] = {}  # trial number -> trial id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self._thread = threading.Thread(target=self._beat, name="siamese-sweep-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def hold(self, trial: optuna.Trial) -> None:
        with self._lock:
            self._held[trial.number] = trial._trial_id
        self._record([trial._trial_id])  # at once, as Optuna's own heartbeat thread does

    def release(self, trial: optuna.Trial) -> None:
        with self._lock:
            self._held.pop(trial.number, None)

    def _record(self, trial_ids: list[int]) -> None:
        if self.interval is None:
            return
        for trial_id in trial_ids:
            try:
                if self._optuna_beats:
                    self._storage.record_heartbeat(trial_id)
                else:
                    self._storage.set_trial_system_attr(trial_id, names.SYSTEM_ATTR_BEAT, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # told meanwhile (released after this beat's list was taken): it needs no beat
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the grace period covers a few
                log.warning("could not record the heartbeat of trial id %d: %s", trial_id, exc)

    def _beat(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self._held.values())
            self._record(ids)
