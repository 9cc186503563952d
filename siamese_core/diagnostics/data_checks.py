"""Data checks that run before any model exists: pair balance and class count.

The loader refuses unusable data with a `DataError` (right for ``train``), but
the doctor must *report* it: these checks read the raw label arrays first, so
a positives-only ``.npz`` becomes a `positives_only` finding with numbers
instead of a crash. `from_data_error` turns the loader's refusals that carry a
diagnostic code (``DataError.code``) into findings, for the sources we cannot
pre-read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..data.sources import read_npz
from ..data.types import DatasetSplits, PairedSplit
from ..errors import DataError
from ..findings import Finding
from ..verification import roc_auc
from . import codes as C

# the two sources whose raw labels can be read before loading (arrays ``y``/``y_test`` of an .npz)
NPZ, PAIRS_NPZ = "npz", "pairs_npz"

# A positive share outside [0.1, 0.9] (worse than 1:9) lets one kind of pair dominate the loss;
# the sampler's default is 0.5, and the forum datasets that failed had 0% or ~2-5% negatives.
IMBALANCE_LOW, IMBALANCE_HIGH = 0.1, 0.9


def check_pair_labels(y: np.ndarray, source: str, *, what: str = "y") -> list[Finding]:
    """Pre-built pair labels (1 = same): both kinds present, neither below 10%."""
    y = np.asarray(y).reshape(-1)
    n = int(y.size)
    if n == 0:
        return []
    n_pos = int(np.count_nonzero(y == 1))
    frac = n_pos / n
    ev = {"source": source, "array": what, "pairs": n, "positives": n_pos, "negatives": n - n_pos,
          "positive_fraction": round(frac, 4)}
    if n_pos == n:
        return [C.finding(C.POSITIVES_ONLY, f"all {n} pairs in '{what}' are labelled 1 (same): there are no negative "
                                            f"pairs, so a contrastive objective collapses to a constant map",
                          evidence=ev)]
    if n_pos == 0:
        return [C.finding(C.PAIR_IMBALANCE, f"all {n} pairs in '{what}' are labelled 0 (different): there are no "
                                            f"positive pairs to learn similarity from", evidence=ev, severity="error",
                          fix="add pairs labelled 1 (same), about as many as negatives")]
    if not IMBALANCE_LOW <= frac <= IMBALANCE_HIGH:
        kind = "negatives" if frac > IMBALANCE_HIGH else "positives"
        return [C.finding(C.PAIR_IMBALANCE, f"only {min(frac, 1 - frac):.1%} of the pairs in '{what}' are {kind} "
                                            f"(expected {IMBALANCE_LOW:.0%}-{IMBALANCE_HIGH:.0%})", evidence=ev)]
    return []


def check_class_labels(y: np.ndarray, source: str, *, what: str = "y") -> list[Finding]:
    """Class labels: at least two classes, and some class with two samples (for positives)."""
    y = np.asarray(y).reshape(-1)
    if y.size == 0:
        return []
    classes, counts = np.unique(y, return_counts=True)
    ev = {"source": source, "array": what, "samples": int(y.size), "classes": int(classes.size),
          "largest_class_share": round(float(counts.max() / y.size), 4)}
    if classes.size < 2:
        return [C.finding(C.SINGLE_CLASS, f"every label in '{what}' is class {classes[0].item()!r}: no negative pair "
                                          f"can be built and the embedding collapses to a constant", evidence=ev)]
    if not np.any(counts >= 2):
        return [C.finding(C.PAIR_IMBALANCE, f"no class in '{what}' has two samples, so no positive pair exists",
                          evidence=ev, severity="error", fix="provide at least two samples of some classes")]
    return []


def check_raw(config: TrainConfig) -> list[Finding]:
    """Label checks on a user's ``.npz`` before the loader validates (and maybe refuses) it."""
    ds = config.dataset
    if ds.name not in (NPZ, PAIRS_NPZ) or not ds.path:
        return []
    source = str(Path(ds.path).expanduser())
    try:
        if ds.name == PAIRS_NPZ:
            arrays = read_npz(ds.path, required=("y",), optional=("y_test",))
            out = check_pair_labels(arrays["y"], source, what="y")
            if "y_test" in arrays and not any(f.is_error for f in out):
                out += [f for f in check_pair_labels(arrays["y_test"], source, what="y_test") if f.is_error]
            return out
        arrays = read_npz(ds.path, required=("y",), optional=("y_test",))
        y = arrays["y"] if "y_test" not in arrays else np.concatenate([arrays["y"].reshape(-1),
                                                                      arrays["y_test"].reshape(-1)])
        return check_class_labels(y, source, what="y")
    except (DataError, ValueError, TypeError):
        return []  # unreadable or malformed: load_dataset reports it with the precise cause


def from_data_error(exc: DataError) -> Finding | None:
    """The finding for a loader refusal that carries a diagnostic code (a refusal is always an error)."""
    if exc.code is None:
        return None
    return C.finding(exc.code, exc.problem, evidence={"source": exc.source}, severity="error", fix=exc.fix)


# Raw-input distance as a label-convention witness for user-built pairs: on digits, same pairs are closer
# in pixel space (AUC 0.91); with keras.io's make_pairs convention (0 = same) the AUC is 0.13. Hard-negative
# mining lowers it but was never seen below 0.5 on correctly labelled pairs. Flag below 0.3.
RAW_INVERTED_AUC = 0.3
RAW_PAIRS = 2000


def raw_distance_auc(split: PairedSplit) -> float | None:
    """AUC of 'same' vs 'different' from plain input distances (no model); None when not comparable."""
    x1, x2, y = split.x1, split.x2, np.asarray(split.y)
    if not (isinstance(x1, np.ndarray) and isinstance(x2, np.ndarray)) or x1.shape[1:] != x2.shape[1:]:
        return None
    if x1.dtype.kind in "iu" and x1.ndim == 2:  # token ids: distances between ids mean nothing
        return None
    n = min(len(y), RAW_PAIRS)
    a = x1[:n].reshape(n, -1).astype(np.float32)
    b = x2[:n].reshape(n, -1).astype(np.float32)
    auc = roc_auc(np.linalg.norm(a - b, axis=1), y[:n], higher_is_same=False)
    return None if not np.isfinite(auc) else float(auc)


def check_convention(data: DatasetSplits) -> list[Finding]:
    """User-built pairs whose 'same' pairs look *less* alike than 'different' ones: 0 = same labels?"""
    if not isinstance(data.train, PairedSplit):
        return []
    aucs = {name: raw_distance_auc(split) for name, split in data.splits().items() if isinstance(split, PairedSplit)}
    low_aucs = {k: v for k, v in aucs.items() if v is not None and v < RAW_INVERTED_AUC}
    low = list(low_aucs)
    if not low:
        return []
    ev = {"raw_distance_auc": {k: (round(v, 4) if v is not None else None) for k, v in aucs.items()},
          "source": data.info.source}
    mixed = any(v is not None and v > 1 - RAW_INVERTED_AUC for v in aucs.values())
    msg = (f"pairs labelled 1 (same) in the {', '.join(low)} split{'s' if len(low) > 1 else ''} are *further* apart in "
           f"raw input space than pairs labelled 0 (AUC {min(low_aucs.values()):.2f} from plain distances): the "
           f"labels look like the 0 = same convention (keras.io's make_pairs)")
    if mixed:
        msg += "; other splits use 1 = same, so the splits disagree"
    return [C.finding(C.LABEL_INVERTED, msg, evidence=ev, severity="error" if mixed else "warning",
                      fix="siamese_core uses 1 = same: relabel with y = 1 - y (all of y, y_test)")]


def check_splits(config: TrainConfig, data: DatasetSplits) -> list[Finding]:
    """Warnings on loaded data: imbalanced pre-built pairs, or a configured positive share far from 0.5."""
    out: list[Finding] = []
    if isinstance(data.train, PairedSplit):
        out += check_pair_labels(data.train.y, data.info.source, what="train split")
        out += check_convention(data)
    elif not config.loss.is_triplet:
        frac = config.pairs.positive_fraction
        if not IMBALANCE_LOW <= frac <= IMBALANCE_HIGH:
            out.append(C.finding(C.PAIR_IMBALANCE, f"pairs.positive_fraction={frac} makes {min(frac, 1 - frac):.0%} of "
                                                   f"the training pairs {'negatives' if frac > 0.5 else 'positives'}",
                                 evidence={"positive_fraction": frac},
                                 fix=f"use pairs.positive_fraction between {IMBALANCE_LOW} and {IMBALANCE_HIGH} "
                                     f"(the range this check flags outside), best near 0.5, the default"))
    return out
