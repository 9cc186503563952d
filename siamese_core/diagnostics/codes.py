"""The catalogue of diagnostic codes: one stable name per known Siamese failure.

Codes are part of the public interface: sweeps turn them into MLflow tags and
Optuna prune reasons, and users grep for them. Never rename one; add new ones.
Each entry says what the user sees, why it happens and what to change, so a
finding can always carry a fix even when a check has no more specific advice.
Pure Python (no TensorFlow): `config.py` validates ``diagnostics.fail_on`` against it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..findings import Finding, Severity

POSITIVES_ONLY = "positives_only"
SINGLE_CLASS = "single_class"
PAIR_IMBALANCE = "pair_imbalance"
UNNORMALIZED_INPUT = "unnormalized_input"
COLLAPSE = "collapse"
CONSTANT_OUTPUT = "constant_output"
LOSS_REDUCTION = "loss_reduction"
LABEL_INVERTED = "label_inverted"
LOADER_MISMATCH = "loader_mismatch"
NAN_LOSS = "nan_loss"
CANNOT_OVERFIT = "cannot_overfit"
NO_LEARNING = "no_learning"


@dataclass(frozen=True)
class CodeInfo:
    code: str
    severity: Severity          # the usual severity; a check may lower or raise it with evidence
    symptom: str                # what the user sees
    why: str                    # the mechanism
    fix: str                    # the default advice


CATALOGUE: dict[str, CodeInfo] = {c.code: c for c in (
    CodeInfo(POSITIVES_ONLY, "error",
             "loss falls to ~0 quickly, yet every pair gets the same distance",
             "with no negative pairs the contrastive objective is minimised by mapping every input to one point "
             "(Hadsell et al. 2006)",
             "add pairs labelled 0 (different) — about as many as positives — or use class-labelled data "
             "(dataset: npz with x, y) and let the sampler build balanced pairs"),
    CodeInfo(SINGLE_CLASS, "error",
             "no negative pairs can be formed; training collapses or cannot start",
             "every label is the same class, so 'different' pairs do not exist",
             "provide at least two classes (check the label column and any filtering step)"),
    CodeInfo(PAIR_IMBALANCE, "warning",
             "accuracy looks high but equals the majority share; AUC is poor",
             "with very few negatives (or positives) the loss is dominated by one kind of pair",
             "rebalance the pairs to roughly 1:1 (pairs.positive_fraction: 0.5, or resample your .npz)"),
    CodeInfo(UNNORMALIZED_INPUT, "error",
             "loss is large and noisy, training diverges or stalls",
             "raw values (e.g. pixels 0-255) reach the first trainable layer; a Rescaling/augmentation layer "
             "applied to `inputs` and then bypassed is silently dropped by Keras",
             "feed each preprocessing layer's output to the next layer (x = Rescaling(1/255)(inputs); "
             "x = Conv2D(...)(x)), or keep preprocessing.normalize: rescale"),
    CodeInfo(COLLAPSE, "error",
             "all embeddings become (near) zero, identical, or point one way; loss stuck near the margin",
             "the loss is minimised by a constant map: no or too few negatives, a hinge with the wrong sign, "
             "or a learning rate that killed every unit",
             "check that negatives are present and pushed apart (max(margin - d, 0)), lower the learning rate, "
             "consider encoder.l2_normalize: true"),
    CodeInfo(CONSTANT_OUTPUT, "error",
             "every pair gets the same score; accuracy equals the class prior, AUC = 0.5",
             "the model's output does not depend on its input (e.g. softmax over one unit, dead ReLUs, "
             "a zero embedding layer)",
             "use a linear (or sigmoid for a single unit) output layer for embeddings, never softmax over "
             "one unit; check the encoder's last layers"),
    CodeInfo(LOSS_REDUCTION, "error",
             "the best learning rate depends on the batch size; loss values scale with it",
             "the loss is summed over the batch (reduce_sum) instead of returning one value per pair/triplet",
             "return one value per pair/triplet ([B]) and let siamese_core average it; drop reduce_sum/reduce_mean "
             "over the batch axis"),
    CodeInfo(LABEL_INVERTED, "error",
             "validation AUC well below 0.5: same pairs are scored as different",
             "the loss uses the opposite label convention (0 = same) while siamese_core uses 1 = same",
             "swap the loss terms (y * d^2 + (1 - y) * max(margin - d, 0)^2 with 1 = same) or relabel your pairs "
             "with y = 1 - y"),
    CodeInfo(LOADER_MISMATCH, "error",
             "the same config gives different results with loader memory/tfdata/custom",
             "two loaders build different pairs or preprocess inputs differently from the same data",
             "make every loader draw tuples from the one sampler and leave normalisation to the model "
             "(preprocessing.normalize), not the input pipeline"),
    CodeInfo(NAN_LOSS, "error",
             "loss becomes nan/inf and the run aborts",
             "too large a learning rate, unnormalised inputs, or a non-finite operation in the loss "
             "(sqrt(0) gradient, log(0))",
             "lower learning_rate (1e-3 for adam), set optimizer.clipnorm: 1.0, keep preprocessing.normalize: "
             "rescale, guard sqrt/log in custom losses with maximum(x, 1e-9)"),
    CodeInfo(CANNOT_OVERFIT, "error",
             "even 64 training pairs cannot be fitted",
             "a structural bug: frozen or disconnected layers, a non-differentiable step, or a loss that "
             "ignores the model's output",
             "check model.trainable_weights, remove stop_gradient/round/argmax from the model and the loss, "
             "make sure the loss uses y_pred"),
    CodeInfo(NO_LEARNING, "warning",
             "validation AUC stays at chance (0.5) epoch after epoch, or the training loss barely moves in 3 epochs",
             "the learning rate is far too small or too large, or the gradients do not reach the encoder",
             "try learning_rate 1e-3 with adam, check that the encoder's weights change between epochs"),
)}

CODES: tuple[str, ...] = tuple(CATALOGUE)


def finding(code: str, message: str, *, evidence: dict[str, Any] | None = None, severity: Severity | None = None,
            fix: str | None = None, epoch: int | None = None) -> Finding:
    """A `Finding` for a catalogued code, with the catalogue's severity and fix unless given."""
    info = CATALOGUE[code]
    return Finding(code=code, severity=severity or info.severity, message=message, fix=fix or info.fix,
                   evidence=dict(evidence or {}), epoch=epoch)
