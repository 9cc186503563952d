"""Watchers in real trainings (every loader): collapse, constant_output, label_inverted, no_learning, nan_loss."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from siamese_core import TrainConfig, train
from siamese_core.data.sources import load_dataset
from siamese_core.data.types import DatasetSplits, PairedSplit
from siamese_core.diagnostics.watchers import FindingCollector, epoch_findings
from siamese_core.errors import ConfigError, TrainingFailed

from .conftest import codes, make_pairs

KEYS = ("loss", "val_loss", "val_roc_auc", "raw_embedding_norm_mean", "val_distance_std", "val_pos_distance_mean",
        "val_neg_distance_mean", "val_score_std")


def rows(*values: tuple[float, ...]) -> list[dict[str, float]]:
    return [dict(zip(KEYS, v, strict=True)) for v in values]


# Measured epoch logs (digits unless noted; no l2_normalize, so the raw norm is the embedding's norm), kept as
# calibration evidence for the thresholds.
HEALTHY = {
    "conv": rows((0.828, 0.382, 0.843, 1.127, 0.028, 0.100, 0.132, 0.028),
                 (0.234, 0.359, 0.846, 2.217, 0.038, 0.118, 0.162, 0.038),
                 (0.174, 0.334, 0.885, 3.001, 0.047, 0.135, 0.195, 0.047),
                 (0.151, 0.31, 0.906, 3.424, 0.058, 0.155, 0.234, 0.058)),
    "cosine": rows((0.053, 0.05, 0.914, 1.047, 0.0088, 0.0084, 0.0202, 0.0088),
                   (0.020, 0.02, 0.948, 1.988, 0.0047, 0.0032, 0.0098, 0.0047),
                   (0.014, 0.014, 0.962, 2.792, 0.0043, 0.0025, 0.0086, 0.0043)),
    "bce": rows((0.609, 0.6, 0.814, 1.143, 0.049, 0.140, 0.198, 0.008),
                (0.481, 0.48, 0.862, 2.201, 0.073, 0.192, 0.289, 0.0127)),
    "sgd_lr10": rows((0.298, 0.318, 0.872, 3.868, 0.493, 0.729, 1.340, 0.493),
                     (0.118, 0.190, 0.914, 2.755, 0.482, 0.538, 1.196, 0.482),
                     (0.106, 0.115, 0.952, 2.221, 0.347, 0.380, 0.906, 0.347)),
    "fashion_mnist": rows((0.147, 0.15, 0.922, 1.683, 0.391, 0.331, 0.886, 0.391),
                          (0.112, 0.12, 0.935, 1.342, 0.411, 0.311, 0.913, 0.411),
                          (0.103, 0.11, 0.927, 1.465, 0.441, 0.331, 0.975, 0.441)),
}
# Positives-only training pairs, mlp without BatchNorm: the norm falls 0.53 -> 0.008 (Hadsell's collapse).
POSITIVES_ONLY = rows((0.259, 0.288, 0.639, 0.5276, 0.133, 0.300, 0.363, 0.133),
                      (0.065, 0.386, 0.629, 0.2253, 0.088, 0.157, 0.198, 0.088),
                      (0.021, 0.470, 0.605, 0.0752, 0.069, 0.079, 0.102, 0.069),
                      (0.0066, 0.530, 0.558, 0.0247, 0.052, 0.035, 0.041, 0.052),
                      (0.0025, 0.551, 0.523, 0.0123, 0.040, 0.022, 0.021, 0.040),
                      (0.0013, 0.558, 0.530, 0.0084, 0.033, 0.016, 0.014, 0.033))


def findings_for(history, **kw):
    args = {"distance": "euclidean", "l2_normalize": False, "higher_is_same": False, "patience": 3, **kw}
    return [epoch_findings(history[: i + 1], **args) for i in range(len(history))]


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_no_false_alarm_on_measured_healthy_runs(name):
    kw = {"distance": "cosine"} if name == "cosine" else {"higher_is_same": True} if name == "bce" else {}
    assert all(f == [] for f in findings_for(HEALTHY[name], **kw))


def test_collapse_rule_on_measured_positives_only_run():
    per_epoch = findings_for(POSITIVES_ONLY)
    first = next(i for i, f in enumerate(per_epoch) if f)
    assert first == 5 and codes(per_epoch[first]) == {"collapse": "error"}


def test_rules_for_constant_inverted_and_stuck_runs():
    constant = rows(*[(0.5, 0.49997, 0.5, 1.0, 0.0, 3e-5, 3e-5, 0.0)] * 3)
    assert set(codes(findings_for(constant)[0])) == {"collapse", "constant_output"}
    assert "no_learning" in codes(findings_for(constant)[2])
    inverted = rows((0.3, 0.3, 0.316, 1.0, 0.2, 0.5, 0.4, 0.2), (0.2, 0.3, 0.283, 1.0, 0.2, 0.5, 0.4, 0.2))
    assert [codes(f) for f in findings_for(inverted)] == [{}, {"label_inverted": "error"}]  # measured (bce)
    chance = rows(*[(0.3, 0.3, a, 1.0, 0.2, 0.5, 0.5, 0.2) for a in (0.52, 0.49, 0.51)])
    assert [codes(f) for f in findings_for(chance)] == [{}, {}, {"no_learning": "warning"}]


def test_the_no_learning_fix_follows_the_runs_own_learning_rate():
    chance = rows(*[(0.3, 0.3, a, 1.0, 0.2, 0.5, 0.5, 0.2) for a in (0.52, 0.49, 0.51)])
    (usual,) = findings_for(chance, optimizer=("adam", 1e-3))[2]
    assert usual.fix.startswith("learning_rate 0.001 is within adam's usual 0.0001-0.01, so look elsewhere: that the "
                                "labels describe the pairs")
    (slow,) = findings_for(UNIT["adam lr=1e-7 (test AUC 0.75)"], distance="cosine", l2_normalize=True,
                           optimizer=("adam", 1e-7))[2]
    assert slow.fix == "learning_rate 1e-07 is small for adam (usually 0.0001-0.01): try 0.001"
    (fast,) = findings_for(chance, optimizer=("sgd", 5.0))[2]
    assert fast.fix == "learning_rate 5 is large for sgd (usually 0.001-0.1): try 0.01"


def test_an_auc_below_0_3_on_few_validation_pairs_needs_to_be_far_below_chance():
    """A healthy two-tower model read AUC 0.293 after one epoch on 60 validation pairs (a 600-pair pairs_npz set):
    `label_inverted`, an error, stopped the doctor (exit 3). On 60 pairs 0.293 is 2.8 standard errors below 0.5."""
    from siamese_core.diagnostics.watchers import below_chance

    early = rows((0.3, 0.3, 0.293, 1.0, 0.2, 0.5, 0.4, 0.2))
    assert findings_for(early, val_counts=(30, 30)) == [[]]
    assert codes(findings_for(early, val_counts=(1000, 1000))[0]) == {"label_inverted": "error"}
    assert codes(findings_for(early)[0]) == {"label_inverted": "error"}  # counts unknown: as before
    inverted = rows((0.3, 0.3, 0.1, 1.0, 0.2, 0.5, 0.4, 0.2))  # what inverted labels read there
    assert codes(findings_for(inverted, val_counts=(30, 30))[0]) == {"label_inverted": "error"}
    assert not below_chance(0.0, (0, 60))  # one kind of pair: no AUC to test


# ------------------------------------------------------------------ real trainings
@pytest.fixture(scope="module")
def digits():
    return load_dataset(TrainConfig.from_dict({"dataset": "digits"}))


def paired(data, train_labels: str = "ok", n: int = 2000) -> DatasetSplits:
    """Digits as user-built pairs; the training pairs may be positives only or use 0 = same."""
    def split(s, k, seed, **kw):
        x1, x2, y = make_pairs(s.x, s.y, k, seed=seed, **kw)
        return PairedSplit(x1, x2, y)
    kw = {"positives_only": {"positive_fraction": 1.0}, "zero_is_same": {"zero_is_same": True}}.get(train_labels, {})
    info = dataclasses.replace(data.info, paired=True, num_classes=None, input_shapes=(data.info.input_shape,) * 2)
    return DatasetSplits(split(data.train, n, 0, **kw), split(data.val, 400, 1), split(data.test, 200, 2), info)


def run(cfg: dict, data=None) -> tuple[FindingCollector, BaseException | None]:
    collector = FindingCollector()
    try:
        train(TrainConfig.from_dict(cfg), data=data, callbacks=[collector])
        return collector, None
    except TrainingFailed as exc:
        return collector, exc


# The failures below are reproduced with euclidean contrastive, margin 1 (the default until the default became
# cosine, margin 0.5): a sum of squared distances to pull to zero, and an unbounded loss to explode.
EUCLIDEAN = {"distance": "euclidean", "loss": {"margin": 1.0}}


def test_positives_only_training_pairs_collapse(digits):
    """Pairs built by hand and passed to train(): no negatives, so everything is pulled to zero."""
    cfg = {**EUCLIDEAN, "dataset": "digits", "epochs": 10,
           "encoder": {"type": "mlp", "batch_norm": False, "l2_normalize": False}}
    collector, exc = run(cfg, paired(digits, "positives_only"))
    assert exc is not None and exc.code == "collapse" and exc.epoch is not None and exc.epoch <= 7
    assert exc.finding is collector.findings[-1] and exc.finding.evidence["raw_embedding_norm_mean"] < 0.02


def test_raw_norm_and_direction_spread_show_the_collapse_unit_norms_hide(digits):
    """Issue 12.3: with l2_normalize (the default) the logged embedding norm was 1 +- 1e-8 in every trial. The
    norm before normalisation is now logged, and the spread of the directions, which falls in collapse."""
    histories = {}
    for name, l2, data in (("healthy", True, None), ("collapse", True, paired(digits, "positives_only")),
                           ("healthy_raw", False, None), ("collapse_raw", False, paired(digits, "positives_only"))):
        cfg = {**EUCLIDEAN, "dataset": "digits", "epochs": 4, "diagnostics": {"enabled": False},
               "encoder": {"type": "mlp", "batch_norm": False, "l2_normalize": l2}}
        histories[name] = train(TrainConfig.from_dict(cfg), data=data).history

    def series(name, key):
        return [row[key] for row in histories[name]]
    raw = series("healthy", "raw_embedding_norm_mean")
    assert min(abs(r - 1.0) for r in raw) > 0.01 and max(raw) - min(raw) > 0.01  # a reading, not a constant
    # l2_normalize: the collapse is one of directions (measured 0.198 -> 0.067 vs 0.40 -> 0.50 healthy)
    spread = series("collapse", "embedding_spread")
    assert spread[-1] < 0.1 < 0.3 < series("healthy", "embedding_spread")[-1] and spread[-1] < spread[0]
    # without it, the norm itself falls (measured 0.28 -> 0.018); a healthy one does not
    for name, fall in (("collapse_raw", True), ("healthy_raw", False)):
        norms = series(name, "raw_embedding_norm_mean")
        assert (norms[-1] < 0.1 * max(norms)) == fall, (name, norms)


def test_exploding_learning_rate_nan(digits):
    cfg = {**EUCLIDEAN, "dataset": "digits", "epochs": 2, "learning_rate": 10, "optimizer": {"name": "sgd"},
           "encoder": {"type": "mlp", "depth": 2, "width": 32, "batch_norm": False, "l2_normalize": False},
           "preprocessing": {"normalize": "none"}}
    collector, exc = run(cfg)
    assert exc is not None and exc.code == "nan_loss"
    causes = " ".join(exc.finding.evidence["likely_causes"])
    assert "learning_rate=10" in causes and "not normalised" in causes
    assert "nan_loss" in codes(collector.findings) and exc.finding.evidence["step"] >= 0


def test_exploding_learning_rate_kills_every_unit(digits):
    """Adam at lr=10: the loss explodes, every ReLU dies, embeddings become exactly zero."""
    cfg = {**EUCLIDEAN, "dataset": "digits", "epochs": 3, "learning_rate": 10,
           "encoder": {"type": "mlp", "batch_norm": False, "l2_normalize": False}}
    collector, exc = run(cfg)
    assert exc is not None and exc.code in ("collapse", "nan_loss")
    assert exc.code in codes(collector.findings)


@pytest.mark.parametrize("loader", ["memory", "tfdata", "custom"])
def test_constant_model_is_caught_by_every_loader(loader):
    cfg = {"dataset": "digits", "epochs": 1, "loader": loader, "pairs": {"pairs_per_epoch": 512},
           "encoder": {"type": "buggy.encoders:softmax_embedding"}, "diagnostics": {"fail_on": []}}
    collector, exc = run(cfg)
    assert exc is None
    found = codes(collector.findings)
    assert found.get("constant_output") == "error" and found.get("collapse") == "error"


def test_inverted_training_labels_show_in_validation_auc(digits):
    """Training pairs built with keras.io's make_pairs (0 = same), validation pairs with 1 = same."""
    cfg = {"dataset": "digits", "epochs": 4, "loss": {"type": "bce"}, "encoder": {"type": "mlp"},
           "diagnostics": {"fail_on": ["label_inverted"], "preflight": False}}
    _, exc = run(cfg, paired(digits, "zero_is_same"))
    assert exc is not None and exc.code == "label_inverted" and exc.finding.evidence["val_roc_auc"] < 0.3


def test_shuffled_labels_do_not_learn(digits):
    """x and y shuffled separately: the labels no longer describe the pairs, AUC stays at chance."""
    data = paired(digits, n=3000)
    rng = np.random.default_rng(0)
    data = dataclasses.replace(data, train=dataclasses.replace(data.train, y=rng.permutation(data.train.y)),
                               val=dataclasses.replace(data.val, y=rng.permutation(data.val.y)))
    cfg = {"dataset": "digits", "epochs": 3, "encoder": {"type": "mlp"}}
    collector, exc = run(cfg, data)
    assert exc is None and codes(collector.findings) == {"no_learning": "warning"}
    # the advice was "try learning_rate 1e-3 with adam", the rate this run had: it points past the rate now
    usual = "learning_rate 0.001 is within adam's usual 0.0001-0.01"
    assert {f.fix.split(",")[0] for f in collector.findings} == {usual}


def test_preflight_reports_bypassed_rescaling_before_the_first_step(digits255_npz):
    cfg = {"dataset": {"name": "npz", "path": str(digits255_npz)}, "epochs": 1,
           "encoder": {"type": "buggy.encoders:bypassed_rescaling"}, "preprocessing": {"normalize": "none"},
           "diagnostics": {"fail_on": ["unnormalized_input"]}}
    collector, exc = run(cfg)
    assert exc is not None and exc.code == "unnormalized_input" and exc.epoch is None
    assert codes(collector.findings) == {"unnormalized_input": "error"}


def test_fail_on_rejects_unknown_codes():
    with pytest.raises(ConfigError, match="unknown diagnostic code"):
        TrainConfig.from_dict({"diagnostics": {"fail_on": ["nan_los"]}})


def test_watchers_do_not_change_the_run(tiny_dict):
    """Inference-only checks: same seed, same history with and without diagnostics."""
    histories = []
    for enabled in (True, False):
        cfg = {**tiny_dict, "deterministic": True, "loader": "memory", "diagnostics": {"enabled": enabled}}
        histories.append([(round(r["loss"], 6), round(r["val_roc_auc"], 6)) for r in train(cfg).history])
    assert histories[0] == histories[1]


# Measured (digits, the default conv config: cosine, l2_normalize; session 40's calibration of 46 runs):
# loss, embedding_spread, val_roc_auc per epoch.
def unit_rows(*values: tuple[float, float, float]) -> list[dict[str, float]]:
    return [{"loss": loss, "embedding_spread": spread, "val_roc_auc": auc, "val_pos_distance_mean": 0.3,
             "val_neg_distance_mean": 0.6} for loss, spread, auc in values]


UNIT = {
    "adam lr=10 (test AUC 0.63)": unit_rows((0.122, 0.013, 0.654), (0.125, 0.014, 0.653), (0.125, 0.015, 0.656)),
    "adam lr=1e-7 (test AUC 0.75)": unit_rows((0.0676, 0.300, 0.761), (0.0681, 0.389, 0.760), (0.0683, 0.389, 0.759)),
    "adam lr=1 (recovers: test AUC 0.88)": unit_rows((0.122, 0.021, 0.674), (0.124, 0.126, 0.700),
                                                     (0.0842, 0.515, 0.779)),
    "adam lr=1e-5 (slow: test AUC 0.78)": unit_rows((0.0665, 0.306, 0.765), (0.0646, 0.411, 0.773),
                                                    (0.0625, 0.424, 0.778)),
    "99 % positive pairs (test AUC 0.90)": unit_rows((0.0038, 0.096, 0.850), (0.0024, 0.098, 0.869),
                                                     (0.0024, 0.111, 0.889)),
    # bce with an mlp (the review of the doctor): the loss falls 0.8 % but validation AUC rises 0.053
    "bce mlp lr=1e-3 (slow: test AUC 0.59 after 5)": unit_rows((0.6999, 0.7735, 0.5272), (0.6967, 0.7814, 0.5710),
                                                               (0.6944, 0.7928, 0.5804)),
}


@pytest.mark.parametrize("name, expected", [
    ("adam lr=10 (test AUC 0.63)", {1: {"collapse": "error"}, 2: {"collapse": "error", "no_learning": "warning"}}),
    ("adam lr=1e-7 (test AUC 0.75)", {2: {"no_learning": "warning"}}),
    ("adam lr=1 (recovers: test AUC 0.88)", {}),  # epoch 0's 0.021 is no evidence: it trained
    ("adam lr=1e-5 (slow: test AUC 0.78)", {}),  # -6 %: slow, but learning
    ("99 % positive pairs (test AUC 0.90)", {}),
    ("bce mlp lr=1e-3 (slow: test AUC 0.59 after 5)", {}),  # it said "the weights barely move"
])
def test_direction_collapse_and_a_loss_that_does_not_move_under_unit_embeddings(name, expected):
    """With cosine and l2_normalize (the default) the doctor found nothing at learning_rate=10 (every embedding
    one way, loss stuck at the margin's value) or 1e-7 (AUC stays at the untrained model's 0.76)."""
    per_epoch = findings_for(UNIT[name], distance="cosine", l2_normalize=True)
    found = {epoch: codes(fs) for epoch, fs in enumerate(per_epoch) if fs}
    assert found == expected, found


def test_the_default_config_at_learning_rate_10_is_a_collapse(digits):
    collector, exc = run({"dataset": "digits", "epochs": 3, "learning_rate": 10})
    assert exc is not None and exc.code == "collapse" and exc.epoch == 1
    assert "points the same way" in str(exc)
