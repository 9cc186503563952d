"""`train(config) -> TrainResult`: one Siamese training run, whatever the loader.

Order of work: validate config -> load and check data (errors before any
TensorFlow work) -> seed -> build the model -> train with the chosen loader
-> calibrate the threshold on validation -> report on test.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import TrainConfig, load_config
from .data.pairs import (STREAM_TEST, STREAM_VAL, PairSampler, PairShuffler, TripletSampler,
                         default_pairs_per_epoch)
from .data.types import DataInfo, DatasetSplits, PairedSplit
from .errors import ConfigError
from .findings import Finding


def as_config(config: TrainConfig | Mapping[str, Any] | str | Path | None) -> TrainConfig:
    """Accept a `TrainConfig`, a mapping, or a YAML path."""
    if isinstance(config, TrainConfig):
        return config
    if config is None:
        return TrainConfig()
    if isinstance(config, (str, Path)):
        return load_config(config)
    return TrainConfig.from_dict(config)


def make_sampler(config: TrainConfig, data: DatasetSplits) -> Any:
    """The training sampler for this config: pairs, triplets, or a shuffle of pre-built pairs."""
    train = data.train
    paired = isinstance(train, PairedSplit)
    n = config.pairs.pairs_per_epoch or default_pairs_per_epoch(len(train), paired=paired)
    if config.batch_size > n:
        raise ConfigError("batch_size", f"expected batch_size <= pairs per epoch ({n} for this dataset); "
                                        f"received: batch_size={config.batch_size}")
    if paired:
        return PairShuffler(train.y, seed=config.seed, pairs_per_epoch=n)
    if config.loss.is_triplet:
        return TripletSampler(train.y, seed=config.seed, triplets_per_epoch=n)
    return PairSampler(train.y, seed=config.seed, pairs_per_epoch=n, positive_fraction=config.pairs.positive_fraction)


def load_data(config: TrainConfig) -> DatasetSplits:
    from .data.sources import load_dataset

    return load_dataset(config)


@dataclass
class TrainResult:
    """What one run produced. ``model`` is the deployable pair model with the threshold inside."""

    config: TrainConfig
    history: list[dict[str, float]]
    test: dict[str, float]
    threshold: float
    model: Any                       # keras.Model: [left, right] -> {distance, score, same}
    models: Any                      # SiameseModels (encoders, scorer, training model)
    data_info: DataInfo
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    test_arrays: dict[str, Any] = field(default_factory=dict)  # test pair distances/scores/labels, embedding sample
    resumed_from_epoch: int = 0      # > 0: epochs before this one were restored from a checkpoint

    @property
    def encoder(self) -> Any:
        return self.models.encoders[0]

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
        """Write ``model.keras`` (safe-mode loadable) and ``result.json``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save(out / "model.keras")
        (out / "result.json").write_text(json.dumps(_finite(self.summary()), indent=2))
        return out


def _finite(value: Any) -> Any:
    """NaN/inf -> None so the JSON is strict."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def build_run(config: TrainConfig, data: DatasetSplits) -> dict[str, Any]:
    """Everything a run needs before the first step (shared with the doctor's probes)."""
    from .data.loaders import TrainingPlan
    from .evaluation import EvalSet, Evaluator
    from .losses import build_loss
    from .models.siamese import build_models, build_optimizer

    sampler = make_sampler(config, data)
    plan = TrainingPlan(data.train, sampler, config.batch_size)
    models = build_models(config, data.info)
    loss = build_loss(config.loss, config.distance)
    models.training.compile(optimizer=build_optimizer(config), loss=loss, jit_compile=False)
    triplets = config.loss.is_triplet
    val_set = EvalSet.build(data.val, n_pairs=config.pairs.val_pairs, seed=config.seed, stream=STREAM_VAL,
                            triplets=triplets, positive_fraction=config.pairs.positive_fraction)
    test_set = EvalSet.build(data.test, n_pairs=config.pairs.test_pairs, seed=config.seed, stream=STREAM_TEST,
                             triplets=triplets, positive_fraction=config.pairs.positive_fraction)
    return {"plan": plan, "models": models, "loss": loss,
            "val": Evaluator(val_set, loss=loss, batch_size=config.batch_size),
            "test": Evaluator(test_set, loss=loss, batch_size=config.batch_size)}


def train(config: TrainConfig | Mapping[str, Any] | str | Path | None = None, *,
          callbacks: list[Any] | tuple[Any, ...] = (), data: DatasetSplits | None = None,
          verbose: bool = False, checkpoint_dir: str | Path | None = None) -> TrainResult:
    """Train one Siamese model and evaluate it.

    `callbacks` are Keras callbacks run by every loader; those that define
    ``on_finding(finding)`` also hear diagnostics findings as they happen.
    Raises `ConfigError`/`DataError` before training for bad input and
    `TrainingFailed` when the run itself fails (NaN loss, collapse, ...).
    With `checkpoint_dir`, every epoch is checkpointed there and a later call
    with the same directory and config resumes after the last saved epoch (an
    unusable checkpoint is logged and ignored: the run starts clean).
    """
    start = time.perf_counter()
    config = as_config(config)
    data = data if data is not None else load_data(config)
    make_sampler(config, data)  # batch vs data size and unusable labels fail here, before TensorFlow loads

    import keras

    from . import runtime
    from .callbacks import EpochEvaluator, FindingBus, HistoryRecorder, NanGuard
    from .data.loaders import get_loader
    from .diagnostics import training_watchers

    runtime.seed_everything(config.seed, deterministic=config.deterministic)
    run = build_run(config, data)
    initial_epoch, restored_history = 0, []
    if checkpoint_dir is not None:
        run, initial_epoch, restored_history = _resume(config, data, run, Path(checkpoint_dir))
    models = run["models"]

    bus = FindingBus()
    evaluator_cb = EpochEvaluator(models, run["val"])
    recorder = HistoryRecorder()
    recorder.history.extend(restored_history)
    cbs: list[Any] = [NanGuard(bus=bus, config=config, info=data.info), evaluator_cb]
    if config.diagnostics.enabled:
        cbs += training_watchers(config, data=data, models=models, bus=bus)
    if config.reduce_lr.enabled:
        r = config.reduce_lr
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor=r.monitor, factor=r.factor, patience=r.patience,
                                                     min_lr=r.min_lr, mode=_mode(r.monitor)))
    if config.early_stopping.enabled:
        e = config.early_stopping
        cbs.append(keras.callbacks.EarlyStopping(monitor=e.monitor, patience=e.patience, min_delta=e.min_delta,
                                                 mode=_mode(e.monitor)))
    if verbose:
        cbs.append(EpochPrinter())
    cbs += list(callbacks)
    cbs.append(recorder)
    if checkpoint_dir is not None:
        from .checkpoint import EpochCheckpoint, config_fingerprint

        cbs.append(EpochCheckpoint(checkpoint_dir, recorder.history, fingerprint=config_fingerprint(config)))
    bus.attach(cbs)

    loader = get_loader(config.loader)
    if initial_epoch < config.epochs:
        loader.run(models.training, run["plan"], cbs, epochs=config.epochs, initial_epoch=initial_epoch)

    val = evaluator_cb.last or run["val"].evaluate(models)
    threshold = val["threshold"]
    test = run["test"].evaluate(models, threshold=threshold)
    export = models.export(threshold)
    return TrainResult(config=config, history=recorder.history, test=test, threshold=threshold, model=export,
                       models=models, data_info=data.info, findings=list(bus.findings),
                       seconds=time.perf_counter() - start, test_arrays=run["test"].last_arrays,
                       resumed_from_epoch=initial_epoch)


def _resume(config: TrainConfig, data: DatasetSplits, run: dict[str, Any],
            directory: Path) -> tuple[dict[str, Any], int, list[dict[str, float]]]:
    """Restore the checkpoint in `directory` into `run`; a bad one is discarded and the run rebuilt clean."""
    import logging

    from . import runtime
    from .checkpoint import CheckpointError, clear, config_fingerprint, restore

    try:
        restored = restore(directory, run["models"].training, fingerprint=config_fingerprint(config),
                           epochs=config.epochs)
    except CheckpointError as exc:
        logging.getLogger(__name__).warning("ignoring checkpoint %s (%s); training from epoch 0", directory, exc)
        clear(directory)
        runtime.seed_everything(config.seed, deterministic=config.deterministic)
        return build_run(config, data), 0, []  # a failed load may have overwritten some weights
    if restored is None:
        return run, 0, []
    logging.getLogger(__name__).info("resuming from checkpoint %s at epoch %d", directory, restored.epoch)
    return run, restored.epoch, restored.history


def _mode(monitor: str) -> str:
    """Loss, EER and distances go down; accuracy, AUC, precision go up."""
    lower = ("loss", "eer", "pos_distance")
    return "min" if any(k in monitor for k in lower) else "max"


def EpochPrinter() -> Any:  # noqa: N802 - a factory that reads like the callback class it returns
    import sys

    import keras

    class _Printer(keras.callbacks.Callback):
        keys = ("loss", "val_loss", "val_pair_accuracy", "val_roc_auc", "embedding_norm_mean", "epoch_seconds")

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            parts = [f"{k}={float(logs[k]):.4g}" for k in self.keys if logs and k in logs]
            print(f"epoch {epoch + 1}: " + " ".join(parts), file=sys.stderr, flush=True)

    return _Printer()
