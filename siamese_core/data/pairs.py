"""One deterministic sampler of pair / triplet *indices*, shared by every loader.

Loaders only turn indices into tensors, so for the same ``(seed, epoch)`` the
in-memory, tf.data and custom-loop loaders train on the same tuples in the
same order. Sampling is vectorised NumPy (no Python loop per pair) and only
indices are generated: memory does not grow with ``pairs_per_epoch``.

Label convention: ``SAME = 1`` (same class, similar), ``DIFFERENT = 0``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..config import TrainConfig
from ..diagnostics.codes import PAIR_IMBALANCE, SINGLE_CLASS
from ..errors import ConfigError, DataError
from .types import DatasetSplits, PairedSplit

SAME = 1
DIFFERENT = 0

# Independent random streams, so e.g. changing pairs_per_epoch never changes val/test pairs.
STREAM_TRAIN, STREAM_VAL, STREAM_TEST, STREAM_PROBE = 0, 1, 2, 3
# Evaluation pairs are drawn without repeats (`distinct_pairs`) where drawing them with replacement would repeat
# more than this share of them (about asked / (2 x different ones)): 2,000 positives of a split with 2,100
# different ones repeated 37 % of the draws. Fashion-MNIST's validation split (about 1.8 M positive pairs) is far
# below it and keeps the pairs (and the fingerprints) it had.
REPEAT_SHARE = 0.01  # it and LIST_PAIRS_UP_TO decide which pairs: bump types.EVAL_SCHEME when either changes
# Where a kind (positives, negatives) has at most this many pairs, or at most twice the count wanted, all of them
# are listed and drawn from; else drawn with replacement and deduplicated. Listing peaks at 48 bytes a pair
# (tracemalloc, ad hoc: the 2.1 M negatives of 1,024 classes of 2 took 101 MB and 0.19 s), so about 50 MB here;
# twice a count wanted above it is a user's `pairs.val_pairs` / `test_pairs` in the millions.
LIST_PAIRS_UP_TO = 1 << 20
# float32 (the dtype of Keras targets) holds every integer below 2**24 exactly: triplet targets carry class
# indices, and two classes whose ids round to one float32 would be merged by batch-hard mining.
FLOAT32_EXACT_INTS = 2**24


def rng_for(seed: int, stream: int, epoch: int) -> np.random.Generator:
    """A generator that depends only on (seed, stream, epoch)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(epoch)]))


@dataclass(frozen=True)
class Tuples:
    """A batch-independent list of training tuples.

    ``indices`` has shape ``[n, 2]`` (pairs: left, right) or ``[n, 3]`` (triplets:
    anchor, positive, negative). ``targets`` is what the loss receives as
    ``y_true``: pair labels ``[n]`` (float32, 1 = same) or, for triplets, the
    class indices (0..C-1 over the sampled split) of anchor and negative ``[n, 2]``
    (float32, for batch-hard mining: exact below 2**24 classes, whatever the user's ids).
    """

    indices: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def arity(self) -> int:
        return int(self.indices.shape[1])

    def positive_fraction(self) -> float:
        return float(np.mean(self.targets == SAME)) if self.arity == 2 else float("nan")


class _ClassIndex:
    """Samples grouped by class, for O(1) vectorised draws within/outside a class."""

    def __init__(self, labels: np.ndarray, *, source: str) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise DataError(source, f"expected a non-empty 1-D label array; received shape {labels.shape}")
        self.n = int(labels.size)
        self.order = np.argsort(labels, kind="stable")
        classes, class_of_sorted, counts = np.unique(labels[self.order], return_inverse=True, return_counts=True)
        self.classes = classes
        self.counts = counts
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.class_of = np.empty(self.n, dtype=np.int64)
        self.class_of[self.order] = class_of_sorted
        self.rank = np.empty(self.n, dtype=np.int64)  # position of a sample inside its class block
        self.rank[self.order] = np.arange(self.n) - self.starts[class_of_sorted]
        self.pos_eligible = np.flatnonzero(counts[self.class_of] >= 2)
        if classes.size < 2:
            raise DataError(source, f"only one class ({classes[0]!r}) — no negative pairs can be built, and a "
                                    "contrastive objective collapses to a constant map without negatives. "
                                    "Provide at least two classes.", code=SINGLE_CLASS)
        if self.pos_eligible.size == 0:
            raise DataError(source, "no class has two or more samples — no positive pairs can be built",
                            code=PAIR_IMBALANCE, fix="give some class two or more samples (more data)")

    def same_class_partner(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.class_of[anchors]
        k = np.floor(rng.random(anchors.size) * (self.counts[c] - 1)).astype(np.int64)
        k += k >= self.rank[anchors]  # skip the anchor itself
        return self.order[self.starts[c] + k]

    def other_class_partner(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.class_of[anchors]
        r = np.floor(rng.random(anchors.size) * (self.n - self.counts[c])).astype(np.int64)
        r += np.where(r >= self.starts[c], self.counts[c], 0)  # skip the anchor's class block
        return self.order[r]


class PairSampler:
    """Balanced positive/negative pairs from labelled samples, fresh every epoch.

    Exactly ``round(positive_fraction * n)`` pairs per epoch are positives.
    Anchors of negatives are uniform over samples; anchors of positives are
    uniform over samples whose class has a second member.
    """

    arity = 2

    def __init__(self, labels: np.ndarray, *, seed: int, pairs_per_epoch: int,
                 positive_fraction: float = 0.5, stream: int = STREAM_TRAIN, source: str = "train split") -> None:
        if not 0.0 < positive_fraction < 1.0:
            raise ValueError(f"positive_fraction must be in (0, 1); received: {positive_fraction}")
        self.index = _ClassIndex(labels, source=source)
        self.labels = np.asarray(labels)
        self.seed, self.stream = int(seed), int(stream)
        self.pairs_per_epoch = int(pairs_per_epoch)
        self.positive_fraction = float(positive_fraction)

    def epoch(self, epoch: int) -> Tuples:
        rng = rng_for(self.seed, self.stream, epoch)
        n = self.pairs_per_epoch
        n_pos = int(round(self.positive_fraction * n))
        pos_a = self.index.pos_eligible[rng.integers(0, self.index.pos_eligible.size, n_pos)]
        pos_b = self.index.same_class_partner(pos_a, rng)
        neg_a = rng.integers(0, self.index.n, n - n_pos)
        neg_b = self.index.other_class_partner(neg_a, rng)
        left = np.concatenate([pos_a, neg_a])
        right = np.concatenate([pos_b, neg_b])
        y = np.concatenate([np.full(n_pos, SAME, np.float32), np.full(n - n_pos, DIFFERENT, np.float32)])
        swap = rng.random(n) < 0.5  # so neither side is always "the anchor"
        left, right = np.where(swap, right, left), np.where(swap, left, right)
        perm = rng.permutation(n)
        return Tuples(np.stack([left[perm], right[perm]], axis=1).astype(np.int64), y[perm])


class TripletSampler:
    """(anchor, positive, negative) triplets from labelled samples, fresh every epoch.

    Targets carry the anchor's and the negative's class *indices* (0..C-1, not the
    raw ids), so a batch-hard loss can mine harder tuples among all embeddings of
    the batch: raw ids around 1e8 collapse to a few float32 values (1,000 ids to
    126) and merged classes make wrong positives.
    """

    arity = 3

    def __init__(self, labels: np.ndarray, *, seed: int, triplets_per_epoch: int,
                 stream: int = STREAM_TRAIN, source: str = "train split") -> None:
        self.index = _ClassIndex(labels, source=source)
        if self.index.classes.size > FLOAT32_EXACT_INTS:
            raise DataError(source, f"{self.index.classes.size} classes: triplet targets are float32, exact only "
                                    f"below {FLOAT32_EXACT_INTS} classes")
        self.labels = np.asarray(labels)
        self.seed, self.stream = int(seed), int(stream)
        self.pairs_per_epoch = int(triplets_per_epoch)

    def epoch(self, epoch: int) -> Tuples:
        rng = rng_for(self.seed, self.stream, epoch)
        n = self.pairs_per_epoch
        a = self.index.pos_eligible[rng.integers(0, self.index.pos_eligible.size, n)]
        p = self.index.same_class_partner(a, rng)
        neg = self.index.other_class_partner(a, rng)
        targets = np.stack([self.index.class_of[a], self.index.class_of[neg]], axis=1).astype(np.float32)
        return Tuples(np.stack([a, p, neg], axis=1).astype(np.int64), targets)


def distinct_pair_counts(labels: np.ndarray) -> tuple[int, int]:
    """How many different (unordered) positive and negative pairs `labels` allow."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    n = int(counts.sum())
    positives = int((counts * (counts - 1) // 2).sum())
    return positives, n * (n - 1) // 2 - positives


def short_of_distinct(labels: np.ndarray, n_pairs: int, positive_fraction: float) -> bool:
    """Would `n_pairs` balanced pairs of `labels` drawn with replacement repeat more than `REPEAT_SHARE` of them
    (or have to: fewer different positives or negatives than asked)? Then evaluation draws `distinct_pairs`."""
    n_pos = int(round(positive_fraction * n_pairs))
    positives, negatives = distinct_pair_counts(labels)
    return any(wanted > 2 * REPEAT_SHARE * available for wanted, available in
               ((n_pos, positives), (n_pairs - n_pos, negatives)))


def distinct_pairs(labels: np.ndarray, *, seed: int, stream: int, n_pairs: int, positive_fraction: float,
                   source: str) -> Tuples:
    """Balanced pairs, none twice, for a split too small to draw `n_pairs` with replacement (`short_of_distinct`):
    ``k`` positives and ``k`` negatives, ``k`` = the fewest of the asked positives and the split's different
    positives and negatives.

    Drawn with replacement, a 4-sample validation split gave 4,000 pairs of 6 different ones, and every count
    that treats pairs as independent (the report's margin tests, a calibrated threshold) took repeats for evidence.
    Balanced as `PairSampler`'s: the threshold is calibrated on equal shares.
    """
    index = _ClassIndex(labels, source=source)
    rng = rng_for(seed, stream, 0)
    positives, negatives = distinct_pair_counts(labels)
    k = min(int(round(positive_fraction * n_pairs)), positives, negatives)
    pos = _pick_distinct(index, rng, k, positives, same=True)
    neg = _pick_distinct(index, rng, k, negatives, same=False)
    pairs = np.concatenate([pos, neg])
    y = np.concatenate([np.full(k, SAME, np.float32), np.full(k, DIFFERENT, np.float32)])
    swap = rng.random(2 * k) < 0.5  # so neither side is always the lower index
    pairs = np.where(swap[:, None], pairs[:, ::-1], pairs)
    perm = rng.permutation(2 * k)
    return Tuples(pairs[perm].astype(np.int64), y[perm])


def _pick_distinct(index: _ClassIndex, rng: np.random.Generator, k: int, population: int, *, same: bool
                   ) -> np.ndarray:
    """``k`` different pairs (lower index first) of one kind, of the `population` the split has."""
    if population <= max(LIST_PAIRS_UP_TO, 2 * k):  # else k <= half of them: a few rounds of draws below
        every = _every_pair(index, same=same)
        return every[np.sort(rng.choice(len(every), size=k, replace=False))]
    kept = np.zeros((0, 2), np.int64)
    while len(kept) < k:
        want = 2 * (k - len(kept)) + 16
        a = (index.pos_eligible[rng.integers(0, index.pos_eligible.size, want)] if same
             else rng.integers(0, index.n, want))
        b = index.same_class_partner(a, rng) if same else index.other_class_partner(a, rng)
        drawn = np.concatenate([kept, np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)])
        _, first = np.unique(drawn, axis=0, return_index=True)
        kept = drawn[np.sort(first)]
    return kept[:k]


def _every_pair(index: _ClassIndex, *, same: bool) -> np.ndarray:
    """Every positive (`same`) or negative pair of the split, lower index first, in a fixed order."""
    parts = []
    for c in range(index.classes.size):
        start, count = int(index.starts[c]), int(index.counts[c])
        members = np.sort(index.order[start:start + count])
        if same:
            i, j = np.triu_indices(count, 1)
            a, b = members[i], members[j]
        else:
            later = index.order[start + count:]  # the classes after c: each negative pair once
            a, b = np.repeat(members, later.size), np.tile(later, count)
        parts.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return np.concatenate(parts).astype(np.int64)


class PairShuffler:
    """Pre-built pairs can't be re-paired: each epoch is a fresh permutation of them.

    With ``pairs_per_epoch`` below the number of pairs, each epoch takes a
    different prefix of its permutation; above it, permutations are chained.
    """

    arity = 2

    def __init__(self, labels: np.ndarray, *, seed: int, pairs_per_epoch: int | None = None,
                 stream: int = STREAM_TRAIN) -> None:
        self.labels = np.asarray(labels, dtype=np.float32)
        self.seed, self.stream = int(seed), int(stream)
        self.pairs_per_epoch = int(pairs_per_epoch or self.labels.size)

    def epoch(self, epoch: int) -> Tuples:
        rng = rng_for(self.seed, self.stream, epoch)
        n, total = self.labels.size, self.pairs_per_epoch
        rounds = -(-total // n)
        order = np.concatenate([rng.permutation(n) for _ in range(rounds)])[:total]
        return Tuples(np.stack([order, order], axis=1).astype(np.int64), self.labels[order])


class TupleSampler(Protocol):
    """What loaders need from a sampler: the tuples of any epoch, deterministically."""

    arity: int
    pairs_per_epoch: int

    def epoch(self, epoch: int) -> Tuples: ...


def default_pairs_per_epoch(n_train: int, *, paired: bool) -> int:
    """Two pairs per training sample (each sample is seen ~4 times an epoch); all pairs if pre-paired."""
    return n_train if paired else 2 * n_train


def make_sampler(config: TrainConfig, data: DatasetSplits) -> PairSampler | TripletSampler | PairShuffler:
    """The training sampler for this config: pairs, triplets, or a shuffle of pre-built pairs.

    Cheap and TensorFlow-free, so batch-size and label problems fail here, before a model is built.
    """
    train = data.train
    paired = isinstance(train, PairedSplit)
    n = config.pairs.pairs_per_epoch or default_pairs_per_epoch(len(train), paired=paired)
    if config.batch_size > n:
        raise ConfigError("batch_size", f"expected batch_size <= pairs per epoch ({n} for this dataset); "
                                        f"received: batch_size={config.batch_size}")
    if isinstance(train, PairedSplit):
        return PairShuffler(train.y, seed=config.seed, pairs_per_epoch=n)
    if config.loss.is_triplet:
        return TripletSampler(train.y, seed=config.seed, triplets_per_epoch=n)
    return PairSampler(train.y, seed=config.seed, pairs_per_epoch=n, positive_fraction=config.pairs.positive_fraction)
