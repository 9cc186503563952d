"""The shapes data takes between loading and the pair sampler.

Two kinds of split exist. A `LabeledSplit` has one class label per sample, so
the sampler can build fresh pairs/triplets each epoch. A `PairedSplit` holds
pairs the user built already (``x1``, ``x2``, ``y`` with 1 = same); those can
only be shuffled. Image folders keep file paths (`ImageFiles`) and decode on
demand, so a folder can be larger than memory.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

InputKind = Literal["images", "tokens", "vectors"]


@runtime_checkable
class LazyInputs(Protocol):
    """Inputs that are decoded on demand (e.g. image files).

    `load(indices)` returns a dense array; `tf_source()` / `tf_decode` let a
    tf.data pipeline decode in parallel. Both paths must produce identical
    arrays, so that every loader sees the same inputs.
    """

    shape: tuple[int, ...]          # per-sample shape after decoding
    dtype: np.dtype

    def __len__(self) -> int: ...

    def load(self, indices: np.ndarray | None = None) -> np.ndarray: ...

    def tf_source(self) -> Any: ...           # a 1-D string tensor of paths

    def tf_decode(self, item: Any) -> Any: ...  # path tensor -> decoded sample tensor

    def subset(self, indices: np.ndarray) -> LazyInputs: ...

    def content_key(self) -> list[tuple[str, int]]: ...  # identifies the content without decoding (fingerprints)


Inputs = np.ndarray | LazyInputs


def input_shape(x: Inputs) -> tuple[int, ...]:
    return tuple(x.shape[1:]) if isinstance(x, np.ndarray) else tuple(x.shape)


def take(x: Inputs, indices: np.ndarray) -> Inputs:
    """Rows of an array, or a lazy subset of lazy inputs (nothing decoded)."""
    return x[indices] if isinstance(x, np.ndarray) else x.subset(indices)


def materialize(x: Inputs, indices: np.ndarray | None = None) -> np.ndarray:
    """Dense array of the given rows (decodes lazy inputs)."""
    if isinstance(x, np.ndarray):
        return x if indices is None else x[indices]
    return x.load(indices)


@dataclass(frozen=True)
class LabeledSplit:
    """Samples with integer class labels; pairs are sampled from them."""

    x: Inputs
    y: np.ndarray  # int64, shape [N]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.y)


@dataclass(frozen=True)
class PairedSplit:
    """Pairs built by the user: ``(x1[k], x2[k])`` labelled ``y[k]`` (1 = same, 0 = different).

    The two sides may have different shapes (two-tower models).
    """

    x1: Inputs
    x2: Inputs
    y: np.ndarray  # float32 0/1, shape [N]

    def __len__(self) -> int:
        return int(self.y.shape[0])


Split = LabeledSplit | PairedSplit

# Evaluation tuples are balanced whatever pairs.positive_fraction says: accuracy at a threshold rewards the
# majority label, so with pairs drawn at the training fraction one fixed embedding's pair accuracy followed
# positive_fraction (its AUC did not), and a sweep over that parameter rewarded imbalance.
EVAL_POSITIVE_FRACTION = 0.5
RETRIEVAL_SAMPLES = 2000  # samples of a split ranked for precision_at_1 / recall_at_5
EVAL_SCHEME = 1           # bump whenever the way evaluation tuples are drawn changes (it is fingerprinted)


@dataclass(frozen=True)
class EvalSpec:
    """Everything besides the split itself that decides the fixed validation and test tuples.

    Evaluation tuples are a function of the data split and of these fields only — never of a training
    setting (``pairs.positive_fraction``, ``pairs_per_epoch``, the loss, the batch size, ...): balanced pairs,
    drawn from their own random streams, seeded by the split's seed (`SplitParams.seed`, i.e. the config's
    ``seed``: a different seed is a different split as well as different pairs). `fingerprint` names them.
    """

    val_pairs: int
    test_pairs: int
    seed: int
    positive_fraction: float = EVAL_POSITIVE_FRACTION
    retrieval_samples: int = RETRIEVAL_SAMPLES
    scheme: int = EVAL_SCHEME
    # the splits drawn without repeats, too small to draw their count with replacement
    # (`data.pairs.short_of_distinct`, `distinct_pairs`); left out of the fingerprint when empty, so the splits
    # drawn as before keep their fingerprints
    distinct: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.distinct:
            d["distinct"] = list(self.distinct)
        else:
            del d["distinct"]
        return d

    def fingerprint(self, data_fingerprint: str) -> str:
        """sha256 of the data fingerprint (content and split) and this spec: equal <=> the same eval tuples."""
        return hashlib.sha256(json.dumps({"data": data_fingerprint, **self.to_dict()}, sort_keys=True).encode()
                              ).hexdigest()


@dataclass(frozen=True)
class DataInfo:
    """What the model builder and the tracker need to know about a dataset."""

    name: str
    source: str                                  # file/folder path or a description
    kind: InputKind
    input_shapes: tuple[tuple[int, ...], ...]    # one shape (shared tower) or two (two-tower)
    dtype: str
    value_range: tuple[float, float]             # declared/observed (min, max) of raw inputs
    num_classes: int | None                      # None for pre-paired data
    paired: bool
    split: Literal["sample", "class"]
    fingerprint: str                             # sha256 of content + split parameters
    sizes: dict[str, int] = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None   # by class index (labels are 0..C-1 after loading)
    class_ids: tuple[int, ...] | None = None     # the source's own id of each class index (None: pre-paired)
    vocab_size: int | None = None                # tokens: max id + 1
    mean: float | None = None                    # training-split statistics (for standardize)
    std: float | None = None
    classes_per_split: dict[str, int] = field(default_factory=dict)  # labelled data: classes in each split
    shared_rows: dict[str, float] = field(default_factory=dict)  # pre-paired: share of val/test inputs in train
    evaluation: EvalSpec | None = None           # what decides the val/test tuples (set for a run's config)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.input_shapes[0]

    @property
    def eval_fingerprint(self) -> str | None:
        """Names the data split *and* its validation/test tuples: models with equal eval fingerprints were scored
        on the same pairs, so their recorded val_*/test metrics compare (None until `evaluation` is set)."""
        return None if self.evaluation is None else self.evaluation.fingerprint(self.fingerprint)

    @property
    def fractions(self) -> dict[str, float]:
        """The achieved share of all samples (pairs, for pre-paired data) in each split."""
        total = sum(self.sizes.values())
        return {k: round(n / total, 4) for k, n in self.sizes.items()} if total else {}

    @property
    def two_tower(self) -> bool:
        return len(self.input_shapes) == 2 and self.input_shapes[0] != self.input_shapes[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "kind": self.kind,
            "input_shapes": [list(s) for s in self.input_shapes], "dtype": self.dtype,
            "value_range": list(self.value_range), "num_classes": self.num_classes,
            "paired": self.paired, "split": self.split, "fingerprint": self.fingerprint,
            "sizes": dict(self.sizes), "fractions": self.fractions, "classes_per_split": dict(self.classes_per_split),
            "shared_rows": dict(self.shared_rows),
            "vocab_size": self.vocab_size,
            "class_ids": None if self.class_ids is None else list(self.class_ids),
            "class_names": None if self.class_names is None else list(self.class_names),
            "evaluation": None if self.evaluation is None else self.evaluation.to_dict(),
            "eval_fingerprint": self.eval_fingerprint,
        }


@dataclass(frozen=True)
class DatasetSplits:
    """The three splits of one dataset and its description."""

    train: Split
    val: Split
    test: Split
    info: DataInfo

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}


# ------------------------------------------------------------------ what a dataset source returns
@dataclass
class RawLabeled:
    """Class-labelled samples as a source read them (validated, not yet split).

    `x_test`/`y_test` are an official test split, if the source has one; `value_range` is declared by the
    source (None: observe it on the training split).
    """

    source: str
    kind: InputKind
    x: Inputs
    y: np.ndarray
    x_test: Inputs | None = None
    y_test: np.ndarray | None = None
    value_range: tuple[float, float] | None = None
    class_names: tuple[str, ...] | None = None
    class_ids: tuple[int, ...] = ()   # the source's own class ids, set when labels are made dense (0..C-1)


@dataclass
class RawPaired:
    """Pre-built pairs as a source read them (1 = same); the two sides may differ in shape."""

    source: str
    kind: InputKind
    x1: np.ndarray
    x2: np.ndarray
    y: np.ndarray
    x1_test: np.ndarray | None = None
    x2_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
