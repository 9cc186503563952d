"""Checks on the loss itself: label convention, batch reduction, finite gradients.

They need no training: the convention check evaluates the loss function on
hand-made distances (the property the design promises — a same-label pair's
loss falls as the pair moves closer); the reduction check evaluates it on a
batch and on that batch repeated twice; the gradient check takes one backward pass.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..config import TrainConfig
from ..findings import Finding
from ..losses import build_loss_fn, score_is_similarity
from . import codes as C

# The loss on a batch vs on that batch concatenated with itself: a mean is unchanged (ratio 1), a sum over the
# batch doubles (2), a mean divided by the batch size once more halves (0.5). Duplicates change nothing a miner
# can find (batch-hard picks the same hardest positive and negative), so the test is invariant to mining; the
# former comparison of batch sizes 16 and 64 flagged healthy trained batch-hard models, a larger batch holding
# harder tuples (digits, margin 0.005, test AUC 0.998: x3.59 on training tuples; tests/diagnostics/
# test_loss_checks.py). Flag beyond the geometric midpoints.
REDUCTION_RATIO_HIGH, REDUCTION_RATIO_LOW = math.sqrt(2.0), 1.0 / math.sqrt(2.0)


def _value(fn: Callable[[Any, Any], Any], y: np.ndarray, pred: np.ndarray) -> float:
    out = fn(keras.ops.convert_to_tensor(y), keras.ops.convert_to_tensor(pred))
    return float(np.mean(keras.ops.convert_to_numpy(out)))


def _worse(a: float, b: float) -> bool:
    """a > b beyond float noise."""
    return a > b + 1e-6 * (abs(a) + abs(b)) + 1e-12


def check_convention(config: TrainConfig, *, embedding_dim: int) -> list[Finding]:
    """Does the loss pull same pairs together and push different pairs apart, with 1 = same?"""
    if config.loss.mining == "batch_hard":
        return []  # built-in and property-tested; its value depends on the whole batch
    fn = build_loss_fn(config.loss, config.distance)
    m = config.loss.margin
    if config.loss.is_triplet:
        return _triplet_convention(fn, m, max(int(embedding_dim), 2))
    if score_is_similarity(config.loss):
        close, far = 2.0, -2.0  # the similarity head's logit: high = same
    else:
        close, far = 0.1 * m, (min(2.0 * m, 1.9) if config.distance == "cosine" else 2.0 * m)
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    v = {"same_close": _value(fn, ones, np.full(2, close, np.float32)),
         "same_far": _value(fn, ones, np.full(2, far, np.float32)),
         "diff_close": _value(fn, zeros, np.full(2, close, np.float32)),
         "diff_far": _value(fn, zeros, np.full(2, far, np.float32))}
    ev = {"loss": config.loss.type, "score": "similarity" if score_is_similarity(config.loss) else "distance",
          "close": close, "far": far, **{f"loss_{k}": round(x, 6) for k, x in v.items()}}
    pulls = _worse(v["same_far"], v["same_close"])          # same pairs: far costs more than close
    pushes = _worse(v["diff_close"], v["diff_far"])        # different pairs: close costs more than far
    pulls_apart = _worse(v["same_close"], v["same_far"])
    pushes_together = _worse(v["diff_far"], v["diff_close"])
    if pulls_apart and pushes_together:
        return [C.finding(C.LABEL_INVERTED, "the loss uses the opposite label convention: it rewards same pairs "
                                            "(y=1) for moving apart and different pairs (y=0) for moving together",
                          evidence=ev)]
    if not pulls and not pushes:
        return [C.finding(C.CANNOT_OVERFIT, "the loss does not depend on the pair score in the expected direction "
                                            "for either label", evidence=ev)]
    fix = "the negative term must fall as d grows: (1 - y) * max(margin - d, 0)^2, not max(d - margin, 0)"
    if pulls and pushes_together:  # both terms fall as every pair closes in: a constant map is the minimum
        return [C.finding(C.COLLAPSE, "the loss pulls different pairs (y=0) together as well as same pairs (a hinge "
                                      "with the wrong sign?), so mapping every input to one point minimises it",
                          evidence=ev, fix=fix)]
    if pulls and not pushes:  # flat for different pairs here: only suggests it (their term may act elsewhere)
        return [C.finding(C.COLLAPSE, "nothing in the loss pushes different pairs (y=0) apart, so mapping every "
                                      "input to one point minimises it", evidence=ev, severity="warning", fix=fix)]
    if pushes and not pulls:
        return [C.finding(C.LABEL_INVERTED, "the loss does not pull same pairs (y=1) together — check the label "
                                            "convention (1 = same)", evidence=ev, severity="warning")]
    return []


def _triplet_convention(fn: Callable[[Any, Any], Any], margin: float, dim: int) -> list[Finding]:
    e1, e2 = np.eye(dim, dtype=np.float32)[0], np.eye(dim, dtype=np.float32)[1]
    close, far = e1 + 0.1 * margin * e2, e1 + 2.0 * margin * e2
    good = np.stack([e1, close, far])[None].repeat(2, axis=0)   # positive close, negative far
    bad = np.stack([e1, far, close])[None].repeat(2, axis=0)    # positive far, negative close
    targets = np.array([[0, 1], [2, 3]], np.float32)
    v_good, v_bad = _value(fn, targets, good), _value(fn, targets, bad)
    ev = {"loss_good_triplet": round(v_good, 6), "loss_bad_triplet": round(v_bad, 6)}
    if _worse(v_good, v_bad):
        return [C.finding(C.LABEL_INVERTED, "the triplet loss is lower when the negative is closer than the positive: "
                                            "anchor/positive/negative are swapped", evidence=ev,
                          fix="the loss must be max(d(a, p) - d(a, n) + margin, 0) for (anchor, positive, negative)")]
    if not _worse(v_bad, v_good):
        return [C.finding(C.CANNOT_OVERFIT, "the triplet loss is the same for a good and a bad triplet",
                          evidence=ev)]
    return []


def check_reduction(loss: Callable[[Any, Any], Any], y: np.ndarray, pred: np.ndarray) -> list[Finding]:
    """The configured loss on a batch and on the batch repeated twice; a mean gives the same value."""
    n = len(y)
    if n < 2:
        return []
    v_once = _value(loss, y, pred)
    v_twice = _value(loss, np.concatenate([y, y]), np.concatenate([pred, pred]))
    if not (np.isfinite(v_once) and np.isfinite(v_twice)) or max(abs(v_once), abs(v_twice)) < 1e-9:
        return []  # zero (every hinge satisfied): inconclusive
    ratio = v_twice / v_once if v_once else float("inf")
    ev = {"batch": n, "loss_on_batch": round(v_once, 6), "loss_on_batch_twice": round(v_twice, 6),
          "ratio": round(ratio, 4), "ratio_if_summed": 2.0, "ratio_if_divided_twice": 0.5}
    if ratio > REDUCTION_RATIO_HIGH:
        return [C.finding(C.LOSS_REDUCTION, f"the loss grows with the batch size: {v_twice:.4g} on a batch of {n} "
                                            f"tuples repeated twice vs {v_once:.4g} on the batch (x{ratio:.2f}; x2 "
                                            f"means summed over the batch)", evidence=ev)]
    if ratio < REDUCTION_RATIO_LOW:
        return [C.finding(C.LOSS_REDUCTION, f"the loss shrinks with the batch size (x{ratio:.2f} when the batch of {n} "
                                            f"tuples is repeated twice): it is divided by the batch size twice",
                          evidence=ev)]
    return []


def check_gradients(model: keras.Model, loss: Callable[[Any, Any], Any], x: list[np.ndarray], y: np.ndarray, *,
                    encoders: tuple[keras.Model, ...]) -> list[Finding]:
    """One backward pass at initialisation: non-finite gradients, or none reaching the encoder.

    A loss of exactly zero (every hinge already satisfied) has no gradient by construction: that is not
    `cannot_overfit`, and nothing is reported (a loss that is zero everywhere fails `check_convention`).
    """
    variables = list(model.trainable_variables)
    if not variables:
        return []
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        value = loss(tf.convert_to_tensor(y), pred)
    grads = tape.gradient(value, variables)
    loss_value = float(value)
    bad = [v.path for g, v in zip(grads, variables, strict=True)
           if g is not None and not bool(tf.reduce_all(tf.math.is_finite(g)))]
    if not np.isfinite(loss_value) or bad:
        what = f"the loss is {loss_value}" if not np.isfinite(loss_value) else "gradients are non-finite"
        return [C.finding(C.NAN_LOSS, f"{what} at initialisation, before any update",
                          evidence={"loss": loss_value, "nonfinite_gradients": bad[:5]},
                          fix="guard sqrt/log/division in the loss or distance with maximum(x, 1e-9); check inputs "
                              "for NaN")]
    if loss_value == 0.0:
        return []  # every hinge is already satisfied (a trained model, a tiny margin): no gradient is due
    enc_ids = {id(v) for e in encoders for v in e.trainable_variables}
    enc_grads = [g for g, v in zip(grads, variables, strict=True) if id(v) in enc_ids]
    norms = [float(tf.norm(g)) for g in enc_grads if g is not None]
    if enc_ids and (not norms or max(norms) == 0.0):
        return [C.finding(C.CANNOT_OVERFIT, "no gradient reaches the encoder's weights: the loss does not depend on "
                                            "them (zero or missing gradients at initialisation)",
                          evidence={"loss": round(loss_value, 6), "encoder_variables": len(enc_ids),
                                    "with_gradient": len(norms), "max_gradient_norm": max(norms) if norms else None})]
    return []
