"""Model-graph checks: bypassed preprocessing, raw inputs reaching a layer, frozen encoders.

Keras keeps only the layers on the path from inputs to outputs, so the forum
bug ``x = Rescaling(1/255)(inputs); x = Conv2D(...)(inputs)`` leaves no trace
in ``model.layers``; the Input's outbound nodes still point at the Rescaling,
which is how we find it. Nested user models (our encoder wraps the user's
``build_encoder`` model) are walked too. The activation check then feeds one
real batch and measures what actually reaches the first layer with weights.

Keras has no public API for a functional graph's *outbound* nodes or its nodes
by depth, nor a public base class for preprocessing layers, so this module
reads four private details: ``KerasTensor._keras_history``,
``Operation._outbound_nodes``, ``Functional._nodes_by_depth`` and the
``keras.src.layers.preprocessing`` module path. Each use says so, and
``tests/diagnostics/test_graph_checks.py`` pins them (a Keras upgrade that
moves them fails there, not silently here).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from ..config import TrainConfig
from ..data.types import DataInfo
from ..findings import Finding
from ..models.preprocessing import OWN_LAYERS
from ..models.siamese import SiameseModels
from ..registry import ENCODERS
from . import codes as C

# private: every Keras preprocessing/augmentation layer class lives under this module (no public base class)
_PREPROCESSING_MODULE = "keras.src.layers.preprocessing"
_NOISE_LAYERS = (keras.layers.GaussianNoise, keras.layers.GaussianDropout)
_NORMALISING_LAYERS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                       keras.layers.GroupNormalization)
_NORMALISATION_TYPES = ("Rescaling", "Normalization")

# What reaches the first weighted layer, judged by robust statistics of one 64-sample probe batch: the 99th
# percentile of |x| and half the 16-84th percentile range (the std of a normal). The maximum and the std
# are not robust: correctly standardised Student-t features (per-feature train mean/std, 100 batches each) had
# max |x| > 20 in 7% of batches (t3, 32 features), 38% (t2, 32) and 100% (t3 or t2, 2,048), and std up to 112
# (t1.5). Their q99 stayed <= 4.1 and their spread <= 0.93 (df 1.5-5, 32 or 2,048 features). Healthy images:
# rescaled [0, 1] q99 <= 1, spread <= 0.44; standardised Fashion-MNIST q99 <= 2.0, spread <= 1.17. Raw pixels:
# q99 247-255, spread 93-112 (0-255), q99 16 and spread 6.5-7.0 for 0-16 digits. Flag above q99 20 or spread
# 5; error at q99 >= 100.
ACT_ABS_Q99 = 20.0
ACT_SPREAD = 5.0
ACT_ERROR_ABS_Q99 = 100.0
# Scaled twice (our rescale to [0, 1], then the user's own Rescaling(1/255)): max ~0.004. Such inputs
# train 10-100x slower (the overfit probe stalled at 59% of its initial loss). Healthy inputs have max >= 0.5.
ACT_TINY_ABS_MAX = 0.05


def is_preprocessing(op: Any) -> bool:
    """Keras preprocessing/augmentation layers, noise layers, or a Sequential made only of them."""
    if isinstance(op, keras.Model):
        layers = [lyr for lyr in op.layers if not isinstance(lyr, keras.layers.InputLayer)]
        return bool(layers) and all(is_preprocessing(lyr) for lyr in layers)
    return isinstance(op, _NOISE_LAYERS) or any(c.__module__.startswith(_PREPROCESSING_MODULE)
                                                for c in type(op).__mro__)


def _is_functional(m: Any) -> bool:
    # private `_nodes_by_depth`: only functional models (not Sequential or subclassed ones) have a node graph
    return isinstance(m, keras.Model) and hasattr(m, "_nodes_by_depth") and hasattr(m, "operations")


def functional_models(model: keras.Model) -> Iterator[keras.Model]:
    """`model` and every functional model nested in it (a user encoder inside ours)."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if _is_functional(m):
            yield m
        stack.extend(lyr for lyr in getattr(m, "layers", []) if isinstance(lyr, keras.Model))


def bypassed_preprocessing(model: keras.Model) -> list[dict[str, str]]:
    """Preprocessing layers applied to a model's input whose output never reaches the model's output."""
    found: list[dict[str, str]] = []
    for m in functional_models(model):
        in_model = {id(op) for op in m.operations}
        for tensor in m.inputs:
            # private `_keras_history` (the Input's operation) and `_outbound_nodes` (who reads it): the bypassed
            # layer is in neither `m.operations` nor `m.layers`, only at the end of these links
            history = getattr(tensor, "_keras_history", None)
            if history is None:
                continue
            stack, seen = [history.operation], set()
            while stack:
                op = stack.pop()
                for node in getattr(op, "_outbound_nodes", []):
                    nxt = node.operation
                    if id(nxt) in in_model or id(nxt) in seen or not is_preprocessing(nxt):
                        continue
                    seen.add(id(nxt))
                    found.append({"layer": nxt.name, "type": type(nxt).__name__, "model": m.name})
                    stack.append(nxt)  # a bypassed chain: Rescaling -> RandomFlip -> ...
    return found


def _rescales(model: Any, *, top: bool = True) -> bool:
    """Whether a Rescaling or Normalization layer of the encoder's own (not `preprocessing.normalize`'s, which
    sits at the encoder's top level: a user's model nested in it may name a layer alike) is among `model`'s
    layers (nested models too)."""
    for layer in getattr(model, "layers", []):
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)) and not (
                top and layer.name in OWN_LAYERS):
            return True
        if isinstance(layer, keras.Model) and _rescales(layer, top=False):
            return True
    return False


def _has_weights(op: Any) -> bool:
    return bool(getattr(op, "weights", None)) and not is_preprocessing(op)


def _value_of(model: keras.Model, tensor: Any, x: Any) -> Any:
    for inp, value in zip(model.inputs, x if isinstance(x, (list, tuple)) else [x], strict=False):
        if tensor is inp:
            return value
    return keras.Model(model.inputs, tensor)(list(x) if isinstance(x, (list, tuple)) else [x], training=False)


def first_weighted_input(model: keras.Model, x: Any, *, path: str = "") -> tuple[str, Any, np.ndarray] | None:
    """``(path, layer, activations)``: what the first layer with weights receives for inputs `x`."""
    path = f"{path}/{model.name}" if path else model.name
    if not _is_functional(model):  # Sequential: apply layers in order
        h = x
        for layer in model.layers:
            if _has_weights(layer):
                if isinstance(layer, keras.Model):
                    return first_weighted_input(layer, h, path=path)
                return f"{path}/{layer.name}", layer, np.asarray(h)
            h = layer(h, training=False)
        return None
    for depth in sorted(model._nodes_by_depth, reverse=True):  # private: nodes with their input tensors
        for node in model._nodes_by_depth[depth]:
            op = node.operation
            if not _has_weights(op) or not node.input_tensors:
                continue
            value = _value_of(model, node.input_tensors[0], x)
            if isinstance(op, keras.Model):
                return first_weighted_input(op, value, path=path)
            return f"{path}/{op.name}", op, np.asarray(value)
    return None


def activation_stats(a: np.ndarray) -> dict[str, float]:
    """Max, mean and std of |x| and x, and the robust pair the check judges by: the 99th percentile of |x| and
    the spread (half the 16-84th percentile range)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if not a.size:
        return {"abs_max": 0.0, "abs_q99": 0.0, "mean": 0.0, "std": 0.0, "spread": 0.0}
    q16, q84 = np.quantile(a, [0.16, 0.84])
    return {"abs_max": float(np.max(np.abs(a))), "abs_q99": float(np.quantile(np.abs(a), 0.99)),
            "mean": float(a.mean()), "std": float(a.std()), "spread": float(q84 - q16) / 2.0}


def check_inputs(encoders: tuple[keras.Model, ...], batches: list[np.ndarray], *, config: TrainConfig,
                 info: DataInfo) -> list[Finding]:
    """`unnormalized_input` from the graph (bypassed layers) and from one real batch per tower."""
    if info.kind == "tokens":
        return []
    findings: list[Finding] = []
    for encoder, x in zip(encoders, batches, strict=True):
        bypass = bypassed_preprocessing(encoder)
        captured = first_weighted_input(encoder, x)
        stats, where, layer_type = None, None, None
        if captured is not None:
            where, layer, act = captured
            layer_type = type(layer).__name__
            if isinstance(layer, (*_NORMALISING_LAYERS, keras.layers.Embedding)):
                captured = None  # the layer normalises (or looks up) its own input
            else:
                stats = activation_stats(act)
        raw = stats is not None and (stats["abs_q99"] > ACT_ABS_Q99 or stats["spread"] > ACT_SPREAD)
        tiny = stats is not None and 0.0 < stats["abs_max"] < ACT_TINY_ABS_MAX
        if tiny and stats is not None and not bypass and _rescales(encoder):  # (tiny implies stats)
            findings.append(C.finding(
                C.UNNORMALIZED_INPUT, f"inputs reaching {where} are scaled down twice: |x| max {stats['abs_max']:.3g} "
                                      f"(expected ~1) — preprocessing.normalize already maps the data to [0, 1] and "
                                      f"the encoder rescales it again", severity="warning",
                evidence={"encoder": encoder.name, "normalize": config.preprocessing.normalize, "first_layer": where,
                          **{f"input_{k}": round(v, 6) for k, v in stats.items()}},
                fix="normalise once: set preprocessing.normalize: none when your encoder has its own Rescaling, "
                    "or remove the Rescaling from your encoder"))
            continue
        if tiny and stats is not None and not bypass:  # no Rescaling of its own: the data is far below its range
            lo, hi = info.value_range
            why = ("the data itself is that small, and preprocessing.normalize: none leaves it so"
                   if config.preprocessing.normalize == "none" else
                   f"the data's values lie far below the range they are scaled by ({lo:g}..{hi:g} -> [0, 1])")
            findings.append(C.finding(
                C.UNNORMALIZED_INPUT, f"inputs reaching {where} are tiny: |x| max {stats['abs_max']:.3g} (expected "
                                      f"~1) — {why}", severity="warning",
                evidence={"encoder": encoder.name, "normalize": config.preprocessing.normalize, "first_layer": where,
                          "raw_value_range": list(info.value_range),
                          **{f"input_{k}": round(v, 6) for k, v in stats.items()}},
                fix=("set preprocessing.normalize: rescale (or standardize)" if config.preprocessing.normalize ==
                     "none" else "give the data on its own scale (float arrays are scaled by their observed range), "
                     "or set preprocessing.normalize: standardize")))
            continue
        if not raw and not bypass:
            continue
        evidence: dict[str, Any] = {"encoder": encoder.name, "normalize": config.preprocessing.normalize,
                                    "raw_value_range": list(info.value_range)}
        if stats is not None:
            evidence.update({"first_layer": where, "first_layer_type": layer_type,
                             **{f"input_{k}": round(v, 4) for k, v in stats.items()}})
        if bypass:
            evidence["bypassed_layers"] = [f"{b['model']}/{b['layer']} ({b['type']})" for b in bypass]
        findings.append(_input_finding(raw, stats, where, bypass, evidence, config))
    return findings


def _input_finding(raw: bool, stats: dict[str, float] | None, where: str | None, bypass: list[dict[str, str]],
                   evidence: dict[str, Any], config: TrainConfig) -> Finding:
    names = ", ".join(f"{b['layer']} ({b['type']})" for b in bypass)
    one = len(bypass) == 1
    bypass_text = (f"{names} {'is' if one else 'are'} applied to the input of '{bypass[0]['model']}' but bypassed: "
                   f"the next layer reads `inputs` again, so Keras dropped {'it' if one else 'them'} from the model"
                   ) if bypass else ""
    bypass_fix = (f"feed the preprocessing output to the next layer: x = {bypass[0]['type']}(...)(inputs); "
                  f"x = NextLayer(...)(x)  — not NextLayer(...)(inputs)") if bypass else ""
    builtin = config.encoder.type in ENCODERS
    if raw:
        assert stats is not None
        severity = "error" if (stats["abs_q99"] >= ACT_ERROR_ABS_Q99 or
                               any(b["type"] in _NORMALISATION_TYPES for b in bypass)) else "warning"
        msg = (f"unnormalised values reach {where}: 99% of |x| up to {stats['abs_q99']:.4g} (max "
               f"{stats['abs_max']:.4g}), spread {stats['spread']:.3g} (expected roughly [-3, 3])")
        if bypass:
            msg += f"; {bypass_text}"
            fix = bypass_fix + (" — or set preprocessing.normalize: rescale"
                                if config.preprocessing.normalize == "none" else "")
        elif config.preprocessing.normalize == "none":
            msg += "; preprocessing.normalize is 'none'"
            fix = ("set preprocessing.normalize: rescale (or standardize)" if builtin else
                   "set preprocessing.normalize: rescale, or normalise inside your encoder (Rescaling fed into "
                   "the first layer)")
        else:
            fix = "normalise inside your encoder, or check preprocessing.normalize and the data's value range"
        return C.finding(C.UNNORMALIZED_INPUT, msg, evidence=evidence, severity=severity,  # type: ignore[arg-type]
                         fix=fix)
    augment = [b for b in bypass if b["type"] not in _NORMALISATION_TYPES]
    tail = (" Augmentation never runs." if augment else
            " Inputs are still normalised by preprocessing.normalize, so the layer is dead code.")
    return C.finding(C.UNNORMALIZED_INPUT, bypass_text + "." + tail, evidence=evidence, severity="warning",
                     fix=bypass_fix)


def check_trainable(models: SiameseModels) -> list[Finding]:
    """An encoder without trainable weights never changes its embeddings: nothing can be fitted."""
    frozen = [e.name for e in models.encoders if not e.trainable_weights]
    if not frozen:
        return []
    total = int(sum(int(np.prod(w.shape)) for w in models.training.trainable_weights))
    return [C.finding(C.CANNOT_OVERFIT, f"encoder {', '.join(frozen)} has no trainable weights (frozen with "
                                        f"trainable = False?), so its embeddings can never change",
                      evidence={"frozen_encoders": frozen, "trainable_params_in_model": total,
                                "encoder_params": int(models.encoders[0].count_params())},
                      fix="unfreeze the encoder (or add trainable layers on top of a frozen base) before training")]
