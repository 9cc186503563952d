"""Assemble encoders, a distance (or similarity head) and the training model.

The training model is a plain functional Keras model, so ``fit``, a custom
``GradientTape`` loop and ``keras.models.load_model`` (safe mode) all work on
it unchanged:

* pair losses:    ``[left, right] -> [B]`` (a distance; for ``bce`` the same-logit, scored as its sigmoid)
* triplet losses: ``[anchor, positive, negative] -> embeddings [B, 3, D]``

`SiameseModels.export` builds the model users load: two inputs ->
``{"distance", "score", "same"}`` with the calibrated threshold inside;
`load_model` reloads it (or a compiled training model) in Keras safe mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..config import TrainConfig
from ..data.types import DataInfo
from ..errors import DataError, first_line
from ..losses import score_is_similarity
from ..registry import OPTIMIZERS
from .encoders import L2_LAYER, build_encoder
from .layers import DistanceToSimilarity, PairDistance, SimilarityHead, StackEmbeddings, ThresholdDecision

PAIR_INPUTS = ("left", "right")
TRIPLET_INPUTS = ("anchor", "positive", "negative")


@dataclass
class SiameseModels:
    """The pieces of one Siamese network; they share weights."""

    training: keras.Model
    encoders: tuple[keras.Model, ...]         # one shared tower, or two (two-tower)
    scorer: keras.Model                       # (emb_a, emb_b) -> native score [B]: a distance or a probability
    distance: str
    higher_is_same: bool
    arity: int                                # 2 = pairs, 3 = triplets
    pair_head: keras.Model | None = None      # (emb_a, emb_b) -> what a pair loss trains on (None: the scorer)
    # per encoder, inference only: input -> [embedding, encoder output before unit normalisation]
    with_raw: tuple[keras.Model, ...] = ()

    def encoder_for(self, side: int) -> keras.Model:
        return self.encoders[min(side, len(self.encoders) - 1)]

    def embed(self, x: np.ndarray, *, side: int = 0, batch_size: int = 512) -> np.ndarray:
        """Embeddings of raw inputs (inference mode).

        `predict_on_batch` runs Keras' cached, traced predict function: an eager ``enc(x)`` call
        re-dispatches every op from Python (25x slower for an LSTM over 600 tokens, 2x for the conv net),
        and this runs on the validation set every epoch.
        """
        enc = self.encoder_for(side)
        out = [np.asarray(enc.predict_on_batch(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, enc.output.shape[-1]), np.float32)

    def embed_with_raw_norms(self, x: np.ndarray, *, side: int = 0,
                             batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and the L2 norm of each before unit normalisation, in one inference pass.

        With ``encoder.l2_normalize`` every embedding has norm 1, so the norm that can shrink (collapse) or grow
        is the one of the encoder output the normalisation divides by.
        """
        model = self.with_raw[min(side, len(self.with_raw) - 1)]
        emb, raw = [], []
        for i in range(0, len(x), batch_size):
            e, r = model.predict_on_batch(x[i:i + batch_size])
            emb.append(np.asarray(e))
            raw.append(np.linalg.norm(np.asarray(r, dtype=np.float64), axis=-1))
        if not emb:
            return np.zeros((0, model.output[0].shape[-1]), np.float32), np.zeros((0,))
        return np.concatenate(emb), np.concatenate(raw)

    def score(self, emb_a: np.ndarray, emb_b: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
        """The model's native pair score (a distance, or a same-probability) from two embedding arrays."""
        return _pairwise_apply(self.scorer, emb_a, emb_b, batch_size)

    def pair_output(self, emb_a: np.ndarray, emb_b: np.ndarray, scores: np.ndarray | None = None, *,
                    batch_size: int = 4096) -> np.ndarray:
        """What the pair loss receives for two embedding arrays: the distance, or the logit for ``bce``.

        `scores` (from `score`) is returned as is when the loss trains on the native score itself.
        """
        if self.pair_head is None:
            return scores if scores is not None else self.score(emb_a, emb_b, batch_size=batch_size)
        return _pairwise_apply(self.pair_head, emb_a, emb_b, batch_size)

    def export(self, threshold: float, *, name: str = "siamese") -> keras.Model:
        """The deployable model: two raw inputs -> distance, similarity score, same/different."""
        inputs = [keras.Input(shape=enc.input.shape[1:], dtype=enc.input.dtype, name=n)
                  for enc, n in zip((self.encoder_for(0), self.encoder_for(1)), PAIR_INPUTS, strict=True)]
        ea, eb = self.encoder_for(0)(inputs[0]), self.encoder_for(1)(inputs[1])
        distance = PairDistance(self.distance, name="distance")([ea, eb])
        if self.higher_is_same:  # a learned same-probability is the native score
            score = native = self.scorer([ea, eb])
        else:
            score, native = DistanceToSimilarity(self.distance, name="similarity")(distance), distance
        same = ThresholdDecision(threshold, higher_is_same=self.higher_is_same, name="same")(native)
        outputs = {"distance": distance, "score": score, "same": same}
        return keras.Model(inputs, outputs, name=name)


def _pairwise_apply(model: keras.Model, emb_a: np.ndarray, emb_b: np.ndarray, batch_size: int) -> np.ndarray:
    out = [np.asarray(model([emb_a[i:i + batch_size], emb_b[i:i + batch_size]], training=False))
           for i in range(0, len(emb_a), batch_size)]
    return np.concatenate(out).reshape(-1) if out else np.zeros((0,), np.float32)


def build_models(config: TrainConfig, info: DataInfo) -> SiameseModels:
    """Build the encoder(s), the scorer and the training model for `config` on `info`'s inputs."""
    seed = config.seed
    if info.two_tower:
        encoders = tuple(build_encoder(info, config.encoder, config.preprocessing, seed=seed, tower=t,
                                       name=f"encoder_{side}") for t, side in enumerate(PAIR_INPUTS))
    else:
        encoders = (build_encoder(info, config.encoder, config.preprocessing, seed=seed),)
    dim = encoders[0].output.shape[-1]
    if any(e.output.shape[-1] != dim for e in encoders):
        raise ValueError("both towers must produce embeddings of the same size")

    ea, eb = keras.Input((dim,), name="embedding_a"), keras.Input((dim,), name="embedding_b")
    similarity = score_is_similarity(config.loss)
    pair_head = None
    if similarity:  # BCE trains on the logit; the scorer (and the exported model) report its sigmoid
        logit = SimilarityHead(logits=True, name="similarity_head")([ea, eb])
        pair_head = keras.Model([ea, eb], logit, name="pair_head")
        scorer = keras.Model([ea, eb], keras.layers.Activation("sigmoid", name="same_probability")(logit),
                             name="scorer")
    else:
        scorer = keras.Model([ea, eb], PairDistance(config.distance, name="distance")([ea, eb]), name="scorer")

    arity = 3 if config.loss.is_triplet else 2
    names = TRIPLET_INPUTS if arity == 3 else PAIR_INPUTS
    towers = [encoders[min(i, len(encoders) - 1)] for i in range(arity)]
    inputs = [keras.Input(shape=enc.input.shape[1:], dtype=enc.input.dtype, name=n)
              for enc, n in zip(towers, names, strict=True)]
    embeddings = [enc(x) for enc, x in zip(towers, inputs, strict=True)]
    if arity == 3:
        output = StackEmbeddings(name="stacked_embeddings")(embeddings)
    else:
        output = (pair_head or scorer)(embeddings)
    training = keras.Model(inputs, output, name="siamese_training")
    return SiameseModels(training, encoders, scorer, config.distance, similarity, arity, pair_head,
                         tuple(_with_raw_output(e) for e in encoders))


def _with_raw_output(encoder: keras.Model) -> keras.Model:
    """``input -> [embedding, encoder output before unit normalisation]``: the same layers (shared weights),
    the input of `build_encoder`'s ``l2_normalize`` layer as a second output (the embedding itself without it)."""
    try:
        raw = encoder.get_layer(L2_LAYER).input
    except ValueError:  # no unit normalisation: the embedding is the raw output
        raw = encoder.output
    return keras.Model(encoder.inputs, [encoder.output, raw], name=f"{encoder.name}_with_raw")


def build_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """The optimizer registered as ``optimizer.name`` with the configured rate, decay, clipping, momentum."""
    opt = config.optimizer
    kwargs: dict[str, Any] = {"learning_rate": config.learning_rate}
    if OPTIMIZERS.info(opt.name).get("momentum"):
        kwargs["momentum"] = opt.momentum
    if opt.weight_decay:
        kwargs["weight_decay"] = opt.weight_decay
    if opt.clipnorm:
        kwargs["clipnorm"] = opt.clipnorm
    optimizer: keras.optimizers.Optimizer = OPTIMIZERS.get(opt.name)(**kwargs)
    return optimizer


def load_model(path: str | Path) -> keras.Model:
    """Load a saved Siamese model (``model.keras``, or the folder `TrainResult.save` wrote it in) in Keras safe
    mode; a path that holds no model is a `DataError` (Keras said "File not found" for a file that was there).

    Importing this module registers every custom layer and the loss, so exported pair models and
    compiled training models both reload without ``custom_objects``.
    """
    file = Path(path)
    if file.is_dir() and (file / "model.keras").is_file():
        file = file / "model.keras"  # `load_model(result.save("out/"))`: save returns the folder
    if not file.is_file():
        raise DataError(str(path), "no such file" if not file.exists() else
                        "a folder without a model.keras; expected a .keras file or the folder TrainResult.save wrote")
    if file.suffix != ".keras":
        raise DataError(str(path), f"expected a .keras file (Keras 3's format); received {file.suffix or 'no suffix'}")
    try:
        model: keras.Model = keras.models.load_model(file, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError, zipfile.BadZipFile, OSError, ...
        raise DataError(str(path), f"not a loadable Keras model ({type(exc).__name__}: "
                                   f"{first_line(exc)})") from exc
    return model
