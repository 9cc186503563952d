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
* pre-built pairs are split so that no input (identical row) is in two splits:
  pairs that share a row, directly or through other pairs, form a group, and
  whole groups are assigned (`split_paired`).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from ..config import TrainConfig
from ..errors import ConfigError, DataError
from .pairs import short_of_distinct
from .types import EVAL_POSITIVE_FRACTION, EvalSpec, Inputs, LabeledSplit, PairedSplit, Split, take

log = logging.getLogger(__name__)

# independent random streams, one per decision
_TEST, _VAL, _CLASSES, _SUB_TRAIN, _SUB_VAL, _SUB_TEST = range(6)
MIN_EVAL_CLASSES = 2  # a val/test split needs negative pairs
# pre-built pairs: an evaluation split holding less than this share of the pairs asked for is reported
SHORT_GROUP_SPLIT = 0.5
CARVE_PASSES = 32  # first-fit passes over the groups (each takes at least one group); the quota is then ~full


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


def eval_spec(config: TrainConfig, splits: dict[str, Split]) -> EvalSpec:
    """The validation/test tuples `config` is scored on: its pair counts, the seed of its split and which of
    `splits` are too small to draw their count with replacement, so are drawn without repeats
    (`pairs.short_of_distinct`, `pairs.distinct_pairs`)."""
    counts = {"val": config.pairs.val_pairs, "test": config.pairs.test_pairs}
    distinct = tuple(name for name, n in counts.items() if isinstance(splits[name], LabeledSplit)
                     and short_of_distinct(splits[name].y, n, EVAL_POSITIVE_FRACTION))
    return EvalSpec(counts["val"], counts["test"], seed=SplitParams.from_config(config).seed, distinct=distinct)


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
    for name, (xs, ys, rows) in parts.items():
        rows = _limit(ys[rows], rows, params, name)
        out[name] = LabeledSplit(take(xs, rows), ys[rows])
    return out


def split_paired(x1: Inputs, x2: Inputs, y: np.ndarray, params: SplitParams, *, x1_test: Inputs | None = None,
                 x2_test: Inputs | None = None, y_test: np.ndarray | None = None,
                 source: str = "pairs") -> dict[str, PairedSplit]:
    """Split pre-built pairs, stratified by the 0/1 label, so that no input row lands in two splits.

    Pairs that share an input (identical row, on either side), directly or through other pairs, form a
    group (`pair_groups`), and whole groups go to one split (`carve_groups`), so test images are never
    trained on. When no row is shared every group is one pair and the split is the former stratified split
    by pair. The achieved sizes are recorded in `DataInfo.sizes` / `fractions`; an evaluation split that
    gets less than half of its share is logged, and one left without both labels is refused with the
    overlap a split by pair would have had. ``split: class`` is refused: pairs carry no class ids, so
    there are no classes to hold out. That is a config choice, hence a `ConfigError`.
    """
    if params.mode == "class":
        raise ConfigError("dataset.split", "pre-paired data (dataset 'pairs_npz') has same/different labels but no "
                                           "class ids, so classes cannot be held out; use split: sample")
    groups = pair_groups(x1, x2)
    if x1_test is not None and x2_test is not None and y_test is not None:
        rest, val = carve_groups(groups, y, _count(params.val_fraction, y.shape[0]), rng=params.rng(_VAL))
        parts = {"train": (x1, x2, y, rest), "val": (x1, x2, y, val),
                 "test": (x1_test, x2_test, y_test, np.arange(y_test.shape[0]))}
    else:
        rest, test = carve_groups(groups, y, _count(params.test_fraction, y.shape[0]), rng=params.rng(_TEST))
        rest2, val = carve_groups(None if groups is None else groups[rest], y[rest],
                                  _count(params.val_fraction, y.shape[0]), rng=params.rng(_VAL))
        parts = {"train": (x1, x2, y, rest[rest2]), "val": (x1, x2, y, rest[val]), "test": (x1, x2, y, test)}
    _check_group_split(parts, groups, y, params, source)
    out: dict[str, PairedSplit] = {}
    for name, (a, b, ys, idx) in parts.items():
        idx = _limit(ys[idx], idx, params, name)
        out[name] = PairedSplit(take(a, idx), take(b, idx), ys[idx])
    return out


def _check_group_split(parts: dict[str, tuple[Inputs, Inputs, np.ndarray, np.ndarray]], groups: np.ndarray | None,
                       y: np.ndarray, params: SplitParams, source: str) -> None:
    """Log evaluation splits far below their share; refuse one without both labels, naming the leak avoided."""
    if groups is None:
        return
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    wanted = {"val": params.val_fraction, "test": params.test_fraction}
    for name in ("val", "test"):
        a, _, ys, idx = parts[name]
        if a is not parts["train"][0]:
            continue  # official test arrays: not ours to split
        got = idx.size / y.size
        labels = np.unique(ys[idx])
        if labels.size < 2:
            x1, x2 = parts["train"][0], parts["train"][1]
            overlap = _by_pair_overlap(x1, x2, y, params)
            raise DataError(source, f"cannot split these pairs without putting one input into two splits: pairs "
                                    f"sharing inputs form groups, the largest holds {sizes.max()} of {y.size} pairs "
                                    f"({sizes.max() / y.size:.0%}), and the {name} split could only get {idx.size} "
                                    f"pair(s) ({got:.1%}, labels {labels.tolist()}). A split by pair would put "
                                    f"{overlap:.1%} of the test inputs into training pairs as well. Provide x1_test/"
                                    f"x2_test/y_test built from other inputs, or save class labels and use dataset "
                                    f"'npz' (pairs are then drawn within each split)")
        if got < SHORT_GROUP_SPLIT * wanted[name]:
            log.warning("%s: pairs share inputs (largest group %d of %d pairs); keeping each input in one split gives "
                        "the %s split %.1f%% of the pairs instead of %.0f%%", source, sizes.max(), y.size, name,
                        100 * got, 100 * wanted[name])


def _by_pair_overlap(x1: Inputs, x2: Inputs, y: np.ndarray, params: SplitParams) -> float:
    """Share of the test split's distinct inputs that a split by pair would also put into training pairs."""
    rest, test = carve(y, _count(params.test_fraction, y.shape[0]), rng=params.rng(_TEST))
    return shared_rows({"train": PairedSplit(take(x1, rest), take(x2, rest), y[rest]),
                        "test": PairedSplit(take(x1, test), take(x2, test), y[test])}).get("test", 0.0)


def _row_ids(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """One integer per row of each array, equal exactly when two rows are identical (bytes); arrays whose rows
    differ in shape or dtype get disjoint ids."""
    out: list[np.ndarray] = [np.empty(0, np.int64)] * len(arrays)
    offset = 0
    kinds: dict[tuple[Any, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        kinds.setdefault((a.dtype.str, a.shape[1:]), []).append(i)
    for members in kinds.values():
        keys = []
        for i in members:
            flat = np.ascontiguousarray(arrays[i]).reshape(len(arrays[i]), -1)
            keys.append(flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).reshape(-1))
        uniq, inverse = np.unique(np.concatenate(keys), return_inverse=True)
        bounds = np.cumsum([0] + [len(k) for k in keys])
        for j, i in enumerate(members):
            out[i] = inverse[bounds[j]:bounds[j + 1]].astype(np.int64) + offset
        offset += len(uniq)
    return out


def _components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """The connected component of each of `n` nodes under edges ``a[k] - b[k]`` (its smallest node id).

    Vectorised hooking and pointer jumping: every label is a node of the same component with a smaller or
    equal id; roots hook onto the smaller root across each edge until every edge joins equal labels.
    """
    label = np.arange(n)
    while True:
        la, lb = label[a], label[b]
        if np.array_equal(la, lb):
            return label
        low = np.minimum(la, lb)
        np.minimum.at(label, la, low)
        np.minimum.at(label, lb, low)
        while True:
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped


def pair_groups(x1: Inputs, x2: Inputs) -> np.ndarray | None:
    """A group id per pair: pairs sharing an input row (either side, identical bytes), directly or through
    other pairs, get the same id. None when every pair is its own group (or the inputs are lazy files)."""
    if not (isinstance(x1, np.ndarray) and isinstance(x2, np.ndarray)):
        return None
    left, right = _row_ids([x1, x2])
    labels = _components(left, right, int(max(left.max(initial=-1), right.max(initial=-1))) + 1)
    groups = labels[left]
    return None if np.unique(groups).size == groups.size else groups


def carve_groups(groups: np.ndarray | None, y: np.ndarray, n: int, *,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`carve` for grouped pairs: (rest, taken) pair indices, whole groups taken, about `n` pairs.

    Groups are visited in random order and taken while they fit the remaining quota of positive and of
    negative pairs (label shares as in `y`), in a few vectorised passes; a group larger than what is left
    stays in `rest`. Without groups (None) this is `carve`.
    """
    if groups is None:
        return carve(y, n, rng=rng)
    ids, inverse = np.unique(groups, return_inverse=True)
    pos = np.bincount(inverse, weights=(y == 1).astype(np.float64), minlength=ids.size).astype(np.int64)
    neg = np.bincount(inverse, minlength=ids.size) - pos
    n = int(min(max(n, 0), y.size))
    quota_pos = int(round(n * pos.sum() / max(y.size, 1)))
    left = np.array([quota_pos, n - quota_pos])
    order = rng.permutation(ids.size)
    taken = np.zeros(ids.size, dtype=bool)
    for _ in range(CARVE_PASSES):  # each pass takes the longest fitting prefix of the groups that fit at all
        cand = order[~taken[order] & (pos[order] <= left[0]) & (neg[order] <= left[1])]
        if cand.size == 0:
            break
        fits = (np.cumsum(pos[cand]) <= left[0]) & (np.cumsum(neg[cand]) <= left[1])
        k = fits.size if fits.all() else int(np.argmin(fits))  # >= 1: the first candidate fits on its own
        taken[cand[:k]] = True
        left -= np.array([pos[cand[:k]].sum(), neg[cand[:k]].sum()])
    mask = taken[inverse]
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def shared_rows(splits: dict[str, PairedSplit]) -> dict[str, float]:
    """For each split but train: the share of its distinct input rows that also occur in the training pairs."""
    if "train" not in splits or not all(isinstance(x, np.ndarray) for s in splits.values() for x in (s.x1, s.x2)):
        return {}
    names = list(splits)
    # all dense (checked above); the isinstance only tells the type checker
    ids = _row_ids([x for name in names for x in (splits[name].x1, splits[name].x2) if isinstance(x, np.ndarray)])
    per_split = {name: np.unique(np.concatenate(ids[2 * i:2 * i + 2])) for i, name in enumerate(names)}
    train = per_split["train"]
    return {name: round(float(np.isin(rows, train).mean()), 4) if rows.size else 0.0
            for name, rows in per_split.items() if name != "train"}


def _count(fraction: float, total: int) -> int:
    return int(round(fraction * total))


def _limit(y: np.ndarray, idx: np.ndarray, params: SplitParams, name: str) -> np.ndarray:
    """Stratified, deterministic subsample of `idx` down to max_train/max_eval_samples."""
    cap = params.max_train_samples if name == "train" else params.max_eval_samples
    if cap is None or idx.shape[0] <= cap:
        return idx
    stream = {"train": _SUB_TRAIN, "val": _SUB_VAL, "test": _SUB_TEST}[name]
    return idx[stratified_choice(y, cap, rng=params.rng(stream))]
