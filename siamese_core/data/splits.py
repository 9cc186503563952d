"""Deterministic train/val/test splits, stratified by class (or by pair label).

Each random choice draws from its own stream, ``default_rng([seed, stream])``,
so changing e.g. ``max_train_samples`` never reshuffles the test split.
Selected indices are returned sorted: the sampler shuffles later, and sorted
file indices keep lazy image reads roughly sequential.

* ``split="sample"``: an official test split is used as test and
  ``val_fraction`` *of train* becomes val; without one, ``test_fraction`` and
  ``val_fraction`` *of all samples* become test and val.
* ``split="class"`` (open-set verification): the *classes* are partitioned, so
  test classes are never seen in training. Official train+test are pooled first.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from ..config import TrainConfig
from ..errors import ConfigError, DataError
from .types import EvalSpec, Inputs, LabeledSplit, PairedSplit, take

# independent random streams, one per decision
_TEST, _VAL, _CLASSES, _SUB_TRAIN, _SUB_VAL, _SUB_TEST = range(6)
MIN_EVAL_CLASSES = 2  # a val/test split needs negative pairs


@dataclass(frozen=True)
class SplitParams:
    """Everything that decides which sample lands in which split (also hashed into the fingerprint)."""

    mode: Literal["sample", "class"]
    val_fraction: float
    test_fraction: float
    max_train_samples: int | None
    max_eval_samples: int | None
    seed: int

    @classmethod
    def from_config(cls, config: TrainConfig) -> SplitParams:
        d = config.dataset
        return cls(d.split, d.val_fraction, d.test_fraction, d.max_train_samples, d.max_eval_samples, config.seed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])


def eval_spec(config: TrainConfig) -> EvalSpec:
    """The validation/test tuples `config` is scored on: its pair counts and the seed of its split."""
    return EvalSpec(config.pairs.val_pairs, config.pairs.test_pairs, seed=SplitParams.from_config(config).seed)


def stratified_choice(y: np.ndarray, n: int, *, rng: np.random.Generator) -> np.ndarray:
    """`n` sorted indices whose class proportions match `y` (largest-remainder quotas).

    Vectorised: a random permutation grouped stably by class gives a random
    order inside each class; the first ``quota[c]`` of class ``c`` are taken.
    """
    total = y.shape[0]
    n = int(min(max(n, 0), total))
    if n == total:
        return np.arange(total)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    exact = counts * (n / total)
    quota = np.floor(exact).astype(np.int64)
    short = n - int(quota.sum())
    if short:
        # ties broken at random, so no class is systematically favoured
        order = np.lexsort((rng.random(classes.size), -(exact - quota)))
        quota[order[:short]] += 1
    perm = rng.permutation(total)
    grouped = perm[np.argsort(inverse[perm], kind="stable")]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(total) - np.repeat(starts, counts)
    chosen = grouped[rank < np.repeat(quota, counts)]
    return np.sort(chosen)


def carve(y: np.ndarray, n: int, *, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of `y` into (rest, taken) with `n` stratified samples taken."""
    taken = stratified_choice(y, n, rng=rng)
    mask = np.ones(y.shape[0], dtype=bool)
    mask[taken] = False
    return np.flatnonzero(mask), taken


def partition_classes(classes: np.ndarray, params: SplitParams, *, source: str
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint (train, val, test) class sets; val and test get at least 2 classes each."""
    c = classes.size
    n_test = max(MIN_EVAL_CLASSES, int(round(params.test_fraction * c)))
    n_val = max(MIN_EVAL_CLASSES, int(round(params.val_fraction * c)))
    if c - n_test - n_val < 2:
        raise DataError(source, f"split: class needs at least 2 classes each for train, val and test "
                                f"({n_val} val + {n_test} test + 2 train = {n_val + n_test + 2}); the data has {c} "
                                f"classes. Use split: sample, or lower val_fraction/test_fraction.")
    perm = params.rng(_CLASSES).permutation(classes)
    return np.sort(perm[n_test + n_val:]), np.sort(perm[n_test:n_test + n_val]), np.sort(perm[:n_test])


def _concat(a: Inputs, b: Inputs) -> Inputs:
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        raise TypeError("pooling official train and test needs in-memory arrays")
    return np.concatenate([a, b])


def split_labeled(x: Inputs, y: np.ndarray, params: SplitParams, *, x_test: Inputs | None = None,
                  y_test: np.ndarray | None = None, source: str) -> dict[str, LabeledSplit]:
    """Train/val/test `LabeledSplit`s per `params` (see module docstring), then subsampled."""
    if params.mode == "class":
        if x_test is not None and y_test is not None:
            x, y = _concat(x, x_test), np.concatenate([y, y_test])
        tr_c, va_c, te_c = partition_classes(np.unique(y), params, source=source)
        idx = {"train": np.flatnonzero(np.isin(y, tr_c)), "val": np.flatnonzero(np.isin(y, va_c)),
               "test": np.flatnonzero(np.isin(y, te_c))}
        parts = {k: (x, y, v) for k, v in idx.items()}
    elif x_test is not None and y_test is not None:
        rest, val = carve(y, _count(params.val_fraction, y.shape[0]), rng=params.rng(_VAL))
        parts = {"train": (x, y, rest), "val": (x, y, val), "test": (x_test, y_test, np.arange(y_test.shape[0]))}
    else:
        rest, test = carve(y, _count(params.test_fraction, y.shape[0]), rng=params.rng(_TEST))
        # val_fraction is a fraction of all samples, so the two fractions mean the same thing
        rest2, val = carve(y[rest], _count(params.val_fraction, y.shape[0]), rng=params.rng(_VAL))
        parts = {"train": (x, y, rest[rest2]), "val": (x, y, rest[val]), "test": (x, y, test)}
    out: dict[str, LabeledSplit] = {}
    for name, (xs, ys, idx) in parts.items():
        idx = _limit(ys[idx], idx, params, name)
        out[name] = LabeledSplit(take(xs, idx), ys[idx])
    return out


def split_paired(x1: Inputs, x2: Inputs, y: np.ndarray, params: SplitParams, *, x1_test: Inputs | None = None,
                 x2_test: Inputs | None = None, y_test: np.ndarray | None = None) -> dict[str, PairedSplit]:
    """Split pre-built pairs by pair, stratified by the 0/1 label.

    ``split: class`` is refused: pairs carry no class ids, so there are no
    classes to hold out. That is a config choice, hence a `ConfigError`.
    """
    if params.mode == "class":
        raise ConfigError("dataset.split", "pre-paired data (dataset 'pairs_npz') has same/different labels but no "
                                           "class ids, so classes cannot be held out; use split: sample")
    if x1_test is not None and x2_test is not None and y_test is not None:
        rest, val = carve(y, _count(params.val_fraction, y.shape[0]), rng=params.rng(_VAL))
        parts = {"train": (x1, x2, y, rest), "val": (x1, x2, y, val),
                 "test": (x1_test, x2_test, y_test, np.arange(y_test.shape[0]))}
    else:
        rest, test = carve(y, _count(params.test_fraction, y.shape[0]), rng=params.rng(_TEST))
        rest2, val = carve(y[rest], _count(params.val_fraction, y.shape[0]), rng=params.rng(_VAL))
        parts = {"train": (x1, x2, y, rest[rest2]), "val": (x1, x2, y, rest[val]), "test": (x1, x2, y, test)}
    out: dict[str, PairedSplit] = {}
    for name, (a, b, ys, idx) in parts.items():
        idx = _limit(ys[idx], idx, params, name)
        out[name] = PairedSplit(take(a, idx), take(b, idx), ys[idx])
    return out


def _count(fraction: float, total: int) -> int:
    return int(round(fraction * total))


def _limit(y: np.ndarray, idx: np.ndarray, params: SplitParams, name: str) -> np.ndarray:
    """Stratified, deterministic subsample of `idx` down to max_train/max_eval_samples."""
    cap = params.max_train_samples if name == "train" else params.max_eval_samples
    if cap is None or idx.shape[0] <= cap:
        return idx
    stream = {"train": _SUB_TRAIN, "val": _SUB_VAL, "test": _SUB_TEST}[name]
    return idx[stratified_choice(y, cap, rng=params.rng(stream))]
