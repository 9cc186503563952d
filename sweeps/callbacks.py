"""Keras callbacks that connect a training run to MLflow and Optuna (they import Keras)."""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import optuna

from . import names, scratch
from .errors import TrackingUnavailable
from .tracking import TrialRun

log = logging.getLogger(__name__)


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


class MlflowEpochLogger(keras.callbacks.Callback):
    """One batched MLflow call per epoch, with ``step = epoch``; history keys as metric names. Findings are tagged
    as they happen; `errors` keeps the error-severity codes heard (a pruned trial's, for the failure map)."""

    def __init__(self, run: TrialRun) -> None:
        super().__init__()
        self.run = run
        self.errors: set[str] = set()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.run.log_metrics({k: float(v) for k, v in (logs or {}).items() if _is_number(v)}, step=epoch)

    def on_finding(self, finding: Any) -> None:
        if finding.is_error:
            self.errors.add(str(finding.code))
        try:
            self.run.set_tags({names.diagnostic_tag(finding.code): finding.severity})
        except TrackingUnavailable as exc:
            log.warning("could not tag finding %s: %s", finding.code, exc)


class OptunaReporter(keras.callbacks.Callback):
    """Report the objective metric each epoch and prune with a readable reason."""

    def __init__(self, trial: optuna.Trial, metric: str, *, before_prune: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.trial = trial
        self.metric = metric
        self.before_prune = before_prune  # the worker's `Finisher.wait`: the previous trial is told first

    def on_resume(self, history: list[dict[str, float]]) -> None:
        """A retry resumed from a checkpoint reports the restored epochs' values too, without pruning (they were
        judged when they ran): its intermediate values had no steps before the resume (none at all when the
        checkpoint was the last epoch's), so the study's curves showed it cut short and pruners comparing
        trials at those steps counted it out."""
        for row in history:
            value = row.get(self.metric)
            if value is not None and math.isfinite(float(value)):
                self.trial.report(float(value), step=int(row["epoch"]))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), step=epoch)
        if self.before_prune is not None:
            self.before_prune()
        if self.trial.should_prune():
            # epochs counted from 0, as the MLflow step, Optuna's intermediate value and a nan_loss reason count
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: {self.metric}={float(value):.4f}")


class CheckpointUploader(keras.callbacks.Callback):
    """Copy epoch checkpoints into the trial's MLflow run (`sweeps.checkpoints`); never fails the trial.

    At most one copy per `every_s` seconds of training (``tracking.checkpoint_copy_seconds``; 0: every epoch): an
    epoch that ends sooner after the last copy (or the start) stays local, and `copy_latest` copies it when the
    trial is stopped to be retried (a signal; with the server gone the upload gives up like any other). The copies
    exist for a retry on another machine after a worker died; a trial that ends for good deletes them, so on short
    epochs most copies were uploaded to be deleted: 4 of every trial in benchmarks/tracking_overhead.py
    (BENCHMARKS.md §2). A worker killed with SIGKILL loses at most `every_s` seconds and one epoch of that trial to
    a retry elsewhere (a retry on the same machine resumes from the local checkpoint, which every epoch writes).

    The upload runs in a background thread while the next epoch trains, from a snapshot of the checkpoint
    (the weights hard-linked, ``state.json`` copied: the next epoch's save replaces the files, not their
    contents), one at a time; `close` (and the end of training) waits for the last one. An epoch's upload
    is a few requests (two files, a listing, a delete).
    """

    def __init__(self, run: TrialRun, *, every_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        from .finisher import Finisher

        super().__init__()
        self.run = run
        self.every_s = every_s
        self.uploaded: list[int] = []  # epochs whose checkpoint reached MLflow
        self.copies = 0  # copies started (one that failed halfway may have left files in the run)
        self._clock = clock
        # made just before training starts; not reset in on_train_begin: the memory loader calls fit once an epoch
        self._last_copy = clock()
        self._latest: tuple[Path, int] | None = None  # the newest checkpoint on disk, when it is not copied
        self._uploads = Finisher("siamese-sweep-checkpoint-upload")

    def on_checkpoint(self, directory: Path, next_epoch: int) -> None:
        now = self._clock()
        if self.every_s > 0 and now - self._last_copy < self.every_s:
            self._latest = (Path(directory), next_epoch)
            return
        self._latest = None
        self._last_copy = now
        self._copy(Path(directory), next_epoch)

    def copy_latest(self) -> None:
        """Copy the newest checkpoint if the interval kept it local, and wait for it (a trial stopped to be
        retried, maybe elsewhere: the retry resumes from it)."""
        latest, self._latest = self._latest, None
        if latest is not None:
            self._copy(*latest)
        self.close()

    def _copy(self, directory: Path, next_epoch: int) -> None:
        from siamese_core.checkpoint import STATE, WEIGHTS

        snapshot = scratch.mkdtemp("siamese-ckpt-snap-")
        try:
            try:
                os.link(directory / WEIGHTS, snapshot / WEIGHTS)
            except OSError:  # another file system, or links refused: a copy
                shutil.copyfile(directory / WEIGHTS, snapshot / WEIGHTS)
            shutil.copyfile(directory / STATE, snapshot / STATE)
        except OSError as exc:
            shutil.rmtree(snapshot, ignore_errors=True)
            log.warning("could not snapshot the epoch-%d checkpoint for MLflow: %s", next_epoch, exc)
            return
        self.copies += 1
        self._uploads.submit(lambda: self._upload(snapshot, next_epoch))

    def _upload(self, snapshot: Path, next_epoch: int) -> None:
        from . import checkpoints

        try:
            seconds = checkpoints.upload(self.run.tracker, self.run.run_id, snapshot)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)
        if seconds is not None:
            self.uploaded.append(next_epoch)
            log.debug("checkpoint of epoch %d copied to MLflow run %s in %.3f s", next_epoch, self.run.run_id, seconds)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the upload in flight (before the trial's checkpoint copies are deleted or kept)."""
        self._uploads.wait()
