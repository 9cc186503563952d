"""The catalogue of metric names: every key a run reports, and which way is better.

One place for each name and direction, so early stopping, ReduceLROnPlateau, the config's ``monitor``
validation, the training watchers and sweeps (objective directions, promotion) cannot disagree:

* history keys (one row per epoch): ``loss``, ``learning_rate``, ``epoch_seconds`` from training, and the
  validation metrics as ``val_<name>`` (the embedding norms and spread are logged without the prefix);
* test keys (``TrainResult.test``): the evaluated metrics by their bare name.

`direction` and `is_better` accept any of these spellings (``roc_auc``, ``val_roc_auc``, ``test_roc_auc``).
The threshold decision rule (`same_at_threshold`) lives here too, beside the directions, so the metrics,
the exported model's decision layer and serving apply one rule.

Pure Python: config validation reads this module, so it imports nothing heavy. The computations are in
`siamese_core.verification` (they need scikit-learn, which takes ~2.7 s to import on these machines).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Direction", "MetricInfo", "METRICS", "HISTORY_KEYS", "TEST_KEYS", "MONITORS", "GOALS",
    "lookup", "direction", "is_better", "history_key", "same_at_threshold",
]

Direction = Literal["min", "max"]
VAL_PREFIX, TEST_PREFIX = "val_", "test_"


@dataclass(frozen=True)
class MetricInfo:
    """One reported quantity.

    `direction` is None for readings that are not goals (the threshold, embedding norms and spread, the learning
    rate).
    `evaluated` metrics are computed on the fixed validation and test pairs; `trained` ones are logged by
    training itself. `monitor` marks what EarlyStopping/ReduceLROnPlateau may watch.
    """

    name: str
    direction: Direction | None
    doc: str
    evaluated: bool = True
    trained: bool = False
    prefixed: bool = True      # validation history key is ``val_<name>`` (False: logged as ``<name>``)
    monitor: bool = False


METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("loss", "min", "mean loss per pair/triplet", trained=True, monitor=True),
    MetricInfo("pair_accuracy", "max", "share of pairs decided right at the calibrated threshold", monitor=True),
    MetricInfo("roc_auc", "max", "probability that a same pair scores as more similar than a different pair",
               monitor=True),
    MetricInfo("eer", "min", "equal error rate: false accepts = false rejects", monitor=True),
    MetricInfo("distance_gap", "max", "mean distance of different pairs minus that of same pairs", monitor=True),
    MetricInfo("pos_distance_mean", "min", "mean distance of same pairs", monitor=True),
    MetricInfo("neg_distance_mean", "max", "mean distance of different pairs", monitor=True),
    MetricInfo("precision_at_1", "max", "share of samples whose nearest other sample has their class (ties "
               "counted fractionally)", monitor=True),
    MetricInfo("recall_at_5", "max", "share of samples with their class among the 5 nearest others (ties counted "
               "fractionally)", monitor=True),
    MetricInfo("threshold", None, "decision threshold on the model's native score (calibrated on validation)"),
    MetricInfo("score_std", None, "spread of the pair scores (0: a constant model)"),
    MetricInfo("distance_std", None, "spread of the pair distances"),
    MetricInfo("raw_embedding_norm_mean", None, "mean L2 norm of the encoder output before unit normalisation "
               "(of the embeddings without encoder.l2_normalize); a fall toward 0 is collapse", prefixed=False),
    MetricInfo("raw_embedding_norm_std", None, "spread of those norms", prefixed=False),
    MetricInfo("raw_embedding_norm_min", None, "smallest of those norms", prefixed=False),
    MetricInfo("embedding_spread", None, "RMS distance of the embedding directions from their mean (0: every "
               "embedding points the same way, collapse; ~1: spread over the sphere)", prefixed=False),
    MetricInfo("learning_rate", None, "optimizer learning rate at the end of the epoch", evaluated=False,
               trained=True),
    MetricInfo("epoch_seconds", "min", "wall time of the epoch's training steps", evaluated=False, trained=True),
    MetricInfo("eval_seconds", "min", "wall time of the epoch's validation (metrics, retrieval)", evaluated=False,
               trained=True),
)}


def history_key(name: str) -> str:
    """The per-epoch history key of an evaluated metric (``roc_auc`` -> ``val_roc_auc``)."""
    info = METRICS[name]
    return f"{VAL_PREFIX}{name}" if info.prefixed else name


def _history_keys() -> tuple[str, ...]:
    keys: list[str] = []
    for m in METRICS.values():
        if m.trained:
            keys.append(m.name)
        if m.evaluated:
            keys.append(history_key(m.name))
    return tuple(keys)


#: Every key of a history row besides ``epoch`` (in catalogue order).
HISTORY_KEYS: tuple[str, ...] = _history_keys()
#: Every key of ``TrainResult.test``.
TEST_KEYS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.evaluated)
#: History keys that EarlyStopping / ReduceLROnPlateau may watch.
MONITORS: tuple[str, ...] = tuple(
    k for m in METRICS.values() if m.monitor
    for k in ((m.name,) if m.trained else ()) + ((history_key(m.name),) if m.evaluated else ()))


def lookup(key: str) -> MetricInfo:
    """The catalogue entry for a metric name, history key or ``test_`` key; `ValueError` if unknown."""
    if key in METRICS:
        return METRICS[key]
    for prefix in (VAL_PREFIX, TEST_PREFIX):
        if key.startswith(prefix) and key[len(prefix):] in METRICS:
            info = METRICS[key[len(prefix):]]
            if info.evaluated and (prefix == TEST_PREFIX or info.prefixed):
                return info
    raise ValueError(f"Expected a metric in {list(HISTORY_KEYS)} (or a test_ key), received: {key!r}")


#: History keys with a better direction: what a sweep may optimise (the rest are readings).
GOALS: tuple[str, ...] = tuple(k for k in HISTORY_KEYS if lookup(k).direction is not None)


def direction(key: str) -> Direction:
    """``"min"`` or ``"max"`` for `key` (Keras' ``mode``); `ValueError` for unknown keys and plain readings."""
    info = lookup(key)
    if info.direction is None:
        raise ValueError(f"{key!r} is a reading with no better direction ({info.doc}); expected one of {list(GOALS)}")
    return info.direction


def is_better(a: float, b: float, key: str) -> bool:
    """Is `a` strictly better than `b` for metric `key`? NaN is never better; any number beats NaN."""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a < b if direction(key) == "min" else a > b


def same_at_threshold(scores: Any, threshold: float, *, higher_is_same: bool) -> Any:
    """The one decision rule: a pair is "same" when its score is on the same side of `threshold`.

    Distances (``higher_is_same=False``) decide same at ``score <= threshold``, similarities at
    ``score >= threshold``. Works on NumPy arrays and on backend tensors (plain comparison operators), so
    the metrics, the exported model's `ThresholdDecision` layer and serving share it.
    """
    return scores >= threshold if higher_is_same else scores <= threshold
