"""Losses: a functional core returning one value per pair/triplet, reduced once.

Contract (also for user losses loaded by import path):

* pair loss: ``fn(y_true, y_pred) -> [B]`` with ``y_true`` 1 = same, 0 = different
  and ``y_pred`` the model's pair score (a distance, or a similarity for ``bce``).
* triplet loss: ``fn(anchor, positive, negative) -> [B]`` on embeddings ``[B, D]``.

Reduction (the mean over the batch) happens in exactly one place,
`PerSampleLoss`. A function that already sums over the batch returns a
scalar; `PerSampleLoss` then passes it through unchanged, and the
`loss_reduction` diagnostic flags it because its value grows with batch size.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import keras
from keras import ops

from .config import LossConfig
from .errors import ConfigError
from .models import distances

PairLossFn = Callable[[Any, Any], Any]


def contrastive_loss(y_true: Any, distance: Any, margin: float = 1.0) -> Any:
    """Hadsell, Chopra & LeCun (2006): pull same pairs together, push different ones past `margin`.

    ``y * d^2 + (1 - y) * max(margin - d, 0)^2`` per pair (1 = same).
    """
    y = ops.cast(ops.reshape(y_true, ops.shape(distance)), distance.dtype)
    return y * ops.square(distance) + (1.0 - y) * ops.square(ops.relu(margin - distance))


def binary_crossentropy_loss(y_true: Any, probability: Any) -> Any:
    """Per-pair binary cross-entropy on a same-probability (1 = same)."""
    y = ops.cast(ops.reshape(y_true, ops.shape(probability)), probability.dtype)
    p = ops.clip(probability, 1e-7, 1.0 - 1e-7)
    return -(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))


def triplet_loss(anchor: Any, positive: Any, negative: Any, *, margin: float = 1.0,
                 distance: str = "euclidean") -> Any:
    """Schroff et al. (2015): ``max(d(a, p) - d(a, n) + margin, 0)`` per triplet."""
    dist = distances.get(distance).rowwise
    return ops.relu(dist(anchor, positive) - dist(anchor, negative) + margin)


def batch_hard_triplet_loss(embeddings: Any, labels: Any, *, margin: float = 1.0,
                            distance: str = "euclidean", n_anchors: int | None = None) -> Any:
    """Hermans et al. (2017): for each anchor, the hardest positive and negative in the batch.

    `embeddings` ``[N, D]`` with integer-valued `labels` ``[N]``; the first
    `n_anchors` rows are anchors (default: all). Returns ``[n_anchors]``.
    """
    n = ops.shape(embeddings)[0]
    k = n if n_anchors is None else n_anchors
    anchors = embeddings[:k]
    d = distances.get(distance).pairwise(anchors, embeddings)          # [k, N]
    same = ops.equal(labels[:k, None], labels[None, :])
    not_self = ops.logical_not(ops.equal(ops.arange(k)[:, None], ops.arange(n)[None, :]))
    pos_mask = ops.logical_and(same, not_self)
    big = ops.max(d) + 1.0
    hardest_pos = ops.max(ops.where(pos_mask, d, 0.0), axis=1)
    hardest_neg = ops.min(ops.where(same, big, d), axis=1)
    return ops.relu(hardest_pos - hardest_neg + margin)


# ---------------------------------------------------------------- Keras wrapper
@keras.saving.register_keras_serializable(package="siamese_core")
class PerSampleLoss(keras.losses.Loss):
    """Wraps a per-sample loss function; Keras' ``sum_over_batch_size`` is the one reduction."""

    def __init__(self, fn: Callable[[Any, Any], Any] | None = None, name: str = "siamese_loss", **kwargs: Any) -> None:
        kwargs.setdefault("reduction", "sum_over_batch_size")
        super().__init__(name=name, **kwargs)
        self.fn = fn

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self.fn(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "reduction": self.reduction}


def _triplet_from_stacked(fn: Callable[..., Any]) -> PairLossFn:
    """Adapt a triplet function on (a, p, n) to the model's stacked ``[B, 3, D]`` output."""
    def loss(y_true: Any, stacked: Any) -> Any:
        return fn(stacked[:, 0], stacked[:, 1], stacked[:, 2])
    return loss


def _batch_hard_from_stacked(margin: float, distance: str) -> PairLossFn:
    def loss(y_true: Any, stacked: Any) -> Any:
        b = ops.shape(stacked)[0]
        emb = ops.concatenate([stacked[:, 0], stacked[:, 1], stacked[:, 2]], axis=0)
        la, ln = y_true[:, 0], y_true[:, 1]
        labels = ops.concatenate([la, la, ln], axis=0)
        return batch_hard_triplet_loss(emb, labels, margin=margin, distance=distance, n_anchors=b)
    return loss


def import_object(path: str, *, field: str) -> Any:
    """Resolve ``package.module:attribute``; errors name the config field."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error inside the user's module
        raise ConfigError(field, f"cannot import module {module_name!r} from {path!r}: "
                                 f"{type(exc).__name__}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(field, f"module {module_name!r} has no attribute {attr!r}") from None


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_loss_fn(config: LossConfig, distance: str) -> PairLossFn:
    """The per-sample ``fn(y_true, y_pred)`` the model trains with."""
    margin = config.margin
    if config.type == "contrastive":
        return lambda y, d: contrastive_loss(y, d, margin)
    if config.type == "bce":
        return binary_crossentropy_loss
    if config.type == "triplet":
        if config.mining == "batch_hard":
            return _batch_hard_from_stacked(margin, distance)
        return _triplet_from_stacked(lambda a, p, n: triplet_loss(a, p, n, margin=margin, distance=distance))
    user = import_object(config.type, field="loss.type")
    if not callable(user):
        raise ConfigError("loss.type", f"{config.type!r} is not callable")
    kwargs = {"margin": margin} if _accepts(user, "margin") else {}
    if config.kind == "triplet":
        return _triplet_from_stacked(lambda a, p, n: user(a, p, n, **kwargs))
    return lambda y, s: user(y, s, **kwargs)


def build_loss(config: LossConfig, distance: str) -> PerSampleLoss:
    return PerSampleLoss(build_loss_fn(config, distance))


def score_is_similarity(config: LossConfig) -> bool:
    """BCE trains a same-probability (higher = same); the other losses train a distance."""
    return config.type == "bce"
