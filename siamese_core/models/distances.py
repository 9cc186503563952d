"""Distances between embeddings, chosen by name (`get`, backed by `siamese_core.registry.DISTANCES`).

Each distance knows whether it is bounded (cosine lies in [0, 2]) and works on
tensors and NumPy arrays alike through `keras.ops`, so training, evaluation and
retrieval use one implementation.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keras import ops

from ..registry import DISTANCES

EPS = 1e-9


def _l2_normalize(x: Any) -> Any:
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), EPS))


def _sq_euclidean(a: Any, b: Any) -> Any:
    return ops.sum(ops.square(a - b), axis=-1)


def _euclidean(a: Any, b: Any) -> Any:
    # max(., eps) keeps the gradient finite when a == b (sqrt'(0) is infinite).
    return ops.sqrt(ops.maximum(_sq_euclidean(a, b), EPS))


def _cosine(a: Any, b: Any) -> Any:
    return 1.0 - ops.sum(_l2_normalize(a) * _l2_normalize(b), axis=-1)


def _pairwise_sq_euclidean(a: Any, b: Any) -> Any:
    aa = ops.sum(ops.square(a), axis=-1)[:, None]
    bb = ops.sum(ops.square(b), axis=-1)[None, :]
    return ops.maximum(aa + bb - 2.0 * ops.matmul(a, ops.transpose(b)), 0.0)


def _pairwise_euclidean(a: Any, b: Any) -> Any:
    return ops.sqrt(ops.maximum(_pairwise_sq_euclidean(a, b), EPS))


def _pairwise_cosine(a: Any, b: Any) -> Any:
    return 1.0 - ops.matmul(_l2_normalize(a), ops.transpose(_l2_normalize(b)))


@dataclass(frozen=True)
class Distance:
    """A distance (lower = more similar) with its row-wise and pairwise forms."""

    name: str
    rowwise: Callable[[Any, Any], Any]     # [B, D], [B, D] -> [B]
    pairwise: Callable[[Any, Any], Any]    # [N, D], [M, D] -> [N, M]
    upper_bound: float | None = None       # None = unbounded


EUCLIDEAN = Distance("euclidean", _euclidean, _pairwise_euclidean)
SQEUCLIDEAN = Distance("sqeuclidean", _sq_euclidean, _pairwise_sq_euclidean)
COSINE = Distance("cosine", _cosine, _pairwise_cosine, upper_bound=2.0)


def get(name: str) -> Distance:
    """The distance registered as `name` (``euclidean``, ``sqeuclidean``, ``cosine``)."""
    distance: Distance = DISTANCES.get(name)
    return distance
