"""Checks that turn unusable data into a `DataError` before any training starts.

Every check names the file (``source``), the array and the problem, and says
how to fix it, so a sweep fails in milliseconds instead of after a model build.
Scans over large arrays run in row chunks so that a uint8 image set is never
converted to float64 in one piece.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ..diagnostics.codes import PAIR_IMBALANCE, POSITIVES_ONLY, SINGLE_CLASS
from ..errors import DataError
from .types import LabeledSplit, PairedSplit, Split

_CHUNK_ELEMENTS = 1 << 22  # ~4M values per chunk keeps temporaries small
_BAD_KINDS = {"O": "object", "U": "string", "S": "bytes", "c": "complex", "V": "structured/void",
              "M": "datetime", "m": "timedelta", "b": "bool"}
COLLAPSE = ("a contrastive objective collapses to a constant map without negative pairs; "
            "provide data with at least 2 classes")


class Moments(NamedTuple):
    """Min/max/mean/std of an array, computed in float64 accumulators."""

    min: float
    max: float
    mean: float
    std: float


def _chunks(x: np.ndarray) -> Iterator[np.ndarray]:
    """Row chunks of `x`, each flattened, of at most ~4M elements."""
    if x.shape[0] == 0:
        return
    per_row = max(1, int(np.prod(x.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_ELEMENTS // per_row)
    for start in range(0, x.shape[0], step):
        yield x[start:start + step].reshape(-1)


def check_input_dtype(x: np.ndarray, source: str, *, key: str) -> None:
    """Reject arrays a model cannot consume (object, string, complex, bool...)."""
    kind = x.dtype.kind
    if kind in _BAD_KINDS:
        raise DataError(source, f"array '{key}' has dtype {x.dtype} ({_BAD_KINDS[kind]}); expected uint8 images, "
                                f"integer token ids or float features. Convert it with x.astype('float32') or "
                                f"x.astype('uint8') before saving.")


def check_rank(x: np.ndarray, source: str, *, key: str, min_rank: int = 2, max_rank: int = 4) -> None:
    """Inputs are [N, ...features]; a 1-D array is one value per sample, which no encoder takes."""
    if not min_rank <= x.ndim <= max_rank:
        raise DataError(source, f"array '{key}' has shape {x.shape} (rank {x.ndim}); expected rank {min_rank}-"
                                f"{max_rank}: [N, features], [N, H, W] or [N, H, W, C]")
    if x.ndim >= 2 and 0 in x.shape[1:]:
        raise DataError(source, f"array '{key}' has shape {x.shape}: a sample with no features (a zero-width "
                                f"dimension); expected every feature dimension >= 1")


# Token ids index an embedding table of max id + 1 rows: 10 million rows x 32 dims is already 1.3 GB of float32;
# larger ids are almost always hashes or raw codes that need a vocabulary mapping first.
MAX_TOKEN_ID = 10_000_000


def check_token_ids(x: np.ndarray, source: str, *, key: str) -> None:
    """Token ids in [0, MAX_TOKEN_ID): the sequence encoder's embedding table is sized by the largest id."""
    if not x.size:
        return
    lo, hi = int(x.min()), int(x.max())
    if lo < 0:
        raise DataError(source, f"token array '{key}' has negative ids (min {lo}); token ids must be >= 0")
    if hi >= MAX_TOKEN_ID:
        raise DataError(source, f"token array '{key}' has ids up to {hi}; expected ids below {MAX_TOKEN_ID:,} "
                                f"(the embedding table has max id + 1 rows): map tokens to a dense vocabulary first")


def check_finite(x: np.ndarray, source: str, *, key: str) -> None:
    """NaN/inf inputs poison every gradient; find them before training does."""
    if x.dtype.kind != "f":
        return
    bad, first, offset = 0, None, 0
    per_row = max(1, int(np.prod(x.shape[1:], dtype=np.int64)))
    for chunk in _chunks(x):
        mask = ~np.isfinite(chunk)
        n = int(np.count_nonzero(mask))
        if n and first is None:
            first = (offset + int(np.argmax(mask))) // per_row
        bad += n
        offset += chunk.size
    if bad:
        raise DataError(source, f"array '{key}' contains {bad} NaN or infinite value(s) (first in sample {first}); "
                                f"remove or impute them (values beyond the float32 range count as infinite)")


def check_same_length(source: str, **arrays: np.ndarray | None) -> None:
    """All arrays describe the same samples, so they must share their first dimension."""
    lengths = {k: int(v.shape[0]) for k, v in arrays.items() if v is not None}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"len({k})={n}" for k, n in lengths.items())
        raise DataError(source, f"arrays disagree on the number of samples: {shown}; each input needs exactly one "
                                f"label")


def as_class_labels(y: np.ndarray, source: str, *, key: str) -> np.ndarray:
    """Class labels as int64 [N]; floats are accepted only when integral (e.g. 3.0)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        hint = " (one-hot? use y.argmax(axis=1))" if y.ndim == 2 else ""
        raise DataError(source, f"label array '{key}' has shape {y.shape}; expected one integer class id per "
                                f"sample, shape [N]{hint}")
    kind = y.dtype.kind
    if kind in "iub":
        return y.astype(np.int64, copy=False)
    if kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(source, f"label array '{key}' holds non-integer values (e.g. "
                                    f"{y[~(y == np.round(y))][:3].tolist()}); labels must be integer class ids")
        return y.astype(np.int64)
    raise DataError(source, f"label array '{key}' has dtype {y.dtype}; labels must be integer class ids "
                            f"(map names to ids, e.g. with np.unique(y, return_inverse=True))")


def as_pair_labels(y: np.ndarray, source: str, *, key: str, required: bool = True) -> np.ndarray:
    """Pair labels as float32 0/1 (1 = same). Needs both values to learn or measure anything."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1 or y.dtype.kind not in "iubf":
        raise DataError(source, f"pair label array '{key}' has shape {y.shape} and dtype {y.dtype}; expected [N] "
                                f"of 0/1 (1 = same, 0 = different)")
    values = np.unique(y)
    if not np.all(np.isin(values, (0, 1))):
        raise DataError(source, f"pair label array '{key}' must hold only 0 and 1 (1 = same, 0 = different); "
                                f"found values {values[:5].tolist()}")
    if required:
        check_pair_balance(y, source, what=f"'{key}'")
    return y.astype(np.float32)


def check_pair_balance(y: np.ndarray, source: str, *, what: str) -> None:
    """Pre-paired data needs both same (1) and different (0) pairs."""
    n_pos = int(np.count_nonzero(y == 1))
    if n_pos == len(y):
        raise DataError(source, f"positives_only: pairs {what} are all labelled 1 (same), so there are no negative "
                                f"pairs; {COLLAPSE.split(';')[0]}. Add pairs labelled 0 (different).",
                        code=POSITIVES_ONLY)
    if n_pos == 0:
        raise DataError(source, f"negatives_only: pairs {what} are all labelled 0 (different), so there are no "
                                f"positive pairs to learn similarity from. Add pairs labelled 1 (same).",
                        code=PAIR_IMBALANCE, fix="add pairs labelled 1 (same)")


def check_classes(y: np.ndarray, source: str) -> None:
    """The whole dataset needs two classes, or no negative pair exists anywhere."""
    if y.size == 0:
        raise DataError(source, "no samples: the label array is empty")
    classes = np.unique(y)
    if classes.size < 2:
        raise DataError(source, f"only one class ({classes.tolist()}) in the labels: {COLLAPSE}", code=SINGLE_CLASS)


def check_split(split: Split, source: str, *, name: str, hint: str) -> None:
    """A split must be non-empty and able to form both positive and negative pairs."""
    if len(split) == 0:
        raise DataError(source, f"the {name} split is empty; {hint}")
    if isinstance(split, PairedSplit):
        check_pair_balance(split.y, source, what=f"in the {name} split")
        return
    assert isinstance(split, LabeledSplit)
    classes, counts = np.unique(split.y, return_counts=True)
    if classes.size < 2:
        raise DataError(source, f"the {name} split has only {classes.size} class(es) {classes.tolist()}, so no "
                                f"negative pairs are possible; {hint}", code=SINGLE_CLASS, fix=hint)
    if not np.any(counts >= 2):
        raise DataError(source, f"no class in the {name} split has 2 or more samples, so no positive pairs are "
                                f"possible; {hint}", code=PAIR_IMBALANCE, fix=hint)


def moments(arrays: list[np.ndarray]) -> Moments:
    """Statistics over several arrays, chunked; never copies a whole array to float64."""
    n, total, lo, hi = 0, 0.0, np.inf, -np.inf
    for x in arrays:
        for chunk in _chunks(x):
            total += float(np.add.reduce(chunk, dtype=np.float64))
            lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
            n += chunk.size
    if n == 0:
        return Moments(0.0, 0.0, 0.0, 0.0)
    mean = total / n
    sq = 0.0
    for x in arrays:
        for chunk in _chunks(x):
            d = chunk.astype(np.float64) - mean
            sq += float(np.dot(d, d))
    return Moments(lo, hi, mean, float(np.sqrt(sq / n)))
