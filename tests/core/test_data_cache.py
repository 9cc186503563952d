"""The memory-mapped data cache (`siamese_core.data.cache`): a second load reads the same splits from the cache,
never stale ones, and a damaged or unwritable cache costs a log line, never a wrong array or an error."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siamese_core import TrainConfig
from siamese_core.data import cache, sources
from siamese_core.data.sources import load_dataset, source_identity


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV_DATA_CACHE, str(folder))
    return folder


def _mapped(data) -> bool:
    return isinstance(data.train.x.base, np.memmap)


def _same(a, b) -> None:
    for name, split in a.splits().items():
        other = b.splits()[name]
        np.testing.assert_array_equal(split.x, other.x)
        np.testing.assert_array_equal(split.y, other.y)
        assert split.x.dtype == other.x.dtype and split.y.dtype == other.y.dtype
    assert a.info == b.info


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def test_second_load_reads_the_cache_without_the_source(cache_dir, tiny_config, monkeypatch):
    first = load_dataset(tiny_config)
    assert not _mapped(first) and len(_entries(cache_dir)) == 1

    def no_source(*args, **kwargs):
        raise AssertionError("the source was read although the cache holds this dataset")
    monkeypatch.setattr(sources, "import_object", no_source)  # what load_digits reads sklearn's digits with
    second = load_dataset(tiny_config)
    assert _mapped(second)
    _same(first, second)
    assert second.info.eval_fingerprint == first.info.eval_fingerprint is not None


def test_another_seed_or_split_setting_is_another_entry(cache_dir, make_tiny):
    a = load_dataset(TrainConfig.from_dict(make_tiny(seed=0)))
    b = load_dataset(TrainConfig.from_dict(make_tiny(seed=1)))
    c = load_dataset(TrainConfig.from_dict(make_tiny(dataset={"name": "digits", "val_fraction": 0.2})))
    assert len(_entries(cache_dir)) == 3
    assert len({a.info.fingerprint, b.info.fingerprint, c.info.fingerprint}) == 3


def test_a_changed_source_file_is_never_served_from_the_cache(cache_dir, tmp_path, make_tiny):
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    x, y = rng.random((200, 6), dtype=np.float32), np.repeat(np.arange(4), 50)
    np.savez(path, x=x, y=y)
    config = TrainConfig.from_dict(make_tiny(dataset={"name": "npz", "path": str(path)}))
    before = load_dataset(config)
    np.savez(path, x=x + 1.0, y=y)  # same shape and size: only the content (and the file's time) differ
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    after = load_dataset(config)
    assert not _mapped(after), "a changed file must be read again"
    assert after.info.fingerprint != before.info.fingerprint
    np.testing.assert_allclose(np.sort(after.train.x.ravel()), np.sort(before.train.x.ravel()) + 1.0, rtol=1e-6)


def test_a_damaged_entry_is_deleted_and_loaded_again(cache_dir, tiny_config, caplog):
    fresh = load_dataset(tiny_config)
    (entry,) = _entries(cache_dir)
    pixels = entry / "train.x.npy"
    raw = bytearray(pixels.read_bytes())
    raw[-1] ^= 0xFF  # one pixel changed: shape and size are intact, only the checksum can tell
    pixels.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger=cache.__name__):
        again = load_dataset(tiny_config)
    assert "do not match their fingerprint" in caplog.text
    assert not _mapped(again)
    _same(fresh, again)
    third = load_dataset(tiny_config)  # the entry was written anew, and is whole
    assert _mapped(third)
    _same(fresh, third)


@pytest.mark.parametrize("change", [{"mean": 8.89, "std": 2.02}, {"value_range": [0.0, 1.0]}])
def test_a_changed_description_is_deleted_and_loaded_again(cache_dir, tiny_config, caplog, change):
    """The description sets the model's input normalisation (mean, standard deviation, value range): changed in
    `meta.json` with the arrays intact, it trained a different model with the same dataset fingerprint."""
    fresh = load_dataset(tiny_config)
    (entry,) = _entries(cache_dir)
    meta = json.loads((entry / cache.META).read_text())
    assert all(key in meta["info"] for key in change)
    meta["info"].update(change)
    (entry / cache.META).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger=cache.__name__):
        again = load_dataset(tiny_config)
    assert "its description does not match its digest" in caplog.text
    assert not _mapped(again)
    _same(fresh, again)  # the source's description, not the changed one
    assert _mapped(load_dataset(tiny_config))  # written anew


def test_unreadable_metadata_is_a_miss(cache_dir, tiny_config):
    load_dataset(tiny_config)
    (entry,) = _entries(cache_dir)
    (entry / cache.META).write_text("{not json")
    again = load_dataset(tiny_config)
    assert not _mapped(again)
    assert json.loads((_entries(cache_dir)[0] / cache.META).read_text())["format"] == cache.FORMAT


def test_off_writes_nothing(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setenv(cache.ENV_DATA_CACHE, "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert not _mapped(load_dataset(tiny_config)) and not _mapped(load_dataset(tiny_config))
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_default_folder_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.ENV_DATA_CACHE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == tmp_path / "siamese-sweep" / "datasets"


def test_an_unwritable_cache_is_skipped_with_a_warning(tmp_path, tiny_config, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(cache.ENV_DATA_CACHE, str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger=cache.__name__):
        data = load_dataset(tiny_config)
    assert len(data.train) > 0
    assert "could not write the data cache" in caplog.text
    assert "damaged" not in caplog.text  # nothing was read, so nothing was damaged or deleted


def test_a_replaced_file_with_the_old_size_and_time_is_not_served_from_the_cache(cache_dir, tmp_path, make_tiny):
    """`cp -p`, `rsync -a` or `tar x` keep a file's modification time: a new file of the same size put in place
    that way was served from the entry of the one it replaced (session 44's review)."""
    rng = np.random.default_rng(0)
    x, y = rng.random((200, 6), dtype=np.float32), np.repeat(np.arange(4), 50)
    path, other = tmp_path / "data.npz", tmp_path / "other.npz"
    np.savez(path, x=x, y=y)
    np.savez(other, x=x + 1.0, y=y)
    assert path.stat().st_size == other.stat().st_size
    config = TrainConfig.from_dict(make_tiny(dataset={"name": "npz", "path": str(path)}))
    before = load_dataset(config)
    kept = path.stat().st_mtime_ns
    shutil.copyfile(other, path)
    os.utime(path, ns=(kept, kept))  # what cp -p does
    assert path.stat().st_mtime_ns == kept
    after = load_dataset(config)
    assert not _mapped(after) and after.info.fingerprint != before.info.fingerprint


def test_eviction_touches_only_what_the_cache_wrote(cache_dir, make_tiny, monkeypatch):
    """A cache folder named by the user may hold other things (README: a shared disk): "every dot-folder older
    than an hour" deleted a project's .git and .venv, and a folder with a meta.json of its own was evicted."""
    cache_dir.mkdir(parents=True)
    theirs = [cache_dir / ".git", cache_dir / ".venv", cache_dir / "notes"]
    for folder in theirs:
        folder.mkdir()
        (folder / cache.META).write_text("{}")
        os.utime(folder, (1, 1))
    stale = cache_dir / f".{'0' * 32}.abc_12"  # a killed writer's temporary folder
    stale.mkdir()
    os.utime(stale, (1, 1))
    monkeypatch.setattr(cache, "MAX_ENTRIES", 1)
    for seed in range(2):
        load_dataset(TrainConfig.from_dict(make_tiny(seed=seed)))
    assert all(folder.is_dir() and (folder / cache.META).is_file() for folder in theirs)
    assert not stale.exists()
    assert len([p for p in cache_dir.iterdir() if cache._ENTRY.fullmatch(p.name)]) == 1


def test_least_recently_used_entries_go_first(cache_dir, make_tiny, monkeypatch):
    monkeypatch.setattr(cache, "MAX_ENTRIES", 2)
    configs = [TrainConfig.from_dict(make_tiny(seed=s)) for s in range(3)]
    load_dataset(configs[0])
    load_dataset(configs[1])
    for path in _entries(cache_dir):  # make the clock visible to mtime-based ordering
        os.utime(path / cache.META, (1, 1))
    assert _mapped(load_dataset(configs[0]))  # used again: now the most recent
    load_dataset(configs[2])  # a third entry: the least recently used one (seed 1) goes
    assert len(_entries(cache_dir)) == 2
    assert _mapped(load_dataset(configs[0])) and _mapped(load_dataset(configs[2]))
    assert not _mapped(load_dataset(configs[1]))


def test_what_is_not_cached(tmp_path, make_tiny):
    folder = tmp_path / "images"
    assert source_identity(TrainConfig.from_dict(make_tiny()).dataset) is not None  # digits: bundled, versioned
    missing = TrainConfig.from_dict(make_tiny(dataset={"name": "npz", "path": str(tmp_path / "none.npz")}))
    assert source_identity(missing.dataset) is None  # the source reports the missing file itself
    (folder / "a").mkdir(parents=True)
    images = TrainConfig.from_dict(make_tiny(dataset={"name": "image_folder", "path": str(folder)}))
    assert source_identity(images.dataset) is None  # lazy images stay on disk


@pytest.mark.skipif(not any(Path(d).expanduser().is_dir() for d in sources.FASHION_DIRS),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_entries_follow_its_files(tmp_path, make_tiny):
    folder = next(Path(d).expanduser() for d in sources.FASHION_DIRS if Path(d).expanduser().is_dir())
    copy = tmp_path / "fashion"
    shutil.copytree(folder, copy)
    config = TrainConfig.from_dict(make_tiny(dataset={"name": "fashion_mnist", "path": str(copy)}))
    before = source_identity(config.dataset)
    assert before is not None and len(before) == len(sources.FASHION_FILES)
    target = copy / sources.FASHION_FILES[0]
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 1_000_000_000))
    assert source_identity(config.dataset) != before


def test_another_process_maps_the_entry_this_one_wrote(cache_dir, tiny_dict, tiny_config):
    """What a second sweep worker on the machine does: no source read, the same splits."""
    load_dataset(tiny_config)
    code = ("import json, sys, numpy as np; from siamese_core import TrainConfig; "
            "from siamese_core.data.sources import load_dataset; "
            "d = load_dataset(TrainConfig.from_dict(json.loads(sys.argv[1]))); "
            "print(isinstance(d.train.x.base, np.memmap), d.info.fingerprint)")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(tiny_dict)], capture_output=True, text=True,
                         env={**os.environ, cache.ENV_DATA_CACHE: str(cache_dir)}, check=True, timeout=120)
    mapped, fingerprint = out.stdout.split()
    assert mapped == "True"
    assert fingerprint == load_dataset(tiny_config).info.fingerprint


def test_processes_racing_on_a_cold_cache_leave_one_whole_entry(cache_dir, tiny_dict):
    """Two independent workers started at once on a cold cache: both load, one entry survives, no temp folders."""
    code = ("import json, sys; from siamese_core import TrainConfig; "
            "from siamese_core.data.sources import load_dataset; "
            "print(load_dataset(TrainConfig.from_dict(json.loads(sys.argv[1]))).info.fingerprint)")
    env = {**os.environ, cache.ENV_DATA_CACHE: str(cache_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(tiny_dict)], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert len(set(outs)) == 1
    assert len(_entries(cache_dir)) == 1
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")], "a writer left its temporary folder"
    assert _mapped(load_dataset(TrainConfig.from_dict(tiny_dict)))
