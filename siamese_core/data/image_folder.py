"""Image folders, decoded lazily so a folder may be larger than memory.

Layout: ``root/<class name>/<...>/image.(png|jpg|jpeg|bmp|gif)``, class ids in
sorted name order; or an index CSV (columns ``path,label``) with paths relative
to ``root``. Index entries are untrusted: any path that resolves outside
``root`` (``..``, absolute paths, escaping symlinks) is a `DataError`.

Up-front checks are cheap and touch every file once: it exists, is non-empty,
starts with a PNG/JPEG/BMP/GIF signature and is not visibly truncated (PNG
``IEND`` / JPEG end-of-image marker near the end, BMP declared size). Only the
first image is decoded up front (it sets the default size). A file that is
corrupt in the middle is found on decode: `ImageFiles.load` names it;
`ImageFiles.verify` decodes everything for a full check.

`load()` runs `tf_decode` in a tf.data map, so array loaders and tf.data
loaders get bit-identical uint8 inputs. Decoding needs TensorFlow, so this
source is registered lazily (`siamese_core.registry.DATASETS`): the other
datasets load without it.
"""
from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from ..config import DatasetConfig
from ..errors import DataError, first_line
from .types import RawLabeled

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"BM": "bmp", b"GIF87a": "gif",
               b"GIF89a": "gif"}
_TAIL = 1024
# Decoded pixels allowed per image: 50 million is above any camera photo (a 50 MP sensor is 8160 x 6120).
# A 97 kB PNG declaring 10000 x 10000 cost 3 GB to decode and resize; the header says so before decoding.
MAX_IMAGE_PIXELS = 50_000_000
_GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as in PIL's "L" mode


class ImageFiles:
    """Image paths decoded on demand to uint8 ``[H, W, C]`` (implements `LazyInputs`)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, root: str | Path, relpaths: Sequence[str] | np.ndarray, sizes: Sequence[int] | np.ndarray, *,
                 image_size: tuple[int, int], channels: int, parallel: int | None = None) -> None:
        self.root = Path(root)
        self.relpaths = np.asarray(relpaths, dtype=str)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channels = int(channels)
        self.shape: tuple[int, ...] = (*self.image_size, self.channels)
        self.parallel = parallel or min(4, os.cpu_count() or 1)

    def __len__(self) -> int:
        return int(self.relpaths.shape[0])

    def __repr__(self) -> str:
        return f"ImageFiles({str(self.root)!r}, n={len(self)}, shape={self.shape})"

    @property
    def paths(self) -> np.ndarray:
        """Absolute paths (strings) in sample order."""
        prefix = str(self.root) + os.sep
        return np.char.add(prefix, self.relpaths) if len(self) else np.asarray([], dtype=str)

    def subset(self, indices: np.ndarray) -> ImageFiles:
        idx = np.asarray(indices, dtype=np.int64)
        return ImageFiles(self.root, self.relpaths[idx], self.sizes[idx], image_size=self.image_size,
                          channels=self.channels, parallel=self.parallel)

    # ------------------------------------------------------------- tf.data side
    def tf_source(self) -> Any:
        """The file paths as a 1-D string tensor (what a tf.data pipeline maps `tf_decode` over)."""
        return tf.constant(self.paths, dtype=tf.string)

    def tf_decode(self, item: Any) -> Any:
        """Path tensor -> uint8 ``[H, W, C]``: decode, fix channels, resize, round."""
        img = tf.io.decode_image(tf.io.read_file(item), channels=0, expand_animations=False, dtype=tf.uint8)
        n = tf.shape(img)[-1]
        # GIF/BMP cannot be decoded to 1 channel directly: go through RGB (gray sources are replicated)
        rgb = tf.gather(img, tf.where(n >= 3, tf.constant([0, 1, 2]), tf.constant([0, 0, 0])), axis=-1)
        x = tf.cast(rgb, tf.float32)
        if self.channels == 1:
            x = tf.tensordot(x, tf.constant(_GRAY, tf.float32), axes=[[2], [0]])[..., None]
        x = tf.image.resize(x, self.image_size, method="bilinear", antialias=True)
        x = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
        return tf.ensure_shape(x, self.shape)

    # --------------------------------------------------------------- numpy side
    def load(self, indices: np.ndarray | None = None, *, batch_size: int = 256) -> np.ndarray:
        """Decode the given samples (all if None) with the exact ops of `tf_decode`."""
        files = self if indices is None else self.subset(indices)
        if len(files) == 0:
            return np.zeros((0, *self.shape), np.uint8)
        ds = tf.data.Dataset.from_tensor_slices(files.tf_source())
        ds = ds.map(self.tf_decode, num_parallel_calls=self.parallel, deterministic=True).batch(batch_size)
        out = np.empty((len(files), *self.shape), np.uint8)
        start = 0
        try:
            for batch in ds:
                b = batch.numpy()
                out[start:start + b.shape[0]] = b
                start += b.shape[0]
        except tf.errors.OpError as exc:
            raise files._culprit(start, batch_size, exc) from None
        return out

    def verify(self) -> None:
        """Decode every file once; raise `DataError` naming the first that fails (slow, opt-in)."""
        self.load()

    def _culprit(self, start: int, batch_size: int, exc: Exception) -> DataError:
        """Decode one by one from the failing batch to name the bad file."""
        for i in range(start, min(len(self), start + batch_size)):
            path = str(self.paths[i])
            try:
                self.tf_decode(tf.constant(path))
            except (tf.errors.OpError, ValueError) as err:
                return DataError(path, f"cannot decode image ({_first_line(err)}); replace or remove the file")
        return DataError(str(self.root), f"decoding failed ({_first_line(exc)})")

    def content_key(self) -> list[tuple[str, int]]:
        """(relative path, size) per sample, for fingerprints without reading pixels."""
        return list(zip(self.relpaths.tolist(), self.sizes.tolist(), strict=True))


def _first_line(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    return first_line(text)[:200] or type(exc).__name__


# ---------------------------------------------------------------------- scanning
def load_image_folder(ds: DatasetConfig) -> RawLabeled:
    """The ``image_folder`` dataset source: class sub-folders (or an index CSV) under ``dataset.path``."""
    assert ds.path is not None  # config validation requires it for this dataset
    files, y, classes = scan_image_folder(ds.path, index=ds.index, image_size=ds.image_size,
                                          color_mode=ds.color_mode)
    return RawLabeled(str(files.root), "images", files, y, value_range=(0.0, 255.0), class_names=classes)


def scan_image_folder(root: str | Path, *, index: str | None = None, image_size: tuple[int, int] | None = None,
                      color_mode: str = "grayscale") -> tuple[ImageFiles, np.ndarray, tuple[str, ...]]:
    """Find, check and label the images under `root`; returns (files, int64 labels, class names)."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(str(base), "image folder not found (expected a directory with one sub-folder per class)")
    base = base.resolve()
    if index is None:
        rel, names = _walk_classes(base)
    else:
        rel, names = _read_index(base, _index_path(base, index))
    if not rel:
        raise DataError(str(base), f"no images found (extensions {', '.join(EXTENSIONS)}); expected "
                                   f"<folder>/<class name>/<image> or an index CSV")
    classes = _sorted_classes(set(names))
    lookup = {c: i for i, c in enumerate(classes)}
    checked = [_check_image(base / r) for r in rel]
    sizes = [n for n, _ in checked]
    channels = 1 if color_mode == "grayscale" else 3
    size = image_size if image_size is not None else _first_size(base / rel[0])
    if image_size is None:
        _warn_mixed_sizes(base, rel[0], size, [wh for _, wh in checked])
    files = ImageFiles(base, rel, sizes, image_size=size, channels=channels)
    files.subset(np.array([0])).load()  # decode the first image now: fails fast on a broken pipeline
    return files, np.array([lookup[n] for n in names], dtype=np.int64), tuple(classes)


def _warn_mixed_sizes(base: Path, first: str, size: tuple[int, int], declared: list[tuple[int, int]]) -> None:
    """Images of different sizes are all resized to the first file's, without keeping their aspect ratio: with no
    word, one large photo sorted first made every input (and the memory) its size."""
    counts = Counter(declared)
    if len(counts) > 1:
        common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in counts.most_common(4))
        log.warning("the images under %s have %d sizes (width x height: %s%s); all are resized to %dx%d, the size "
                    "of the first file (%s), without keeping their aspect ratio: set dataset.image_size to choose",
                    base, len(counts), common, ", ..." if len(counts) > 4 else "", size[1], size[0], first)


def _walk_classes(base: Path) -> tuple[list[str], list[str]]:
    """Images under ``base/<class>/...``; like index mode, nothing that resolves outside `base` (a symlinked
    class folder or image pointing elsewhere is a `DataError`, never read)."""
    rel: list[str] = []
    names: list[str] = []
    root = base.resolve()
    empty: list[str] = []
    for cls in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not _resolved(cls, str(cls)).is_relative_to(root):
            raise DataError(str(cls), f"class folder resolves to {cls.resolve()}, outside the data folder {root} "
                                      f"(symlink?); refusing to read it")
        before = len(rel)
        for dirpath, dirnames, filenames in os.walk(cls):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if fn.lower().endswith(EXTENSIONS) and not fn.startswith("."):
                    path = os.path.join(dirpath, fn)
                    rel.append(_safe_relpath(base, os.path.relpath(path, base), path))
                    names.append(cls.name)
        if len(rel) == before:
            empty.append(cls.name)
    if empty and rel:
        log.warning("class folders without an image under %s are not classes: %s", base, ", ".join(empty))
    return rel, names


def _resolved(path: Path, where: str) -> Path:
    """`path` with its symlinks resolved; a loop is a `DataError` (Python 3.11 raises RuntimeError: exit 1)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        raise DataError(where, f"cannot resolve the path ({exc}): a symlink loop?; remove the link") from None


def _index_path(base: Path, index: str) -> Path:
    """An index given as a relative path is looked up as given, then inside the data folder."""
    p = Path(index).expanduser()
    if not p.is_absolute() and not p.exists() and (base / p).exists():
        p = base / p
    if not p.is_file():
        raise DataError(str(p), "index CSV not found (dataset.index; relative paths are tried as given and inside "
                                "the data folder)")
    return p


def _read_index(base: Path, index: Path) -> tuple[list[str], list[str]]:
    try:
        with open(index, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "label"} <= {c.strip() for c in reader.fieldnames}:
                raise DataError(str(index), f"index CSV needs a header with columns 'path' and 'label'; found "
                                            f"{reader.fieldnames}")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(str(index), f"cannot read index CSV: {exc}") from None
    rel, names = [], []
    for line, row in enumerate(rows, start=2):
        where = f"{index} line {line}"
        rel.append(_safe_relpath(base, row.get("path", ""), where))
        if not row.get("label"):
            raise DataError(where, f"entry {row.get('path')!r} has an empty label")
        names.append(row["label"])
    return rel, names


def _safe_relpath(base: Path, raw: str, where: str) -> str:
    """The entry as a path relative to `base`, refusing anything that leaves it."""
    if not raw:
        raise DataError(where, "empty path")
    pure = PurePosixPath(raw.replace("\\", "/"))
    if pure.is_absolute() or PureWindowsPath(raw).drive or ".." in pure.parts:
        raise DataError(where, f"path {raw!r} points outside the data folder {base} (absolute or '..'); index "
                               f"paths must be relative to the folder")
    target = _resolved(base / pure, where)
    if not target.is_relative_to(base):
        raise DataError(where, f"path {raw!r} resolves to {target}, outside the data folder {base} (symlink?); "
                               f"refusing to read it")
    if target.suffix.lower() not in EXTENSIONS:
        raise DataError(where, f"path {raw!r} is not an image file (expected {', '.join(EXTENSIONS)})")
    return pure.as_posix()


def _sorted_classes(names: set[str]) -> list[str]:
    """Class names in sorted order; numerically when all are integers (so '10' follows '9')."""
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def check_image(path: Path) -> int:
    """Cheap per-file check (stat + a few bytes at both ends); returns the size in bytes."""
    return _check_image(path)[0]


def _check_image(path: Path) -> tuple[int, tuple[int, int]]:
    """`check_image`, and the (width, height) the file declares."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise DataError(str(path), "not a regular file")
        if size == 0:
            raise DataError(str(path), "empty file (0 bytes); replace or remove it")
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except FileNotFoundError:
        raise DataError(str(path), "image file not found (listed but missing)") from None
    except OSError as exc:
        raise DataError(str(path), f"cannot read image file: {exc}") from None
    fmt = next((f for sig, f in _SIGNATURES.items() if head.startswith(sig)), None)
    if fmt is None:
        raise DataError(str(path), f"not a PNG, JPEG, BMP or GIF image (starts with {head[:8].hex()}); replace "
                                   f"or remove it")
    truncated = ((fmt == "png" and b"IEND" not in tail) or (fmt == "jpeg" and b"\xff\xd9" not in tail)
                 or (fmt == "bmp" and len(head) >= 6 and int.from_bytes(head[2:6], "little") > size)
                 or (fmt == "gif" and b";" not in tail[-16:]))
    if truncated:
        raise DataError(str(path), f"truncated {fmt.upper()} file ({size} bytes, end marker missing); "
                                   f"replace or remove it")
    width, height = _declared_size(path, fmt, head)
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(str(path), f"image declares {width} x {height} pixels (more than {MAX_IMAGE_PIXELS:,}); "
                                   f"refusing to decode it (downscale it first)")
    return size, (width, height)


def _declared_size(path: Path, fmt: str, head: bytes) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding pixels."""
    if fmt == "png" and len(head) >= 24:
        if head[12:16] != b"IHDR":  # a damaged file: its "size" was random bytes, "too large, downscale it"
            raise DataError(str(path), "damaged PNG file (its first chunk is not IHDR); replace or remove it")
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if fmt == "gif" and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if fmt == "bmp" and len(head) >= 26:
        return abs(int.from_bytes(head[18:22], "little", signed=True)), abs(
            int.from_bytes(head[22:26], "little", signed=True))
    # JPEG: the SOF marker may sit anywhere in the header; PIL reads only the header
    try:
        with Image.open(path) as img:
            return int(img.size[0]), int(img.size[1])
    except Exception as exc:  # noqa: BLE001 - any unreadable header is a bad file
        raise DataError(str(path), f"cannot read the image header ({type(exc).__name__}: {exc})") from None


def _first_size(path: Path) -> tuple[int, int]:
    """(height, width) of the first image, the default size for all."""
    try:
        img = tf.io.decode_image(tf.io.read_file(str(path)), channels=0, expand_animations=False)
    except (tf.errors.OpError, ValueError) as exc:
        raise DataError(str(path), f"cannot decode image ({_first_line(exc)}); replace or remove the file") from None
    h, w = int(img.shape[0]), int(img.shape[1])
    if min(h, w) < 1:
        raise DataError(str(path), f"image has size {h}x{w}")
    return h, w
