"""`load_dataset(config)`: read a dataset, validate it, split it, describe it.

Each source registered in `siamese_core.registry.DATASETS` (``fashion_mnist``, ``mnist``, ``digits``,
``npz``, ``pairs_npz`` here; ``image_folder`` in `image_folder.py`) reads a `RawLabeled` or `RawPaired`
record of raw arrays; the common path then validates, splits (`splits.py`) and fills `DataInfo`.
Everything that can be wrong with the data raises `DataError` here, before a
model is built. uint8 sources stay uint8; float64 becomes float32 (what the
models compute in), never the other way round.

This module imports no TensorFlow, so a sweep's preflight fails on bad data in milliseconds. The
third-party loaders that are slow to import are named (``module:attr``) and resolved by
`registry.import_object` only when that dataset is read: Keras' downloads (TensorFlow, 5-14 s) and
scikit-learn's bundled digits (``sklearn.datasets``, ~3.7 s).
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..config import DatasetConfig, TrainConfig, as_config
from ..errors import DataError, first_line
from ..registry import DATASETS, import_object
from . import cache
from . import validation as v
from .idx import read_idx
from .splits import SplitParams, eval_spec, shared_rows, split_labeled, split_paired
from .types import (
    DataInfo,
    DatasetSplits,
    InputKind,
    Inputs,
    LabeledSplit,
    LazyInputs,
    PairedSplit,
    RawLabeled,
    RawPaired,
    Split,
    input_shape,
)

FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist", "~/.keras/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
MNIST_FILE = "~/.keras/datasets/mnist.npz"
STATS_SAMPLE = 256  # images decoded to estimate mean/std of a lazy folder
KERAS_FASHION_MNIST = "keras.datasets.fashion_mnist:load_data"
KERAS_MNIST = "keras.datasets.mnist:load_data"
SKLEARN_DIGITS = "sklearn.datasets:load_digits"

log = logging.getLogger(__name__)


def load_dataset(config: TrainConfig | Mapping[str, Any] | str | Path | None) -> DatasetSplits:
    """Load ``config.dataset``, split it deterministically from ``config.seed`` and describe it; from the
    machine's data cache when an entry for this config and these source files is there (`cache`). `config` is
    whatever `train` takes (a mapping such as ``{"dataset": "digits"}`` was an AttributeError)."""
    config = as_config(config)
    ds = config.dataset
    params = SplitParams.from_config(config)
    identity = source_identity(ds)
    key = None if identity is None else cache.entry_key(ds.model_dump(mode="json"), params.as_dict(), identity)
    data = None if key is None else cache.read(
        key, verify=lambda splits, info: fingerprint(splits, params, class_ids=info.class_ids))
    if data is None:
        data = _load(ds, params)
        if key is not None:
            cache.write(key, data)
    return replace(data, info=replace(data.info, evaluation=eval_spec(config, data.splits())))


def _load(ds: DatasetConfig, params: SplitParams) -> DatasetSplits:
    raw = DATASETS.get(ds.name)(ds)
    if isinstance(raw, RawPaired):
        splits: dict[str, Split] = dict(split_paired(raw.x1, raw.x2, raw.y, params, x1_test=raw.x1_test,
                                                     x2_test=raw.x2_test, y_test=raw.y_test, source=raw.source))
    else:
        v.check_classes(raw.y if raw.y_test is None else np.concatenate([raw.y, raw.y_test]), raw.source)
        raw = dense_labels(raw)
        splits = dict(split_labeled(raw.x, raw.y, params, x_test=raw.x_test, y_test=raw.y_test, source=raw.source))
    _check_splits(splits, raw, params)
    return DatasetSplits(**splits, info=_describe(ds.name, raw, splits, params))


def source_identity(ds: DatasetConfig) -> list[dict[str, Any]] | None:
    """What the built-in source of `ds` reads (files by path, size and time; bundled data by package version),
    or None when its data is not cached: user-registered sources, lazy image folders, Keras downloads."""
    loader = DATASETS.get(ds.name)
    try:
        if loader is load_fashion_mnist:
            folder = fashion_folder(ds)
            return None if folder is None else [cache.file_identity(folder / f) for f in FASHION_FILES]
        if loader is load_digits:
            return [{"package": "scikit-learn", "version": md.version("scikit-learn")}]
        if loader in (load_mnist, load_npz, load_pairs_npz):
            path = Path(ds.path or MNIST_FILE).expanduser()
            if loader is load_mnist and path.is_dir():
                path = path / "mnist.npz"
            return [cache.file_identity(path)] if path.is_file() else None
    except (OSError, md.PackageNotFoundError):
        return None  # the source itself will say what is wrong
    return None


def dense_labels(raw: RawLabeled) -> RawLabeled:
    """`raw` with its class ids mapped to 0..C-1 in sorted id order, once, before splitting.

    Everything downstream (splits, samplers, float32 triplet targets for batch-hard mining) sees small dense
    ids; the source's own ids are kept in `RawLabeled.class_ids` (and `DataInfo.class_ids`) for display, and
    its class names are re-indexed to the new ids.
    """
    labels = raw.y if raw.y_test is None else np.concatenate([raw.y, raw.y_test])
    ids = np.unique(labels)
    names = raw.class_names
    if names is not None:
        names = tuple(names[i] for i in ids) if ids[0] >= 0 and ids[-1] < len(names) else None
    return replace(raw, y=np.searchsorted(ids, raw.y), class_names=names, class_ids=tuple(int(i) for i in ids),
                   y_test=None if raw.y_test is None else np.searchsorted(ids, raw.y_test))


# ----------------------------------------------------------------------- sources
def load_fashion_mnist(ds: DatasetConfig) -> RawLabeled:
    """IDX files from ``dataset.path``, the Debian package, the Keras cache; else a Keras download."""
    folder = fashion_folder(ds)
    if folder is not None:
        missing = [f for f in FASHION_FILES if not (folder / f).is_file()]
        if missing:
            raise DataError(str(folder), f"Fashion-MNIST files missing: {', '.join(missing)}; expected all of "
                                         f"{', '.join(FASHION_FILES)} (apt-get install dataset-fashion-mnist)")
        x, y, xt, yt = (read_idx(folder / f) for f in FASHION_FILES)
        return _idx_dataset(str(folder), x, y, xt, yt)
    try:  # only without dataset.path: a given path is always the folder above
        (x, y), (xt, yt) = _keras_fashion_mnist()
    except Exception as exc:  # noqa: BLE001 - any download failure means "not available here"
        raise DataError("fashion_mnist", f"dataset not found in {', '.join(FASHION_DIRS)} and the Keras download "
                                         f"failed ({type(exc).__name__}: {exc}); install it with `apt-get install "
                                         f"dataset-fashion-mnist` or set dataset.path to a folder holding "
                                         f"{', '.join(FASHION_FILES)}") from None
    return _idx_dataset("keras.datasets.fashion_mnist", x, y, xt, yt)


def fashion_folder(ds: DatasetConfig) -> Path | None:
    """The folder Fashion-MNIST is read from: ``dataset.path``, else the first of `FASHION_DIRS` holding any of
    its files; None when there is none (then Keras downloads it)."""
    if ds.path:
        return Path(ds.path).expanduser()
    for place in FASHION_DIRS:
        folder = Path(place).expanduser()
        if any((folder / f).is_file() for f in FASHION_FILES):
            return folder
    return None


def _keras_fashion_mnist() -> Any:
    """Separate so tests can replace it: the real call downloads."""
    return import_object(KERAS_FASHION_MNIST, field="dataset.name")()


def _idx_dataset(source: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> RawLabeled:
    for key, images, labels in (("train", x, y), ("t10k", xt, yt)):
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(source, f"{key} images have shape {images.shape} and dtype {images.dtype}; expected "
                                    f"uint8 [N, 28, 28]")
        v.check_same_length(source, **{f"{key} images": images, f"{key} labels": labels})
    return RawLabeled(source, "images", x[..., None], v.as_class_labels(y, source, key="train labels"), xt[..., None],
                    v.as_class_labels(yt, source, key="t10k labels"), (0.0, 255.0), FASHION_CLASSES)


def load_mnist(ds: DatasetConfig) -> RawLabeled:
    """A Keras-format ``mnist.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``)."""
    path = Path(ds.path or MNIST_FILE).expanduser()
    if path.is_dir():
        path = path / "mnist.npz"
    if not path.is_file() and not ds.path:
        try:
            (x, y), (xt, yt) = _keras_mnist()
        except Exception as exc:  # noqa: BLE001 - Keras' `get_file` raises a bare Exception, its text says why
            why = first_line(exc)[:300] or type(exc).__name__
            raise DataError(str(path), f"MNIST not found and the Keras download failed ({why}); set dataset.path to "
                                       f"a Keras-format mnist.npz (without Google's servers, the repository's "
                                       f"benchmarks/get_mnist.py fetches LeCun's files)") from None
        arrays, source = {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}, "keras.datasets.mnist"
    else:
        arrays, source = read_npz(path, required=("x_train", "y_train", "x_test", "y_test")), str(path)
    x, kind = _inputs(arrays["x_train"], source, key="x_train")
    xt, kind_t = _inputs(arrays["x_test"], source, key="x_test")
    _check_compatible(source, ("x_train", x, kind), ("x_test", xt, kind_t))
    y = v.as_class_labels(arrays["y_train"], source, key="y_train")
    yt = v.as_class_labels(arrays["y_test"], source, key="y_test")
    v.check_same_length(source, x_train=x, y_train=y)
    v.check_same_length(source, x_test=xt, y_test=yt)
    return RawLabeled(source, kind, x, y, xt, yt, _declared_range(x, xt), tuple(str(i) for i in range(10)))


def _keras_mnist() -> Any:
    return import_object(KERAS_MNIST, field="dataset.name")()


def load_digits(ds: DatasetConfig) -> RawLabeled:
    """scikit-learn's bundled 8x8 digits: always available, the fast test dataset."""
    d = import_object(SKLEARN_DIGITS, field="dataset.name")()
    x = d.images.astype(np.uint8)[..., None]
    return RawLabeled("sklearn.datasets.load_digits", "images", x, d.target.astype(np.int64), value_range=(0.0, 16.0),
                    class_names=tuple(str(c) for c in d.target_names))


def load_npz(ds: DatasetConfig) -> RawLabeled:
    """Generic ``.npz`` with ``x``, ``y`` and optionally ``x_test``, ``y_test``."""
    assert ds.path is not None  # config validation requires it for this dataset
    source = str(Path(ds.path).expanduser())
    a = read_npz(ds.path, required=("x", "y"), optional=("x_test", "y_test"))
    if ("x_test" in a) != ("y_test" in a):
        raise DataError(source, "found only one of 'x_test' and 'y_test'; provide both or neither")
    x, kind = _inputs(a["x"], source, key="x")
    y = v.as_class_labels(a["y"], source, key="y")
    v.check_same_length(source, x=x, y=y)
    xt = yt = None
    if "x_test" in a:
        xt, kind_t = _inputs(a["x_test"], source, key="x_test")
        _check_compatible(source, ("x", x, kind), ("x_test", xt, kind_t))
        yt = v.as_class_labels(a["y_test"], source, key="y_test")
        v.check_same_length(source, x_test=xt, y_test=yt)
    return RawLabeled(source, kind, x, y, xt, yt, _declared_range(x, xt))


def load_pairs_npz(ds: DatasetConfig) -> RawPaired:
    """Pre-paired ``.npz``: ``x1``, ``x2``, ``y`` (1 = same); optional ``*_test``. Sides may differ in shape."""
    assert ds.path is not None  # config validation requires it for this dataset
    source = str(Path(ds.path).expanduser())
    a = read_npz(ds.path, required=("x1", "x2", "y"), optional=("x1_test", "x2_test", "y_test"))
    tests = [k for k in ("x1_test", "x2_test", "y_test") if k in a]
    if tests and len(tests) != 3:
        raise DataError(source, f"found only {tests} of 'x1_test', 'x2_test', 'y_test'; provide all three or none")
    x1, k1 = _inputs(a["x1"], source, key="x1")
    x2, k2 = _inputs(a["x2"], source, key="x2")
    if k1 != k2:
        raise DataError(source, f"'x1' holds {k1} but 'x2' holds {k2}; both sides must be the same kind of input")
    y = v.as_pair_labels(a["y"], source, key="y")
    v.check_same_length(source, x1=x1, x2=x2, y=y)
    out = RawPaired(source, k1, x1, x2, y)
    if tests:
        t1, _ = _inputs(a["x1_test"], source, key="x1_test")
        t2, _ = _inputs(a["x2_test"], source, key="x2_test")
        _check_compatible(source, ("x1", x1, k1), ("x1_test", t1, _kind(t1)))
        _check_compatible(source, ("x2", x2, k2), ("x2_test", t2, _kind(t2)))
        yt = v.as_pair_labels(a["y_test"], source, key="y_test", required=False)
        v.check_same_length(source, x1_test=t1, x2_test=t2, y_test=yt)
        out.x1_test, out.x2_test, out.y_test = t1, t2, yt
    return out


# ----------------------------------------------------------------------- helpers
def read_npz(path: str | os.PathLike[str], *, required: tuple[str, ...],
             optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz``; damaged archives and pickled arrays become `DataError`."""
    p = Path(path).expanduser()
    if p.is_dir():  # "file not found" for a folder that is there
        raise DataError(str(p), "is a folder, not an .npz file (dataset.path); a folder of images per class is "
                                "dataset.name: image_folder")
    if not p.is_file():
        raise DataError(str(p), "file not found (dataset.path)")
    out: dict[str, np.ndarray] = {}
    key = "<archive>"
    try:
        with open(p, "rb") as f:  # np.load would return a .npy's array, which is no archive (exit 1 before)
            head = f.read(6)
        if head == b"\x93NUMPY":
            raise DataError(str(p), "expected an .npz archive (np.savez), found a single .npy array; save "
                                    "with np.savez(path, x=..., y=...)")
        if not head.startswith(b"PK"):  # no zip at all: np.load reads it as a pickle and says "allow_pickle"
            raise DataError(str(p), "not an .npz archive (np.savez writes a zip file); save the arrays with "
                                    "np.savez(path, x=..., y=...)")
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in required if k not in z.files]
            if missing:
                raise DataError(str(p), f"missing array(s) {missing}; found {sorted(z.files)}; expected "
                                        f"{list(required)} (optional {list(optional)})")
            for key in (*required, *(k for k in optional if k in z.files)):
                _check_declared_size(z, key, p)
                out[key] = z[key]
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise DataError(str(p), f"array '{key}' holds Python objects (dtype object); save numeric arrays "
                                    f"(e.g. x.astype('float32')) - pickled data is never loaded") from None
        raise DataError(str(p), f"not a valid .npz archive ({exc})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataError(str(p), f"truncated or corrupt .npz archive ({type(exc).__name__}: {exc}) while reading "
                                f"'{key}'; re-create or re-download it") from None
    return out


def _check_declared_size(z: Any, key: str, path: Path) -> None:
    """Refuse a member whose header declares more data than the member holds, before numpy allocates it
    (a 1 kB archive declaring a 10^12-element array would otherwise end in a MemoryError)."""
    member = f"{key}.npy"
    info = z.zip.getinfo(member)
    with z.zip.open(member) as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
    if np.dtype(dtype).hasobject:
        return  # pickled objects: refused when read (allow_pickle=False), with its own message
    declared = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    if declared > info.file_size:
        raise DataError(str(path), f"array '{key}' declares shape {tuple(shape)} ({declared:,} bytes) but holds "
                                   f"{info.file_size:,} bytes; the file is damaged or crafted")


def _kind(x: np.ndarray) -> InputKind:
    if x.ndim >= 3:
        return "images"
    return "tokens" if x.dtype.kind in "iu" else "vectors"


def _inputs(x: np.ndarray, source: str, *, key: str) -> tuple[np.ndarray, InputKind]:
    """Validate one input array; return it in its model dtype with its kind."""
    v.check_input_dtype(x, source, key=key)
    v.check_rank(x, source, key=key)
    kind = _kind(x)
    if x.ndim == 3:
        x = x[..., None]  # [N, H, W] -> [N, H, W, 1]
    if kind == "tokens":
        v.check_token_ids(x, source, key=key)
        if x.dtype.itemsize > 4 and (x.size == 0 or x.max() < 2**31):
            x = x.astype(np.int32)
    elif x.dtype.kind in "iu" and x.dtype != np.uint8:
        lo, hi = (x.min(), x.max()) if x.size else (0, 0)
        x = x.astype(np.uint8 if 0 <= lo and hi <= 255 else np.float32)
    elif x.dtype.kind == "f" and x.dtype != np.float32:
        x = x.astype(np.float32)
    v.check_finite(x, source, key=key)
    return x, kind


def _check_compatible(source: str, a: tuple[str, np.ndarray, str], b: tuple[str, np.ndarray, str]) -> None:
    (ka, xa, ta), (kb, xb, tb) = a, b
    if ta != tb or xa.shape[1:] != xb.shape[1:] or xa.dtype != xb.dtype:
        raise DataError(source, f"'{kb}' ({tb}, per-sample shape {xb.shape[1:]}, {xb.dtype}) does not match "
                                f"'{ka}' ({ta}, {xa.shape[1:]}, {xa.dtype}); train and test inputs must agree")


# uint8 images are pixels on 0..255 (a test image brighter than every training one is still on that scale). uint8
# data far below it (binary masks 0/1, digits saved as 0..16) divided by 255 reached the encoder at |x| <= 0.004 and
# collapsed (0/1 digits: collapse at epoch 0; the same pixels as float32 trained to 0.625 test ROC AUC): such data
# takes its observed range, as float data does. Natural 8-bit images reach at least half the scale.
UINT8_FULL_SCALE_MIN = 128


def _declared_range(*arrays: np.ndarray | None) -> tuple[float, float] | None:
    """0..255 for uint8 images reaching `UINT8_FULL_SCALE_MIN` in any of `arrays` (the train and the test inputs:
    dark training images beside a test set that reaches 255 are still pixels), else None (the observed range)."""
    given = [a for a in arrays if a is not None and a.size]
    if not given or any(a.dtype != np.uint8 or a.ndim != 4 for a in given):
        return None
    return (0.0, 255.0) if max(int(a.max()) for a in given) >= UINT8_FULL_SCALE_MIN else None


def _check_splits(splits: dict[str, Split], raw: RawLabeled | RawPaired, params: SplitParams) -> None:
    fix = {"train": "use more data or raise dataset.max_train_samples",
           "val": "raise dataset.val_fraction or dataset.max_eval_samples",
           "test": "raise dataset.test_fraction or dataset.max_eval_samples"}
    rare = _rare_classes(splits, raw) if params.mode != "class" else ""  # whole classes per split: "more classes"
    for name, split in splits.items():
        extra = " (split: class holds out whole classes; use more classes or split: sample)" \
            if params.mode == "class" else ""
        if rare:  # the split settings cannot help: "raise dataset.val_fraction" went round in circles
            fix[name] = (f"the data has too few samples of {rare} to reach train, val and test (each needs samples of "
                         f"2 classes): add samples of those classes, or drop them")
            extra = ""
        v.check_split(split, raw.source, name=name, hint=fix[name] + extra)


def _class_label(raw: RawLabeled | RawPaired, dense: int) -> str:
    """A class as the user knows it: its folder name, or the label in their data (dense ids are ours: the
    user's labels 3 and 7 were shown as classes 0 and 1, an image folder's 'dog' as class 1)."""
    if isinstance(raw, RawLabeled) and raw.class_names is not None:
        return repr(raw.class_names[dense])
    if isinstance(raw, RawLabeled) and raw.class_ids:
        return str(raw.class_ids[dense])
    return str(dense)


def _rare_classes(splits: dict[str, Split], raw: RawLabeled | RawPaired) -> str:
    """"class 7 (1 sample)" for the classes with fewer samples than there are splits, when fewer than two classes
    have enough: no split setting then gives every split two classes; "" otherwise (or for pre-paired data)."""
    labeled = [s.y for s in splits.values() if isinstance(s, LabeledSplit)]
    if len(labeled) != len(splits) or not labeled:
        return ""
    classes, counts = np.unique(np.concatenate(labeled), return_counts=True)
    if int(np.sum(counts >= len(splits))) >= 2:
        return ""
    few = [f"class {_class_label(raw, c)} ({n} sample{'s' if n != 1 else ''})"
           for c, n in zip(classes.tolist(), counts.tolist(), strict=True) if n < len(splits)]
    return ", ".join(few[:5]) + (f" and {len(few) - 5} more" if len(few) > 5 else "")


# ---------------------------------------------------------------------- DataInfo
def _describe(name: str, raw: RawLabeled | RawPaired, splits: dict[str, Split], params: SplitParams) -> DataInfo:
    train = splits["train"]
    shapes: tuple[tuple[int, ...], ...]
    all_inputs: list[Inputs | None]  # None never occurs: the loaders give all test arrays or none
    if isinstance(train, PairedSplit):
        assert isinstance(raw, RawPaired)  # only pre-paired data splits into pairs
        xs: list[Inputs] = [train.x1, train.x2]
        shapes = (input_shape(train.x1), input_shape(train.x2))
        num_classes, class_names, class_ids, paired = None, None, None, True
        all_inputs = [raw.x1, raw.x2, *([raw.x1_test, raw.x2_test] if raw.x1_test is not None else [])]
        shared = shared_rows({k: s for k, s in splits.items() if isinstance(s, PairedSplit)})
        if any(shared.values()):  # only possible with official test arrays: ours keep every input in one split
            log.warning("%s: %s of the distinct inputs of the given test pairs also occur in training pairs",
                        raw.source, f"{shared.get('test', 0.0):.1%}")
    else:
        assert isinstance(raw, RawLabeled) and isinstance(train, LabeledSplit)
        xs, shapes, paired = [train.x], (input_shape(train.x),), False
        num_classes, class_names, class_ids, shared = len(raw.class_ids), raw.class_names, raw.class_ids, {}
        all_inputs = [raw.x, *([raw.x_test] if raw.x_test is not None else [])]
    stats = _train_moments(xs, raw.kind)
    vocab = None
    if raw.kind == "tokens":
        tokens = cast(list[np.ndarray], all_inputs)  # token inputs are arrays, never lazy
        vocab = int(max(int(a.max()) if a.size else 0 for a in tokens)) + 1
        value_range: tuple[float, float] = (0.0, float(vocab - 1))
    elif isinstance(raw, RawLabeled) and raw.value_range is not None:
        value_range = raw.value_range
    else:
        value_range = (stats.min, stats.max) if stats else (0.0, 0.0)
    return DataInfo(
        name=name, source=raw.source, kind=raw.kind, input_shapes=shapes, dtype=str(xs[0].dtype),
        value_range=value_range, num_classes=num_classes, paired=paired, split=params.mode,
        fingerprint=fingerprint(splits, params, class_ids=class_ids), sizes={k: len(s) for k, s in splits.items()},
        class_names=class_names, class_ids=class_ids, vocab_size=vocab,
        classes_per_split={k: int(np.unique(s.y).size) for k, s in splits.items() if isinstance(s, LabeledSplit)},
        shared_rows=shared, mean=stats.mean if stats else None,
        std=stats.std if stats else None)


def _train_moments(xs: list[Inputs], kind: InputKind) -> v.Moments | None:
    """Training-split statistics; for lazy images, an estimate from <= 256 evenly spaced files."""
    if kind == "tokens":
        return None
    arrays = []
    for x in xs:
        if not isinstance(x, np.ndarray):
            n = len(x)
            idx = np.unique(np.linspace(0, n - 1, num=min(n, STATS_SAMPLE)).astype(np.int64))
            arrays.append(x.load(idx))
        else:
            arrays.append(x)
    return v.moments(arrays)


def fingerprint(splits: dict[str, Split], params: SplitParams, *, class_ids: tuple[int, ...] | None = None) -> str:
    """sha256 over every split's inputs and labels plus the split parameters.

    Arrays are hashed by dtype, shape and bytes; lazy image files by their
    (relative path, size) list and decoded shape, so no pixel is read. Labels are
    the dense 0..C-1 indices; the source's own `class_ids` are hashed too unless
    they are 0..C-1 already (so such datasets keep the fingerprint they had before
    labels were made dense).
    """
    h = hashlib.sha256(json.dumps({"split": params.as_dict()}, sort_keys=True).encode())
    if class_ids is not None and list(class_ids) != list(range(len(class_ids))):
        h.update(json.dumps({"class_ids": list(class_ids)}).encode())
    for name in sorted(splits):
        split = splits[name]
        h.update(f"|{name}|{type(split).__name__}|".encode())
        parts = (split.x1, split.x2) if isinstance(split, PairedSplit) else (split.x,)
        for part in (*parts, split.y):
            _hash_inputs(h, part)
    return h.hexdigest()


def _hash_inputs(h: Any, x: Inputs) -> None:
    if isinstance(x, np.ndarray):
        h.update(f"{x.dtype.str}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).view(np.uint8).reshape(-1))
    elif isinstance(x, LazyInputs):
        h.update(json.dumps({"shape": list(x.shape), "files": x.content_key()}).encode())
    else:
        raise TypeError(f"cannot fingerprint inputs of type {type(x).__name__}")
