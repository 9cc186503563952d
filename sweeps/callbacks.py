"""Keras callbacks that connect a training run to MLflow and Optuna (they import Keras)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import keras
import optuna

from . import names
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
    """One batched MLflow call per epoch, with ``step = epoch``; history keys as metric names."""

    def __init__(self, run: TrialRun) -> None:
        super().__init__()
        self.run = run

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.run.log_metrics({k: float(v) for k, v in (logs or {}).items() if _is_number(v)}, step=epoch)

    def on_finding(self, finding: Any) -> None:
        try:
            self.run.set_tags({names.diagnostic_tag(finding.code): finding.severity})
        except TrackingUnavailable as exc:
            log.warning("could not tag finding %s: %s", finding.code, exc)


class OptunaReporter(keras.callbacks.Callback):
    """Report the objective metric each epoch and prune with a readable reason."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        super().__init__()
        self.trial = trial
        self.metric = metric

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}: {self.metric}={float(value):.4f}")


class CheckpointUploader(keras.callbacks.Callback):
    """Copy each epoch checkpoint into the trial's MLflow run (`sweeps.checkpoints`); never fails the trial."""

    def __init__(self, run: TrialRun) -> None:
        super().__init__()
        self.run = run
        self.uploaded: list[int] = []  # epochs whose checkpoint reached MLflow

    def on_checkpoint(self, directory: Path, next_epoch: int) -> None:
        from . import checkpoints

        seconds = checkpoints.upload(self.run.tracker, self.run.run_id, Path(directory))
        if seconds is not None:
            self.uploaded.append(next_epoch)
            log.debug("checkpoint of epoch %d copied to MLflow run %s in %.3f s", next_epoch, self.run.run_id, seconds)
