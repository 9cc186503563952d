"""Callbacks that watch every training run (any loader) and emit findings on the bus.

* `PreflightWatcher` (``on_train_begin``): the doctor's static checks on one
  validation batch — bypassed preprocessing, raw inputs, frozen encoder, loss
  convention, loss reduction, constant output at initialisation. Inference
  mode only, so the run's weights, BatchNorm statistics and RNG are untouched.
* `EpochWatcher` (``on_epoch_end``, after the evaluator): collapse, constant
  output, inverted labels and no learning, read from the ``val_*`` epoch logs.
* `nan_finding`: the evidence and likely cause when `NanGuard` stops a run.

Codes in ``config.diagnostics.fail_on`` abort the run with `TrainingFailed`
(after the finding is emitted, so listeners see it first).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from ..config import TrainConfig
from ..data.pairs import SAME, STREAM_PROBE, PairSampler, PairShuffler, TripletSampler
from ..data.types import EVAL_POSITIVE_FRACTION, DataInfo, DatasetSplits, PairedSplit, Split, materialize
from ..errors import ConfigError, TrainingFailed
from ..findings import SEVERITY_ORDER, Finding, FindingBus
from ..losses import PerSampleLoss
from ..metrics import HISTORY_KEYS
from ..models.siamese import SiameseModels
from ..registry import LOSSES
from . import codes as C
from . import graph_checks, loss_checks
from .scores import score_spread

log = logging.getLogger(__name__)

# --- thresholds, calibrated on healthy runs (digits: conv/mlp/triplet/bce/cosine/l2/sgd, 4 epochs;
# Fashion-MNIST default conv, 3 epochs) and on real failures (positives-only pairs, a hinge with the wrong
# sign, softmax over one unit, lr=10 killing every ReLU):
# * norm collapse, read from raw_embedding_norm_mean (the norm before unit normalisation): healthy runs
#   without l2_normalize keep >= 0.57 x its best epoch (sgd lr=10 shrank 3.9 -> 2.2); collapsing runs fell to
#   0.016-0.023 x within 5 epochs, dead networks to exactly 0. With l2_normalize, healthy runs kept >= 0.69 x
#   (digits, 4-5 epochs, a ReLU-output user encoder at Adam 0.001-10 and SGD 5-10). Flag below 0.02 x.
#   (Collapse under l2_normalize is one of directions, not of norms: positives-only pairs on digits drove
#   embedding_spread to 0.03-0.07 in 4-6 epochs while the raw norm *grew* — a scale-invariant loss has no
#   gradient along the embedding. Hence the next rule.)
NORM_DROP = 0.02
NORM_ZERO = 1e-6
# * direction collapse, read from embedding_spread (RMS distance of the unit directions from their mean; ~0.30
#   untrained), for cosine or l2_normalize, from the second epoch on. 46 digits/Fashion-MNIST runs of the default
#   conv config (session 40: lr 1e-8 to 10, adam/sgd, batch 16-256, embedding_dim 2-128, mlp, triplet, 5 epochs):
#   every run with a decent test AUC kept >= 0.098 from its second epoch (>= 0.287 but for one with 99 %
#   positive pairs; Fashion-MNIST >= 0.628), while adam at lr 3-10 sat at 0.013-0.034 with its loss stuck at
#   the margin's value (test AUC 0.56-0.72). Its first epoch is no evidence: lr=0.3 and lr=1 read 0.066 and
#   0.021 there, then trained to test AUC 0.95 and 0.88. Flag below 0.05.
DIRECTION_SPREAD = 0.05
# * point collapse: relative spread = val_distance_std / embedding scale (1 for unit-length embeddings and for
#   cosine; else the raw norm, its square for sqeuclidean). Healthy minimum seen: 0.016 (BatchNorm conv on
#   digits, early epochs) and 0.0043 (cosine); softmax-over-one-unit and dead networks give exactly 0. Flag
#   below 1e-4, or below 1e-3 after a 50x drop.
SPREAD_FLOOR = 1e-4
SPREAD_LOW, SPREAD_DROP = 1e-3, 0.02
# * constant output: healthy val_score_std >= 0.008 (BCE, first epoch); constant models give 0.0.
CONSTANT_STD = 1e-5
CHANCE_BAND = 0.05           # |AUC - 0.5| below this is chance
# * no learning from the start: the training loss over the first 3 epochs. In the 46 runs above every run that
#   learned lowered it by >= 5.9 % from epoch 0 to epoch 2 (lr 1e-5, test AUC 0.78; >= 28 % for test AUC > 0.9),
#   while adam at lr <= 3e-6 and sgd at 1e-3 moved it by -1.1 % to +1.0 % (the weights barely change; fresh pairs
#   each epoch move it about 2.5 %), and the collapsed runs raised it. Their validation AUC stayed at the untrained
#   model's 0.76-0.83, which the chance band cannot see. Flag a fall below 3 %.
EARLY_EPOCHS, EARLY_LOSS_DROP = 3, 0.03
# ... and only while validation AUC stays where it started: a bce loss with an mlp on digits lowers its training
# loss by 0.6-0.8 % over 3 epochs while its validation AUC rises 0.527 -> 0.580 and 0.454 -> 0.597 (seeds 0, 1):
# slow, but learning. Runs whose weights barely move (adam at 1e-6 and 3e-6, sgd at 1e-3) moved it by -0.047 to
# -0.0007 over the same epochs on the same 200 pairs (`python` on tests' digits shapes, 2 seeds each). A rise of
# 0.03 or more is learning.
EARLY_AUC_RISE = 0.03
INVERTED_AUC = 0.3           # healthy runs never went below 0.6 after one epoch
# ... on validation sets of hundreds of pairs. On 60 pairs (a small pre-paired set's validation split) a healthy
# two-tower model read 0.293 after one epoch (1 seed in 6), 2.8 standard errors below chance; inverted labels
# read ~0.1 there (z ~ -5). So an AUC below INVERTED_AUC must also lie INVERTED_Z null standard errors below 0.5.
INVERTED_Z = 4.0


def _f(row: dict[str, float], key: str) -> float:
    v = row.get(key)
    return float(v) if v is not None else float("nan")


def _scale(row: dict[str, float], distance: str, l2_normalize: bool) -> float:
    """The size of the embeddings the distances are measured between."""
    if distance == "cosine" or l2_normalize:
        return 1.0
    norm = _f(row, "raw_embedding_norm_mean")  # the embedding's own norm without unit normalisation
    return norm * norm if distance == "sqeuclidean" else norm


def below_chance(auc: float, counts: tuple[int, int] | None) -> bool:
    """Whether `auc` lies `INVERTED_Z` standard errors below 0.5 for `counts` (same, different) pairs; the error of
    an AUC at chance is sqrt((n1 + n2 + 1) / (12 n1 n2)) (Mann-Whitney U). Unknown counts: no such test."""
    if counts is None:
        return True
    n1, n2 = counts
    if n1 < 1 or n2 < 1:
        return False
    return (0.5 - auc) / math.sqrt((n1 + n2 + 1) / (12.0 * n1 * n2)) >= INVERTED_Z


# Each optimizer's usual learning rates (Keras' defaults: 1e-3 for adam and rmsprop, 1e-2 for sgd, each the middle
# of its range), for the no_learning fix: outside them the rate is the likely cause, inside them it is not.
USUAL_LEARNING_RATES = {"adam": (1e-4, 1e-2, 1e-3), "rmsprop": (1e-4, 1e-2, 1e-3), "sgd": (1e-3, 1e-1, 1e-2)}


def no_learning_fix(optimizer: str, learning_rate: float) -> str:
    """The advice for no_learning, by the run's own learning rate: "try learning_rate 1e-3 with adam" was said to
    a run at adam's 1e-3 whose labels did not describe its pairs."""
    low, high, usual = USUAL_LEARNING_RATES.get(optimizer, USUAL_LEARNING_RATES["adam"])
    if learning_rate < low or learning_rate > high:
        return (f"learning_rate {learning_rate:g} is {'small' if learning_rate < low else 'large'} for {optimizer} "
                f"(usually {low:g}-{high:g}): try {usual:g}")
    return (f"learning_rate {learning_rate:g} is within {optimizer}'s usual {low:g}-{high:g}, so look elsewhere: "
            f"that the labels describe the pairs (1 = same), that the gradients reach the encoder (layers frozen "
            f"or not trainable, a constant or a stop_gradient in user code) and that its weights change between "
            f"epochs")


def epoch_findings(history: list[dict[str, float]], *, distance: str, l2_normalize: bool, higher_is_same: bool,
                   patience: int, val_counts: tuple[int, int] | None = None,
                   optimizer: tuple[str, float] | None = None) -> list[Finding]:
    """Findings from the per-epoch validation metrics so far (the last row is the current epoch; `val_counts`:
    the validation pairs, same and different; `optimizer`: its name and the learning rate, for the
    no_learning fix)."""
    stuck_fix = no_learning_fix(*optimizer) if optimizer is not None else None
    row, epoch = history[-1], len(history) - 1
    out: list[Finding] = []
    auc, norm = _f(row, "val_roc_auc"), _f(row, "raw_embedding_norm_mean")
    norms = [_f(r, "raw_embedding_norm_mean") for r in history if math.isfinite(_f(r, "raw_embedding_norm_mean"))]
    spreads = []
    for r in history:
        s = _scale(r, distance, l2_normalize)
        spreads.append(_f(r, "val_distance_std") / s if s > 0 else 0.0)
    spread, best_spread = spreads[-1], max((s for s in spreads if math.isfinite(s)), default=float("nan"))
    ev = {"epoch": epoch, "raw_embedding_norm_mean": norm,
          "max_raw_embedding_norm_mean": max(norms, default=float("nan")),
          "embedding_spread": _f(row, "embedding_spread"), "relative_distance_spread": spread,
          "best_relative_distance_spread": best_spread, "val_distance_std": _f(row, "val_distance_std"),
          "val_loss": _f(row, "val_loss"), "val_roc_auc": auc}
    ev = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in ev.items()}

    zero = math.isfinite(norm) and (norm < NORM_ZERO or (len(norms) >= 2 and norm < NORM_DROP * max(norms)))
    point = math.isfinite(spread) and (spread < SPREAD_FLOOR or
                                       (spread < SPREAD_LOW and spread < SPREAD_DROP * best_spread))
    directions = _f(row, "embedding_spread")
    one_way = ((distance == "cosine" or l2_normalize) and epoch >= 1 and math.isfinite(directions)
               and directions < DIRECTION_SPREAD)
    if zero or point or one_way:
        what = (f"embeddings shrank to near-zero vectors (mean norm before normalisation {norm:.3g}, best "
                f"{max(norms):.3g})" if zero else
                f"embeddings collapsed to one point (distance spread {spread:.2g} of the embedding scale, best "
                f"{best_spread:.2g})" if point else
                f"every embedding points the same way (direction spread {directions:.2g}; an untrained model "
                f"has about 0.3, healthy runs kept 0.1 or more)")
        out.append(C.finding(C.COLLAPSE, f"{what} at epoch {epoch}; val_loss {_f(row, 'val_loss'):.4g}",
                             evidence=ev, epoch=epoch))

    score_std = _f(row, "val_score_std")
    mean_score = abs(np.nanmean([_f(row, "val_pos_distance_mean"), _f(row, "val_neg_distance_mean")])) \
        if not higher_is_same else 0.5
    chance = not math.isfinite(auc) or abs(auc - 0.5) < CHANCE_BAND
    if math.isfinite(score_std) and score_std <= CONSTANT_STD * max(1.0, mean_score) and chance:
        out.append(C.finding(C.CONSTANT_OUTPUT, f"every validation pair gets the same score (std {score_std:.2g}) "
                                                f"at epoch {epoch}; accuracy {_f(row, 'val_pair_accuracy'):.3f} is the "
                                                f"class prior",
                             evidence={**ev, "val_score_std": score_std,
                                       "val_pair_accuracy": _f(row, "val_pair_accuracy")},
                             epoch=epoch))

    if math.isfinite(auc) and auc < INVERTED_AUC and below_chance(auc, val_counts):
        out.append(C.finding(C.LABEL_INVERTED, f"validation AUC is {auc:.3f} at epoch {epoch} (well below 0.5): the "
                                               f"model ranks same pairs as different — the loss or the labels use the "
                                               f"opposite convention (1 = same here)",
                             evidence=ev, epoch=epoch))

    if len(history) >= patience:
        recent = history[-patience:]
        aucs = [_f(r, "val_roc_auc") for r in recent]
        losses = [_f(r, "val_loss") for r in recent]
        at_chance = all(math.isfinite(a) and abs(a - 0.5) <= CHANCE_BAND for a in aucs)
        frozen = (all(map(math.isfinite, aucs + losses)) and max(aucs) - min(aucs) == 0.0 and
                  max(losses) - min(losses) <= 1e-7 * max(abs(losses[0]), 1e-12))
        if at_chance or frozen:
            why = (f"validation AUC stayed within {CHANCE_BAND} of chance (0.5) for {patience} epochs" if at_chance else
                   f"validation metrics did not change at all for {patience} epochs: the weights are not updating")
            out.append(C.finding(C.NO_LEARNING, f"{why} (AUC {', '.join(f'{a:.3f}' for a in aucs)})",
                                 evidence={"epochs": patience, "val_roc_auc": aucs, "val_loss": losses,
                                           "train_loss": [_f(r, "loss") for r in recent]}, epoch=epoch,
                                 fix=stuck_fix))
    if len(history) == EARLY_EPOCHS and not any(f.code == C.NO_LEARNING for f in out):
        first, last = _f(history[0], "loss"), _f(row, "loss")
        rise = _f(row, "val_roc_auc") - _f(history[0], "val_roc_auc")
        learning = math.isfinite(rise) and rise >= EARLY_AUC_RISE
        if (math.isfinite(first) and math.isfinite(last) and first > 0 and (first - last) / first < EARLY_LOSS_DROP
                and not learning):
            out.append(C.finding(
                C.NO_LEARNING, f"the training loss changed by {100 * (last - first) / first:+.1f} % over the first "
                               f"{EARLY_EPOCHS} epochs ({first:.4g} -> {last:.4g}; a model that learns lowers it "
                               f"by more than {100 * EARLY_LOSS_DROP:.0f} %): the weights barely move",
                evidence={"epochs": EARLY_EPOCHS, "train_loss": [_f(r, "loss") for r in history],
                          "val_roc_auc": [_f(r, "val_roc_auc") for r in history]}, epoch=epoch, fix=stuck_fix))
    return out


# ------------------------------------------------------------------ NaN
def nan_finding(*, value: float, epoch: int, step: int, learning_rate: float, config: TrainConfig | None = None,
                info: DataInfo | None = None) -> Finding:
    """Why the loss went non-finite, most likely cause first."""
    causes: list[str] = []
    evidence: dict[str, Any] = {"loss": value, "epoch": epoch, "step": step, "learning_rate": learning_rate}
    if config is not None:
        opt = config.optimizer.name
        limit = 0.1 if opt == "sgd" else 0.01
        evidence.update({"optimizer": opt, "clipnorm": config.optimizer.clipnorm,
                         "normalize": config.preprocessing.normalize, "loss_type": config.loss.type})
        if math.isfinite(learning_rate) and learning_rate >= limit:
            causes.append(f"learning_rate={learning_rate:g} is high for {opt} (typical: "
                          f"{'1e-2' if opt == 'sgd' else '1e-3'})")
        if info is not None and info.kind != "tokens":
            hi = max(abs(float(v)) for v in info.value_range)
            evidence["raw_input_max"] = hi
            if config.preprocessing.normalize == "none" and hi > 10:
                causes.append(f"inputs are not normalised (raw values up to {hi:g}, preprocessing.normalize: none)")
        if not causes:
            where = "your loss" if config.loss.type not in LOSSES else "the loss or encoder"
            causes.append(f"a non-finite operation in {where} (sqrt(0) gradient, log(0), division by zero)")
    evidence["likely_causes"] = causes
    message = (f"loss became {value} at epoch {epoch}, step {step} (learning_rate={learning_rate:.3g}); likely cause: "
               f"{'; '.join(causes) if causes else 'unknown'}")
    return C.finding(C.NAN_LOSS, message, evidence=evidence, epoch=epoch)


# ------------------------------------------------------------------ callbacks
class FindingCollector(keras.callbacks.Callback):
    """Keeps every finding emitted during a run (the bus calls ``on_finding``)."""

    def __init__(self) -> None:
        super().__init__()
        self.findings: list[Finding] = []

    def on_finding(self, finding: Finding) -> None:
        self.findings.append(finding)


class _Watcher(keras.callbacks.Callback):
    """A callback that emits findings on the run's bus and aborts on codes in ``diagnostics.fail_on``."""

    def __init__(self, config: TrainConfig, bus: FindingBus) -> None:
        super().__init__()
        self.config = config
        self.bus = bus
        self.fail_on = set(config.diagnostics.fail_on)
        self.reported: set[str] = set()

    def report(self, findings: list[Finding]) -> None:
        """Emit each code once per run; then abort if a code is in ``fail_on``.

        A finding weaker than its code's usual severity (e.g. a constant output *before* training, a
        loss shape that only suggests collapse) is reported but never aborts the run.
        """
        new = [f for f in findings if f.code not in self.reported]
        for f in new:
            self.reported.add(f.code)
            self.bus.emit(f)
        for f in new:
            usual = C.CATALOGUE[f.code].severity if f.code in C.CATALOGUE else "error"
            if f.code in self.fail_on and SEVERITY_ORDER[f.severity] >= SEVERITY_ORDER[usual]:
                raise TrainingFailed(f.code, f.message, finding=f, epoch=f.epoch)


def safely(check: Callable[..., list[Finding]], *args: Any, passing: type[Exception] = TrainingFailed,
           **kwargs: Any) -> list[Finding]:
    """A diagnostic that fails (on user code we cannot predict) must never break the run it watches (`passing`:
    what does break it, besides `TrainingFailed`)."""
    try:
        return check(*args, **kwargs)
    except (TrainingFailed, passing):
        raise
    except Exception as exc:  # noqa: BLE001
        log.warning("diagnostic %s skipped: %s: %s", getattr(check, "__name__", check), type(exc).__name__, exc)
        return []


PREFLIGHT_TUPLES = 64


def probe_tuples(config: TrainConfig, split: Split, *, n: int = PREFLIGHT_TUPLES
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    """`n` tuples from `split` as model inputs (a fixed stream, balanced, independent of the training pairs)."""
    if isinstance(split, PairedSplit):
        t = PairShuffler(split.y, seed=config.seed, pairs_per_epoch=min(n, len(split)), stream=STREAM_PROBE).epoch(0)
        return [materialize(split.x1, t.indices[:, 0]), materialize(split.x2, t.indices[:, 1])], t.targets
    if config.loss.is_triplet:
        t = TripletSampler(split.y, seed=config.seed, triplets_per_epoch=n, stream=STREAM_PROBE).epoch(0)
    else:
        t = PairSampler(split.y, seed=config.seed, pairs_per_epoch=n, positive_fraction=EVAL_POSITIVE_FRACTION,
                        stream=STREAM_PROBE, source="validation split").epoch(0)
    return [materialize(split.x, t.indices[:, k]) for k in range(t.arity)], t.targets


def static_findings(config: TrainConfig, data: DatasetSplits, models: SiameseModels, *,
                    loss: PerSampleLoss) -> list[Finding]:
    """The checks that need a model but no training (shared by the doctor and `PreflightWatcher`). A user's loss
    that raises on a real batch raises its `ConfigError` (``loss.type``) here, as its first training step would:
    the checks below would each have skipped themselves with a warning about it first."""
    out = safely(graph_checks.check_trainable, models)
    x, y = probe_tuples(config, data.val)
    pred = np.asarray(models.training(x, training=False))
    loss(keras.ops.convert_to_tensor(y), keras.ops.convert_to_tensor(pred))
    sides = x[:2] if len(models.encoders) == 2 else x[:1]
    out += safely(graph_checks.check_inputs, models.encoders, sides, config=config, info=data.info)
    out += safely(loss_checks.check_convention, config, embedding_dim=int(models.encoders[0].output.shape[-1]))
    out += safely(loss_checks.check_reduction, loss, y, pred)
    spread = score_spread(models, pred)
    if spread < 1e-6:
        out.append(C.finding(C.CONSTANT_OUTPUT, "the untrained model gives every pair the same score; a healthy "
                                                "random initialisation does not", evidence={"score_spread": spread},
                             severity="warning"))
    return out


class PreflightWatcher(_Watcher):
    """Static checks once, before the first step."""

    def __init__(self, config: TrainConfig, bus: FindingBus, *, data: DatasetSplits,
                 models: SiameseModels) -> None:
        super().__init__(config, bus)
        self.data, self.models = data, models

    def on_train_begin(self, logs: dict | None = None) -> None:
        loss = getattr(self.models.training, "loss", None)
        if loss is None:
            return
        self.report(safely(static_findings, self.config, self.data, self.models, loss=loss, passing=ConfigError))


class EpochWatcher(_Watcher):
    """Collapse, constant output, inverted labels, no learning — from the evaluator's ``val_*`` logs."""

    def __init__(self, config: TrainConfig, bus: FindingBus, *, models: SiameseModels,
                 val_labels: np.ndarray | None = None) -> None:
        super().__init__(config, bus)
        self.models = models
        self.history: list[dict[str, float]] = []
        self.val_counts = None if val_labels is None else (int(np.sum(val_labels == SAME)),
                                                            int(np.sum(val_labels != SAME)))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if "val_roc_auc" not in logs:
            return
        row = {}
        for k in HISTORY_KEYS:
            try:
                row[k] = float(np.asarray(logs[k]))
            except (KeyError, TypeError, ValueError):
                continue
        self.history.append(row)
        found = epoch_findings(self.history, distance=self.models.distance,
                               l2_normalize=self.config.encoder.l2_normalize,
                               higher_is_same=self.models.higher_is_same,
                               patience=self.config.diagnostics.no_learning_patience, val_counts=self.val_counts,
                               optimizer=(self.config.optimizer.name, self.config.learning_rate))
        self.report(found)


def training_watchers(config: TrainConfig, *, data: DatasetSplits, models: SiameseModels,
                      bus: FindingBus, val_labels: np.ndarray | None = None) -> list[keras.callbacks.Callback]:
    """The callbacks `training.train` adds after the evaluator when ``diagnostics.enabled`` (`val_labels`: the
    validation pairs' labels, for how far below chance an AUC must be to mean inverted labels)."""
    watchers: list[keras.callbacks.Callback] = []
    if config.diagnostics.preflight:
        watchers.append(PreflightWatcher(config, bus, data=data, models=models))
    watchers.append(EpochWatcher(config, bus, models=models, val_labels=val_labels))
    return watchers
