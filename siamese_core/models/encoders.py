"""Encoders: one input -> one embedding, with preprocessing inside the model (`preprocessing.py`).

Built-in bodies are registered by name in `siamese_core.registry.ENCODERS`
(``body(x, config.encoder, data_info) -> features``; the embedding layer is
added after). A user encoder is a ``package.module:function`` that returns a
Keras model for an input shape; our preprocessing still runs before it.
"""
from __future__ import annotations

import inspect
from typing import Any

import keras

from ..config import EncoderConfig, PreprocessingConfig
from ..data.types import DataInfo
from ..errors import ConfigError, first_line
from ..registry import ENCODERS, import_object
from .preprocessing import preprocess

# Keras' default 0.99 leaves the moving statistics near their initial values for the first few hundred
# steps, so short runs and early epochs were validated with a different network than the one trained
# (val_loss 0.42 vs loss 0.24 after 40 steps on digits); 0.9 (PyTorch's default) tracks within ~20 steps.
BN_MOMENTUM = 0.9
L2_LAYER = "l2_normalize"  # the unit normalisation at the end of an encoder (its input is the raw embedding)


def conv_body(x: Any, cfg: EncoderConfig, info: DataInfo) -> Any:
    """Conv blocks (conv, batch norm, activation, pooling) over images; GAP or flatten at the end."""
    if len(x.shape) == 3:  # [H, W] -> [H, W, 1]
        x = keras.layers.Reshape((*x.shape[1:], 1))(x)
    if len(x.shape) != 4:
        raise ConfigError("encoder.type", f"'conv' expects image inputs of shape (H, W[, C]); received: "
                                          f"{tuple(x.shape[1:])}. Use encoder.type 'mlp' for vectors or 'sequence' "
                                          f"for token ids.")
    for block in range(cfg.depth):
        filters = min(cfg.width * 2 ** block, cfg.width * 8)
        x = keras.layers.Conv2D(filters, cfg.kernel_size, padding="same", use_bias=not cfg.batch_norm,
                                name=f"conv{block + 1}")(x)
        if cfg.batch_norm:
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{block + 1}")(x)
        x = keras.layers.Activation(cfg.activation, name=f"act{block + 1}")(x)
        if min(x.shape[1], x.shape[2]) >= 4:
            x = keras.layers.MaxPooling2D(2, name=f"pool{block + 1}")(x)
    if cfg.pooling == "gap":
        return keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.layers.Flatten(name="flatten")(x)


def mlp_body(x: Any, cfg: EncoderConfig, info: DataInfo) -> Any:
    """Dense blocks over flattened inputs."""
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="flatten")(x)
    for block in range(cfg.depth):
        x = keras.layers.Dense(cfg.width, use_bias=not cfg.batch_norm, name=f"dense{block + 1}")(x)
        if cfg.batch_norm:
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{block + 1}")(x)
        x = keras.layers.Activation(cfg.activation, name=f"act{block + 1}")(x)
        if cfg.dropout:
            x = keras.layers.Dropout(cfg.dropout, name=f"dropout{block + 1}")(x)
    return x


def sequence_body(x: Any, cfg: EncoderConfig, info: DataInfo) -> Any:
    """Token embedding, then (bi)LSTM/GRU layers; the last returns one vector per sequence."""
    if info.kind != "tokens":
        raise ConfigError("encoder.type", f"'sequence' expects integer token ids; this dataset holds {info.kind}")
    vocab = cfg.vocab_size or info.vocab_size
    if not vocab:
        raise ConfigError("encoder.vocab_size", "the sequence encoder needs a vocabulary size; set encoder.vocab_size")
    if info.vocab_size and vocab < info.vocab_size:
        raise ConfigError("encoder.vocab_size", f"expected >= {info.vocab_size} (largest token id + 1 in the data); "
                                                f"received: {vocab}")
    x = keras.layers.Embedding(vocab, cfg.token_embedding_dim, mask_zero=True, name="token_embedding")(x)
    rnn_cls = keras.layers.LSTM if cfg.rnn == "lstm" else keras.layers.GRU
    for block in range(cfg.depth):
        last = block == cfg.depth - 1
        layer = rnn_cls(cfg.width, return_sequences=not last, dropout=cfg.dropout, name=f"{cfg.rnn}{block + 1}")
        x = keras.layers.Bidirectional(layer, name=f"bi{cfg.rnn}{block + 1}")(x) if cfg.bidirectional else layer(x)
    return x


def _encoder_kwargs(factory: Any, cfg: EncoderConfig) -> dict[str, Any]:
    try:
        if "embedding_dim" in inspect.signature(factory).parameters:
            return {"embedding_dim": cfg.embedding_dim}
    except (TypeError, ValueError):
        pass
    return {}


def unread_by_user_code(cfg: EncoderConfig) -> list[str]:
    """The ``encoder.*`` fields a user encoder (``encoder.type: module:function``, a hypermodel's) does not read:
    it builds its own body, and only `l2_normalize` and, where its function takes it, `embedding_dim` apply. Empty
    for a built-in encoder. A trial's MLflow params listed ``encoder.depth=3`` and ``encoder.width=16`` for a
    hypermodel that built two Dense(24) layers."""
    if cfg.type in ENCODERS:
        return []
    reads = {"type", "l2_normalize"} | set(_encoder_kwargs(import_object(cfg.type, field="encoder.type"), cfg))
    return [name for name in type(cfg).model_fields if name not in reads]


def check_user_encoder_call(cfg: EncoderConfig) -> None:
    """A `ConfigError` now for a user encoder that cannot take the call `build_encoder` makes, without making it:
    the check a sweep runs before its first trial (calling the user's code there ran its MLflow calls outside any
    run, which started one of MLflow's own)."""
    factory = import_object(cfg.type, field="encoder.type")
    if not callable(factory):  # `inspect.signature` raises TypeError for it too, which the next lines let pass
        raise ConfigError("encoder.type", f"{cfg.type!r} is not callable")
    kwargs = _encoder_kwargs(factory, cfg)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # a builtin or C callable without a signature: its call will tell
    try:
        signature.bind((1,), **kwargs)
    except TypeError as exc:
        raise ConfigError("encoder.type", f"{cfg.type}{signature} cannot be called as build_encoder(input_shape"
                                          f"{', embedding_dim=...' if kwargs else ''}): {exc}") from None


def _user_body(x: Any, cfg: EncoderConfig, input_shape: tuple[int, ...]) -> Any:
    factory = import_object(cfg.type, field="encoder.type")
    kwargs = _encoder_kwargs(factory, cfg)
    try:
        user_model = factory(input_shape, **kwargs)
    except Exception as exc:
        raise ConfigError("encoder.type", f"{cfg.type}({input_shape}) raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(user_model, keras.layers.Layer):
        raise ConfigError("encoder.type", f"expected {cfg.type} to return a keras.Model; received: "
                                          f"{type(user_model).__name__}")
    inputs = getattr(user_model, "inputs", None)  # a functional or built Model declares them; a Layer does not
    if inputs is not None and len(inputs) != 1:
        raise ConfigError("encoder.type", f"expected {cfg.type} to return a model of one input (the sample, shape "
                                          f"{input_shape}); it takes {len(inputs)}")
    try:
        x = user_model(x)
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError, TypeError, ... for a model that does not fit
        raise ConfigError("encoder.type", f"{cfg.type}: its model does not take the sample (shape {input_shape}): "
                                          f"{type(exc).__name__}: {first_line(exc)}"
                          ) from exc
    if isinstance(x, (list, tuple, dict)):
        raise ConfigError("encoder.type", f"expected {cfg.type} to return a model with one output (the embedding); "
                                          f"it has {len(x)}")
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="flatten_user")(x)
    return x


def build_encoder(info: DataInfo, cfg: EncoderConfig, pre: PreprocessingConfig, *, seed: int,
                  tower: int = 0, name: str = "encoder") -> keras.Model:
    """Build the encoder for one tower; embeddings have ``cfg.embedding_dim`` units."""
    shape = info.input_shapes[tower]
    dtype = info.dtype if info.kind != "tokens" else "int32"
    inputs = keras.Input(shape=shape, dtype=dtype, name=f"{name}_input")
    x = preprocess(inputs, info, pre, seed=seed)
    builtin = cfg.type in ENCODERS
    x = ENCODERS.get(cfg.type)(x, cfg, info) if builtin else _user_body(x, cfg, shape)
    if builtin:
        if cfg.dropout and cfg.type == "conv":
            x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
        x = keras.layers.Dense(cfg.embedding_dim, name="embedding")(x)
    if cfg.l2_normalize:
        x = keras.layers.UnitNormalization(name=L2_LAYER)(x)
    return keras.Model(inputs, x, name=name)
