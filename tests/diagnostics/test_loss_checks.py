"""loss_reduction, label_inverted and the loss contract, checked without training."""
from __future__ import annotations

import numpy as np
import pytest

from siamese_core import TrainConfig, diagnose
from siamese_core.diagnostics.loss_checks import check_convention, check_reduction
from siamese_core.losses import build_loss

from .conftest import codes


def test_summed_triplet_loss_scales_with_batch_size():
    cfg = {"dataset": "digits", "loss": {"type": "buggy.losses:summed_triplet", "kind": "triplet"}}
    findings = diagnose(cfg, probes=False)
    f = next(f for f in findings if f.code == "loss_reduction")
    assert f.severity == "error"
    assert f.evidence["ratio"] == pytest.approx(4.0, rel=1e-3)


def test_mean_reduced_user_triplet_loss_is_clean():
    cfg = {"dataset": "digits", "loss": {"type": "buggy.losses:mean_triplet", "kind": "triplet"}}
    assert diagnose(cfg, probes=False) == []


@pytest.mark.parametrize("loss, distance", [("contrastive", "euclidean"), ("contrastive", "sqeuclidean"),
                                            ("contrastive", "cosine"), ("bce", "euclidean"),
                                            ("triplet", "euclidean"), ("triplet", "cosine")])
def test_builtin_losses_keep_the_contract(loss, distance):
    cfg = TrainConfig.from_dict({"loss": {"type": loss, "margin": 0.5}, "distance": distance})
    assert check_convention(cfg, embedding_dim=8) == []
    rng = np.random.default_rng(0)
    if loss == "triplet":
        y, pred = rng.integers(0, 5, (64, 2)).astype("float32"), rng.normal(size=(64, 3, 8)).astype("float32")
    else:
        y, pred = (rng.random(64) < 0.5).astype("float32"), rng.random(64).astype("float32")
    assert check_reduction(build_loss(cfg.loss, distance), y, pred) == []


def test_keras_io_contrastive_loss_is_inverted():
    """keras.io's loss assumes 0 = same; with our 1 = same pairs it pushes matches apart."""
    cfg = TrainConfig.from_dict({"loss": {"type": "buggy.losses:keras_io_contrastive", "kind": "pair"}})
    findings = check_convention(cfg, embedding_dim=8)
    assert codes(findings) == {"label_inverted": "error"}
    assert findings[0].evidence["loss_same_close"] > findings[0].evidence["loss_same_far"]


def test_hinge_with_the_wrong_sign_predicts_collapse():
    cfg = TrainConfig.from_dict({"loss": {"type": "buggy.losses:flipped_margin_contrastive", "kind": "pair"}})
    assert codes(check_convention(cfg, embedding_dim=8)) == {"collapse": "warning"}


def test_softmax_over_one_unit_gets_no_gradient():
    findings = diagnose({"dataset": "digits", "encoder": {"type": "buggy.encoders:softmax_embedding"}}, probes=False)
    c = codes(findings)
    assert c.get("cannot_overfit") == "error"      # zero gradient reaches the encoder
    assert c.get("constant_output") == "warning"   # same score for every pair before training
