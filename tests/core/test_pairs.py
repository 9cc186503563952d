"""The one pair/triplet sampler: balance, correctness, determinism per (seed, epoch), no per-pair state."""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siamese_core import DIFFERENT, SAME
from siamese_core.data.pairs import (
    PairSampler,
    PairShuffler,
    TripletSampler,
    default_pairs_per_epoch,
    distinct_pair_counts,
    distinct_pairs,
    short_of_distinct,
)
from siamese_core.errors import DataError

LABELS = np.repeat(np.arange(10), [50, 40, 30, 60, 10, 20, 70, 5, 2, 13])


def check_pairs(labels: np.ndarray, tuples, n: int, positive_fraction: float) -> None:
    idx, y = tuples.indices, tuples.targets
    assert idx.shape == (n, 2) and y.shape == (n,) and y.dtype == np.float32
    assert set(np.unique(y)).issubset({SAME, DIFFERENT})
    assert int((y == SAME).sum()) == round(positive_fraction * n)
    same_class = labels[idx[:, 0]] == labels[idx[:, 1]]
    np.testing.assert_array_equal(same_class, y == SAME)   # label 1 <=> same class
    assert not np.any(idx[:, 0] == idx[:, 1])                # never a sample with itself
    assert idx.min() >= 0 and idx.max() < labels.size


def test_label_convention_constants():
    assert SAME == 1 and DIFFERENT == 0


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.8])
def test_pairs_balanced_and_correct(fraction):
    s = PairSampler(LABELS, seed=3, pairs_per_epoch=2001, positive_fraction=fraction)
    t = s.epoch(0)
    check_pairs(LABELS, t, 2001, fraction)
    assert t.positive_fraction() == pytest.approx(round(fraction * 2001) / 2001)


def test_default_positive_fraction_is_half():
    t = PairSampler(LABELS, seed=0, pairs_per_epoch=1000).epoch(0)
    assert (t.targets == SAME).sum() == 500


def test_deterministic_for_seed_and_epoch_and_reshuffled_each_epoch():
    a = PairSampler(LABELS, seed=7, pairs_per_epoch=500)
    b = PairSampler(LABELS.copy(), seed=7, pairs_per_epoch=500)
    for epoch in range(3):
        np.testing.assert_array_equal(a.epoch(epoch).indices, b.epoch(epoch).indices)
        np.testing.assert_array_equal(a.epoch(epoch).targets, b.epoch(epoch).targets)
    e0, e1 = a.epoch(0).indices, a.epoch(1).indices
    assert (e0 != e1).any(axis=1).mean() > 0.9  # a fresh set of pairs, not the same list
    other = PairSampler(LABELS, seed=8, pairs_per_epoch=500).epoch(0).indices
    assert (e0 != other).any(axis=1).mean() > 0.9
    # asking for epoch 2 first does not change it (no hidden state between epochs)
    c = PairSampler(LABELS, seed=7, pairs_per_epoch=500)
    np.testing.assert_array_equal(c.epoch(2).indices, a.epoch(2).indices)


def test_labels_interleaved_and_both_sides_vary():
    t = PairSampler(LABELS, seed=1, pairs_per_epoch=4000).epoch(0)
    y = t.targets
    # shuffled: no long run of one label (a sorted list would have a run of 2000)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, y, -1]) != 0))
    assert runs.max() < 20
    # each side sees positive anchors and partners alike: classes appear on both sides in similar proportions
    left = np.bincount(LABELS[t.indices[:, 0]], minlength=10) / 4000
    right = np.bincount(LABELS[t.indices[:, 1]], minlength=10) / 4000
    assert np.abs(left - right).max() < 0.03


def test_positives_cover_all_eligible_classes_and_singletons_only_in_negatives():
    labels = np.array([0] * 30 + [1] * 30 + [2] * 1)  # class 2 has a single sample
    t = PairSampler(labels, seed=0, pairs_per_epoch=3000).epoch(0)
    check_pairs(labels, t, 3000, 0.5)
    pos = t.indices[t.targets == SAME]
    assert not np.isin(60, pos).any()                       # a singleton cannot form a positive
    assert np.isin(60, t.indices[t.targets == DIFFERENT]).any()
    assert set(labels[pos[:, 0]].tolist()) == {0, 1}


@pytest.mark.parametrize("labels, words", [
    (np.zeros(10, int), "only one class"),
    (np.arange(10), "no class has two or more samples"),
    (np.array([], int), "non-empty"),
])
def test_unusable_labels_are_data_errors(labels, words):
    with pytest.raises(DataError, match=words):
        PairSampler(labels, seed=0, pairs_per_epoch=10)


def test_triplets_correct_and_deterministic():
    s = TripletSampler(LABELS, seed=2, triplets_per_epoch=1500)
    t = s.epoch(4)
    a, p, n = t.indices.T
    assert t.indices.shape == (1500, 3) and t.arity == 3
    assert np.all(LABELS[a] == LABELS[p]) and np.all(a != p)
    assert np.all(LABELS[a] != LABELS[n])
    np.testing.assert_array_equal(t.targets, np.stack([LABELS[a], LABELS[n]], 1).astype(np.float32))
    np.testing.assert_array_equal(TripletSampler(LABELS, seed=2, triplets_per_epoch=1500).epoch(4).indices, t.indices)
    assert (s.epoch(5).indices != t.indices).any()


def test_triplet_targets_are_class_indices_exact_in_float32():
    """Ids around 1e8 round to a few float32 values; targets carry each sample's class index instead."""
    ids = 100_000_000 + LABELS
    assert np.unique(ids.astype(np.float32)).size < 10  # what the raw ids would have become
    t = TripletSampler(ids, seed=2, triplets_per_epoch=1500).epoch(4)
    np.testing.assert_array_equal(t.indices, TripletSampler(LABELS, seed=2, triplets_per_epoch=1500).epoch(4).indices)
    a, _, n = t.indices.T
    np.testing.assert_array_equal(t.targets, np.stack([LABELS[a], LABELS[n]], 1).astype(np.float32))


def test_pair_shuffler_permutes_prebuilt_pairs_each_epoch():
    y = (np.arange(100) % 3 == 0).astype(np.float32)
    s = PairShuffler(y, seed=0)
    e0, e1 = s.epoch(0), s.epoch(1)
    for t in (e0, e1):
        assert sorted(t.indices[:, 0].tolist()) == list(range(100))  # every pair once per epoch
        np.testing.assert_array_equal(t.indices[:, 0], t.indices[:, 1])
        np.testing.assert_array_equal(t.targets, y[t.indices[:, 0]])
    assert (e0.indices != e1.indices).any()
    long = PairShuffler(y, seed=0, pairs_per_epoch=250).epoch(0)
    assert len(long) == 250 and np.bincount(long.indices[:, 0], minlength=100).max() == 3


def test_default_pairs_per_epoch():
    assert default_pairs_per_epoch(1000, paired=False) == 2000
    assert default_pairs_per_epoch(1000, paired=True) == 1000


def test_vectorised_and_no_per_pair_state():
    labels = np.random.default_rng(0).integers(0, 10, 60_000)
    # the sampler object holds only the class index: building it costs the same for 10 or 10M pairs
    sizes = []
    for n in (10, 10_000_000):
        tracemalloc.start()
        PairSampler(labels, seed=0, pairs_per_epoch=n)
        sizes.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert sizes[1] <= sizes[0] * 1.05 + 4096
    t0 = time.perf_counter()
    t = PairSampler(labels, seed=0, pairs_per_epoch=1_000_000).epoch(0)
    assert time.perf_counter() - t0 < 3.0  # vectorised: ~0.1 s here; a Python loop would take ~10 s
    assert len(t) == 1_000_000


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=2, max_size=8).filter(lambda c: max(c) >= 2),
       n=st.integers(1, 400), fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**31 - 1),
       epoch=st.integers(0, 1000))
def test_pair_properties_hold_for_any_labels(counts, n, fraction, seed, epoch):
    labels = np.repeat(np.arange(len(counts)) * 7 + 3, counts)  # non-contiguous class ids
    labels = np.random.default_rng(seed).permutation(labels)
    s = PairSampler(labels, seed=seed, pairs_per_epoch=n, positive_fraction=fraction)
    t = s.epoch(epoch)
    check_pairs(labels, t, n, fraction)
    np.testing.assert_array_equal(t.indices, s.epoch(epoch).indices)


@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(1, 9), min_size=2, max_size=6).filter(lambda c: max(c) >= 2),
       n=st.integers(1, 200), seed=st.integers(0, 1000))
def test_triplet_properties_hold_for_any_labels(counts, n, seed):
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    t = TripletSampler(labels, seed=seed, triplets_per_epoch=n).epoch(0)
    a, p, neg = t.indices.T
    assert np.all(labels[a] == labels[p]) and np.all(a != p) and np.all(labels[a] != labels[neg])


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=2, max_size=8).filter(lambda c: max(c) >= 2),
       n=st.integers(2, 4000), seed=st.integers(0, 2**31 - 1))
def test_evaluation_pairs_of_a_small_split_are_each_drawn_once_and_balanced(counts, n, seed):
    """A split with fewer different pairs than asked: drawn with replacement, 4 samples gave 4,000 pairs of 6
    different ones, which the report's margin tests counted as 4,000 independent pairs."""
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)) * 7 + 3, counts))
    positives, negatives = distinct_pair_counts(labels)
    if not short_of_distinct(labels, n, 0.5):
        return
    t = distinct_pairs(labels, seed=seed, stream=1, n_pairs=n, positive_fraction=0.5, source="val")
    k = min(round(n / 2), positives, negatives)
    check_pairs(labels, t, 2 * k, 0.5)
    ordered = np.sort(t.indices, axis=1)
    assert len(np.unique(ordered, axis=0)) == len(t)  # no pair twice, either way round
    again = distinct_pairs(labels, seed=seed, stream=1, n_pairs=n, positive_fraction=0.5, source="val")
    np.testing.assert_array_equal(t.indices, again.indices)


def test_four_samples_give_their_pairs_once() -> None:
    labels = np.array([0, 0, 1, 1])
    assert distinct_pair_counts(labels) == (2, 4) and short_of_distinct(labels, 4000, 0.5)
    t = distinct_pairs(labels, seed=0, stream=1, n_pairs=4000, positive_fraction=0.5, source="val")
    assert sorted(map(tuple, np.sort(t.indices, axis=1).tolist())) in (
        [(0, 1), (0, 2), (1, 3), (2, 3)], [(0, 1), (0, 3), (1, 2), (2, 3)], [(0, 1), (0, 2), (0, 3), (2, 3)],
        [(0, 1), (1, 2), (1, 3), (2, 3)], [(0, 1), (0, 2), (1, 2), (2, 3)], [(0, 1), (0, 3), (1, 3), (2, 3)])
    # Fashion-MNIST's validation split (600 a class): 2,000 positives of 1.8 M would repeat 0.06 %: drawn as before
    assert not short_of_distinct(np.repeat(np.arange(10), 600), 4000, 0.5)
    # 100 a class: 2,000 of 49,500 positives would repeat about 2 % of them (REPEAT_SHARE 1 %)
    assert short_of_distinct(np.repeat(np.arange(10), 100), 4000, 0.5)


def test_a_large_population_is_drawn_and_deduplicated_not_listed() -> None:
    """3,000 classes of 2: 3,000 positives (short of 4,000 asked), 18 million negatives (beyond
    LIST_PAIRS_UP_TO: drawn from, not listed)."""
    labels = np.repeat(np.arange(3000), 2)
    tracemalloc.start()
    t = distinct_pairs(labels, seed=0, stream=2, n_pairs=8000, positive_fraction=0.5, source="test")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    check_pairs(labels, t, 6000, 0.5)
    assert len(np.unique(np.sort(t.indices, axis=1), axis=0)) == 6000
    assert peak < 50e6  # listing the 18 M negatives would take 288 MB
