"""Encoders, distances, registered layers, assembly, export and safe-mode reload."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import siamese_core
from siamese_core.config import TrainConfig
from siamese_core.data.types import DataInfo
from siamese_core.errors import ConfigError
from siamese_core.models import distances
from siamese_core.models.encoders import build_encoder
from siamese_core.models.layers import PairDistance, SimilarityHead, ThresholdDecision
from siamese_core.models.siamese import build_models, build_optimizer


def info(kind="images", shapes=((8, 8, 1),), dtype="uint8", value_range=(0.0, 16.0), vocab=None) -> DataInfo:
    return DataInfo(name="t", source="t", kind=kind, input_shapes=shapes, dtype=dtype, value_range=value_range,
                    num_classes=None if len(shapes) == 2 else 3, paired=len(shapes) == 2, split="sample",
                    fingerprint="x", vocab_size=vocab, mean=4.0, std=2.0)


def cfg(**kw) -> TrainConfig:
    base = {"encoder": {"depth": 1, "width": 4, "embedding_dim": 6}}
    for key, value in kw.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainConfig.from_dict(base)


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out += all_layers(layer)
    return out


# ------------------------------------------------------------------ distances
@pytest.mark.parametrize("name", ["euclidean", "sqeuclidean", "cosine"])
def test_distances_match_numpy_and_pairwise_agrees(name):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
    ref = {"euclidean": np.linalg.norm(a - b, axis=1), "sqeuclidean": ((a - b) ** 2).sum(1),
           "cosine": 1 - (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)}[name]
    dist = distances.get(name)
    np.testing.assert_allclose(np.asarray(dist.rowwise(a, b)), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.diag(np.asarray(dist.pairwise(a, b))), ref, rtol=1e-3, atol=1e-4)
    assert (dist.upper_bound == 2.0) == (name == "cosine")
    if name == "cosine":
        opp = np.asarray(dist.rowwise(a, -a))
        np.testing.assert_allclose(opp, 2.0, atol=1e-5)


def test_unknown_distance_lists_names():
    with pytest.raises(ValueError, match="cosine"):
        distances.get("manhattan")


def test_euclidean_gradient_finite_for_identical_embeddings():
    import tensorflow as tf

    a = tf.Variable(np.ones((4, 3), np.float32))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(distances.get("euclidean").rowwise(a, tf.ones((4, 3))))
    grad = tape.gradient(total, a)
    assert grad is not None and np.isfinite(grad.numpy()).all()


# ------------------------------------------------------------------ encoders
def test_conv_encoder_preprocessing_first_and_no_lambda():
    enc = build_encoder(info(), cfg().encoder, cfg().preprocessing, seed=0)
    assert enc.output.shape[-1] == 6
    first = enc.layers[1]
    assert isinstance(first, keras.layers.Rescaling) and first.name == "normalize"
    # the rescaled tensor is what the first convolution sees: 0..16 -> 0..1
    x = np.full((1, 8, 8, 1), 16, np.uint8)
    assert float(np.asarray(first(x)).max()) == pytest.approx(1.0)
    convs = [layer for layer in enc.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and convs[0].input is first.output
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in all_layers(enc))


@pytest.mark.parametrize("pooling, units", [("gap", 8), ("flatten", 2 * 2 * 8)])
def test_conv_pooling(pooling, units):
    c = cfg(encoder={"depth": 2, "width": 4, "pooling": pooling})  # 8x8 -> 4x4 -> 2x2, 8 channels
    enc = build_encoder(info(), c.encoder, c.preprocessing, seed=0)
    assert enc.get_layer(pooling).output.shape[-1] == units
    assert any(isinstance(layer, keras.layers.BatchNormalization) and layer.momentum == 0.9 for layer in enc.layers)


def test_standardize_uses_training_statistics():
    enc = build_encoder(info(), cfg().encoder, cfg(preprocessing={"normalize": "standardize"}).preprocessing, seed=0)
    out = np.asarray(enc.get_layer("normalize")(np.full((1, 8, 8, 1), 6, np.uint8)))
    assert out.max() == pytest.approx((6 - 4.0) / 2.0)


def test_augmentation_only_in_training():
    c = cfg(preprocessing={"augmentation": ["noise", "translate"]})
    enc = build_encoder(info(), c.encoder, c.preprocessing, seed=0)
    x = np.random.default_rng(0).integers(0, 17, (4, 8, 8, 1)).astype(np.uint8)
    np.testing.assert_allclose(np.asarray(enc(x, training=False)), np.asarray(enc(x, training=False)))
    assert not np.allclose(np.asarray(enc(x, training=True)), np.asarray(enc(x, training=False)), atol=1e-4)
    names = [layer.name for layer in enc.layers]
    assert names.index("normalize") < names.index("augment_noise") < names.index("augment_translate")


def test_mlp_and_l2_normalize_on_vectors():
    # Seeded: with Keras' global RNG left wherever earlier tests put it, 4 of 20 initialisations of this
    # 4-unit ReLU net map some input to an all-zero vector (dead units), which no normalisation makes unit-length.
    keras.utils.set_random_seed(1)
    i = info(kind="vectors", shapes=((12,),), dtype="float32", value_range=(-1.0, 1.0))
    c = cfg(encoder={"type": "mlp", "depth": 2, "l2_normalize": True})
    enc = build_encoder(i, c.encoder, c.preprocessing, seed=0)
    emb = np.asarray(enc(np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("rnn, bidirectional", [("lstm", False), ("gru", True)])
def test_sequence_encoder(rnn, bidirectional):
    i = info(kind="tokens", shapes=((20,),), dtype="int32", value_range=(0, 49), vocab=50)
    c = cfg(encoder={"type": "sequence", "rnn": rnn, "bidirectional": bidirectional})
    enc = build_encoder(i, c.encoder, c.preprocessing, seed=0)
    types = {type(layer).__name__ for layer in enc.layers}
    assert "Embedding" in types and ("Bidirectional" in types) == bidirectional
    tokens = np.random.default_rng(0).integers(1, 50, (3, 20)).astype(np.int32)
    assert np.asarray(enc(tokens)).shape == (3, 6)


def _layers(model: keras.Model) -> list:
    return [(type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
            for layer in all_layers(model)]


# a value other than the default for each encoder field (`type` aside)
_OTHER = {"depth": 2, "width": 5, "embedding_dim": 7, "l2_normalize": False, "dropout": 0.3, "batch_norm": False,
          "activation": "tanh", "kernel_size": 5, "pooling": "flatten", "vocab_size": 60, "token_embedding_dim": 8,
          "rnn": "gru", "bidirectional": True}


@pytest.mark.parametrize("kind", ["conv", "mlp", "sequence"])
def test_each_builtin_encoder_reads_the_fields_its_table_says_and_no_other(kind):
    """`siamese_core.config.BUILTIN_ENCODER_READS`, by which a sweep refuses a search over a field the encoder does
    not read: every field it names changes the model, every other one leaves it as it was."""
    from siamese_core.config import BUILTIN_ENCODER_READS, EncoderConfig

    i = {"conv": info(), "mlp": info(kind="vectors", shapes=((12,),), dtype="float32"),
         "sequence": info(kind="tokens", shapes=((20,),), dtype="int32", value_range=(0, 49), vocab=50)}[kind]
    assert set(_OTHER) == set(EncoderConfig.model_fields) - {"type"}

    def built(**changed) -> list:
        c = cfg(encoder={"type": kind, **changed})
        keras.utils.clear_session()
        return _layers(build_encoder(i, c.encoder, c.preprocessing, seed=0))

    default = built()
    for field, value in _OTHER.items():
        assert (built(**{field: value}) != default) == (field in BUILTIN_ENCODER_READS[kind]), field


@pytest.mark.parametrize("kind, encoder, words", [
    ("vectors", {"type": "conv"}, "image inputs"),
    ("images", {"type": "sequence"}, "token ids"),
    ("tokens", {"type": "sequence", "vocab_size": 10}, "expected >= 50"),
    ("images", {"type": "user_code.encoders:not_a_model"}, "keras.Model"),
    ("images", {"type": "user_code.encoders:raises"}, "boom"),
    # a model that breaks "one input, one embedding" was Keras' AttributeError or ValueError: exit 1
    ("images", {"type": "user_code.encoders:two_outputs"}, "one output .* it has 2"),
    ("images", {"type": "user_code.encoders:two_inputs"}, "one input .* it takes 2"),
    ("images", {"type": "user_code.encoders:wrong_shape"}, r"does not take the sample \(shape \(8, 8, 1\)\)"),
    ("images", {"type": "user_code.nope:fn"}, "cannot import"),
])
def test_encoder_mismatch_is_config_error(kind, encoder, words):
    shapes = {"vectors": ((12,),), "images": ((8, 8, 1),), "tokens": ((20,),)}[kind]
    i = info(kind=kind, shapes=shapes, dtype="int32" if kind == "tokens" else "float32", vocab=50)
    c = cfg(encoder=encoder)
    with pytest.raises(ConfigError, match=words) as exc:
        build_encoder(i, c.encoder, c.preprocessing, seed=0)
    assert exc.value.field.startswith("encoder.")


def test_user_encoder_by_import_path():
    from user_code import encoders as user

    c = cfg(encoder={"type": "user_code.encoders:tiny_mlp", "embedding_dim": 5})
    enc = build_encoder(info(), c.encoder, c.preprocessing, seed=0)
    assert user.CALLS[-1] == ((8, 8, 1), 5)
    assert enc.output.shape[-1] == 5 and enc.layers[1].name == "normalize"  # preprocessing still ours


# ------------------------------------------------------------------ assembly and export
def test_pair_model_outputs_distance_and_triplet_model_stacks():
    models = build_models(cfg(distance="euclidean"), info())
    x = np.random.default_rng(0).integers(0, 17, (3, 8, 8, 1)).astype(np.uint8)
    d = np.asarray(models.training([x, x[::-1]]))
    ea, eb = models.embed(x), models.embed(x[::-1])
    np.testing.assert_allclose(d, np.linalg.norm(ea - eb, axis=1), rtol=1e-4, atol=1e-4)
    assert not models.higher_is_same and models.arity == 2 and len(models.encoders) == 1
    t = build_models(cfg(loss={"type": "triplet"}), info())
    assert t.arity == 3 and tuple(t.training.output.shape) == (None, 3, 6)
    b = build_models(cfg(loss={"type": "bce"}), info())
    logit = np.asarray(b.training([x, x[::-1]]))      # BCE trains on the head's logit ...
    ea, eb = b.embed(x), b.embed(x[::-1])
    p = b.score(ea, eb)                                # ... and scores its sigmoid, a same-probability
    assert b.higher_is_same and np.all((p > 0) & (p < 1))
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-logit)), rtol=1e-5)
    np.testing.assert_allclose(b.pair_output(ea, eb), logit, rtol=1e-5, atol=1e-6)


def test_two_tower_for_different_input_shapes():
    i = info(kind="tokens", shapes=((52,), (600,)), dtype="int32", value_range=(0, 99), vocab=100)
    models = build_models(cfg(encoder={"type": "sequence"}, distance="cosine"), i)
    assert len(models.encoders) == 2
    assert tuple(models.encoders[0].input.shape) == (None, 52) and tuple(models.encoders[1].input.shape) == (None, 600)
    rng = np.random.default_rng(0)
    d = np.asarray(models.training([rng.integers(1, 100, (2, 52)), rng.integers(1, 100, (2, 600))]))
    assert d.shape == (2,) and np.all((d >= 0) & (d <= 2))


@pytest.mark.parametrize("loss, distance", [("contrastive", "euclidean"), ("contrastive", "cosine"),
                                            ("bce", "euclidean")])
def test_export_saves_and_reloads_in_safe_mode(tmp_path, loss, distance):
    models = build_models(cfg(loss={"type": loss}, distance=distance), info())
    export = models.export(0.4321)
    path = tmp_path / "m.keras"
    export.save(path)
    loaded = siamese_core.load_model(str(path))
    rng = np.random.default_rng(1)
    a = rng.integers(0, 17, (6, 8, 8, 1)).astype(np.uint8)
    b = rng.integers(0, 17, (6, 8, 8, 1)).astype(np.uint8)
    before, after = export([a, b]), loaded([a, b])
    for key in ("distance", "score", "same"):
        np.testing.assert_allclose(np.asarray(after[key]), np.asarray(before[key]), rtol=1e-5, atol=1e-6)
    same_layer = loaded.get_layer("same")
    assert isinstance(same_layer, ThresholdDecision) and same_layer.threshold == pytest.approx(0.4321)
    native = np.asarray(before["score"] if loss == "bce" else before["distance"])
    expected = native >= 0.4321 if loss == "bce" else native <= 0.4321
    np.testing.assert_array_equal(np.asarray(after["same"]).astype(bool), expected)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in all_layers(loaded))


def test_bce_keeps_the_gradient_of_a_confidently_wrong_pair(tmp_path):
    """Issue 12.9: BCE on a clipped probability gave a confidently wrong pair exactly zero gradient; the loss now
    takes the head's logit, and the exported model still outputs a probability score."""
    import tensorflow as tf

    from siamese_core import DIFFERENT
    from siamese_core.losses import build_loss

    config = cfg(loss={"type": "bce"})
    models = build_models(config, info())
    head = next(layer for layer in all_layers(models.scorer) if isinstance(layer, SimilarityHead))
    head.dense.kernel.assign(np.zeros(head.dense.kernel.shape))
    head.dense.bias.assign([30.0])                     # every pair scored "same" with p = sigmoid(30)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 17, (4, 8, 8, 1)).astype(np.uint8) for _ in range(2))
    loss = build_loss(config.loss, config.distance)
    with tf.GradientTape() as tape:
        value = loss(np.full(4, DIFFERENT, np.float32), models.training([a, b], training=True))
    grad = float(tape.gradient(value, head.dense.bias)[0])
    assert float(value) == pytest.approx(30.0, rel=1e-4) and grad == pytest.approx(1.0, rel=1e-4)
    export = models.export(0.5)
    np.testing.assert_allclose(np.asarray(export([a, b])["score"]), 1.0, rtol=1e-6)
    export.save(tmp_path / "bce.keras")
    loaded = siamese_core.load_model(str(tmp_path / "bce.keras"))
    np.testing.assert_allclose(np.asarray(loaded([a, b])["score"]), 1.0, rtol=1e-6)


def test_similarity_head_and_bce_saved_before_logits_reload_as_probabilities():
    """Configs written before the head output logits have no `logits`/`from_logits` key: they keep the sigmoid."""
    from siamese_core.losses import BinaryCrossentropy

    old_head = SimilarityHead.from_config({"name": "similarity_head", "trainable": True, "dtype": "float32"})
    assert not old_head.logits and old_head.dense.get_config()["activation"] == "sigmoid"
    assert not BinaryCrossentropy.from_config({}).from_logits
    new_head = SimilarityHead.from_config(SimilarityHead(logits=True, name="h").get_config())
    assert new_head.logits and new_head.dense.get_config()["activation"] == "linear"


def test_layer_configs_round_trip():
    for layer in (PairDistance("cosine"), ThresholdDecision(0.7, higher_is_same=True)):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("name, cls", [("adam", keras.optimizers.Adam), ("rmsprop", keras.optimizers.RMSprop),
                                       ("sgd", keras.optimizers.SGD)])
def test_optimizers(name, cls):
    opt = build_optimizer(cfg(optimizer={"name": name, "clipnorm": 1.0}, learning_rate=0.01))
    assert isinstance(opt, cls) and float(np.asarray(opt.learning_rate)) == pytest.approx(0.01)
    assert opt.clipnorm == 1.0
