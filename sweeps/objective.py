"""One Optuna trial = one `siamese_core.train` run, tracked in one MLflow child run.

Outcomes and how they are recorded:

=====================  ===============  ==================  ==========================
what happened          Optuna state     MLflow run status   reason tag (optuna.reason)
=====================  ===============  ==================  ==========================
trained, all logged    COMPLETE         FINISHED            -
pruner stopped it      PRUNED           FINISHED            ``pruned``
diagnostic fatal       PRUNED           FAILED              the code (``nan_loss``...)
invalid combination    FAIL             FAILED              ``invalid_config``
crash                  FAIL             FAILED              exception type
MLflow down            FAIL             KILLED (reconciled) ``tracking_unavailable``
Ctrl-C / SIGTERM       FAIL             KILLED              ``interrupted``
worker died (SIGKILL)  FAIL (stale)     KILLED (reconciled) ``stale_heartbeat``
=====================  ===============  ==================  ==========================

Trials stopped from outside (interrupted, MLflow down, worker died) are queued
again with the same parameters; the retry records the original in the system
attr ``failed_trial`` and the run tag ``optuna.retry_of``, and resumes from the
original's last epoch checkpoint (``<checkpoint root>/trial-<original number>``).
Checkpoints are deleted once a trial is COMPLETE, PRUNED or failed for its own reasons.
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

from siamese_core.errors import ConfigError, InputError, TrainingFailed

from . import artifacts, modelio, space
from .secrets import mask_secrets
from .spec import TRIAL_METRICS, SweepSpec
from .storage import requeue_trial, retried_trial_number
from .tracking import (RUN_FAILED, RUN_FINISHED, RUN_KILLED, TAG_REASON, TAG_RETRY_OF, TAG_STATE, Tracker,
                       TrackingUnavailable, TrialRun)

log = logging.getLogger(__name__)

USER_ATTR_RUN = "mlflow_run_id"
USER_ATTR_REASON = "reason"
USER_ATTR_MODEL = "model_uri"
USER_ATTR_DIAGNOSTIC_ERRORS = "diagnostics_errors"  # error-severity finding codes; `promote` skips such trials
REASON_TRACKING_DOWN_AT_START = "tracking_unavailable_at_start"
REASON_TRACKING_DOWN = "tracking_unavailable"
REASON_INTERRUPTED = "interrupted"
# stopped from outside the trial: queue it again with the same params (its checkpoint is kept)
RETRY_REASONS = (REASON_INTERRUPTED, REASON_TRACKING_DOWN, REASON_TRACKING_DOWN_AT_START)


USER_ATTR_WORKER = "worker"
TAG_WORKER = "siamese_sweep.worker"
TAG_ALLOCATOR = "siamese_sweep.allocator"            # siamese_core.allocator.state() in the worker
TAG_ALLOCATOR_REFAULTS = "siamese_sweep.allocator_refaults"  # allocator.probe(): ~0 tuned, ~1 untuned


def worker_id() -> str:
    """``host:pid`` of this worker process."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def allocator_tags() -> dict[str, str]:
    """The memory allocator as it is in this (worker) process: the setting and a measured re-fault share."""
    from siamese_core import allocator

    return {TAG_ALLOCATOR: allocator.state(), TAG_ALLOCATOR_REFAULTS: f"{allocator.probe():.3f}"}


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT during a trial (a KeyboardInterrupt so Optuna marks the trial FAIL)."""


class StopRequest:
    """A stop asked for by a signal, for when raising from the signal handler is not enough.

    Python runs a signal handler at the next bytecode, which may be inside a ``__del__`` or a
    weakref callback (SQLAlchemy has plenty); an exception raised there is printed and *ignored*,
    and training would go on as if nothing happened. So the handler also sets `requested`, and
    training checks it after every batch (`check`). Once the trial is being cleaned up
    (`cleaning`), further signals are ignored so they cannot cut the clean-up short.
    """

    requested: bool = False
    cleaning: bool = False
    signum: int = 0

    @classmethod
    def check(cls) -> None:
        if cls.requested and not cls.cleaning:
            raise Interrupted(f"received signal {cls.signum}")

    @classmethod
    def reset(cls) -> None:
        cls.requested = cls.cleaning = False
        cls.signum = 0


def stop_check_callback() -> Any:
    """A Keras callback that turns a pending stop request into `Interrupted` at a batch boundary."""
    import keras

    class StopCheck(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            StopRequest.check()

    return StopCheck()


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


def objective_values(spec: SweepSpec, result: Any, extra: dict[str, float]) -> list[float]:
    last = result.history[-1] if result.history else {}
    values = []
    for metric in spec.study.objective_metrics:
        if metric in TRIAL_METRICS:
            values.append(float(extra[metric]))
        else:
            values.append(float(last.get(metric, float("nan"))))
    return values


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
    extra_callbacks: list[Any] = field(default_factory=list)


class Objective:
    """Callable for ``study.optimize``: runs, tracks and scores one trial."""

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        ctx = self.ctx
        frozen = trial.study._storage.get_trial(trial._trial_id)
        retry_of = retried_trial_number(frozen)
        if retry_of is not None and frozen.user_attrs.get(USER_ATTR_RUN):
            trial.set_user_attr(USER_ATTR_RUN, "")  # copied from the original: not this trial's run
        self.checkpoint = self._checkpoint_dir(trial.number if retry_of is None else retry_of)
        overrides = space.sample_overrides(trial, ctx.spec)
        if ctx.spec.hypermodel:
            overrides.update(self._hypermodel_overrides(trial))
        tags: dict[str, Any] = {TAG_WORKER: worker_id(), **allocator_tags()}
        if retry_of is not None:
            tags[TAG_RETRY_OF] = retry_of
        trial.set_user_attr(USER_ATTR_WORKER, tags[TAG_WORKER])  # which machine/process ran it (ops, tests)
        try:
            run = ctx.tracker.start_trial_run(ctx.experiment_id, ctx.parent_run_id, study_name=ctx.study_name,
                                              trial_number=trial.number, tags=tags)
        except TrackingUnavailable:
            trial.set_user_attr(USER_ATTR_REASON, REASON_TRACKING_DOWN_AT_START)
            self._requeue(trial)
            raise
        trial.set_user_attr(USER_ATTR_RUN, run.run_id)  # overwrites the attr a retry copies from its original
        try:
            return self._run(trial, run, overrides)
        except optuna.TrialPruned:
            self._clear_checkpoint()
            raise
        except BaseException as exc:
            self._record_failure(trial, run, exc)
            raise

    # ------------------------------------------------------------------ checkpoints and retries
    checkpoint: Path | None = None

    def _checkpoint_dir(self, original_number: int) -> Path | None:
        root = self.ctx.checkpoint_root
        return None if root is None else root / f"trial-{original_number}"

    def _clear_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        from siamese_core.checkpoint import clear

        clear(self.checkpoint)
        try:
            self.checkpoint.parent.rmdir()  # the study's checkpoint folder, once it is empty
        except OSError:
            pass

    def _requeue(self, trial: optuna.Trial) -> None:
        """Queue this trial again (same params) while it is still RUNNING, so the budget count never dips."""
        try:
            frozen = trial.study._storage.get_trial(trial._trial_id)
            queued = requeue_trial(trial.study, frozen, max_retries=self.ctx.spec.study.max_retries,
                                   drop_user_attrs=(USER_ATTR_RUN, USER_ATTR_REASON, USER_ATTR_MODEL))
            if queued:
                log.info("trial %d queued again with the same parameters", trial.number)
            else:
                log.warning("trial %d was retried %d times already; not queued again", trial.number,
                            self.ctx.spec.study.max_retries)
        except Exception as exc:  # noqa: BLE001 - storage trouble must not hide the original error
            log.warning("could not queue trial %d again: %s", trial.number, exc)

    def _hypermodel_overrides(self, trial: optuna.Trial) -> dict[str, Any]:
        """Build the KerasTuner-style encoder for this trial; train-config hyperparameters become overrides."""
        from . import hypermodel

        train_keys = set(self.ctx.spec.base.flat())
        model, overrides = hypermodel.build_for_trial(trial, self.ctx.spec.hypermodel or "", train_keys)
        hypermodel.set_current_encoder(model)
        return {**overrides, "encoder.type": hypermodel.CURRENT_ENCODER}

    # ------------------------------------------------------------------
    def _run(self, trial: optuna.Trial, run: TrialRun, overrides: dict[str, Any]) -> float | list[float]:
        ctx = self.ctx
        from siamese_core.training import train

        try:
            config = space.trial_config(ctx.spec, overrides)
        except ConfigError as exc:
            raise InvalidTrialConfig(str(exc)) from None
        data = ctx.load_data(config)
        params = dict(config.flat())
        params["dataset.fingerprint"] = data.info.fingerprint
        params["dataset.source"] = data.info.source
        run.log_params(params)
        run.set_tags({"sampled_params": ",".join(sorted(trial.params))})
        hp_only = {f"hp.{k}": v for k, v in trial.params.items() if k not in params}
        if hp_only:
            run.log_params({**hp_only, "hypermodel": ctx.spec.hypermodel})

        from .callbacks import MlflowEpochLogger, OptunaReporter  # imports Keras: only once a trial runs

        callbacks: list[Any] = [stop_check_callback(), MlflowEpochLogger(run)]
        if not ctx.spec.study.multi_objective:
            callbacks.append(OptunaReporter(trial, ctx.spec.study.objective_metrics[0]))
        callbacks += ctx.extra_callbacks
        try:
            result = train(config, callbacks=callbacks, data=data, checkpoint_dir=self.checkpoint)
        except optuna.TrialPruned as exc:
            self._end(trial, run, "PRUNED", RUN_FINISHED, reason="pruned", detail=str(exc))
            raise
        except TrainingFailed as exc:
            self._end(trial, run, "PRUNED", RUN_FAILED, reason=exc.code, detail=str(exc))
            raise optuna.TrialPruned(str(exc)) from None

        extra = {"params": float(result.models.training.count_params()), "train_seconds": float(result.seconds),
                 "latency_ms": measure_latency_ms(result)}
        values = objective_values(ctx.spec, result, extra)
        if not all(math.isfinite(v) for v in values):
            self._end(trial, run, "PRUNED", RUN_FAILED, reason="nan_metric",
                      detail=f"objective {list(ctx.spec.study.objective_metrics)} = {values}")
            raise optuna.TrialPruned(f"objective is not finite: {values}")

        if result.resumed_from_epoch:
            # the epochs restored from the checkpoint were logged to the original trial's run, not this one
            for row in result.history[:result.resumed_from_epoch]:
                run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
            run.set_tags({"checkpoint.resumed_from_epoch": result.resumed_from_epoch})
            trial.set_user_attr("resumed_from_epoch", int(result.resumed_from_epoch))
        final = {f"test_{k}": v for k, v in result.test.items()}
        final.update({"threshold": result.threshold, **extra})
        run.log_metrics(final, step=len(result.history))
        with tempfile.TemporaryDirectory(prefix="siamese-trial-") as tmp:
            artifacts.write_trial_artifacts(result, Path(tmp), plots=ctx.spec.tracking.log_plots)
            run.log_artifacts(tmp)
        if ctx.spec.tracking.log_models:
            uri = ctx.tracker.retry("log model", lambda: modelio.log_trial_model(
                ctx.tracker.client, run_id=run.run_id, experiment_id=ctx.experiment_id, result=result,
                step=len(result.history)))
            trial.set_user_attr(USER_ATTR_MODEL, uri)
        run.set_tags({f"diagnostics.{f.code}": f.severity for f in result.findings})
        run.flush()  # raises TrackingUnavailable: then the trial is FAIL, never COMPLETE with missing data
        for key in ("pair_accuracy", "roc_auc", "eer"):
            trial.set_user_attr(f"test_{key}", float(result.test[key]))
        trial.set_user_attr("threshold", float(result.threshold))
        trial.set_user_attr("dataset_fingerprint", result.data_info.fingerprint)
        trial.set_user_attr(USER_ATTR_DIAGNOSTIC_ERRORS, sorted({f.code for f in result.findings if f.is_error}))
        self._end(trial, run, "COMPLETE", RUN_FINISHED)
        self._clear_checkpoint()
        return values[0] if len(values) == 1 else values

    def _end(self, trial: optuna.Trial, run: TrialRun, state: str, status: str, *, reason: str | None = None,
             detail: str | None = None) -> None:
        tags = {TAG_STATE: state}
        if reason:
            tags[TAG_REASON] = reason
            trial.set_user_attr(USER_ATTR_REASON, reason)
        if detail:
            tags["optuna.reason_detail"] = mask_secrets(detail)[:1000]
        try:
            run.set_tags(tags)
        finally:
            run.end(status)

    def _record_failure(self, trial: optuna.Trial, run: TrialRun, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt) or StopRequest.requested:
            # a stop signal was received: whatever surfaced (the signal's exception raised inside a
            # library call can come back wrapped as another type) is a consequence of the stop
            StopRequest.cleaning = True  # a second signal must not cut this short
            reason, status = REASON_INTERRUPTED, RUN_KILLED
        elif isinstance(exc, InvalidTrialConfig):
            reason, status = "invalid_config", RUN_FAILED
        elif isinstance(exc, TrackingUnavailable):
            reason, status = REASON_TRACKING_DOWN, RUN_FAILED
        else:
            reason, status = type(exc).__name__, RUN_FAILED
        if reason in RETRY_REASONS:
            self._requeue(trial)  # the checkpoint stays for the retry
        else:
            self._clear_checkpoint()
        if run.closed:
            return
        if reason == REASON_TRACKING_DOWN:
            # MLflow just refused calls for the whole retry budget: don't spend it three times more on
            # tags and end_run. The worker's next reconciliation ends the run KILLED with this reason.
            trial.set_user_attr(USER_ATTR_REASON, reason)
            log.warning("trial %d failed: MLflow unavailable; run %s is ended when MLflow is back",
                        trial.number, run.run_id)
            return
        try:
            trial.set_user_attr(USER_ATTR_REASON, reason)
        except Exception:  # noqa: BLE001 - storage trouble must not hide the original error
            log.warning("could not record the failure reason in Optuna")
        try:
            self._end(trial, run, "FAIL", status, reason=reason, detail=f"{type(exc).__name__}: {exc}")
        except Exception as end_exc:  # noqa: BLE001
            log.warning("could not end MLflow run %s as %s: %s", run.run_id, status, end_exc)


class InvalidTrialConfig(InputError, ValueError):
    """The sampled combination of parameters is not a valid train config."""
