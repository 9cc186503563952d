"""Callbacks every training run gets, whatever the loader.

Order matters and is fixed by `training.train`: the NaN guard, then the
evaluator (it writes the ``val_*`` keys into the epoch logs), then the
diagnostics watchers (`siamese_core.diagnostics.watchers`), then
LR/early-stopping and user callbacks (which may monitor ``val_*``), and last
the recorder. Findings travel on the run's `FindingBus`.
"""
from __future__ import annotations

import math
import sys
import time

import keras
import numpy as np

from .config import TrainConfig
from .data.types import DataInfo
from .diagnostics.codes import NAN_LOSS
from .diagnostics.watchers import nan_finding
from .errors import TrainingFailed
from .evaluation import Evaluator, as_epoch_logs
from .findings import FindingBus
from .models.siamese import SiameseModels

__all__ = ["NanGuard", "EpochEvaluator", "HistoryRecorder", "EpochPrinter"]


class NanGuard(keras.callbacks.Callback):
    """Fail the run at the first non-finite batch loss instead of returning NaN history.

    The finding names the likely cause from the config and data (learning rate, normalisation).
    """

    def __init__(self, *, bus: FindingBus | None = None, config: TrainConfig | None = None,
                 info: DataInfo | None = None) -> None:
        super().__init__()
        self.epoch = 0
        self.bus, self.config, self.info = bus, config, info

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            finding = nan_finding(value=float(loss), epoch=self.epoch, step=batch,
                                  learning_rate=_learning_rate(self.model), config=self.config, info=self.info)
            if self.bus is not None:
                self.bus.emit(finding)
            raise TrainingFailed(NAN_LOSS, finding.message, finding=finding, epoch=self.epoch)


def _learning_rate(model: keras.Model) -> float:
    try:
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except Exception:
        return float("nan")


class EpochEvaluator(keras.callbacks.Callback):
    """Adds validation metrics, learning rate and epoch time to each epoch's logs."""

    def __init__(self, models: SiameseModels, evaluator: Evaluator) -> None:
        super().__init__()
        self.models = models
        self.evaluator = evaluator
        self.last: dict[str, float] = {}
        self._t0 = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        train_seconds = time.perf_counter() - self._t0
        t_eval = time.perf_counter()
        result = self.evaluator.evaluate(self.models)
        self.last = result
        if logs is not None:
            logs.update(as_epoch_logs(result))
            logs["learning_rate"] = _learning_rate(self.model)
            logs["epoch_seconds"] = train_seconds
            logs["eval_seconds"] = time.perf_counter() - t_eval
        if not math.isfinite(result.get("raw_embedding_norm_mean", 0.0)):
            raise TrainingFailed(NAN_LOSS, f"embeddings became non-finite at epoch {epoch}; lower the learning "
                                           "rate or check input normalisation", epoch=epoch)


class HistoryRecorder(keras.callbacks.Callback):
    """Keeps one plain dict of floats per epoch (the ``history`` of a `TrainResult`)."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row: dict[str, float] = {"epoch": epoch}
        for key, value in (logs or {}).items():
            try:
                row[key] = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
        self.history.append(row)


class EpochPrinter(keras.callbacks.Callback):
    """One line per epoch on stderr (``train(..., verbose=True)``, the CLI's progress)."""

    keys = ("loss", "val_loss", "val_pair_accuracy", "val_roc_auc", "raw_embedding_norm_mean", "embedding_spread",
            "epoch_seconds")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        parts = [f"{k}={float(logs[k]):.4g}" for k in self.keys if logs and k in logs]
        epochs = (self.params or {}).get("epochs")  # the run's, from every loader's callback list
        of = f"/{epochs}" if isinstance(epochs, int) and epochs > epoch else ""
        print(f"epoch {epoch + 1}{of}: " + " ".join(parts), file=sys.stderr, flush=True)
