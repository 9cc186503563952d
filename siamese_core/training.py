"""`train(config) -> TrainResult`: one Siamese training run, whatever the loader.

Order of work: validate config -> load and check data (errors before any
model is built) -> seed -> build the run (`siamese_core.run`) -> train with the
chosen loader and the standard callbacks -> calibrate the threshold on
validation -> report on test.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from . import allocator, runtime
from .callbacks import (
    EpochEvaluator,
    EpochPrinter,
    HistoryRecorder,
    NanGuard,
    ResumedEarlyStopping,
    ResumedReduceLROnPlateau,
)
from .checkpoint import CheckpointError, EpochCheckpoint, clear, config_fingerprint, restore
from .config import TrainConfig, as_config
from .data.loaders import get_loader
from .data.pairs import make_sampler
from .data.sources import load_dataset
from .data.types import DataInfo, DatasetSplits
from .diagnostics.watchers import training_watchers
from .errors import ConfigError
from .findings import Finding, FindingBus
from .jsonable import jsonable
from .metrics import direction
from .models.siamese import SiameseModels
from .run import Run, build_run

__all__ = ["TrainResult", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one run produced. ``model`` is the deployable pair model with the threshold inside."""

    config: TrainConfig
    history: list[dict[str, float]]
    test: dict[str, float]
    threshold: float
    model: keras.Model               # [left, right] -> {distance, score, same}
    models: SiameseModels            # encoders, scorer, training model
    data_info: DataInfo
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    test_arrays: dict[str, np.ndarray] = field(default_factory=dict)  # test distances/scores/labels, embeddings
    val_arrays: dict[str, np.ndarray] = field(default_factory=dict)   # the last validation's (paired comparisons)
    resumed_from_epoch: int = 0      # > 0: epochs before this one were restored from a checkpoint

    @property
    def encoder(self) -> keras.Model:
        return self.models.encoders[0]

    @property
    def eval_fingerprint(self) -> str | None:
        """The data split and the val/test tuples this run was scored on (``DataInfo.eval_fingerprint``)."""
        return self.data_info.eval_fingerprint

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (what ``siamese-sweep train --json`` prints)."""
        return {
            "config": self.config.to_dict(),
            "history": self.history,
            "test": self.test,
            "threshold": self.threshold,
            "higher_is_same": bool(self.models.higher_is_same),
            "dataset": self.data_info.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "params": int(self.models.training.count_params()),
            "seconds": round(self.seconds, 3),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``model.keras`` (safe-mode loadable) and ``result.json`` (strict JSON)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save(out / "model.keras")
        (out / "result.json").write_text(json.dumps(jsonable(self.summary()), indent=2))
        return out


def _check_arguments(callbacks: Any, checkpoint_dir: Any) -> None:
    """A wrong type is a `ConfigError` before anything runs (`checkpoint_dir=5` was a TypeError from deep inside)."""
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise ConfigError("checkpoint_dir", f"expected a directory path; received: {type(checkpoint_dir).__name__}")
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Sequence):
        raise ConfigError("callbacks", f"expected a list of Keras callbacks; received: {type(callbacks).__name__}")
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, keras.callbacks.Callback):
            raise ConfigError(f"callbacks[{i}]", f"expected a keras.callbacks.Callback; received: "
                                                 f"{type(cb).__name__}")


def train(config: TrainConfig | Mapping[str, Any] | str | Path | None = None, *,
          callbacks: Sequence[keras.callbacks.Callback] = (), data: DatasetSplits | None = None,
          verbose: bool = False, checkpoint_dir: str | Path | None = None) -> TrainResult:
    """Train one Siamese model and evaluate it.

    `callbacks` are Keras callbacks run by every loader; those that define
    ``on_finding(finding)`` also hear diagnostics findings as they happen, and
    those that define ``on_checkpoint(directory, next_epoch)`` hear of each
    epoch checkpoint once it is on disk, and those that define
    ``on_resume(history)`` get the restored epochs' rows before a resumed run trains.
    Raises `ConfigError`/`DataError` before training for bad input and
    `TrainingFailed` when the run itself fails (NaN loss, collapse, ...).
    With `checkpoint_dir`, every epoch is checkpointed there and a later call
    with the same directory and config resumes after the last saved epoch (an
    unusable checkpoint is logged and ignored: the run starts clean).
    """
    start = time.perf_counter()
    _check_arguments(callbacks, checkpoint_dir)
    config = as_config(config)
    data = data if data is not None else load_dataset(config)
    make_sampler(config, data)  # batch vs data size and unusable labels fail here, before a model is built

    runtime.seed_everything(config.seed, deterministic=config.deterministic)
    allocator.reassert()  # an earlier tfdata run in this process (a sweep worker) may have reset the thresholds
    run = build_run(config, data)
    data = run.data  # its info names this config's evaluation tuples
    initial_epoch = 0
    restored_history: list[dict[str, float]] = []
    if checkpoint_dir is not None:
        run, initial_epoch, restored_history = _resume(config, data, run, Path(checkpoint_dir))
        for cb in callbacks:
            if restored_history and callable(getattr(cb, "on_resume", None)):
                cb.on_resume([dict(row) for row in restored_history])
    models = run.models

    bus = FindingBus()
    evaluator_cb = EpochEvaluator(models, run.val)
    recorder = HistoryRecorder()
    recorder.history.extend(restored_history)
    cbs: list[keras.callbacks.Callback] = [NanGuard(bus=bus, config=config, info=data.info), evaluator_cb]
    if config.diagnostics.enabled:
        cbs += training_watchers(config, data=data, models=models, bus=bus, val_labels=run.val.eval_set.pairs.targets)
    stopped = False
    if config.reduce_lr.enabled:
        r = config.reduce_lr
        cbs.append(ResumedReduceLROnPlateau(monitor=r.monitor, factor=r.factor, patience=r.patience,
                                            min_lr=r.min_lr, mode=direction(r.monitor), restored=restored_history))
    if config.early_stopping.enabled:
        e = config.early_stopping
        early = ResumedEarlyStopping(monitor=e.monitor, patience=e.patience, min_delta=e.min_delta,
                                     mode=direction(e.monitor), restored=restored_history)
        cbs.append(early)
        stopped = early.stopped_before_resume()
    if verbose:
        cbs.append(EpochPrinter())
    cbs += list(callbacks)
    cbs.append(recorder)
    if checkpoint_dir is not None:
        cbs.append(EpochCheckpoint(checkpoint_dir, recorder.history, fingerprint=config_fingerprint(config),
                                   listeners=[cb for cb in callbacks if callable(getattr(cb, "on_checkpoint", None))]))
    bus.attach(cbs)

    loader = get_loader(config.loader)
    if initial_epoch < config.epochs and not stopped:
        loader.run(models.training, run.plan, cbs, epochs=config.epochs, initial_epoch=initial_epoch)

    val = evaluator_cb.last or run.val.evaluate(models)
    threshold = val["threshold"]
    test = run.test.evaluate(models, threshold=threshold)
    export = models.export(threshold)
    return TrainResult(config=config, history=recorder.history, test=test, threshold=threshold, model=export,
                       models=models, data_info=data.info, findings=list(bus.findings),
                       seconds=time.perf_counter() - start, test_arrays=run.test.last_arrays,
                       val_arrays=run.val.last_arrays,
                       resumed_from_epoch=initial_epoch)


def _resume(config: TrainConfig, data: DatasetSplits, run: Run,
            directory: Path) -> tuple[Run, int, list[dict[str, float]]]:
    """Restore the checkpoint in `directory` into `run`; a bad one is discarded and the run rebuilt clean."""
    try:
        restored = restore(directory, run.models.training, fingerprint=config_fingerprint(config),
                           epochs=config.epochs)
    except CheckpointError as exc:
        log.warning("ignoring checkpoint %s (%s); training from epoch 0", directory, exc)
        clear(directory)
        runtime.seed_everything(config.seed, deterministic=config.deterministic)
        return build_run(config, data), 0, []  # a failed load may have overwritten some weights
    if restored is None:
        return run, 0, []
    log.info("resuming from checkpoint %s at epoch %d", directory, restored.epoch)
    return run, restored.epoch, restored.history
