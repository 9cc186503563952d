"""A user's own .npz on odd scales and shapes: what `train` and the doctor make of it (session 43's review)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from siamese_core import TrainConfig, diagnose
from siamese_core.data.sources import load_dataset
from siamese_core.errors import DataError

from .conftest import codes, digits_255


def _config(path: Path, **extra: object) -> TrainConfig:
    return TrainConfig.from_dict({"dataset": {"name": "npz", "path": str(path)}, "epochs": 2, "batch_size": 16,
                                  "pairs": {"pairs_per_epoch": 512, "val_pairs": 100, "test_pairs": 100},
                                  "encoder": {"type": "conv", "width": 8, "depth": 1}, **extra})


def test_uint8_data_far_below_255_is_scaled_by_its_own_range(write_npz) -> None:
    """Binary 0/1 images saved as uint8 were divided by 255: |x| <= 0.004 at the encoder, collapse at epoch 0, and
    the doctor blamed a second Rescaling the built-in encoder does not have."""
    x, y = digits_255()
    binary = write_npz("bin_u8.npz", x=(x > 127).astype(np.uint8), y=y)
    assert load_dataset(_config(binary)).info.value_range == (0.0, 1.0)
    assert load_dataset(_config(write_npz("u8.npz", x=x, y=y))).info.value_range == (0.0, 255.0)  # 8-bit pixels
    assert "unnormalized_input" not in codes(diagnose(_config(binary), probes=False))


def test_tiny_inputs_without_a_rescaling_layer_are_not_called_scaled_twice() -> None:
    """The 'scaled down twice' text (and its fix, drop your Rescaling) is for encoders that rescale; data far
    below its recorded range (an outlier in an observed range) is said as that."""
    from siamese_core.data.types import DataInfo
    from siamese_core.diagnostics.graph_checks import check_inputs
    from siamese_core.models.encoders import build_encoder

    x = (digits_255()[0][:64, :, :, None] / 255.0 / 255.0).astype(np.float32)  # max ~0.004
    info = DataInfo(name="t", source="t", kind="images", input_shapes=((8, 8, 1),), dtype="float32",
                    value_range=(0.0, 65025.0), num_classes=10, paired=False, split="sample", fingerprint="t")
    cfg = TrainConfig.from_dict({"encoder": {"type": "conv", "depth": 1, "width": 8},
                                 "preprocessing": {"normalize": "none"}})
    [finding] = check_inputs((build_encoder(info, cfg.encoder, cfg.preprocessing, seed=0),), [x], config=cfg,
                             info=info)
    assert finding.code == "unnormalized_input" and "are tiny" in finding.message
    assert "scaled down twice" not in finding.message and "Rescaling" not in finding.fix
    assert "preprocessing.normalize: none leaves it so" in finding.message  # no range it was scaled by


def test_an_encoders_own_rescaling_is_told_from_ours_by_place_not_only_name() -> None:
    """Our normalisation layer sits at the encoder's top level; a user's model nested in it may have a layer of
    the same name, which is the user's own second scaling."""
    import keras

    from siamese_core.diagnostics.graph_checks import _rescales

    inp = keras.Input((8, 8, 1))
    ours = keras.Model(inp, keras.layers.Conv2D(2, 3)(keras.layers.Rescaling(1 / 255, name="normalize")(inp)))
    assert not _rescales(ours)
    user = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255, name="normalize"),
                             keras.layers.Conv2D(2, 3)], name="user")
    inp2 = keras.Input((8, 8, 1))
    nested = keras.Model(inp2, user(keras.layers.Rescaling(1 / 255, name="normalize")(inp2)))
    assert _rescales(nested)


def test_dark_training_images_beside_a_full_scale_test_set_stay_pixels() -> None:
    from siamese_core.data.sources import _declared_range

    dark = np.full((4, 8, 8, 1), 100, np.uint8)
    assert _declared_range(dark) is None
    assert _declared_range(dark, np.full((2, 8, 8, 1), 255, np.uint8)) == (0.0, 255.0)
    assert _declared_range(dark, None) is None and _declared_range(dark.astype(np.float32)) is None


def test_a_class_too_rare_to_reach_every_split_is_named(write_npz) -> None:
    """All of class 0 and one sample of class 1: 'raise dataset.val_fraction or dataset.max_eval_samples', which
    changes nothing; the refusal now names the class and its count."""
    x, y = digits_255()
    keep = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:1]])
    with pytest.raises(DataError, match=r"too few samples of class 1 \(1 sample\) to reach train, val and test"):
        load_dataset(_config(write_npz("rare.npz", x=x[keep], y=y[keep])))
    # named as in the user's data, not by our dense ids: labels 3 and 7 read "class 1" before
    with pytest.raises(DataError, match=r"too few samples of class 7 \(1 sample\) to reach"):
        load_dataset(_config(write_npz("rare37.npz", x=x[keep], y=np.where(y[keep] == 0, 3, 7))))
    few = np.concatenate([np.flatnonzero(y == c)[:1] for c in range(8)])  # whole classes per split: more classes
    with pytest.raises(DataError, match="use more classes") as by_class:
        load_dataset(TrainConfig.from_dict({"dataset": {"name": "npz", "split": "class", "path": str(
            write_npz("few.npz", x=x[few], y=y[few]))}}))
    assert "too few samples" not in str(by_class.value)


def test_a_folder_as_dataset_path_is_said_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a folder, not an .npz file"):
        load_dataset(_config(tmp_path))
