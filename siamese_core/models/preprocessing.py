"""In-model preprocessing: normalisation, then augmentation (training only), each layer fed by the previous.

Preprocessing lives inside the model, so raw pixels 0-255 never reach a convolution whatever the loader,
and the bug where ``Rescaling`` is applied to ``inputs`` and then bypassed cannot happen here. Built-ins
are registered by name in `siamese_core.registry` (``NORMALIZATIONS``, ``AUGMENTATIONS``).
"""
from __future__ import annotations

from typing import Any

import keras

from ..config import PreprocessingConfig
from ..data.types import DataInfo
from ..registry import AUGMENTATIONS, NORMALIZATIONS

# the layers these factories name: the doctor tells them from an encoder's own scaling (`graph_checks._rescales`)
NORMALIZE_LAYER = "normalize"
CAST_LAYER = "cast_to_float"
OWN_LAYERS = (NORMALIZE_LAYER, CAST_LAYER)


# ------------------------------------------------------------------ normalisations: factory(info) -> layer
def rescale(info: DataInfo) -> keras.layers.Layer:
    """Map the data's value range to [0, 1]."""
    lo, hi = info.value_range
    span = (hi - lo) or 1.0
    return keras.layers.Rescaling(1.0 / span, offset=-lo / span, name=NORMALIZE_LAYER)


def standardize(info: DataInfo) -> keras.layers.Layer:
    """Zero mean, unit variance from training-split statistics (`rescale` when there are none)."""
    if info.mean is not None and info.std:
        return keras.layers.Rescaling(1.0 / info.std, offset=-info.mean / info.std, name=NORMALIZE_LAYER)
    return rescale(info)


def cast_to_float(info: DataInfo) -> keras.layers.Layer:
    """No normalisation (``normalize: none``): only a cast to float."""
    return keras.layers.Rescaling(1.0, name=CAST_LAYER)


# ------------------------------------------------------------------ augmentations: factory(seed) -> layer
def random_flip(seed: int) -> keras.layers.Layer:
    return keras.layers.RandomFlip("horizontal", seed=seed, name="augment_flip")


def random_rotate(seed: int) -> keras.layers.Layer:
    return keras.layers.RandomRotation(0.05, seed=seed, name="augment_rotate")


def random_translate(seed: int) -> keras.layers.Layer:
    return keras.layers.RandomTranslation(0.1, 0.1, seed=seed, name="augment_translate")


def random_zoom(seed: int) -> keras.layers.Layer:
    return keras.layers.RandomZoom(0.1, seed=seed, name="augment_zoom")


def random_contrast(seed: int) -> keras.layers.Layer:
    return keras.layers.RandomContrast(0.2, seed=seed, value_range=(0.0, 1.0), name="augment_contrast")


def gaussian_noise(seed: int) -> keras.layers.Layer:
    return keras.layers.GaussianNoise(0.05, seed=seed, name="augment_noise")


# ------------------------------------------------------------------ the chain
def normalization_layer(info: DataInfo, config: PreprocessingConfig) -> keras.layers.Layer:
    """Map raw inputs to roughly unit scale (a cast to float for ``normalize: none``)."""
    layer: keras.layers.Layer = NORMALIZATIONS.get(config.normalize)(info)
    return layer


def preprocess(x: Any, info: DataInfo, config: PreprocessingConfig, *, seed: int) -> Any:
    """Apply normalisation then augmentation to a symbolic input, layer after layer (token ids pass as-is)."""
    if info.kind == "tokens":
        return x
    x = normalization_layer(info, config)(x)
    if info.kind == "images":
        for i, name in enumerate(config.augmentation):
            x = AUGMENTATIONS.get(name)(seed + i)(x)
    return x
