"""One Optuna trial = one `siamese_core.train` run, tracked in one MLflow child run.

`Objective` is what a worker (`sweeps.worker.take_trials`) or a plain ``study.optimize`` calls; every call makes
a `TrialAttempt`, which holds what belongs to that one trial (its checkpoint folder, its MLflow run). With
``tracking.finish_in_background`` the call returns once the trial is trained and scored, and hands its
recording to the worker as a `sweeps.finisher.Deferred`. How a trial ends — Optuna state, MLflow run status,
retried or not — is data in `sweeps.outcomes`; this module only carries it out.

Trials stopped from outside (interrupted, MLflow down, worker died) are queued again with the same
parameters; the retry records the original in the system attr ``failed_trial`` and the run tag
``siamese_sweep.retry_of``, and resumes from the original's last epoch checkpoint
(``<checkpoint root>/trial-<original number>``; with shared checkpoints, downloaded from the newest copy in an
earlier attempt's MLflow run when this machine has none or an older one: `sweeps.checkpoints`).
"""
from __future__ import annotations

import functools
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import optuna
from mlflow.entities import Dataset

from siamese_core.errors import ConfigError
from siamese_core.metrics import same_at_threshold

from . import margin, names, outcomes, space
from .directions import TRIAL_METRICS
from .errors import Interrupted, InvalidTrialConfig, NonFiniteObjective, TrackingUnavailable
from .finisher import Deferred, Finisher
from .liveness import local_worker_pid, pid_space, worker_id
from .outcomes import Outcome
from .recorder import Job, Recorder, record, stage
from .registry import model_id_from_uri
from .secrets import mask_secrets
from .signals import StopRequest, begin_cleanup, pid_alive, stop_check_callback
from .spec import SweepSpec
from .storage import driver_message, frozen_trial, requeue_trial, retried_trial_number
from .tracking import Tracker, TrialRun, dataset_entity, run_url

log = logging.getLogger(__name__)

MAX_DETAIL = 1000  # characters of the reason's message kept in the run tag
QUICK_END_S = 5.0  # one short try to end a run after MLflow refused a call for its whole retry budget


def claim_trial(trial: optuna.Trial) -> None:
    """Write which process runs `trial` (``worker_pid_space``, then ``worker``: a reader that finds the pid finds
    where it is meant) before the trial does anything else: a worker on this machine killed after these land
    leaves a pid that `fail_dead_worker_trials` checks at once."""
    trial.set_user_attr(names.TRIAL_ATTR_WORKER_PID_SPACE, pid_space())
    trial.set_user_attr(names.TRIAL_ATTR_WORKER, worker_id())


class SilentTrials:
    """RUNNING trials that show no sign of a live worker, by this process's clock: their ``worker`` attr and
    their beat (``siamese_sweep_beat``, rewritten every ``study.heartbeat_interval`` by the worker's
    `sweeps.finisher.Heartbeat` on a journal storage) unchanged for `grace_s` since this process saw them so.

    Only a change is looked for, never a time compared: a trial's start and beat are another machine's clock. So
    a worker dead on any machine is found, one killed right after asking for its trial (no attr, no beat) too;
    a trial is failed no sooner than `grace_s` after this process first saw it.
    """

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self.clock = clock
        self._seen: dict[int, tuple[Any, float]] = {}  # trial number -> (its signs, since when unchanged)

    def overdue(self, running: list[optuna.trial.FrozenTrial]) -> set[int]:
        now = self.clock()
        signs = {t.number: (t.user_attrs.get(names.TRIAL_ATTR_WORKER), t.system_attrs.get(names.SYSTEM_ATTR_BEAT))
                 for t in running}
        seen = {}
        for number, sign in signs.items():
            before = self._seen.get(number)
            seen[number] = before if before is not None and before[0] == sign else (sign, now)
        self._seen = seen
        return {n for n, (_, since) in seen.items() if now - since >= self.grace_s}


def fail_dead_worker_trials(study: optuna.Study, *, max_retries: int,
                            silent: SilentTrials | None = None) -> list[int]:
    """On a storage without Optuna's heartbeat (a journal file): fail the RUNNING trials whose worker (their
    ``worker`` attr, ``host:pid``) was a process on this machine that no longer exists, and, with `silent`, those
    whose worker shows no sign of life, and queue them again, as Optuna's heartbeat does on RDB storages.
    Returns their numbers.

    Without it a SIGKILLed worker's trial stayed RUNNING for good, and the rerun, counting it as running, waited
    for it once the rest of the budget was done. The pid finds a dead worker on this machine at once; the
    silence, on any machine, after ``study.grace_period``.
    """
    failed = []
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    overdue = silent.overdue(running) if silent is not None else set()
    for t in running:
        worker = t.user_attrs.get(names.TRIAL_ATTR_WORKER)
        pid = local_worker_pid(t)
        if pid is not None and not pid_alive(pid):
            gone = f"its worker {worker} is gone from this machine"
        elif silent is not None and t.number in overdue:
            gone = (f"has had no sign of its worker {worker or '(none: it died right after asking for it)'} for "
                    f"{silent.grace_s:g}s")
        else:
            continue
        queued = requeue_trial(study, t, max_retries=max_retries)  # while RUNNING
        # Optuna has no public call that sets a user attr on a trial this process did not ask for (its own
        # `fail_stale_trials` writes through the storage too); pinned by tests/sweeps/test_public_apis.py
        study._storage.set_trial_user_attr(t._trial_id, names.TRIAL_ATTR_REASON, outcomes.DEAD_WORKER.reason)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        log.warning("trial %d %s; failed (%s)%s", t.number, gone, outcomes.DEAD_WORKER.reason,
                    " and queued again" if queued else f", not queued again (retried {max_retries} times already)")
        failed.append(t.number)
    return failed


@functools.cache
def allocator_tags() -> dict[str, str]:
    """The memory allocator as it is in this (worker) process: the setting and a measured re-fault share.

    Measured once per process (the settings are made before TensorFlow loads and stay): the probe took 24 ms
    of every trial's start (benchmarks/tracking_profile.py), for the same answer each time."""
    from siamese_core import allocator

    return {names.TAG_ALLOCATOR: allocator.state(), names.TAG_ALLOCATOR_REFAULTS: f"{allocator.probe():.3f}"}


def thread_tags() -> dict[str, str]:
    """TensorFlow's pool sizes as they are in this worker process (two workers on one machine must not
    oversubscribe it; 0 is TensorFlow's own default, one thread per core)."""
    from siamese_core.runtime import thread_counts

    intra, inter = thread_counts()
    return {names.TAG_THREADS: f"{intra}/{inter}"}


def measure_latency_ms(result: Any, *, batch: int = 64, repeats: int = 3) -> float:
    """Median milliseconds to score one pair, measured on a batch of test-shaped inputs."""
    model = result.model
    inputs = [np.zeros((batch, *inp.shape[1:]), dtype=inp.dtype) for inp in model.inputs]
    model(inputs, training=False)  # warm-up / trace
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(inputs, training=False)
        times.append(time.perf_counter() - t)
    return float(np.median(times) / batch * 1000.0)


def per_pair_validation(result: Any) -> dict[str, Any] | None:
    """The last validation's pairs as the trial keeps them for the report's paired test (`sweeps.margin`)."""
    arrays = result.val_arrays or {}
    if "scores" not in arrays or "labels" not in arrays:
        return None
    scores = np.asarray(arrays["scores"], dtype=np.float64).reshape(-1)
    higher = bool(result.models.higher_is_same)
    labels = np.asarray(arrays["labels"]).reshape(-1).astype(bool)
    correct = same_at_threshold(scores, result.threshold, higher_is_same=higher) == labels
    return margin.encode_per_pair(scores if higher else -scores, labels, correct)


def objective_values(spec: SweepSpec, result: Any, measured: dict[str, float]) -> list[float]:
    """The study's objectives: last-epoch history values, or values `measured` per trial (`TRIAL_METRICS`)."""
    last = result.history[-1] if result.history else {}
    return [float(measured[m]) if m in TRIAL_METRICS else float(last.get(m, float("nan")))
            for m in spec.study.objective_metrics]


@dataclass
class TrialContext:
    """What every trial of one worker shares."""

    spec: SweepSpec
    tracker: Tracker
    experiment_id: str
    parent_run_id: str
    study_name: str
    load_data: Callable[[Any], Any]
    checkpoint_root: Path | None = None
    share_checkpoints: bool = False  # also copy them into each trial's MLflow run (`sweeps.checkpoints`)
    finisher: Finisher | None = None  # records trials in the background (`sweeps.finisher`); None: in line
    recorder: Recorder | None = None  # with a finisher: plots, files and model in an idle helper process

    def checkpoint_dir(self, original_number: int) -> Path | None:
        """Keyed by the original trial's number, so a retry finds the epochs its original saved."""
        return None if self.checkpoint_root is None else self.checkpoint_root / f"trial-{original_number}"


class Objective:
    """Callable for a worker or ``study.optimize``: runs, tracks and scores one trial."""

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx

    def __call__(self, trial: optuna.Trial) -> float | list[float] | Deferred:
        """Train and score the trial; then record it here, or return its recording as a `Deferred` when the
        worker finishes trials in the background (`TrialContext.finisher`)."""
        attempt = TrialAttempt(self.ctx, trial)
        try:
            values = attempt.run()
        except BaseException as exc:  # noqa: BLE001 - every end is recorded, then re-raised for Optuna
            self._raise_settled(attempt, exc)
        if self.ctx.finisher is not None:
            return Deferred(lambda: self._finish(attempt, values, staged_here=False), values)
        return self._finish(attempt, values)

    def _finish(self, attempt: TrialAttempt, values: float | list[float], *,
                staged_here: bool = True) -> float | list[float]:
        """Record the trial, then end its run. In the background (`staged_here` False) the trained model is
        first staged for the recording helper there: the Keras save (0.07 s per trial, `benchmarks/
        tracking_profile.py --clock`, BENCHMARKS.md §2) then overlaps the next trial instead of delaying it."""
        try:
            if not staged_here:
                attempt.send_to_recorder()
            attempt.record()
            if staged_here:  # in line, in the worker's thread: a stop only recorded in Keras's save ends it too
                StopRequest.check()
            attempt.conclude(outcomes.COMPLETED)
        except BaseException as exc:  # noqa: BLE001
            self._raise_settled(attempt, exc)
        return values

    @staticmethod
    def _raise_settled(attempt: TrialAttempt, exc: BaseException) -> NoReturn:
        """Record the end `exc` stands for, then raise what Optuna should see."""
        outcome, cause = attempt.settle(exc)
        if outcome.state == outcomes.PRUNED_STATE:
            raise optuna.TrialPruned(str(cause)) from None
        if outcome.reason == outcomes.INTERRUPTED.reason and not isinstance(cause, KeyboardInterrupt):
            # the signal's exception came back as another type: Optuna would catch that and the worker
            # would start the next trial (the queued retry) with the stop already spent
            raise Interrupted(f"received signal {StopRequest.signum}") from cause
        if cause is exc:
            raise exc
        raise cause from exc


class TrialAttempt:
    """One trial in this worker: its checkpoint, its MLflow run, and how it ended."""

    def __init__(self, ctx: TrialContext, trial: optuna.Trial) -> None:
        self.ctx = ctx
        self.trial = trial
        self.checkpoint: Path | None = None
        self.retry_of: int | None = None
        self.earlier: list[int] = []  # numbers of the trials this one repeats, the original first
        self.mlflow_run: TrialRun | None = None
        self.dataset: Dataset | None = None  # the MLflow dataset input of this trial's run
        self._trained: tuple[TrialRun, Any, dict[str, float]] | None = None  # between `run` and `record`
        self._uploader: Any = None  # `sweeps.callbacks.CheckpointUploader` when checkpoints go to MLflow
        self._job: Job | None = None  # what the recording helper is doing for this trial (`sweeps.recorder`)
        self._heard: set[str] = set()  # error-severity finding codes heard while training (`MlflowEpochLogger`)

    # ------------------------------------------------------------------ config -> train -> log result
    def run(self) -> float | list[float]:
        """Train and log the trial; returns its objective value(s), raises for any other outcome."""
        from siamese_core.training import train

        from .callbacks import CheckpointUploader, MlflowEpochLogger, OptunaReporter  # Keras: once a trial runs

        claim_trial(self.trial)
        overrides = self._begin()
        run = self._start_run()
        if self.ctx.spec.hypermodel:  # the user's build(hp), after the run exists: its failure ends the run too
            overrides.update(self._hypermodel_overrides(run))
        try:
            config = space.trial_config(self.ctx.spec, overrides)
        except ConfigError as exc:
            raise InvalidTrialConfig(str(exc)) from None
        study = self.ctx.spec.study
        # the user's own mlflow.log_* / autolog calls (dataset loader, encoder, loss, callbacks) land in this run
        with run.active(system_metrics=self.ctx.spec.tracking.system_metrics):
            data = self.ctx.load_data(config)
            self._log_inputs(run, config, data)
            logger = MlflowEpochLogger(run)
            self._heard = logger.errors
            callbacks: list[Any] = [stop_check_callback(), logger]
            if not study.multi_objective:
                finisher = self.ctx.finisher  # a pruner decides once the previous trial is told
                callbacks.append(OptunaReporter(self.trial, study.objective_metrics[0],
                                                before_prune=finisher.wait if finisher is not None else None))
            uploader = None
            if self.ctx.share_checkpoints and self.checkpoint is not None:
                uploader = CheckpointUploader(run, every_s=self.ctx.spec.tracking.checkpoint_copy_seconds)
                self._uploader = uploader
                callbacks.append(uploader)
                if self.earlier:
                    self._fetch_checkpoint()
            try:
                result = train(config, callbacks=callbacks, data=data, checkpoint_dir=self.checkpoint)
            finally:
                if uploader is not None:
                    uploader.close()  # the last epoch's copy is in MLflow (or given up) before anything else
        measured = {"params": float(result.models.training.count_params()), "train_seconds": float(result.seconds),
                    "latency_ms": measure_latency_ms(result)}
        values = objective_values(self.ctx.spec, result, measured)
        if not all(math.isfinite(v) for v in values):
            raise NonFiniteObjective(f"objective {list(study.objective_metrics)} = {values}")
        StopRequest.check()  # a stop only recorded in TensorFlow after the last batch (`sweeps.signals`) stops it too
        self._trained = (run, result, measured)
        return values[0] if len(values) == 1 else values

    def send_to_recorder(self) -> None:
        """With a recording helper: stage what `run` trained and send it there; `record` collects the answer."""
        recorder = self.ctx.recorder
        if recorder is None:
            return
        assert self._trained is not None, "send_to_recorder() after run()"
        run, result, _ = self._trained
        job = self._stage(run, result)
        try:
            recorder.submit(job)
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        self._job = job

    def _stage(self, run: TrialRun, result: Any) -> Job:
        """What needs the trained Keras model, written to a job folder (`sweeps.recorder.stage`)."""
        tracking = self.ctx.spec.tracking
        return stage(result, self.trial.number, run_id=run.run_id, experiment_id=self.ctx.experiment_id,
                     plots=tracking.log_plots, step=len(result.history),
                     model_name=names.logged_model_name(self.trial.number) if tracking.log_models else None)

    def record(self) -> None:
        """Log what `run` trained (metrics, artifacts, the model, the trial's attrs); the trial is then told."""
        assert self._trained is not None, "record() after run()"
        run, result, measured = self._trained
        self._log_result(run, result, measured)
        self._trained = None  # the model and arrays can go

    def _begin(self) -> dict[str, Any]:
        """Find out whether this trial repeats another, and sample its train-config overrides."""
        trial, spec = self.trial, self.ctx.spec
        frozen = frozen_trial(trial)
        self.retry_of = retried_trial_number(frozen)
        if self.retry_of is not None:
            self.earlier = [int(n) for n in frozen.system_attrs.get(names.SYSTEM_ATTR_RETRY_HISTORY)
                            or [self.retry_of]]
        if self.retry_of is not None and frozen.user_attrs.get(names.TRIAL_ATTR_RUN_ID):
            # a retry queued before `requeue_trial` dropped the run id (an older siamese-sweep) has its original's
            trial.set_user_attr(names.TRIAL_ATTR_RUN_ID, "")
        self.checkpoint = self.ctx.checkpoint_dir(trial.number if self.retry_of is None else self.retry_of)
        return space.sample_overrides(trial, spec)

    def _hypermodel_overrides(self, run: TrialRun) -> dict[str, Any]:
        """Build the KerasTuner-style encoder for this trial; train-config hyperparameters become overrides. Called
        once the trial's run exists: a `build(hp)` that raises left a FAIL trial without a run."""
        from . import hypermodel

        spec, trial = self.ctx.spec, self.trial
        try:
            model, overrides = hypermodel.build_for_trial(trial, spec.hypermodel or "", set(spec.base.flat()))
        finally:  # with build(hp)'s hyperparameters, those it drew before it raised too
            sampled = ",".join(sorted(trial.params))
            run.in_background(lambda: run.set_tags({names.TAG_SAMPLED_PARAMS: sampled}))
        hypermodel.set_current_encoder(model)
        return {**overrides, "encoder.type": hypermodel.CURRENT_ENCODER}

    def _start_run(self) -> TrialRun:
        ctx, trial = self.ctx, self.trial
        tags: dict[str, Any] = {names.TAG_WORKER: worker_id(), **allocator_tags(), **thread_tags(),
                                names.TAG_RECORDING: (names.RECORDING_IN_LINE if ctx.finisher is None
                                                      else names.RECORDING_BACKGROUND),
                                names.TAG_SAMPLED_PARAMS: ",".join(sorted(trial.params))}  # sampled by `_begin`
        if self.retry_of is not None:
            tags[names.TAG_RETRY_OF] = self.retry_of
        run = ctx.tracker.start_trial_run(ctx.experiment_id, ctx.parent_run_id, study_name=ctx.study_name,
                                          trial_number=trial.number, tags=tags)
        self.mlflow_run = run  # from here on a failure ends it, even if the storage refuses the next write
        # a metric, not only the tag: MLflow's compare view and charts plot metrics and params on their axes;
        # queued, it goes in the params' request (or the end's, for a trial whose config is refused)
        run.log_metrics({"trial_number": trial.number}, step=0, send=False)
        # set while the trial trains, before it is told; a worker killed before they land leaves a run that
        # `sweeps.worker.reconcile_runs` finds by its tags, not by these
        attrs = {names.TRIAL_ATTR_RUN_ID: run.run_id}
        url = run_url(ctx.tracker.uri, ctx.experiment_id, run.run_id)
        if url:  # optuna-dashboard shows user attrs: one click from a trial to its run
            attrs[names.TRIAL_ATTR_RUN_URL] = url

        def set_attrs() -> None:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
        run.in_background(set_attrs)
        return run

    def _log_inputs(self, run: TrialRun, config: Any, data: Any) -> None:
        """The run's params and dataset input, sent while the trial trains (`TrialRun.in_background`)."""
        from siamese_core.models.encoders import unread_by_user_code

        unread = {f"encoder.{name}" for name in unread_by_user_code(config.encoder)} - set(self.trial.params)
        params = {k: v for k, v in config.flat().items() if k not in unread}
        params["dataset.fingerprint"] = data.info.fingerprint
        params["dataset.source"] = data.info.source
        self.dataset = dataset = dataset_entity(data.info)
        hp_only = {f"hp.{k}": v for k, v in self.trial.params.items() if k not in params}

        def send() -> None:
            run.log_params(params)
            run.log_dataset(dataset)
            if hp_only:
                run.log_params({**hp_only, "hypermodel": self.ctx.spec.hypermodel})
        run.in_background(send)

    def _log_result(self, run: TrialRun, result: Any, measured: dict[str, float]) -> None:
        """Everything a COMPLETE trial promises: metrics, artifacts, the model, then the trial's attrs."""
        ctx, trial = self.ctx, self.trial
        if result.resumed_from_epoch:
            # the epochs restored from the checkpoint were logged to the original trial's run, not this one
            for row in result.history[:result.resumed_from_epoch]:
                run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
            run.set_tags({names.TAG_RESUMED_FROM_EPOCH: result.resumed_from_epoch})
            trial.set_user_attr(names.TRIAL_ATTR_RESUMED_FROM_EPOCH, int(result.resumed_from_epoch))
        job, self._job = self._job, None
        if job is not None and ctx.recorder is not None:
            uri = ctx.recorder.result(job)  # the helper drew, uploaded and logged them
        else:  # in line: the same staging and recording, in this thread
            job = self._stage(run, result)
            try:
                uri = record(job, ctx.tracker)
            finally:
                shutil.rmtree(job.folder, ignore_errors=True)
        model_id = None
        if uri is not None:
            trial.set_user_attr(names.TRIAL_ATTR_MODEL_URI, uri)
            model_id = model_id_from_uri(uri)
        # final metrics are the LoggedModel's too (MLflow 3's Models tab, and registry versions made from it);
        # test_* name the dataset they were measured on
        # queued, then sent with the tags: one request (three before; each is server time on a busy core)
        step = len(result.history)
        run.log_metrics({f"test_{k}": v for k, v in result.test.items()}, step=step, model_id=model_id,
                        dataset=self.dataset, send=False)
        run.log_metrics({"threshold": result.threshold, **measured}, step=step, model_id=model_id, send=False)
        run.set_tags({**{names.diagnostic_tag(f.code): f.severity for f in result.findings},
                      names.TAG_EVAL_FINGERPRINT: result.data_info.eval_fingerprint or ""})
        run.flush()  # raises TrackingUnavailable: then the trial is FAIL, never COMPLETE with missing data
        last = result.history[-1] if result.history else {}
        for key in names.TRIAL_RESULT_METRICS:
            trial.set_user_attr(names.TRIAL_ATTR_TEST_PREFIX + key, float(result.test[key]))
            # what `promote --metric` ranks by (it never ranks by test)
            trial.set_user_attr(names.TRIAL_ATTR_VAL_PREFIX + key, float(last.get(f"val_{key}", math.nan)))
        trial.set_user_attr(names.TRIAL_ATTR_THRESHOLD, float(result.threshold))
        trial.set_user_attr(names.TRIAL_ATTR_DATASET_FINGERPRINT, result.data_info.fingerprint)
        trial.set_user_attr(names.TRIAL_ATTR_EVAL_FINGERPRINT, result.data_info.eval_fingerprint)
        per_pair = per_pair_validation(result)
        if per_pair is not None:
            trial.set_user_attr(names.TRIAL_ATTR_PER_PAIR_VAL, per_pair)
        labels = (result.val_arrays or {}).get("labels")
        if labels is not None:  # a small split's are fewer than pairs.val_pairs: the margin's count (`sweeps.margin`)
            same = np.asarray(labels).reshape(-1) >= 0.5
            trial.set_user_attr(names.TRIAL_ATTR_VAL_PAIRS, {"pairs": int(same.size), "positives": int(same.sum())})
        trial.set_user_attr(names.TRIAL_ATTR_DIAGNOSTIC_ERRORS,
                            sorted({f.code for f in result.findings if f.is_error}))

    # ------------------------------------------------------------------ recording the outcome
    def conclude(self, outcome: Outcome, *, detail: str = "") -> None:
        """Record a COMPLETE or PRUNED outcome. An error here (MLflow down) is raised: the trial becomes FAIL."""
        if outcome.state != outcomes.COMPLETE:
            self.trial.set_user_attr(names.TRIAL_ATTR_REASON, outcome.reason)
            if self._heard:  # collapse prunes a trial that also output one constant: the failure map counts both
                self.trial.set_user_attr(names.TRIAL_ATTR_DIAGNOSTIC_ERRORS, sorted(self._heard))
        if self.mlflow_run is not None:
            self._end_run(self.mlflow_run, outcome, detail)
        self._settle_checkpoint(outcome)

    def settle(self, exc: BaseException) -> tuple[Outcome, BaseException]:
        """Record the outcome `exc` stands for; returns it and the exception Optuna should see."""
        outcome = self._classify(exc)
        if outcome.state != outcomes.FAIL:
            try:
                self.conclude(outcome, detail=str(exc))
                return outcome, exc
            except BaseException as lost:  # noqa: BLE001 - e.g. MLflow refused to end the run
                exc, outcome = lost, self._classify(lost)
        self._fail(outcome, exc)
        return outcome, exc

    def _classify(self, exc: BaseException) -> Outcome:
        outcome = outcomes.classify(exc, stop_requested=StopRequest.requested, run_started=self.mlflow_run is not None)
        if outcome.reason == outcomes.INTERRUPTED.reason:
            begin_cleanup()  # a second signal must not cut the clean-up short
        return outcome

    def _fail(self, outcome: Outcome, exc: BaseException) -> None:
        """Record a FAIL outcome; errors on the way are logged, never raised over the original one."""
        try:
            self.trial.set_user_attr(names.TRIAL_ATTR_REASON, outcome.reason)
        except Exception:  # noqa: BLE001 - storage trouble must not hide the original error
            log.warning("could not record the failure reason of trial %d in Optuna", self.trial.number)
        self._settle_checkpoint(outcome)
        run = self.mlflow_run
        if run is None or run.closed:
            return
        if not outcome.ends_run or isinstance(exc, TrackingUnavailable):
            # MLflow just refused calls for the whole retry budget: don't spend it again on tags and end_run. Also
            # when a stop came meanwhile (the outcome is `interrupted` then): a Ctrl-C with MLflow down took 8
            # minutes, the budget three times
            self._end_quickly(run, outcome, exc)
            return
        try:
            self._end_run(run, outcome, f"{type(exc).__name__}: {exc}")
        except TrackingUnavailable:
            # the tags' request refused for the whole budget: a SIGTERM's clean-up with MLflow down then spent it
            # twice more on the metrics and the end (6 minutes, past the 180 s grace of the Kubernetes Job and
            # of Slurm's signal); now one budget and two short tries
            self._end_quickly(run, outcome, exc)
        except Exception as end_exc:  # noqa: BLE001
            log.warning("could not end MLflow run %s as %s: %s", run.run_id, outcome.run_status, end_exc)

    def _end_quickly(self, run: TrialRun, outcome: Outcome, exc: BaseException) -> None:
        """One short try to tag and end `run` after MLflow refused a call for its whole retry budget: a server that
        answers but cannot store artifacts (a full disk) takes the end, and the run is not left RUNNING for a
        rerun that may never come; still unreachable, the reconcile of a later worker ends it."""
        try:
            run.end_now({names.TAG_STATE: outcome.state, names.TAG_REASON: outcome.reason,
                         names.TAG_REASON_DETAIL: mask_secrets(f"{type(exc).__name__}: {exc}")[:MAX_DETAIL]},
                        outcome.run_status or outcomes.ORPHANED_RUN_STATUS, budget_s=QUICK_END_S)
        except Exception:  # noqa: BLE001 - still unreachable
            log.warning("trial %d failed (%s); run %s is ended %s once MLflow answers", self.trial.number,
                        outcome.reason, run.run_id, outcome.run_status)

    def _end_run(self, run: TrialRun, outcome: Outcome, detail: str) -> None:
        """Tag and end `run`; a `TrackingUnavailable` from the tags is raised without ending it (each of the two
        requests of the end would spend the retry budget again: the caller's short try ends it)."""
        tags: dict[str, Any] = {names.TAG_STATE: outcome.state}
        if outcome.state != outcomes.COMPLETE:
            tags[names.TAG_REASON] = outcome.reason
        if detail:
            tags[names.TAG_REASON_DETAIL] = mask_secrets(detail)[:MAX_DETAIL]
        try:
            run.set_tags(tags)
        except TrackingUnavailable:
            raise
        except BaseException:
            run.end(outcome.run_status or outcomes.ORPHANED_RUN_STATUS)
            raise
        run.end(outcome.run_status or outcomes.ORPHANED_RUN_STATUS)

    # ------------------------------------------------------------------ checkpoints and retries
    def _settle_checkpoint(self, outcome: Outcome) -> None:
        """A retried trial keeps its checkpoint for the retry; any other end deletes it."""
        if outcome.retried:
            if self._uploader is not None:
                self._uploader.copy_latest()  # a retry elsewhere resumes from the newest epoch, not the last copy
            self._requeue()
        else:
            self._clear_checkpoint()

    def _clear_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        from siamese_core.checkpoint import clear

        clear(self.checkpoint)
        try:
            self.checkpoint.parent.rmdir()  # the study's checkpoint folder, once it is empty
        except OSError:
            pass
        if self.ctx.share_checkpoints:
            from . import checkpoints

            # this attempt's run holds a copy only if it started one (the interval keeps most trials local)
            own = self._uploader is not None and self._uploader.copies > 0
            run_ids = self._attempt_run_ids(include_own=own)
            if run_ids:
                checkpoints.delete(self.ctx.tracker, run_ids)

    def _attempt_run_ids(self, *, include_own: bool) -> list[str]:
        """The MLflow runs of the earlier attempts at this trial (newest first), and this one's if asked."""
        own = [self.mlflow_run.run_id] if include_own and self.mlflow_run is not None else []
        if not self.earlier:
            return own
        try:
            by_number = {t.number: t for t in self.trial.study.get_trials(deepcopy=False)}
        except Exception as exc:  # noqa: BLE001 - storage trouble: this attempt only
            log.warning("could not look up the earlier attempts of trial %d: %s", self.trial.number,
                        driver_message(exc))
            return own
        runs = [by_number[n].user_attrs.get(names.TRIAL_ATTR_RUN_ID) for n in reversed(self.earlier)
                if n in by_number]
        return own + [r for r in runs if r]

    def _fetch_checkpoint(self) -> None:
        """A retry: bring the newest checkpoint of its earlier attempts here, unless this machine has it."""
        from . import checkpoints

        assert self.checkpoint is not None
        checkpoints.fetch(self.ctx.tracker, self._attempt_run_ids(include_own=False), self.checkpoint)

    def _requeue(self) -> None:
        """Queue this trial again (same params) while it is still RUNNING, so the budget count never dips."""
        trial, max_retries = self.trial, self.ctx.spec.study.max_retries
        try:
            queued = requeue_trial(trial.study, frozen_trial(trial), max_retries=max_retries)
        except Exception as exc:  # noqa: BLE001 - storage trouble must not hide the original error
            log.warning("could not queue trial %d again: %s", trial.number, exc)
            return
        if queued:
            log.info("trial %d queued again with the same parameters", trial.number)
        else:
            log.warning("trial %d was retried %d times already; not queued again", trial.number, max_retries)
