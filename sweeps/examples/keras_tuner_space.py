"""KerasTuner code, unchanged, driven by Optuna through `sweeps.hypermodel`.

`build_encoder(hp)` is ordinary KerasTuner: ``hp.Int``, ``hp.Choice``,
conditional scopes. Hyperparameters named like train-config keys
(``learning_rate``, ``loss.margin``) set those fields of the trial's config.
"""
from __future__ import annotations

import keras

INPUT_SHAPE = (8, 8, 1)  # scikit-learn digits


def build_encoder(hp) -> keras.Model:
    inputs = keras.Input(INPUT_SHAPE)
    x = inputs
    kind = hp.Choice("block", ["conv", "dense"])
    with hp.conditional_scope("block", ["conv"]):
        if kind == "conv":
            for _ in range(hp.Int("conv_layers", 1, 2)):
                x = keras.layers.Conv2D(hp.Int("filters", 8, 32, step=8), 3, padding="same", activation="relu")(x)
            x = keras.layers.GlobalAveragePooling2D()(x)
    with hp.conditional_scope("block", ["dense"]):
        if kind == "dense":
            x = keras.layers.Flatten()(x)
            x = keras.layers.Dense(hp.Int("units", 32, 128, step=32), activation="relu")(x)
    outputs = keras.layers.Dense(hp.Choice("embedding_dim", [16, 32]))(x)
    hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")  # named like train-config keys: these two set the
    hp.Float("loss.margin", 0.5, 1.5)                       # trial's learning rate and margin
    return keras.Model(inputs, outputs, name="kt_encoder")
