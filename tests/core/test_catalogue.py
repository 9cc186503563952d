"""One place for each name: the metric catalogue (names, directions, the threshold rule) and the registries."""
from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
import pytest

from siamese_core import metrics, registry
from siamese_core.config import TrainConfig
from siamese_core.errors import ConfigError
from siamese_core.registry import Registry, import_object


# ------------------------------------------------------------------ metric catalogue
def test_a_run_reports_exactly_the_catalogued_keys(tiny_dict, digits_data):
    from siamese_core import train

    result = train(tiny_dict, data=digits_data)
    assert set(result.history[0]) == {"epoch", *metrics.HISTORY_KEYS}
    assert set(result.test) == set(metrics.TEST_KEYS)


@pytest.mark.parametrize("key, expected", [
    ("loss", "min"), ("val_loss", "min"), ("roc_auc", "max"), ("val_roc_auc", "max"), ("test_roc_auc", "max"),
    ("val_eer", "min"), ("test_eer", "min"), ("val_pair_accuracy", "max"), ("val_pos_distance_mean", "min"),
    ("val_neg_distance_mean", "max"), ("val_distance_gap", "max"), ("val_precision_at_1", "max"),
    ("val_recall_at_5", "max"), ("epoch_seconds", "min"),
])
def test_direction_of_every_spelling(key, expected):
    assert metrics.direction(key) == expected


def test_every_monitor_has_a_direction_and_is_a_history_key():
    assert metrics.MONITORS[:2] == ("loss", "val_loss")
    for key in metrics.MONITORS:
        assert key in metrics.HISTORY_KEYS and metrics.direction(key) in ("min", "max")


@pytest.mark.parametrize("key", ["val_threshold", "raw_embedding_norm_mean", "embedding_spread", "learning_rate",
                                 "val_score_std"])
def test_readings_have_no_direction(key):
    assert key in metrics.HISTORY_KEYS
    with pytest.raises(ValueError, match="no better direction"):
        metrics.direction(key)


@pytest.mark.parametrize("key", ["val_acc", "val_raw_embedding_norm_mean", "embedding_norm_mean", "val_learning_rate",
                                 "auc"])
def test_unknown_keys_are_refused(key):
    with pytest.raises(ValueError, match="Expected a metric"):
        metrics.lookup(key)


def test_is_better_follows_direction_and_never_prefers_nan():
    nan = float("nan")
    assert metrics.is_better(0.9, 0.8, "val_roc_auc") and not metrics.is_better(0.8, 0.9, "val_roc_auc")
    assert metrics.is_better(0.1, 0.2, "test_eer") and not metrics.is_better(0.2, 0.2, "test_eer")
    assert metrics.is_better(0.1, nan, "eer") and not metrics.is_better(nan, 0.1, "eer")
    assert not metrics.is_better(math.inf, 0.1, "roc_auc")


def test_one_threshold_rule_for_metrics_the_exported_layer_and_numpy():
    import keras

    from siamese_core.models.layers import ThresholdDecision
    from siamese_core.verification import pair_accuracy

    scores = np.float32([0.1, 0.5, 0.5000001, 0.9])
    for higher in (False, True):
        rule = metrics.same_at_threshold(scores, 0.5, higher_is_same=higher)
        layer = np.asarray(ThresholdDecision(0.5, higher_is_same=higher)(keras.ops.convert_to_tensor(scores)))
        assert rule.tolist() == (layer == 1.0).tolist()
        assert pair_accuracy(scores, rule.astype(np.float32), 0.5, higher_is_same=higher) == 1.0
    assert metrics.same_at_threshold(scores, 0.5, higher_is_same=False).tolist() == [True, True, False, False]


# ------------------------------------------------------------------ registries
ALL = {"encoder.type": registry.ENCODERS, "loss.type": registry.LOSSES, "distance": registry.DISTANCES,
       "dataset.name": registry.DATASETS, "loader": registry.LOADERS,
       "preprocessing.augmentation": registry.AUGMENTATIONS, "preprocessing.normalize": registry.NORMALIZATIONS,
       "optimizer.name": registry.OPTIMIZERS}


@pytest.mark.parametrize("field", sorted(ALL))
def test_every_registered_builtin_resolves(field):
    reg = ALL[field]
    assert reg.field == field and len(reg) >= 2
    for name in reg.names():
        assert reg.get(name) is not None and reg[name] is reg.get(name)


@pytest.mark.parametrize("field", sorted(ALL))
def test_config_accepts_exactly_the_registered_names(field):
    reg = ALL[field]
    extra = {"loss.type": {"loss.kind": "pair"}}.get(field, {})
    for name in reg.names():
        overrides = {field: [name] if field == "preprocessing.augmentation" else name}
        if reg.info(name).get("needs_path"):
            overrides["dataset.path"] = "data.npz"
        TrainConfig().with_overrides(overrides)
    with pytest.raises(ConfigError) as info:
        TrainConfig().with_overrides({field: ["nope"] if field == "preprocessing.augmentation" else "nope", **extra})
    assert info.value.field == field and all(repr(n) in str(info.value) for n in reg.names())


def test_registry_get_register_and_replace(tmp_path, monkeypatch):
    (tmp_path / "lazy_plugin_xyz.py").write_text(textwrap.dedent("""
        def body(x):
            return x + 1
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("widget", field="widget.name")
    reg.register("lazy", "lazy_plugin_xyz:body", flavour="plain")
    reg.register("eager", len)
    assert reg.names() == ("lazy", "eager") and "lazy" in reg and "missing" not in reg
    assert "lazy_plugin_xyz" not in sys.modules  # names and `in` never import a target
    assert reg.get("lazy")(1) == 2 and "lazy_plugin_xyz" in sys.modules
    assert reg.info("lazy") == {"flavour": "plain"} and reg.get("eager") is len
    with pytest.raises(ValueError, match="already registered"):
        reg.register("eager", abs)
    reg["eager"] = abs  # replace (what monkeypatch.setitem does), keeping the info
    assert reg.get("eager") is abs
    with pytest.raises(ConfigError, match=r"widget.name: Expected a widget in \['lazy', 'eager'\], received: 'x'"):
        reg.get("x")
    assert reg.get("x", None) is None


def test_import_object_errors_name_the_field():
    assert import_object("json:dumps", field="f") is __import__("json").dumps
    with pytest.raises(ConfigError, match="cannot import module 'no_such_mod_xyz'") as info:
        import_object("no_such_mod_xyz:f", field="encoder.type")
    assert info.value.field == "encoder.type"
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        import_object("json:nope", field="loss.type")
