"""Evaluate a Siamese model on a fixed set of validation or test tuples.

Inputs are embedded once per unique sample, then pairs are scored from the
embeddings — far cheaper than running the encoder twice per pair. The keys it
reports are catalogued in `siamese_core.metrics`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import verification
from .data.pairs import (
    STREAM_TEST,
    STREAM_VAL,
    PairSampler,
    PairShuffler,
    TripletSampler,
    Tuples,
    distinct_pairs,
)
from .data.types import (
    EVAL_POSITIVE_FRACTION,
    RETRIEVAL_SAMPLES,
    DatasetSplits,
    EvalSpec,
    LabeledSplit,
    PairedSplit,
    Split,
    materialize,
)
from .losses import PerSampleLoss
from .metrics import history_key
from .models import distances
from .models.siamese import SiameseModels

RECALL_K = 5
MIN_EVAL_PAIRS = 20  # pairs.val_pairs' own lower bound (config.PairsConfig)
_STREAMS = {"val": STREAM_VAL, "test": STREAM_TEST}
_NAMES = {stream: name for name, stream in _STREAMS.items()}
log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """Fixed pairs (and triplets, for triplet losses) drawn once from a split.

    The pairs are balanced and depend only on the split and (n_pairs, seed, stream): never on a training
    setting, so every trial of a sweep on one split is scored on the same pairs (see `EvalSpec`).
    """

    split: Split
    pairs: Tuples
    triplets: Tuples | None
    retrieval_idx: np.ndarray | None

    @classmethod
    def of(cls, data: DatasetSplits, which: Literal["val", "test"], *, triplets: bool = False,
           spec: EvalSpec | None = None) -> EvalSet:
        """The validation or test tuples of `data` as training scores them (`spec`: ``data.info.evaluation``).

        Rebuilding a run's test pairs elsewhere (re-evaluation, promotion) goes through here; the tuples are the
        ones named by ``data.info.eval_fingerprint``.
        """
        spec = spec if spec is not None else data.info.evaluation
        if spec is None:
            raise ValueError(f"Expected an EvalSpec (data.info.evaluation), received: spec=None for {which!r}")
        n_pairs = spec.val_pairs if which == "val" else spec.test_pairs
        return cls.build(data.splits()[which], n_pairs=n_pairs, seed=spec.seed, stream=_STREAMS[which],
                         triplets=triplets, retrieval_samples=spec.retrieval_samples,
                         distinct=which in spec.distinct)

    @classmethod
    def build(cls, split: Split, *, n_pairs: int, seed: int, stream: int, triplets: bool,
              retrieval_samples: int = RETRIEVAL_SAMPLES, distinct: bool = False) -> EvalSet:
        """`distinct`: the split is too small to draw `n_pairs` with replacement (`EvalSpec.distinct`, which names
        it in the fingerprint): no pair is drawn twice, positives and negatives alike many."""
        if isinstance(split, PairedSplit):
            pairs = PairShuffler(split.y, seed=seed, pairs_per_epoch=min(n_pairs, len(split)), stream=stream).epoch(0)
            return cls(split, pairs, None, None)
        if distinct:
            pairs = distinct_pairs(split.y, seed=seed, stream=stream, n_pairs=n_pairs,
                                   positive_fraction=EVAL_POSITIVE_FRACTION, source="evaluation split")
            if len(pairs) < MIN_EVAL_PAIRS:  # 100 classes of one sample and one of two: 2 pairs decided it all
                log.warning("the %s split has only %d different balanced pairs (%d asked): its scores, the "
                            "threshold and anything chosen by them are noise; give it more samples per class",
                            _NAMES.get(stream, "evaluation"), len(pairs), n_pairs)
        else:
            pairs = PairSampler(split.y, seed=seed, pairs_per_epoch=n_pairs,
                                positive_fraction=EVAL_POSITIVE_FRACTION, stream=stream,
                                source="evaluation split").epoch(0)
        trips = (TripletSampler(split.y, seed=seed, triplets_per_epoch=n_pairs, stream=stream).epoch(0)
                 if triplets else None)
        rng = np.random.default_rng([seed, stream, 99])
        n = len(split)
        ridx = np.sort(rng.choice(n, size=min(n, retrieval_samples), replace=False))
        return cls(split, pairs, trips, ridx)


class _Embeddings:
    """Embeddings of the samples one evaluation needs, each unique sample embedded once.

    The pairs, the triplets and the retrieval sample overlap (a 2,000-pair validation set and the 2,000-sample
    retrieval set share most of their images); embedding them in separate passes re-ran the encoder on the
    shared ones every epoch. Pre-paired data has two sides (maybe two towers) and is embedded per side.
    The same pass gives each embedding's norm before unit normalisation (`raw_norms`).
    """

    def __init__(self, models: SiameseModels, split: Split, needed: np.ndarray | None = None) -> None:
        self.models, self.split = models, split
        if needed is not None and isinstance(split, LabeledSplit):
            self.index = needed
            self.emb, self.raw = models.embed_with_raw_norms(materialize(split.x, needed))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Embeddings of split rows `idx` (any shape of indices -> that shape + [D])."""
        return self.emb[np.searchsorted(self.index, idx)]

    def of(self, tuples: Tuples) -> tuple[list[np.ndarray], np.ndarray]:
        """Embeddings for every position of `tuples` ([n, D] each), and their raw norms (all positions, flat)."""
        if isinstance(self.split, PairedSplit):
            sides = [self.models.embed_with_raw_norms(materialize(x, tuples.indices[:, side]), side=side)
                     for side, x in enumerate((self.split.x1, self.split.x2))]
            return [e for e, _ in sides], np.concatenate([r for _, r in sides])
        at = np.searchsorted(self.index, tuples.indices)
        return [self.emb[at[:, k]] for k in range(tuples.arity)], self.raw[at.T.reshape(-1)]


class Evaluator:
    """Computes the per-epoch validation metrics (and the final test metrics)."""

    def __init__(self, eval_set: EvalSet, *, loss: PerSampleLoss, batch_size: int) -> None:
        self.eval_set = eval_set
        self.loss = loss
        self.batch_size = batch_size
        self.last_arrays: dict[str, np.ndarray] = {}  # raw arrays behind the last evaluation (for plots)

    def _embeddings(self, models: SiameseModels) -> _Embeddings:
        """The split's embeddings for this evaluation (see `_Embeddings`)."""
        es = self.eval_set
        if isinstance(es.split, PairedSplit):
            return _Embeddings(models, es.split)
        parts = [es.pairs.indices.reshape(-1)]
        if es.triplets is not None:
            parts.append(es.triplets.indices.reshape(-1))
        if es.retrieval_idx is not None:
            parts.append(es.retrieval_idx)
        return _Embeddings(models, es.split, np.unique(np.concatenate(parts)))

    def _mean_loss(self, y: np.ndarray, pred: np.ndarray) -> float:
        b = self.batch_size
        total, count = 0.0, 0
        for i in range(0, len(y), b):
            value = float(self.loss(y[i:i + b], pred[i:i + b]))
            total, count = total + value * len(y[i:i + b]), count + len(y[i:i + b])
        return total / max(count, 1)

    def evaluate(self, models: SiameseModels, *, threshold: float | None = None) -> dict[str, float]:
        """Metrics on the fixed tuples; the threshold is calibrated here unless given."""
        pairs = self.eval_set.pairs
        embeddings = self._embeddings(models)
        (ea, eb), raw_norms = embeddings.of(pairs)
        scores = models.score(ea, eb)
        y = pairs.targets
        dist = np.asarray(distances.get(models.distance).rowwise(ea, eb)).reshape(-1)
        result: dict[str, float] = {}
        if self.eval_set.triplets is not None:
            (a, p, n), _ = embeddings.of(self.eval_set.triplets)
            result["loss"] = self._mean_loss(self.eval_set.triplets.targets, np.stack([a, p, n], axis=1))
        else:
            result["loss"] = self._mean_loss(y, models.pair_output(ea, eb, scores))
        result.update(verification.verification_metrics(scores, y, higher_is_same=models.higher_is_same,
                                                   threshold=threshold))
        result["score_std"] = float(np.std(scores)) if np.isfinite(scores).all() else float("nan")
        result.update(verification.embedding_stats(np.concatenate([ea, eb]), raw_norms))
        result.update(verification.distance_gap(dist, y))
        self.last_arrays = {"distances": dist, "scores": scores, "labels": y}
        if self.eval_set.retrieval_idx is not None and isinstance(self.eval_set.split, LabeledSplit):
            idx = self.eval_set.retrieval_idx
            emb = embeddings.rows(idx)
            self.last_arrays.update(embeddings=emb, embedding_labels=self.eval_set.split.y[idx])
            if np.isfinite(emb).all():
                e64 = emb.astype(np.float64)  # float64: identical embeddings give tied distances (see retrieval)
                dm = np.asarray(distances.get(models.distance).pairwise(e64, e64))
                result.update(verification.retrieval(dm, self.eval_set.split.y[idx], k=RECALL_K))
            else:
                result.update({"precision_at_1": float("nan"), f"recall_at_{RECALL_K}": float("nan")})
        return result


def as_epoch_logs(result: dict[str, float]) -> dict[str, float]:
    """Validation metrics -> history keys (``val_roc_auc``, ``raw_embedding_norm_mean``, ...)."""
    return {history_key(k): v for k, v in result.items()}
