"""Registered, serialisable layers (no `Lambda`), so saved models reload in
Keras safe mode and through MLflow.

Importing this module registers the layers; `siamese_core.load_model` does so.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops

from ..metrics import same_at_threshold
from . import distances

PACKAGE = "siamese_core"


@keras.saving.register_keras_serializable(package=PACKAGE)
class PairDistance(keras.layers.Layer):
    """Distance between two embeddings: ``[B, D], [B, D] -> [B]``."""

    def __init__(self, metric: str = "euclidean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric
        self._distance = distances.get(metric)

    def call(self, inputs: Any) -> Any:
        a, b = inputs
        return self._distance.rowwise(a, b)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0][0],)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "metric": self.metric}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SimilarityHead(keras.layers.Layer):
    """Learned same-logit from two embeddings: ``w·|a-b| + c -> [B]`` (with ``logits=False``, its sigmoid).

    Used with binary cross-entropy, which trains on the logit; the scorer and the exported model apply a
    sigmoid after it. Higher means more similar. ``logits=False`` is the default so that models saved when
    the head ended in a sigmoid reload unchanged.
    """

    def __init__(self, logits: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.logits = bool(logits)
        self.dense = keras.layers.Dense(1, activation=None if self.logits else "sigmoid", name="logit")

    def build(self, input_shape: Any) -> None:
        self.dense.build(input_shape[0])
        self.built = True

    def call(self, inputs: Any) -> Any:
        a, b = inputs
        return ops.squeeze(self.dense(ops.abs(a - b)), axis=-1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0][0],)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "logits": self.logits}


@keras.saving.register_keras_serializable(package=PACKAGE)
class StackEmbeddings(keras.layers.Layer):
    """Stack anchor/positive/negative embeddings into ``[B, 3, D]`` for triplet losses."""

    def call(self, inputs: Any) -> Any:
        return ops.stack(list(inputs), axis=1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0][0], len(input_shape), input_shape[0][-1])


@keras.saving.register_keras_serializable(package=PACKAGE)
class ThresholdDecision(keras.layers.Layer):
    """Same/different decision at the threshold calibrated on validation data.

    The threshold lives in the layer config, so it travels inside the saved
    model file. ``higher_is_same`` is False for distances, True for similarity
    scores. Output: float 1.0 (same) or 0.0 (different), shape ``[B]``.
    """

    def __init__(self, threshold: float = 0.5, higher_is_same: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.higher_is_same = bool(higher_is_same)

    def call(self, score: Any) -> Any:
        return ops.cast(same_at_threshold(score, self.threshold, higher_is_same=self.higher_is_same), "float32")

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold, "higher_is_same": self.higher_is_same}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DistanceToSimilarity(keras.layers.Layer):
    """Map a distance to a similarity score in (0, 1]: ``1 / (1 + d)`` (cosine: ``1 - d / 2``)."""

    def __init__(self, metric: str = "euclidean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric

    def call(self, d: Any) -> Any:
        if self.metric == "cosine":
            return 1.0 - d / 2.0
        return 1.0 / (1.0 + d)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "metric": self.metric}
