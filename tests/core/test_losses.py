"""Losses: per-sample values, reduced once; label convention 1 = same (property-tested)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from siamese_core import DIFFERENT, SAME
from siamese_core.config import LossConfig
from siamese_core.errors import ConfigError
from siamese_core.losses import (
    PerSampleLoss,
    batch_hard_triplet_loss,
    binary_crossentropy_loss,
    build_loss,
    build_loss_fn,
    contrastive_loss,
    score_is_similarity,
    triplet_loss,
)
from siamese_core.models import distances


def np_(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def contrastive(y, d, margin):
    return np_(contrastive_loss(np.float32([y]), np.float32([d]), margin))[0]


# ------------------------------------------------------------------ contrastive
def test_contrastive_reference_values():
    y = np.float32([1, 1, 0, 0, 0])
    d = np.float32([0.0, 0.5, 0.2, 1.0, 3.0])
    got = np_(contrastive_loss(y, d, 1.0))
    np.testing.assert_allclose(got, [0.0, 0.25, 0.64, 0.0, 0.0], rtol=1e-6)
    assert got.shape == (5,)  # one value per pair


finite_d = st.floats(0.0, 5.0, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(d1=finite_d, d2=finite_d, margin=st.floats(0.1, 3.0))
def test_contrastive_same_pairs_loss_falls_as_they_move_closer(d1, d2, margin):
    near, far = sorted((d1, d2))
    assert contrastive(SAME, near, margin) <= contrastive(SAME, far, margin)
    if far - near > 1e-3:
        assert contrastive(SAME, near, margin) < contrastive(SAME, far, margin)


@settings(max_examples=200, deadline=None)
@given(d1=finite_d, d2=finite_d, margin=st.floats(0.1, 3.0))
def test_contrastive_different_pairs_loss_rises_as_they_move_closer_within_margin(d1, d2, margin):
    near, far = sorted((d1, d2))
    assert contrastive(DIFFERENT, near, margin) >= contrastive(DIFFERENT, far, margin)
    if far < margin and far - near > 1e-3:
        assert contrastive(DIFFERENT, near, margin) > contrastive(DIFFERENT, far, margin)
    if near >= margin:
        assert contrastive(DIFFERENT, near, margin) == 0.0  # beyond the margin: no push


emb = arrays(np.float32, (6,), elements=st.floats(-3, 3, width=32))


@settings(max_examples=100, deadline=None)
@given(a=emb, b=emb, t=st.floats(0.05, 0.9), metric=st.sampled_from(["euclidean", "sqeuclidean"]))
def test_contrastive_on_embeddings_moving_together(a, b, t, metric):
    """Move b toward a: same pairs' loss falls; different pairs' loss rises (within the margin)."""
    dist = distances.get(metric).rowwise
    d_far = float(np_(dist(a[None], b[None]))[0])
    assume(d_far > 1e-2)
    b_near = a + (1.0 - t) * (b - a)
    d_near = float(np_(dist(a[None], b_near[None]))[0])
    assert d_near < d_far
    margin = d_far * 1.5
    assert contrastive(SAME, d_near, margin) < contrastive(SAME, d_far, margin)
    assert contrastive(DIFFERENT, d_near, margin) > contrastive(DIFFERENT, d_far, margin)


# ------------------------------------------------------------------ reduction
def test_per_sample_loss_reduced_once_as_mean():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 64).astype(np.float32)
    d = rng.random(64).astype(np.float32) * 2
    loss = build_loss(LossConfig(margin=1.0), "euclidean")
    assert isinstance(loss, PerSampleLoss)
    per_sample = np_(contrastive_loss(y, d, 1.0))
    assert float(loss(y, d)) == pytest.approx(per_sample.mean(), rel=1e-5)
    # batch size does not change the value: the same pairs twice give the same mean
    assert float(loss(np.tile(y, 4), np.tile(d, 4))) == pytest.approx(float(loss(y, d)), rel=1e-5)


def test_per_sample_loss_serialises_config():
    cfg = build_loss(LossConfig(), "euclidean").get_config()
    assert cfg["reduction"] == "sum_over_batch_size"


# ------------------------------------------------------------------ BCE
def test_bce_matches_sklearn_log_loss():
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200).astype(np.float32)
    p = rng.uniform(0.01, 0.99, 200).astype(np.float32)
    logit = np.log(p / (1 - p)).astype(np.float32)  # the loss takes the similarity head's logit
    got = np_(binary_crossentropy_loss(y, logit))
    assert got.shape == (200,)
    assert got.mean() == pytest.approx(log_loss(y, p), rel=1e-4)
    # label 1 = same: a high same-logit is cheap for a same pair, expensive for a different one
    lo, hi = np_(binary_crossentropy_loss(np.float32([SAME, DIFFERENT]), np.float32([2.2, 2.2])))
    assert lo < hi
    # confidently wrong pairs: finite, and as large as the logit (a clipped probability capped them at 16.1)
    wrong = np_(binary_crossentropy_loss(np.float32([1, 0]), np.float32([-100.0, 100.0])))
    np.testing.assert_allclose(wrong, [100.0, 100.0], rtol=1e-6)


# ------------------------------------------------------------------ triplets
def test_triplet_loss_formula():
    rng = np.random.default_rng(2)
    a, p, n = (rng.normal(size=(16, 4)).astype(np.float32) for _ in range(3))
    dp = np.linalg.norm(a - p, axis=1)
    dn = np.linalg.norm(a - n, axis=1)
    np.testing.assert_allclose(np_(triplet_loss(a, p, n, margin=0.5)), np.maximum(dp - dn + 0.5, 0), rtol=1e-4,
                               atol=1e-5)


def brute_force_batch_hard(emb, labels, margin, n_anchors):
    out = []
    d = np.sqrt(np.maximum(((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1), 1e-9))
    for i in range(n_anchors):
        pos = [d[i, j] for j in range(len(emb)) if labels[j] == labels[i] and j != i]
        neg = [d[i, j] for j in range(len(emb)) if labels[j] != labels[i]]
        out.append(max(max(pos, default=0.0) - min(neg) + margin, 0.0))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_hard_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(24, 5)).astype(np.float32)
    labels = rng.integers(0, 4, 24).astype(np.float32)
    got = np_(batch_hard_triplet_loss(emb, labels, margin=0.7, n_anchors=8))
    np.testing.assert_allclose(got, brute_force_batch_hard(emb.astype(np.float64), labels, 0.7, 8), rtol=1e-4,
                               atol=1e-4)


def test_batch_hard_via_stacked_model_output_is_at_least_random_triplet_loss():
    rng = np.random.default_rng(3)
    stacked = rng.normal(size=(32, 3, 4)).astype(np.float32)
    la = rng.integers(0, 3, 32)
    ln = (la + 1 + rng.integers(0, 2, 32)) % 3
    targets = np.stack([la, ln], 1).astype(np.float32)
    hard = np_(build_loss_fn(LossConfig(type="triplet", mining="batch_hard"), "euclidean")(targets, stacked))
    rand = np_(build_loss_fn(LossConfig(type="triplet"), "euclidean")(targets, stacked))
    assert hard.shape == rand.shape == (32,)
    assert np.all(hard >= rand - 1e-5)  # the hardest positive/negative are never easier than the given ones


# ------------------------------------------------------------------ registry and user losses
def test_builtin_losses_by_name():
    y, d = np.float32([1, 0]), np.float32([0.3, 0.4])
    np.testing.assert_allclose(np_(build_loss_fn(LossConfig(margin=2.0), "euclidean")(y, d)),
                               np_(contrastive_loss(y, d, 2.0)))
    np.testing.assert_allclose(np_(build_loss_fn(LossConfig(type="bce"), "euclidean")(y, d)),
                               np_(binary_crossentropy_loss(y, d)))
    assert score_is_similarity(LossConfig(type="bce")) and not score_is_similarity(LossConfig())


def test_user_pair_loss_by_import_path_receives_margin():
    from user_code import losses as user

    fn = build_loss_fn(LossConfig(type="user_code.losses:squared_hinge", kind="pair", margin=0.7), "euclidean")
    got = np_(fn(np.float32([1, 0]), np.float32([0.2, 0.5])))
    np.testing.assert_allclose(got, [0.2, 0.2], rtol=1e-5)
    assert user.SEEN_MARGINS[-1] == 0.7
    fn2 = build_loss_fn(LossConfig(type="user_code.losses:no_margin", kind="pair"), "euclidean")
    assert np_(fn2(np.float32([1]), np.float32([0.5])))[0] == pytest.approx(0.25)


def test_user_triplet_loss_by_import_path():
    stacked = np.random.default_rng(0).normal(size=(8, 3, 4)).astype(np.float32)
    fn = build_loss_fn(LossConfig(type="user_code.losses:soft_triplet", kind="triplet", margin=0.5), "euclidean")
    a, p, n = stacked[:, 0], stacked[:, 1], stacked[:, 2]
    expected = np.log1p(np.exp(((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1) + 0.5))
    np.testing.assert_allclose(np_(fn(np.zeros((8, 2), np.float32), stacked)), expected, rtol=1e-4)


@pytest.mark.parametrize("path, words", [
    ("no_such_module_xyz:fn", "cannot import module"),
    ("user_code.losses:missing", "has no attribute 'missing'"),
    ("user_code.losses:NOT_CALLABLE", "not callable"),
])
def test_bad_user_loss_is_config_error(path, words):
    with pytest.raises(ConfigError, match=words) as info:
        build_loss_fn(LossConfig(type=path, kind="pair"), "euclidean")
    assert info.value.field == "loss.type"


@pytest.mark.parametrize("path, kind, words", [
    ("user_code.losses:one_argument", "pair", r"one_argument\(y_true\) cannot be called as a pair loss"),
    ("user_code.losses:squared_hinge", "triplet", "cannot be called as a triplet loss, fn.anchor, positive, "),
])
def test_a_user_loss_that_cannot_take_the_call_is_config_error(path, kind, words):
    """It was a TypeError in the first training step: `siamese-sweep train` exited 1."""
    with pytest.raises(ConfigError, match=words) as info:
        build_loss_fn(LossConfig(type=path, kind=kind), "euclidean")
    assert info.value.field == "loss.type"


# ------------------------------------------------------------------ save / load
@pytest.mark.parametrize("loss", [
    {"type": "contrastive", "margin": 0.7},
    {"type": "bce"},
    {"type": "triplet", "margin": 0.5},
    {"type": "triplet", "mining": "batch_hard"},
])
def test_compiled_training_model_round_trips_in_safe_mode(loss, digits_data, tmp_path):
    """The training model, compiled with its loss, saves and reloads in Keras safe mode with the same loss."""
    import siamese_core
    from siamese_core import TrainConfig
    from siamese_core.run import build_run

    config = TrainConfig.from_dict({"dataset": "digits", "batch_size": 32, "loss": loss, "distance": "euclidean",
                                    "encoder": {"depth": 1, "width": 4, "embedding_dim": 6}})
    run = build_run(config, digits_data)
    model = run.models.training
    tuples = run.plan.sampler.epoch(0)
    x = [digits_data.train.x[tuples.indices[:64, k]] for k in range(tuples.arity)]
    y = tuples.targets[:64]
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # builds the optimizer state that is saved too
    model.save(tmp_path / "training.keras")

    loaded = siamese_core.load_model(tmp_path / "training.keras")
    assert isinstance(loaded.loss, PerSampleLoss) and type(loaded.loss.fn) is type(run.loss.fn)
    assert loaded.loss.get_config() == run.loss.get_config()
    pred = np.asarray(model.predict_on_batch(x))
    np.testing.assert_allclose(np.asarray(loaded.predict_on_batch(x)), pred, rtol=1e-5, atol=1e-6)
    assert float(loaded.loss(y, pred)) == pytest.approx(float(run.loss(y, pred)), rel=1e-6)
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy() == 2


def test_a_user_loss_without_kind_names_a_readme_section_that_exists():
    # it named 'User losses', a section the README does not have
    import re
    from pathlib import Path

    from siamese_core import TrainConfig

    with pytest.raises(ConfigError, match="loss.kind") as info:
        TrainConfig.from_dict({"loss": {"type": "user_code.losses:contrastive"}})
    section = re.search(r"see README, '([^']+)'", str(info.value))
    assert section is not None, info.value
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert f"### {section.group(1)}\n" in readme
