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
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

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

__all__ = ["NanGuard", "EpochEvaluator", "HistoryRecorder", "EpochPrinter", "ResumedEarlyStopping",
           "ResumedReduceLROnPlateau"]


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


def replay(callback: keras.callbacks.Callback, rows: Sequence[dict[str, float]]) -> bool:
    """Feed a resumed run's restored epochs (their history rows) to `callback.on_epoch_end`, against a stand-in
    model, so that its counters (best, wait, cooldown) are those of the run that was never stopped, and nothing it
    did to the model then is done twice (the checkpoint holds the learning rate ReduceLROnPlateau lowered). True
    when the replay stops training (the uninterrupted run stopped early at the last restored epoch). Keras's own
    `on_epoch_end` is what runs: no copy of its rules here."""
    real = callback.model
    stand_in = SimpleNamespace(stop_training=False, optimizer=SimpleNamespace(learning_rate=0.0), metrics=[])
    callback.set_model(stand_in)
    try:
        for epoch, row in enumerate(rows):
            stand_in.optimizer.learning_rate = float(row.get("learning_rate", 0.0))
            callback.on_epoch_end(epoch, dict(row))
    finally:
        callback.set_model(real)
    return bool(stand_in.stop_training)


class _Resumed(keras.callbacks.Callback):
    """A Keras callback with counters whose `on_train_begin` resets them, then replays the restored epochs."""

    def __init__(self, *args: Any, restored: Sequence[dict[str, float]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.restored = list(restored)

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        replay(self, self.restored)


class ResumedEarlyStopping(_Resumed, keras.callbacks.EarlyStopping):
    """`EarlyStopping` that continues a resumed run's patience. Rebuilt fresh, a trial resumed at epoch 4 trained
    all 8 epochs where the same trial never stopped ended at epoch 6 (the review of checkpoint resume)."""

    def stopped_before_resume(self) -> bool:
        """The uninterrupted run stopped at the last restored epoch (killed between its checkpoint and its end)."""
        stopped = replay(self, self.restored)
        keras.callbacks.EarlyStopping.on_train_begin(self)  # the counters as new: `on_train_begin` replays again
        return stopped


class ResumedReduceLROnPlateau(_Resumed, keras.callbacks.ReduceLROnPlateau):
    """`ReduceLROnPlateau` whose wait and cooldown continue a resumed run's: rebuilt fresh, a resumed trial kept
    its learning rate where the uninterrupted one halved it twice."""


class EpochPrinter(keras.callbacks.Callback):
    """One line per epoch on stderr (``train(..., verbose=True)``, the CLI's progress)."""

    keys = ("loss", "val_loss", "val_pair_accuracy", "val_roc_auc", "raw_embedding_norm_mean", "embedding_spread",
            "epoch_seconds")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        parts = [f"{k}={float(logs[k]):.4g}" for k in self.keys if logs and k in logs]
        epochs = (self.params or {}).get("epochs")  # the run's, from every loader's callback list
        of = f"/{epochs}" if isinstance(epochs, int) and epochs > epoch else ""
        print(f"epoch {epoch + 1}{of}: " + " ".join(parts), file=sys.stderr, flush=True)
