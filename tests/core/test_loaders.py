"""The three loaders feed the same tuples, in the same order, epoch by epoch, with the same callbacks."""
from __future__ import annotations

from collections import defaultdict

import keras
import numpy as np
import pytest
import tensorflow as tf

from siamese_core.config import TrainConfig
from siamese_core.data.loaders import (
    TrainingPlan,
    _SourceTensor,
    build_dataset,
    get_loader,
)
from siamese_core.data.pairs import PairSampler, PairShuffler, TripletSampler
from siamese_core.data.sources import load_dataset
from siamese_core.data.types import PairedSplit
from siamese_core.losses import build_loss
from siamese_core.models.siamese import build_models, build_optimizer
from siamese_core.registry import LOADERS
from siamese_core.training import train

NAMES = ("memory", "tfdata", "custom")
BATCH = 64
N_PAIRS = 650  # not a multiple of the batch size: the last batch is partial


def expected_batches(plan: TrainingPlan, epoch: int):
    """What every loader must feed at `epoch`, straight from the sampler."""
    t = plan.sampler.epoch(epoch)
    sources = [np.asarray(s) for s in plan.sources()]
    xs = [src[t.indices[:, k]] for k, src in enumerate(sources)]
    b = plan.batch_size
    return [(tuple(x[i:i + b] for x in xs), t.targets[i:i + b]) for i in range(0, len(t), b)]


@pytest.fixture(scope="module")
def plan(digits_data):
    sampler = PairSampler(digits_data.train.y, seed=5, pairs_per_epoch=N_PAIRS)
    return TrainingPlan(digits_data.train, sampler, BATCH)


def test_get_loader_names():
    assert sorted(LOADERS) == sorted(NAMES)
    with pytest.raises(ValueError, match="custom"):
        get_loader("generator")


@pytest.mark.parametrize("epoch", [0, 2])
def test_batches_identical_across_loaders(plan, epoch):
    expected = expected_batches(plan, epoch)
    for name in NAMES:
        got = get_loader(name).batches(plan, epoch, 100)
        assert len(got) == len(expected) == plan.steps_per_epoch == 11, name
        for (gx, gy), (ex, ey) in zip(got, expected, strict=True):
            assert len(gx) == 2
            for a, b in zip(gx, ex, strict=True):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(gy, ey)
    assert not np.array_equal(expected[0][0][0], expected_batches(plan, epoch + 1)[0][0][0])


def test_triplet_batches_identical_across_loaders(digits_data):
    sampler = TripletSampler(digits_data.train.y, seed=1, triplets_per_epoch=200)
    plan = TrainingPlan(digits_data.train, sampler, 50)
    ref = [get_loader("memory").batches(plan, 1, 10)]
    for name in ("tfdata", "custom"):
        got = get_loader(name).batches(plan, 1, 10)
        assert len(got) == 4
        for (gx, gy), (ex, ey) in zip(got, ref[0], strict=True):
            assert len(gx) == 3 and gy.shape == (50, 2)
            for a, b in zip(gx, ex, strict=True):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(gy, ey)


def test_tfdata_keeps_only_indices_per_epoch(plan):
    """The tf.data pipeline holds the inputs once; each epoch adds only an index array."""
    ds = build_dataset(plan, initial_epoch=0, epochs=3)
    spec_x, spec_y = ds.element_spec
    assert [s.shape.as_list() for s in spec_x] == [[None, 8, 8, 1]] * 2 and spec_y.shape.as_list() == [None]
    assert sum(1 for _ in ds) == 3 * plan.steps_per_epoch


# -------------------------------------------------------- what the model actually receives during fit
class Sink:
    def __init__(self) -> None:
        self.epoch = -1
        self.x: dict[int, list[list[np.ndarray]]] = defaultdict(list)
        self.y: dict[int, list[np.ndarray]] = defaultdict(list)

    def tap_x(self, *arrays):
        self.x[self.epoch].append([np.array(a) for a in arrays])
        return arrays[0]

    def tap_y(self, y):
        self.y[self.epoch].append(np.array(y))
        return y


class TapInputs(keras.layers.Layer):
    """Identity on the model inputs that records every batch the model is called with."""

    def __init__(self, sink: Sink, **kw) -> None:
        super().__init__(**kw)
        self.sink = sink

    def call(self, inputs):
        first = tf.numpy_function(self.sink.tap_x, list(inputs), inputs[0].dtype, stateful=True)
        first = tf.ensure_shape(first, inputs[0].shape)
        return [first, *inputs[1:]]

    def compute_output_shape(self, input_shape):
        return input_shape


class EpochMark(keras.callbacks.Callback):
    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self.sink = sink
        self.events: list[str] = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.sink.epoch = epoch
        self.events.append(f"epoch_begin {epoch}")

    def on_train_batch_end(self, batch, logs=None):
        self.events.append("batch")

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end {epoch} " + ",".join(sorted(logs or {})))

    def on_train_end(self, logs=None):
        self.events.append("train_end")


def tapped_model(plan: TrainingPlan, info, sink: Sink) -> keras.Model:
    config = TrainConfig.from_dict({"encoder": {"depth": 1, "width": 4, "embedding_dim": 4}})
    models = build_models(config, info)
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name) for t in models.training.inputs]
    model = keras.Model(inputs, models.training(TapInputs(sink)(inputs)))
    base = build_loss(config.loss, config.distance)

    def recording_loss(y, d):
        y = tf.numpy_function(sink.tap_y, [y], y.dtype, stateful=True)
        return base.fn(tf.ensure_shape(y, [None]), d)

    from siamese_core.losses import PerSampleLoss
    model.compile(optimizer=build_optimizer(config), loss=PerSampleLoss(recording_loss), jit_compile=False)
    return model


@pytest.mark.parametrize("name", NAMES)
def test_model_receives_epoch_k_pairs_at_epoch_k(digits_data, plan, name):
    sink = Sink()
    model = tapped_model(plan, digits_data.info, sink)
    mark = EpochMark(sink)
    get_loader(name).run(model, plan, [mark], epochs=3)
    assert sorted(sink.x) == [0, 1, 2], sorted(sink.x)
    for epoch in range(3):
        expected = expected_batches(plan, epoch)
        got_x, got_y = sink.x[epoch], sink.y[epoch]
        assert len(got_x) == len(got_y) == len(expected) == 11, (name, epoch, len(got_x))
        for (ex, ey), gx, gy in zip(expected, got_x, got_y, strict=True):
            for a, b in zip(gx, ex, strict=True):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(gy, ey)
    # the same callbacks, in the same order, once per run / epoch / batch
    ev = mark.events
    assert ev[0] == "train_begin" and ev[-1] == "train_end"
    assert ev.count("train_begin") == ev.count("train_end") == 1
    assert ev.count("batch") == 33
    assert [e.split(" ")[:2] for e in ev if e.startswith("epoch_end")] == [["epoch_end", str(k)] for k in range(3)]


def test_initial_epoch_resumes_with_that_epochs_pairs(digits_data, plan):
    for name in ("tfdata", "custom", "memory"):
        sink = Sink()
        model = tapped_model(plan, digits_data.info, sink)
        get_loader(name).run(model, plan, [EpochMark(sink)], epochs=3, initial_epoch=2)
        assert sorted(sink.x) == [2], name
        np.testing.assert_array_equal(sink.x[2][0][0], expected_batches(plan, 2)[0][0][0])


# -------------------------------------------------------- end to end through train()
@pytest.fixture(scope="module")
def runs(digits_data):
    base = {"dataset": "digits", "epochs": 2, "batch_size": 64, "seed": 11,
            "pairs": {"pairs_per_epoch": 640, "val_pairs": 200, "test_pairs": 200},
            "encoder": {"depth": 1, "width": 8, "embedding_dim": 8}, "diagnostics": {"enabled": False}}
    out = {}
    for name in NAMES:
        out[name] = train({**base, "loader": name}, data=digits_data)
    out["tfdata_again"] = train({**base, "loader": "tfdata"}, data=digits_data)
    out["memory_again"] = train({**base, "loader": "memory"}, data=digits_data)
    return out


def test_same_seed_same_loader_same_first_epoch_loss(runs):
    for name in ("tfdata", "memory"):
        a, b = runs[name].history[0], runs[name + "_again"].history[0]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), name
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4), name


def test_same_seed_different_loader_close_losses_and_same_keys(runs):
    """Same pairs, same initial weights: the first-epoch training loss agrees across loaders."""
    for epoch in (0, 1):
        losses = {n: runs[n].history[epoch]["loss"] for n in NAMES}
        assert max(losses.values()) == pytest.approx(min(losses.values()), rel=1e-4), losses
        val = {n: runs[n].history[epoch]["val_loss"] for n in NAMES}
        assert max(val.values()) == pytest.approx(min(val.values()), rel=1e-4), val
    keys = {n: set(runs[n].history[0]) for n in NAMES}
    assert keys["memory"] == keys["tfdata"] == keys["custom"]
    required = {"loss", "val_loss", "val_pair_accuracy", "val_roc_auc", "raw_embedding_norm_mean", "learning_rate",
                "val_eer", "raw_embedding_norm_std", "raw_embedding_norm_min", "embedding_spread",
                "val_pos_distance_mean", "val_neg_distance_mean", "val_distance_gap", "val_precision_at_1",
                "val_recall_at_5"}
    assert required <= keys["tfdata"], required - keys["tfdata"]
    for n in NAMES:
        assert [h["epoch"] for h in runs[n].history] == [0, 1]


# -------------------------------------------------------- image folders: streaming decode == memory
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class_{c}").mkdir()
        for i in range(12):
            arr = rng.integers(0, 256, (10, 12), dtype=np.uint8)
            arr[:, :4] = 60 * c
            Image.fromarray(arr).save(root / f"class_{c}" / f"{i}.png")
    return root


def test_image_folder_tfdata_streams_and_equals_memory(image_folder):
    config = TrainConfig.from_dict({"dataset": {"name": "image_folder", "path": str(image_folder)}, "batch_size": 8})
    data = load_dataset(config)
    assert not isinstance(data.train.x, np.ndarray)  # lazy files
    assert not _SourceTensor(data.train.x).dense      # tf.data decodes per batch, no dense copy
    plan = TrainingPlan(data.train, PairSampler(data.train.y, seed=0, pairs_per_epoch=40), 8)
    mem = get_loader("memory").batches(plan, 1, 10)
    tfd = get_loader("tfdata").batches(plan, 1, 10)
    assert len(mem) == len(tfd) == 5
    for (mx, my), (tx, ty) in zip(mem, tfd, strict=True):
        assert mx[0].shape == (8, 10, 12, 1) and mx[0].dtype == np.uint8
        for a, b in zip(mx, tx, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(my, ty)


def test_paired_split_loaders_agree():
    rng = np.random.default_rng(0)
    split = PairedSplit(rng.integers(0, 50, (30, 5)).astype(np.int32), rng.integers(0, 50, (30, 9)).astype(np.int32),
                        (np.arange(30) % 2).astype(np.float32))
    plan = TrainingPlan(split, PairShuffler(split.y, seed=0, pairs_per_epoch=30), 10)
    ref = get_loader("memory").batches(plan, 1, 5)
    got = get_loader("tfdata").batches(plan, 1, 5)
    for (mx, my), (tx, ty) in zip(ref, got, strict=True):
        assert mx[0].shape == (10, 5) and mx[1].shape == (10, 9)
        for a, b in zip(mx, tx, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(my, ty)
    first = plan.sampler.epoch(1).indices[:10, 0]
    np.testing.assert_array_equal(ref[0][0][1], split.x2[first])  # side 2 indexes x2 with the same pair ids
