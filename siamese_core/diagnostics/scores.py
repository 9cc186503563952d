"""Model-free readings of a training model's outputs, shared by the watchers and the doctor's probes.

They take the arrays the training model returned for a batch of tuples (pair scores ``[B]`` or stacked
triplet embeddings ``[B, 3, D]``) and never call the model, so any check can use them.
"""
from __future__ import annotations

import numpy as np

from ..models import distances
from ..models.siamese import SiameseModels
from ..verification import roc_auc


def separation(models: SiameseModels, pred: np.ndarray, y: np.ndarray) -> float:
    """AUC of same vs different pairs (pair models) or the share of triplets with d(a,p) < d(a,n)."""
    if models.arity == 3:
        dist = distances.get(models.distance).rowwise
        dp = np.asarray(dist(pred[:, 0], pred[:, 1]))
        dn = np.asarray(dist(pred[:, 0], pred[:, 2]))
        return float(np.mean(dp < dn))
    return roc_auc(np.asarray(pred).reshape(-1), y, higher_is_same=models.higher_is_same)


def score_spread(models: SiameseModels, pred: np.ndarray) -> float:
    """Std of the pair scores relative to their size (0 = the same score for every pair)."""
    if models.arity == 3:
        s = np.asarray(distances.get(models.distance).rowwise(pred[:, 0], pred[:, 1]))
    else:
        s = np.asarray(pred, dtype=np.float64).reshape(-1)
    if not np.isfinite(s).all():
        return float("nan")
    return float(np.std(s) / max(float(np.mean(np.abs(s))), 1e-3))
