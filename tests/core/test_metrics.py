"""Metric functions against brute-force and scikit-learn references."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

from siamese_core import verification as m


def sample(seed: int, n: int = 300, sep: float = 1.0, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    d = rng.normal(size=n) + sep * (1 - y)  # distances: different pairs further apart
    if ties:
        d = np.round(d, 1)
    return d, y


def brute_accuracy_best(scores, y, higher_is_same):
    best = 0.0
    cands = np.concatenate([np.unique(scores), [scores.min() - 1, scores.max() + 1]])
    for t in cands:
        pred = scores >= t if higher_is_same else scores <= t
        best = max(best, float(np.mean(pred == y.astype(bool))))
    return best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("higher_is_same", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_calibrated_threshold_maximises_accuracy(seed, higher_is_same, ties):
    d, y = sample(seed, ties=ties)
    scores = -d if higher_is_same else d
    t = m.calibrate_threshold(scores, y, higher_is_same=higher_is_same)
    acc = m.pair_accuracy(scores, y, t, higher_is_same=higher_is_same)
    assert acc == pytest.approx(brute_accuracy_best(scores, y, higher_is_same), abs=1e-12)


@pytest.mark.parametrize("higher_is_same", [False, True])
@pytest.mark.parametrize("kind", [np.float32, np.float16, np.float64])
def test_the_threshold_splits_scores_of_their_own_float_type_where_the_search_did(higher_is_same, kind):
    """Model scores are float32, and NumPy 2 compares them with a Python float in float32: a float64 midpoint
    between two scores a rounding step apart landed on one of them, and 1e-6 above the top score vanished from
    about 8 up, so the accuracy at the tuned threshold was below what the search found (0.5 for two pairs it
    split perfectly; 5,712 of 40,000 random cases; session 48's review of siamese_core)."""
    a = np.nextafter(kind(0.5), kind(1))
    close, y = np.array([a, np.nextafter(a, kind(1))], kind), np.array([1, 0])
    far = np.array([200, 200, 210, 210], kind)  # best: every pair "different" (3 of 4)
    assert m.verification_metrics(close, y, higher_is_same=False)["pair_accuracy"] == 1.0
    assert m.verification_metrics(far, np.array([0, 0, 0, 1]), higher_is_same=False)["pair_accuracy"] == 0.75
    rng = np.random.default_rng(0)
    for _ in range(400):
        base = kind(rng.choice([0.5, 3.0, 40.0, 900.0]))
        steps = rng.integers(-3, 4, size=int(rng.integers(2, 9)))
        scores = np.array([base + kind(s) * np.spacing(base) for s in steps], kind)
        labels = rng.integers(0, 2, scores.size)
        oriented = scores if higher_is_same else -scores
        t = m.calibrate_threshold(oriented, labels, higher_is_same=higher_is_same)
        assert m.pair_accuracy(oriented, labels, t, higher_is_same=higher_is_same) == \
            brute_accuracy_best(oriented, labels, higher_is_same)


def test_threshold_orientation_and_edge_cases():
    y = np.array([1, 1, 0, 0])
    assert m.pair_accuracy([0.1, 0.2, 0.8, 0.9], y, m.calibrate_threshold([0.1, 0.2, 0.8, 0.9], y,
                                                                          higher_is_same=False),
                           higher_is_same=False) == 1.0
    t = m.calibrate_threshold([0.1, 0.2, 0.8, 0.9], y, higher_is_same=False)
    assert 0.2 < t < 0.8
    t = m.calibrate_threshold([0.9, 0.8, 0.2, 0.1], y, higher_is_same=True)
    assert 0.2 < t < 0.8
    assert math.isnan(m.calibrate_threshold([np.nan, np.nan], [0, 1], higher_is_same=False))
    # all one label: predict that label for everyone
    t = m.calibrate_threshold([0.3, 0.5], [1, 1], higher_is_same=False)
    assert m.pair_accuracy([0.3, 0.5], [1, 1], t, higher_is_same=False) == 1.0


def brute_auc(scores_sim, y):
    pos, neg = scores_sim[y == 1], scores_sim[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_matches_brute_force_and_sklearn(seed, ties):
    d, y = sample(seed, ties=ties)
    got = m.roc_auc(d, y, higher_is_same=False)
    assert got == pytest.approx(brute_auc(-d, y), abs=1e-12)
    assert got == pytest.approx(roc_auc_score(y, -d), abs=1e-12)
    assert m.roc_auc(-d, y, higher_is_same=True) == pytest.approx(got)
    assert got > 0.6  # distances: lower for same pairs, so well above chance


def test_roc_auc_undefined_cases():
    assert math.isnan(m.roc_auc([0.1, 0.2], [1, 1], higher_is_same=False))
    assert math.isnan(m.roc_auc([0.1, np.inf], [1, 0], higher_is_same=False))


def brute_eer(scores_sim, y):
    """Scan every threshold; the EER is where FAR and FRR cross (midpoint of the closest pair)."""
    best = None
    for t in np.concatenate([np.unique(scores_sim), [np.inf]]):
        accept = scores_sim >= t
        far = np.mean(accept[y == 0])
        frr = np.mean(~accept[y == 1])
        gap = abs(far - frr)
        if best is None or gap < best[0]:
            best = (gap, (far + frr) / 2)
    return best[1]


@pytest.mark.parametrize("seed", range(4))
def test_eer_matches_threshold_scan(seed):
    d, y = sample(seed, n=400)
    got = m.equal_error_rate(d, y, higher_is_same=False)
    n_min = min((y == 0).sum(), (y == 1).sum())
    assert got == pytest.approx(brute_eer(-d, y), abs=1.5 / n_min)  # within one step of the ROC staircase
    # and it is where fpr == fnr on sklearn's curve
    fpr, tpr, _ = roc_curve(y, -d)
    i = np.argmin(np.abs(fpr - (1 - tpr)))
    assert got == pytest.approx((fpr[i] + 1 - tpr[i]) / 2, abs=1.5 / n_min)


def test_eer_perfect_and_inverted():
    y = np.array([1, 1, 1, 0, 0, 0])
    assert m.equal_error_rate([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], y, higher_is_same=False) == pytest.approx(0.0)
    assert m.equal_error_rate([0.7, 0.8, 0.9, 0.1, 0.2, 0.3], y, higher_is_same=False) == pytest.approx(1.0)


def test_verification_metrics_uses_given_threshold():
    d, y = sample(0)
    calibrated = m.verification_metrics(d, y, higher_is_same=False)
    fixed = m.verification_metrics(d, y, higher_is_same=False, threshold=-100.0)
    assert set(calibrated) == {"pair_accuracy", "roc_auc", "eer", "threshold"}
    assert fixed["threshold"] == -100.0 and fixed["pair_accuracy"] == pytest.approx(np.mean(y == 0))
    assert calibrated["pair_accuracy"] >= fixed["pair_accuracy"]
    assert calibrated["roc_auc"] == fixed["roc_auc"]


def test_embedding_stats_and_distance_gap():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(50, 8))
    norms = np.sqrt((raw ** 2).sum(1))
    unit = raw / norms[:, None]
    got = m.embedding_stats(unit, norms)  # what an l2-normalised encoder gives: unit vectors and the raw norms
    spread = np.sqrt(np.mean(np.sum((unit - unit.mean(0)) ** 2, axis=1)))  # RMS distance from the mean direction
    assert got == pytest.approx({"raw_embedding_norm_mean": norms.mean(), "raw_embedding_norm_std": norms.std(),
                                 "raw_embedding_norm_min": norms.min(), "embedding_spread": spread})
    assert m.embedding_stats(raw, norms)["embedding_spread"] == pytest.approx(spread)  # directions, not lengths
    assert m.embedding_stats(np.tile(unit[:1], (50, 1)), norms)["embedding_spread"] == pytest.approx(0.0, abs=1e-6)
    assert m.embedding_stats(np.zeros((50, 8)), np.zeros(50))["embedding_spread"] == 0.0  # dead: no direction
    assert all(math.isnan(v) for v in m.embedding_stats(np.zeros((0, 8)), np.zeros(0)).values())
    d = np.array([0.1, 0.3, 1.0, 2.0])
    gap = m.distance_gap(d, np.array([1, 1, 0, 0]))
    assert gap["pos_distance_mean"] == pytest.approx(0.2) and gap["neg_distance_mean"] == pytest.approx(1.5)
    assert gap["distance_gap"] == pytest.approx(1.3) and gap["distance_std"] == pytest.approx(d.std())


def brute_retrieval(dm, labels, k):
    p1, rk = [], []
    for i in range(len(labels)):
        others = sorted((dm[i, j], j) for j in range(len(labels)) if j != i)
        p1.append(labels[others[0][1]] == labels[i])
        rk.append(any(labels[j] == labels[i] for _, j in others[:k]))
    return float(np.mean(p1)), float(np.mean(rk))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), k=st.integers(1, 8), classes=st.integers(2, 5), seed=st.integers(0, 10_000))
def test_retrieval_matches_brute_force(n, k, classes, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    labels = rng.integers(0, classes, n)
    dm = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    got = m.retrieval(dm, labels, k=k)
    p1, rk = brute_retrieval(dm, labels, k)
    assert got["precision_at_1"] == pytest.approx(p1) and got[f"recall_at_{k}"] == pytest.approx(rk)
    assert np.isfinite(dm).all()  # the input matrix is not modified in place


def test_retrieval_counts_exact_ties_fractionally_whatever_the_sample_order():
    """Issue 12.10: ties were broken by sort order, so P@1 depended on the order of the samples."""
    from siamese_core.models import distances

    # 1-D points 0, 1, -1: for the query at 0 the other two are tied at distance 1, one of each class
    emb, labels = np.array([[0.0], [1.0], [-1.0]]), np.array([0, 0, 1])
    for order in ([0, 1, 2], [0, 2, 1], [2, 1, 0], [1, 0, 2]):
        dm = np.asarray(distances.get("euclidean").pairwise(emb[order], emb[order]))
        got = m.retrieval(dm, labels[order], k=1)
        assert got["precision_at_1"] == pytest.approx((0.5 + 1.0 + 0.0) / 3), order
    # a constant embedding (a collapsed model) scores the class prior, exactly
    labels = np.repeat(np.arange(10), 20)
    const = np.asarray(distances.get("euclidean").pairwise(np.ones((200, 4)), np.ones((200, 4))))
    got = m.retrieval(const, labels, k=5)
    assert got["precision_at_1"] == pytest.approx(19 / 199)
    assert got["recall_at_5"] == pytest.approx(1 - math.comb(180, 5) / math.comb(199, 5))
    # identical embeddings whose float64 distances differ by rounding still tie
    rng = np.random.default_rng(0)
    e = rng.normal(size=(5, 16))[np.repeat(np.arange(5), 8)]
    labels = rng.permutation(np.repeat(np.arange(4), 10))
    dm = np.asarray(distances.get("euclidean").pairwise(e, e))
    flipped = m.retrieval(dm[::-1, ::-1], labels[::-1], k=5)
    assert m.retrieval(dm, labels, k=5) == pytest.approx(flipped)
