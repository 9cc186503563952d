"""Verification and retrieval metrics on NumPy arrays (no model, no TensorFlow).

Scores are oriented by ``higher_is_same``: distances (lower = same) pass
False, learned similarities pass True. The decision threshold is calibrated
on validation pairs (maximum accuracy) and then *reported* on test pairs —
never tuned on the split it is reported on. The names these functions report
and their directions are catalogued in `siamese_core.metrics`.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from .metrics import same_at_threshold


def _similarity(scores: np.ndarray, higher_is_same: bool) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return s if higher_is_same else -s


def _float_kind(scores: np.ndarray) -> np.dtype:
    """The float type `scores` are compared in by `same_at_threshold` (float32 from a model): NumPy 2 compares a
    float32 array with a Python float in float32, and the exported model's decision layer is float32 too."""
    kind = np.asarray(scores).dtype
    return kind if np.issubdtype(kind, np.floating) else np.dtype(np.float64)


def _cut_above(cut: float, floor: float, kind: np.dtype) -> float:
    """`cut` as a value of `kind` strictly above `floor` (a score of `kind`): a float64 midpoint between two
    float32 scores a few rounding steps apart, or 1e-6 above the top one, rounded onto a score when compared in
    float32, and the pairs there fell on the wrong side (pair accuracy 0.5 at a threshold tuned for 1.0)."""
    value, low = kind.type(cut), kind.type(floor)
    return float(value if value > low else np.nextafter(low, kind.type(np.inf)))


def calibrate_threshold(scores: np.ndarray, y: np.ndarray, *, higher_is_same: bool) -> float:
    """The threshold that maximises pair accuracy on (validation) `scores`, as a value of their float type, so
    that `same_at_threshold` in that type splits them where the search did.

    Vectorised over all candidate cut points (midpoints between sorted scores).
    """
    kind = _float_kind(scores)
    s = _similarity(scores, higher_is_same)
    y = np.asarray(y).reshape(-1).astype(bool)
    finite = np.isfinite(s)
    if not finite.any():
        return float("nan")
    s, y = s[finite], y[finite]
    order = np.argsort(-s, kind="stable")          # most similar first
    s_sorted, y_sorted = s[order], y[order]
    # predicting "same" for the first k pairs: correct = positives among first k + negatives after k
    pos_before = np.concatenate([[0], np.cumsum(y_sorted)])
    neg_after = (~y_sorted).sum() - np.concatenate([[0], np.cumsum(~y_sorted)])
    correct = pos_before + neg_after
    # only cut between distinct values
    valid = np.ones(len(s_sorted) + 1, dtype=bool)
    valid[1:-1] = s_sorted[:-1] != s_sorted[1:]
    k = int(np.argmax(np.where(valid, correct, -1)))
    # similarity >= cut is "same" (negating a distance is exact in any float type)
    if k == 0:
        cut = _cut_above(s_sorted[0] + 1e-6, s_sorted[0], kind)
    elif k == len(s_sorted):
        cut = float(kind.type(s_sorted[-1] - 1e-6))  # at most the lowest score, as ">=" needs
    else:
        cut = _cut_above((s_sorted[k - 1] + s_sorted[k]) / 2.0, s_sorted[k], kind)
    return cut if higher_is_same else -cut


def pair_accuracy(scores: np.ndarray, y: np.ndarray, threshold: float, *, higher_is_same: bool) -> float:
    """Share of pairs decided right by `same_at_threshold`."""
    s = np.asarray(scores).reshape(-1)
    pred_same = same_at_threshold(s, threshold, higher_is_same=higher_is_same)
    return float(np.mean(pred_same == np.asarray(y).reshape(-1).astype(bool)))


def roc_auc(scores: np.ndarray, y: np.ndarray, *, higher_is_same: bool) -> float:
    """Probability that a random same pair scores as more similar than a random different pair."""
    y = np.asarray(y).reshape(-1)
    s = _similarity(scores, higher_is_same)
    if len(np.unique(y)) < 2 or not np.isfinite(s).all():
        return float("nan")
    return float(roc_auc_score(y, s))


def equal_error_rate(scores: np.ndarray, y: np.ndarray, *, higher_is_same: bool) -> float:
    """The error rate where false accepts equal false rejects (lower is better)."""
    y = np.asarray(y).reshape(-1)
    s = _similarity(scores, higher_is_same)
    if len(np.unique(y)) < 2 or not np.isfinite(s).all():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1.0 - tpr
    diff = fnr - fpr
    i = int(np.argmax(diff <= 0)) if (diff <= 0).any() else len(diff) - 1
    if i == 0:
        return float((fpr[0] + fnr[0]) / 2)
    # linear interpolation between the two ROC points that bracket fnr == fpr
    d0, d1 = diff[i - 1], diff[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def embedding_stats(embeddings: np.ndarray, raw_norms: np.ndarray) -> dict[str, float]:
    """The scale of the embeddings before unit normalisation, and the spread of their directions.

    ``raw_embedding_norm_mean/std/min``: L2 norms of the encoder output before ``encoder.l2_normalize`` (of the
    embeddings themselves without it) — after it every norm is 1 by construction; a fall toward 0 is collapse.
    ``embedding_spread``: RMS distance of the unit-length directions from their mean, ``sqrt(1 - |mean u|^2)``
    (a zero embedding has no direction and counts as the zero vector): 0 when every embedding points the same
    way or is zero (collapse), about 1 when they spread over the sphere.
    """
    raw = np.asarray(raw_norms, dtype=np.float64).reshape(-1)
    e = np.asarray(embeddings, dtype=np.float64)
    if raw.size == 0 or e.size == 0:
        return {k: float("nan") for k in ("raw_embedding_norm_mean", "raw_embedding_norm_std",
                                          "raw_embedding_norm_min", "embedding_spread")}
    norms = np.linalg.norm(e, axis=-1, keepdims=True)
    unit = np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)
    mean = unit.mean(axis=0)
    spread = float(np.sqrt(max(float(np.mean(np.sum(unit ** 2, axis=-1))) - float(mean @ mean), 0.0)))
    return {"raw_embedding_norm_mean": float(raw.mean()), "raw_embedding_norm_std": float(raw.std()),
            "raw_embedding_norm_min": float(raw.min()), "embedding_spread": spread}


def distance_gap(distances: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Mean distance of same and of different pairs, and the gap between them (want > 0)."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    y = np.asarray(y).reshape(-1).astype(bool)
    pos = float(d[y].mean()) if y.any() else float("nan")
    neg = float(d[~y].mean()) if (~y).any() else float("nan")
    return {"pos_distance_mean": pos, "neg_distance_mean": neg, "distance_gap": neg - pos,
            "distance_std": float(d.std()) if d.size else float("nan")}


# Distances closer than this share of the largest distance count as tied. Retrieval distances are computed in
# float64 from float32 embeddings: identical embeddings then differ by <= ~3e-8 of the scale (rounding in
# |a|^2 + |b|^2 - 2 a.b), and float32 embeddings cannot resolve differences much finer than 1e-6 of it.
TIE_RTOL = 1e-6


def _expected_hit(d: np.ndarray, same: np.ndarray, k: int, tol: float) -> np.ndarray:
    """Per query, the probability that one of its `k` nearest others shares its class, ties broken at random.

    Neighbours strictly closer than the k-th nearest distance (beyond `tol`) always count; of the ``t`` tied
    with it, ``r = k - closer`` are drawn, and the chance that none of the ``h`` same-class ones is drawn is
    ``prod_{i<r} (t - h - i) / (t - i)`` (hypergeometric).
    """
    kth = np.partition(d, k - 1, axis=1)[:, k - 1:k]
    closer = d < kth - tol
    tied = np.abs(d - kth) <= tol
    draws = k - closer.sum(axis=1)
    t, h = tied.sum(axis=1), (tied & same).sum(axis=1)
    miss = np.ones(d.shape[0])
    for i in range(k):
        active = i < draws
        miss = np.where(active, miss * np.maximum(t - h - i, 0) / np.maximum(t - i, 1), miss)
    return np.where((closer & same).any(axis=1), 1.0, 1.0 - miss)


def retrieval(distance_matrix: np.ndarray, labels: np.ndarray, *, k: int = 5) -> dict[str, float]:
    """Precision@1 and Recall@k (any of the k nearest others shares the query's class), robust to ties.

    `distance_matrix` is ``[N, N]`` between the same N samples; self-matches are excluded. Neighbours at the
    same distance (within `TIE_RTOL` of the largest distance) are counted fractionally: each query scores the
    expected hit when ties are broken uniformly at random, so the result does not depend on sample order,
    and a constant embedding scores the class prior (P@1 = share of same-class others).
    """
    d = np.array(distance_matrix, dtype=np.float64, copy=True)
    labels = np.asarray(labels).reshape(-1)
    n = d.shape[0]
    if n < 2:
        return {"precision_at_1": float("nan"), f"recall_at_{k}": float("nan")}
    np.fill_diagonal(d, np.inf)
    same = labels[:, None] == labels[None, :]
    finite = np.abs(d[np.isfinite(d)])
    tol = TIE_RTOL * float(finite.max()) if finite.size else 0.0
    return {"precision_at_1": float(_expected_hit(d, same, 1, tol).mean()),
            f"recall_at_{k}": float(_expected_hit(d, same, min(k, n - 1), tol).mean())}


def verification_metrics(scores: np.ndarray, y: np.ndarray, *, higher_is_same: bool,
                         threshold: float | None = None) -> dict[str, float]:
    """Accuracy at `threshold` (calibrated here when None), ROC AUC and EER."""
    if threshold is None:
        threshold = calibrate_threshold(scores, y, higher_is_same=higher_is_same)
    acc = (pair_accuracy(scores, y, threshold, higher_is_same=higher_is_same) if math.isfinite(threshold)
           else float("nan"))
    return {"pair_accuracy": acc, "roc_auc": roc_auc(scores, y, higher_is_same=higher_is_same),
            "eer": equal_error_rate(scores, y, higher_is_same=higher_is_same), "threshold": float(threshold)}

