"""loss_reduction, label_inverted and the loss contract, checked without training."""
from __future__ import annotations

import numpy as np
import pytest

from siamese_core import TrainConfig, diagnose
from siamese_core.diagnostics.loss_checks import check_convention, check_reduction
from siamese_core.losses import build_loss

from .conftest import codes


@pytest.mark.parametrize("loss, ratio", [("summed_triplet", 2.0), ("mean_triplet_divided_again", 0.5)])
def test_summed_or_twice_averaged_triplet_loss_scales_with_batch_size(loss, ratio):
    """The batch repeated twice: a sum doubles, a mean divided by the batch size again halves."""
    cfg = {"dataset": "digits", "loss": {"type": f"buggy.losses:{loss}", "kind": "triplet"}}
    findings = diagnose(cfg, probes=False)
    f = next(f for f in findings if f.code == "loss_reduction")
    assert f.severity == "error"
    assert f.evidence["ratio"] == pytest.approx(ratio, rel=1e-3)


# A healthy model trained for a few epochs (digits, conv depth 2, 4 epochs: test ROC AUC 0.98-1.0)
TRAINED = {"dataset": "digits", "epochs": 4, "batch_size": 64, "deterministic": True, "seed": 0,
           "pairs": {"val_pairs": 300, "test_pairs": 300}, "encoder": {"depth": 2, "width": 16, "embedding_dim": 32},
           "diagnostics": {"preflight": False}}


@pytest.fixture(scope="module")
def trained():
    from siamese_core import train
    from siamese_core.data.sources import load_dataset

    data = load_dataset(TrainConfig.from_dict(TRAINED))

    def fit(loss: dict):
        config = TrainConfig.from_dict({**TRAINED, "loss": loss})
        return config, data, train(config, data=data)
    return fit


def test_reduction_check_passes_a_healthy_batch_hard_model(trained):
    """Issue 12.6: batch sizes 16 vs 64 flagged healthy batch-hard models (a larger batch holds harder tuples;
    x3.6 on these training tuples). Repeating the batch changes nothing a miner can find."""
    from siamese_core.diagnostics.watchers import probe_tuples

    config, data, result = trained({"type": "triplet", "mining": "batch_hard", "margin": 0.005})
    assert result.test["roc_auc"] > 0.95
    for split in (data.val, data.train):
        x, y = probe_tuples(config, split)
        pred = np.asarray(result.models.training(x, training=False))
        assert check_reduction(result.models.training.loss, y, pred) == []


def test_zero_loss_on_every_probe_tuple_is_not_cannot_overfit(trained):
    """Issue 12.7: a trained triplet model at margin 0.005 satisfies every hinge of many tuples; zero loss has no
    gradient by construction, which is not 'cannot overfit'."""
    import keras

    from siamese_core.data.loaders import gather
    from siamese_core.diagnostics.loss_checks import check_gradients
    from siamese_core.run import build_run

    config, data, result = trained({"type": "triplet", "margin": 0.005})
    model = result.models.training
    tuples = build_run(config, data).plan.sampler.epoch(0)
    x = gather([data.train.x] * 3, tuples)
    per_tuple = np.asarray(model.loss.fn(tuples.targets, np.asarray(model(list(x), training=False))))
    satisfied = np.flatnonzero(per_tuple == 0)[:64]
    assert satisfied.size == 64 and (per_tuple > 0).any()
    xs, ys = [a[satisfied] for a in x], tuples.targets[satisfied]
    assert float(model.loss(ys, model(xs, training=True))) == 0.0
    assert check_gradients(model, model.loss, xs, ys, encoders=result.models.encoders) == []
    hard = np.argsort(-per_tuple)[:64]   # tuples with loss: gradients reach the encoder, nothing to report either
    assert check_gradients(model, model.loss, [a[hard] for a in x], tuples.targets[hard],
                           encoders=result.models.encoders) == []
    assert keras.ops.convert_to_numpy(model.loss(tuples.targets[hard], model([a[hard] for a in x]))) > 0


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
    # it pulls different pairs together too: a constant map is its minimum, an error (was a warning, so the
    # doctor exited 0, "healthy", and training ran on towards the collapse)
    cfg = TrainConfig.from_dict({"loss": {"type": "buggy.losses:flipped_margin_contrastive", "kind": "pair"}})
    findings = check_convention(cfg, embedding_dim=8)
    assert codes(findings) == {"collapse": "error"} and "wrong sign" in findings[0].message
    # no term for different pairs: it only suggests a collapse
    cfg = TrainConfig.from_dict({"loss": {"type": "buggy.losses:pull_only", "kind": "pair"}})
    assert codes(check_convention(cfg, embedding_dim=8)) == {"collapse": "warning"}


def test_softmax_over_one_unit_gets_no_gradient():
    findings = diagnose({"dataset": "digits", "encoder": {"type": "buggy.encoders:softmax_embedding"}}, probes=False)
    c = codes(findings)
    assert c.get("cannot_overfit") == "error"      # zero gradient reaches the encoder
    assert c.get("constant_output") == "warning"   # same score for every pair before training
