"""unnormalized_input from the model graph (bypassed preprocessing) and from real activations; frozen encoders."""
from __future__ import annotations

import pytest

from siamese_core import diagnose
from siamese_core.diagnostics.graph_checks import bypassed_preprocessing

from .conftest import codes


def npz(path, **extra) -> dict:
    return {"dataset": {"name": "npz", "path": str(path)}, **extra}


def test_forum_bug_bypassed_rescaling_with_raw_pixels(digits255_npz):
    """x = Rescaling(1/255)(inputs); x = Conv2D(...)(inputs) with our normalisation switched off."""
    cfg = npz(digits255_npz, encoder={"type": "buggy.encoders:bypassed_rescaling"},
              preprocessing={"normalize": "none"})
    findings = diagnose(cfg, probes=False)
    f = next(f for f in findings if f.code == "unnormalized_input")
    assert f.severity == "error"
    assert f.evidence["input_abs_max"] == 255 and f.evidence["first_layer_type"] == "Conv2D"
    assert any("Rescaling" in b for b in f.evidence["bypassed_layers"])
    assert "(x)" in f.fix


def test_bypassed_layers_are_found_in_the_graph():
    from buggy import encoders

    assert [b["type"] for b in bypassed_preprocessing(encoders.bypassed_rescaling((8, 8, 1)))] == ["Rescaling"]
    assert [b["type"] for b in bypassed_preprocessing(encoders.bypassed_augmentation((8, 8, 1)))] == ["Sequential"]
    assert bypassed_preprocessing(encoders.rescaled_conv((8, 8, 1))) == []
    assert bypassed_preprocessing(encoders.two_models_one_input((8, 8, 1))) == []  # shared Input, no bypass


def test_bypassed_rescaling_nested_in_our_encoder_is_dead_code(digits255_npz):
    """With our normalisation on, the bypass is harmless but still a bug: reported as a warning."""
    findings = diagnose(npz(digits255_npz, encoder={"type": "buggy.encoders:bypassed_rescaling"}), probes=False)
    assert codes(findings) == {"unnormalized_input": "warning"}
    assert "dead code" in findings[0].message


def test_bypassed_augmentation_never_runs(digits255_npz):
    findings = diagnose(npz(digits255_npz, encoder={"type": "buggy.encoders:bypassed_augmentation"}), probes=False)
    assert codes(findings) == {"unnormalized_input": "warning"}
    assert "Augmentation never runs" in findings[0].message


def test_builtin_encoder_with_normalize_none_on_raw_pixels(digits255_npz):
    findings = diagnose(npz(digits255_npz, preprocessing={"normalize": "none"}), probes=False)
    f = next(f for f in findings if f.code == "unnormalized_input")
    assert f.severity == "error" and f.evidence["first_layer"].endswith("conv1")
    assert "preprocessing.normalize: rescale" in f.fix


def test_double_normalisation_is_a_warning(digits255_npz):
    """Our rescale to [0, 1] plus the user's own Rescaling(1/255): inputs of ~0.004."""
    findings = diagnose(npz(digits255_npz, encoder={"type": "buggy.encoders:rescaled_conv"}), probes=False)
    assert codes(findings) == {"unnormalized_input": "warning"}
    assert findings[0].evidence["input_abs_max"] < 0.01


@pytest.mark.parametrize("encoder", ["buggy.encoders:rescaled_conv", "buggy.encoders:two_models_one_input"])
def test_user_encoder_that_normalises_itself_is_clean(digits255_npz, encoder):
    findings = diagnose(npz(digits255_npz, encoder={"type": encoder}, preprocessing={"normalize": "none"}),
                        probes=False)
    assert findings == []


def test_frozen_encoder_cannot_learn():
    findings = diagnose({"dataset": "digits", "encoder": {"type": "buggy.encoders:frozen_encoder"}}, probes=False)
    assert codes(findings).get("cannot_overfit") == "error"
    assert findings[0].evidence["trainable_params_in_model"] == 0


def test_private_keras_details_the_graph_checks_rely_on():
    """Keras has no public API for these; if an upgrade moves them, this fails instead of the checks going blind."""
    import keras

    from siamese_core.diagnostics.graph_checks import first_weighted_input, is_preprocessing

    inputs = keras.Input((8, 8, 1), name="img")
    keras.layers.Rescaling(1 / 255, name="lost")(inputs)  # applied to the input, then bypassed
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(inputs), name="m")
    op = inputs._keras_history.operation  # KerasTensor._keras_history: the Input's operation
    assert [n.operation.name for n in op._outbound_nodes] == ["lost", "conv"]  # Operation._outbound_nodes
    assert "lost" not in [layer.name for layer in model.layers]  # ...and nowhere public
    assert model._nodes_by_depth and all(n.input_tensors is not None for ns in model._nodes_by_depth.values()
                                          for n in ns)
    assert bypassed_preprocessing(model) == [{"layer": "lost", "type": "Rescaling", "model": "m"}]
    where, layer, act = first_weighted_input(model, __import__("numpy").ones((2, 8, 8, 1), "float32"))
    assert where == "m/conv" and layer.name == "conv" and act.shape == (2, 8, 8, 1)
    # every Keras preprocessing/augmentation layer lives under keras.src.layers.preprocessing
    for layer in (keras.layers.Rescaling(1.0), keras.layers.Normalization(), keras.layers.RandomFlip(),
                  keras.layers.RandomZoom(0.1), keras.layers.RandomContrast(0.1), keras.layers.Resizing(4, 4),
                  keras.layers.GaussianNoise(0.1), keras.layers.GaussianDropout(0.1)):
        assert is_preprocessing(layer), type(layer).__name__
    for layer in (keras.layers.Dense(2), keras.layers.Conv2D(2, 3), keras.layers.BatchNormalization()):
        assert not is_preprocessing(layer), type(layer).__name__


def test_standardised_heavy_tailed_features_are_not_unnormalised_raw_pixels_are():
    """Issue 12.8: the check judged scale by max |x|; standardised Student-t features tripped it (100% of probe
    batches at 2,048 features). It now reads the 99th percentile of |x| and the 16-84th percentile spread."""
    import numpy as np

    from siamese_core import TrainConfig
    from siamese_core.data.types import DataInfo
    from siamese_core.diagnostics.graph_checks import check_inputs
    from siamese_core.models.encoders import build_encoder

    from .conftest import digits_255

    rng = np.random.default_rng(0)
    train_x = rng.standard_t(3, size=(2000, 2048))
    batch = ((rng.standard_t(3, size=(64, 2048)) - train_x.mean(0)) / train_x.std(0)).astype(np.float32)
    assert np.abs(batch).max() > 20  # what the old rule flagged
    cases = {"vectors": (batch, (2048,), "mlp", (float(batch.min()), float(batch.max()))),
             "images": (digits_255()[0][:64, :, :, None], (8, 8, 1), "conv", (0.0, 255.0))}
    found = {}
    for kind, (x, shape, encoder, value_range) in cases.items():
        info = DataInfo(name="t", source="t", kind=kind, input_shapes=(shape,), dtype=str(x.dtype),
                        value_range=value_range, num_classes=2, paired=False, split="sample", fingerprint="t")
        cfg = TrainConfig.from_dict({"encoder": {"type": encoder, "depth": 1, "width": 8},
                                     "preprocessing": {"normalize": "none"}})
        enc = build_encoder(info, cfg.encoder, cfg.preprocessing, seed=0)
        found[kind] = check_inputs((enc,), [x], config=cfg, info=info)
    assert found["vectors"] == []
    assert codes(found["images"]) == {"unnormalized_input": "error"}
    assert found["images"][0].evidence["input_abs_q99"] == 255
