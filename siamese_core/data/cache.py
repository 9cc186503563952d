"""A memory-mapped cache of loaded datasets, shared by the processes of one machine (or one shared disk).

Why: every process that trains reads its dataset again — each sweep worker, the parent's preflight, ``train``,
``doctor``. Fashion-MNIST's gzip IDX files take 0.6-0.9 s to decode, split and describe; scikit-learn's digits
need ``sklearn.datasets`` (about 1.2 s to import). Read back from this cache the same splits take 0.04 s,
checksum included (``benchmarks/data_cache.py``), and workers on one machine map one copy of the pixels from the
page cache instead of each holding its own.

Trust comes first:

* an entry is keyed by everything the loaded splits depend on: the dataset and split settings, the identity of
  the source files (path, size, modification and status-change times, inode) or of the package that ships them,
  and the source code of ``siamese_core.data`` itself (a change to how data is split or checked makes new entries);
* every read is checked: the arrays must hash to the fingerprint `sources.fingerprint` gave them when they were
  loaded from the source, and the description beside them (value range, mean and standard deviation, which set
  the model's input normalisation) to the digest it was written with. An entry that fails a check or cannot be
  read is loaded again from the source and rewritten; a cache that cannot be written is skipped with a log
  line, never an error;
* entries are written into a temporary folder and renamed into place, so a reader sees a whole entry or none.

Only built-in sources whose files can be named are cached (not user-registered ones, not ``image_folder``,
whose images stay lazy on disk). ``SIAMESE_SWEEP_DATA_CACHE`` names the folder, or ``off`` turns the cache off.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from .types import DataInfo, DatasetSplits, LabeledSplit, PairedSplit, Split

ENV_DATA_CACHE = "SIAMESE_SWEEP_DATA_CACHE"  # a folder, or "off"
ENV_XDG_CACHE_HOME = "XDG_CACHE_HOME"  # the XDG base directory spec's cache folder (default ~/.cache)
OFF = "off"
FORMAT = 2  # bump when the layout of an entry changes (it is in the entry's key: older entries are never read)
# Least recently used entries beyond this are deleted when one is written: a Fashion-MNIST entry is 55 MB (the
# uint8 pixels of all three splits), so the cache stays under ~0.5 GB for that dataset.
MAX_ENTRIES = 8
META = "meta.json"
STALE_WRITE_S = 3600.0  # a temporary folder this old belongs to a writer that was killed (one takes < 1 s)
_SPLITS = ("train", "val", "test")
# the names this cache gives what it writes: an entry is its key (`entry_key`: 32 hex digits), a write in
# progress ``.{key}.`` plus `tempfile`'s suffix. Eviction touches nothing else: the folder may be one the user
# named for other things too (a project folder, a shared disk), where "every dot-folder older than an hour"
# deleted .git and .venv
_ENTRY = re.compile(r"[0-9a-f]{32}")
_WRITING = re.compile(r"\.[0-9a-f]{32}\.[A-Za-z0-9_]+")

log = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """Where entries live (``$SIAMESE_SWEEP_DATA_CACHE``, else ``$XDG_CACHE_HOME/siamese-sweep/datasets``), or
    None when the cache is off."""
    setting = os.environ.get(ENV_DATA_CACHE, "").strip()
    if setting.lower() == OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get(ENV_XDG_CACHE_HOME, "").strip() or "~/.cache"
    return Path(base).expanduser() / "siamese-sweep" / "datasets"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 of the source of ``siamese_core.data`` and ``siamese_core.config``: what turns files into splits."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for path in sorted([*here.glob("*.py"), here.parent / "config.py"]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def file_identity(path: Path) -> dict[str, Any]:
    """What tells a changed source file from the one an entry was made from, without reading it: with the inode
    and the status-change time too, as a copy that keeps the modification time (``cp -p``, ``rsync -a``, ``tar
    x``) of a file of the same size was served from the entry of the file it replaced."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino,
            "ctime_ns": st.st_ctime_ns}


def entry_key(dataset: dict[str, Any], split: dict[str, Any], sources: list[dict[str, Any]]) -> str:
    """The name of the entry for this dataset config, split and source identity."""
    blob = json.dumps({"format": FORMAT, "code": code_version(), "dataset": dataset, "split": split,
                       "sources": sources}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _split_arrays(split: Split) -> dict[str, np.ndarray]:
    parts = {"x1": split.x1, "x2": split.x2} if isinstance(split, PairedSplit) else {"x": split.x}
    arrays = {k: a for k, a in parts.items() if isinstance(a, np.ndarray)}
    if len(arrays) != len(parts):
        raise TypeError("lazy inputs are not cached")
    return {**arrays, "y": split.y}


def _info_to_json(info: DataInfo) -> dict[str, Any]:
    data = asdict(info)
    data.pop("evaluation")  # set per config by the caller, not part of the data
    return data


def _info_from_json(data: dict[str, Any]) -> DataInfo:
    known = {f.name for f in fields(DataInfo)}
    data = {k: v for k, v in data.items() if k in known}
    data["input_shapes"] = tuple(tuple(s) for s in data["input_shapes"])
    data["value_range"] = tuple(data["value_range"])
    for key in ("class_names", "class_ids"):
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    return DataInfo(**data)


def _digest(info: dict[str, Any]) -> str:
    """The description's own checksum: a `meta.json` whose mean or standard deviation was changed (a damaged
    disk, a hand edit) trained a differently normalised model without a word, its arrays being intact."""
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()


def read(key: str, *, verify: Callable[[dict[str, Split], DataInfo], str]) -> DatasetSplits | None:
    """The entry `key` with its arrays memory-mapped, if it exists and ``verify(splits, info)`` (the fingerprint
    of the mapped arrays) equals the fingerprint recorded in it; else None."""
    root = cache_dir()
    if root is None:
        return None
    entry = root / key
    try:
        meta = json.loads((entry / META).read_text())
    except (FileNotFoundError, NotADirectoryError):  # no entry, or no cache folder (a file there): nothing damaged
        return None
    except (OSError, ValueError) as exc:
        _discard(entry, f"{type(exc).__name__}: {exc}")
        return None
    try:
        if meta.get("format") != FORMAT:
            _discard(entry, f"format {meta.get('format')}, expected {FORMAT}")
            return None
        if meta.get("info_sha256") != _digest(meta["info"]):
            _discard(entry, "its description does not match its digest")
            return None
        splits: dict[str, Split] = {}
        for name in _SPLITS:
            # copy-on-write: pages are shared with every other reader until somebody writes to an array
            # (a plain ndarray view of the map: code downstream never meets the np.memmap subclass)
            arrays = {part: np.load(entry / f"{name}.{part}.npy", mmap_mode="c", allow_pickle=False).view(np.ndarray)
                      for part in meta["splits"][name]}
            splits[name] = PairedSplit(**arrays) if "x1" in arrays else LabeledSplit(**arrays)
        info = _info_from_json(meta["info"])
    except Exception as exc:  # noqa: BLE001 - a damaged entry is a miss, loaded again from the source
        _discard(entry, f"{type(exc).__name__}: {exc}")
        return None
    if verify(splits, info) != info.fingerprint:
        _discard(entry, "its arrays do not match their fingerprint")
        return None
    try:
        os.utime(entry / META)  # most recently used: kept longest
    except OSError:
        pass
    log.debug("%s: mapped from the data cache entry %s", info.source, entry)
    return DatasetSplits(**splits, info=info)


def _discard(entry: Path, why: str) -> None:
    """Delete a damaged entry (entries only ever appear whole, so it cannot be one being written)."""
    log.warning("data cache entry %s is damaged (%s); deleted, loading from the source", entry, why)
    shutil.rmtree(entry, ignore_errors=True)


def write(key: str, data: DatasetSplits) -> Path | None:
    """Store `data` as entry `key` (whole or not at all); returns its folder, None when it was not written."""
    root = cache_dir()
    if root is None:
        return None
    try:
        arrays = {name: _split_arrays(split) for name, split in data.splits().items()}
    except TypeError:
        return None
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        for name, parts in arrays.items():
            for part, array in parts.items():
                np.save(tmp / f"{name}.{part}.npy", np.ascontiguousarray(array), allow_pickle=False)
        info = _info_to_json(data.info)
        meta = {"format": FORMAT, "splits": {n: sorted(p) for n, p in arrays.items()}, "info": info,
                "info_sha256": _digest(info)}
        (tmp / META).write_text(json.dumps(meta))
        entry = root / key
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / META).is_file():
                raise
            return entry  # another process wrote the same entry first; ours is deleted below
        tmp = None
        _evict(root, keep=entry)
        return entry
    except OSError as exc:
        log.warning("could not write the data cache in %s (%s); set %s=off to skip it", root, exc, ENV_DATA_CACHE)
        return None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _evict(root: Path, *, keep: Path) -> None:
    """Delete the least recently used entries beyond `MAX_ENTRIES`, and what killed writers left behind."""
    entries = []
    now = time.time()
    for path in root.iterdir():
        try:
            if _WRITING.fullmatch(path.name) and path.is_dir():
                if now - path.stat().st_mtime > STALE_WRITE_S:
                    shutil.rmtree(path, ignore_errors=True)
            elif _ENTRY.fullmatch(path.name) and path != keep and path.is_dir():
                entries.append(((path / META).stat().st_mtime, path))
        except OSError:
            continue
    entries.sort(reverse=True)
    for _, path in entries[MAX_ENTRIES - 1:]:
        shutil.rmtree(path, ignore_errors=True)
