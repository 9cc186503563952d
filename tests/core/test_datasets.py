"""Dataset loading, validation, splitting and fingerprints (`siamese_core.data.sources`)."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siamese_core.config import TrainConfig
from siamese_core.data import sources
from siamese_core.data.image_folder import ImageFiles, scan_image_folder
from siamese_core.data.sources import load_dataset
from siamese_core.data.types import LabeledSplit, LazyInputs, PairedSplit
from siamese_core.errors import ConfigError, DataError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def cfg(seed: int = 0, **dataset) -> TrainConfig:
    return TrainConfig(dataset=dataset, seed=seed)


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def images_and_labels(n: int = 60, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 6, 6), dtype=np.uint8), np.arange(n) % classes


def write_idx(path: Path, arr: np.ndarray, *, declared: tuple[int, ...] | None = None) -> Path:
    shape = declared or arr.shape
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + arr.tobytes())
    return path


# --------------------------------------------------------------------- digits
def test_digits_shapes_dtype_and_stratified_sizes():
    d = load_dataset(cfg(name="digits"))
    assert isinstance(d.train, LabeledSplit)
    assert d.train.x.dtype == np.uint8 and d.train.x.shape[1:] == (8, 8, 1)
    assert d.train.y.dtype == np.int64
    assert sum(d.info.sizes.values()) == 1797
    assert d.info.sizes == {"train": 1258, "val": 180, "test": 359}  # 0.2 and 0.1 of all samples
    assert d.info.num_classes == 10 and d.info.value_range == (0.0, 16.0)
    assert d.info.kind == "images" and d.info.input_shapes == ((8, 8, 1),) and not d.info.paired
    assert int(d.train.x.max()) <= 16 and d.info.mean is not None and 0 < d.info.mean < 16
    from sklearn.datasets import load_digits
    per_class = np.bincount(load_digits().target)
    for split in d.splits().values():
        assert set(split.classes.tolist()) == set(range(10))
        expected = per_class * len(split) / 1797  # stratified: each class in proportion, +-1
        assert np.all(np.abs(np.bincount(split.y, minlength=10) - expected) <= 1.5)


def test_digits_split_is_deterministic_per_seed():
    a, b, c = (load_dataset(cfg(seed=s, name="digits")) for s in (7, 7, 8))
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a.splits()[name].x, b.splits()[name].x)
        np.testing.assert_array_equal(a.splits()[name].y, b.splits()[name].y)
    assert a.info.fingerprint == b.info.fingerprint
    assert not np.array_equal(a.test.x, c.test.x)
    assert a.info.fingerprint != c.info.fingerprint


def test_class_split_holds_out_disjoint_classes():
    d = load_dataset(cfg(name="digits", split="class"))
    sets = {k: set(s.classes.tolist()) for k, s in d.splits().items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(range(10))
    assert len(sets["val"]) >= 2 and len(sets["test"]) >= 2
    assert d.info.split == "class" and sum(d.info.sizes.values()) == 1797


def test_class_split_records_the_classes_and_achieved_sample_share_of_each_split():
    """Issue 12.10: with split: class the fractions count classes (10 classes -> 2 test classes), so DataInfo
    records what a run actually got: samples, their share, and classes per split."""
    d = load_dataset(cfg(name="digits", split="class"))
    assert d.info.classes_per_split == {"train": 6, "val": 2, "test": 2}
    assert d.info.fractions == {k: round(n / 1797, 4) for k, n in d.info.sizes.items()}
    summary = d.info.to_dict()
    assert summary["classes_per_split"] == {"train": 6, "val": 2, "test": 2}
    assert summary["fractions"] == d.info.fractions and summary["sizes"] == d.info.sizes
    assert load_dataset(cfg(name="digits")).info.classes_per_split == {"train": 10, "val": 10, "test": 10}


def test_class_split_needs_enough_classes(tmp_path):
    x, y = images_and_labels(n=50, classes=5)
    path = write_npz(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match="at least 2 classes each"):
        load_dataset(cfg(name="npz", path=str(path), split="class"))


def test_fingerprint_depends_on_split_parameters_and_data(tmp_path):
    base = load_dataset(cfg(name="digits")).info.fingerprint
    for changed in (cfg(name="digits", val_fraction=0.15), cfg(name="digits", split="class"),
                    cfg(name="digits", max_train_samples=500), cfg(seed=1, name="digits")):
        assert load_dataset(changed).info.fingerprint != base
    x, y = images_and_labels()
    fp1 = load_dataset(cfg(name="npz", path=str(write_npz(tmp_path / "a.npz", x=x, y=y)))).info.fingerprint
    x2 = x.copy()
    x2[0, 0, 0] ^= 1
    fp2 = load_dataset(cfg(name="npz", path=str(write_npz(tmp_path / "b.npz", x=x2, y=y)))).info.fingerprint
    fp3 = load_dataset(cfg(name="npz", path=str(write_npz(tmp_path / "c.npz", x=x, y=y)))).info.fingerprint
    assert fp1 != fp2 and fp1 == fp3 and len(fp1) == 64


def test_class_ids_become_0_to_c_minus_1_at_load_and_are_kept_for_display(tmp_path):
    """Issue 12.4: samplers and float32 triplet targets only ever see dense ids."""
    x, y = images_and_labels(n=60, classes=3)
    ids = np.array([100_000_007, 5, -3])  # class k of `y` has the user's id ids[k]
    d = load_dataset(cfg(name="npz", path=str(write_npz(tmp_path / "ids.npz", x=x, y=ids[y]))))
    ref = load_dataset(cfg(name="npz", path=str(write_npz(tmp_path / "ref.npz", x=x, y=2 - y))))  # sorted ids
    assert d.info.class_ids == (-3, 5, 100_000_007) and d.info.num_classes == 3
    assert ref.info.class_ids == (0, 1, 2)
    for name, split in d.splits().items():
        np.testing.assert_array_equal(split.y, ref.splits()[name].y)
        np.testing.assert_array_equal(split.x, ref.splits()[name].x)
        assert split.y.dtype == np.int64
    assert d.info.fingerprint != ref.info.fingerprint  # the user's ids are part of the data
    assert d.info.to_dict()["class_ids"] == [-3, 5, 100_000_007]
    digits = load_dataset(cfg(name="digits")).info
    assert digits.class_ids == tuple(range(10)) and digits.class_names == tuple(str(i) for i in range(10))


def test_max_samples_subsample_is_stratified_and_deterministic():
    c = cfg(name="digits", max_train_samples=200, max_eval_samples=50)
    a, b = load_dataset(c), load_dataset(c)
    assert a.info.sizes == {"train": 200, "val": 50, "test": 50}
    np.testing.assert_array_equal(a.train.y, b.train.y)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    counts = np.bincount(a.train.y, minlength=10)
    assert counts.min() >= 19 and counts.max() <= 21
    full = load_dataset(cfg(name="digits"))
    # the subsample is drawn from the same train split; the test split pool is unchanged
    rows = {r.tobytes() for r in full.train.x}
    assert all(r.tobytes() in rows for r in a.train.x)
    other = load_dataset(cfg(seed=3, name="digits", max_train_samples=200, max_eval_samples=50))
    assert not np.array_equal(other.train.x, a.train.x)


def test_eval_split_without_positive_pairs_is_refused():
    with pytest.raises(DataError, match="no positive pairs"):
        load_dataset(cfg(name="digits", max_eval_samples=2))  # 2 samples from 2 different classes


# ------------------------------------------------------------- fashion-mnist
@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed "
                    "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_package():
    d = load_dataset(cfg(name="fashion_mnist"))
    assert d.info.source == str(DEBIAN_FASHION)
    assert d.info.sizes == {"train": 54000, "val": 6000, "test": 10000}
    assert d.train.x.dtype == np.uint8 and d.train.x.shape == (54000, 28, 28, 1)
    assert d.test.x.shape == (10000, 28, 28, 1)
    assert np.bincount(d.val.y).tolist() == [600] * 10  # val carved 10% per class
    assert d.info.value_range == (0.0, 255.0) and d.info.class_names[0] == "T-shirt/top"
    assert 60 < d.info.mean < 90 and 80 < d.info.std < 100


def test_fashion_mnist_explicit_folder_and_missing_files(tmp_path):
    rng = np.random.default_rng(0)
    x, xt = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    for name, arr in zip(sources.FASHION_FILES, (x, np.arange(40, dtype=np.uint8) % 2, xt,
                                                  np.arange(20, dtype=np.uint8) % 2), strict=True):
        write_idx(tmp_path / name, arr)
    d = load_dataset(cfg(name="fashion_mnist", path=str(tmp_path)))
    assert d.info.sizes == {"train": 36, "val": 4, "test": 20}
    np.testing.assert_array_equal(d.test.x[..., 0], xt)
    (tmp_path / sources.FASHION_FILES[3]).unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset(cfg(name="fashion_mnist", path=str(tmp_path)))


def test_fashion_mnist_not_found_anywhere_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_DIRS", (str(tmp_path / "none"),))

    def offline():
        raise OSError("no network")
    monkeypatch.setattr(sources, "_keras_fashion_mnist", offline)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset(cfg(name="fashion_mnist"))
    assert str(tmp_path / "none") in str(err.value)


def test_mnist_offline_says_why_the_download_failed_and_what_to_do(tmp_path, monkeypatch):
    """It said "the Keras download failed (Exception)": Keras' `get_file` raises a bare Exception whose text is the
    reason (session 47's review)."""
    monkeypatch.setattr(sources, "MNIST_FILE", str(tmp_path / "mnist.npz"))

    def offline():  # what keras.utils.get_file raises without a route to Google's servers
        raise Exception("URL fetch failure on https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz: "
                        "None -- [Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(sources, "_keras_mnist", offline)
    with pytest.raises(DataError) as err:
        load_dataset(cfg(name="mnist"))
    assert "Temporary failure in name resolution" in str(err.value) and "benchmarks/get_mnist.py" in str(err.value)


def test_truncated_idx_gzip_names_the_file(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((50, 28, 28), np.uint8) + 7)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt gzip") as err:
        sources.read_idx(path)
    assert err.value.source == str(path)


def test_idx_header_count_must_match_bytes(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((10, 4, 4), np.uint8), declared=(11, 4, 4))
    with pytest.raises(DataError, match=r"declares shape \(11, 4, 4\)"):
        sources.read_idx(path)
    path = write_idx(tmp_path / "y.gz", np.zeros((10, 4, 4), np.uint8), declared=(9, 4, 4))
    with pytest.raises(DataError, match="more data than the IDX header"):
        sources.read_idx(path)


# ------------------------------------------------------------------------ npz
def _bad_npz_cases():
    x, y = images_and_labels()
    nan = x.astype(np.float32)
    nan[3, 1, 1] = np.nan
    return {
        "nan": (dict(x=nan, y=y), "NaN or infinite value.*first in sample 3"),
        "object": (dict(x=np.array([object()] * 60, dtype=object), y=y), "dtype object"),
        "string": (dict(x=np.array([["a", "b"]] * 60), y=y), "string"),
        "complex": (dict(x=x.astype(np.complex64), y=y), "complex"),
        "one_class": (dict(x=x, y=np.zeros(60, int)), "collapses to a constant map"),
        "length": (dict(x=x, y=y[:-1]), r"len\(x\)=60, len\(y\)=59"),
        "missing_y": (dict(x=x), r"missing array\(s\) \['y'\]"),
        "float_labels": (dict(x=x, y=y + 0.5), "non-integer"),
        "rank1": (dict(x=np.arange(60.0), y=y), "rank 1"),
        "no_pairs_in_train": (dict(x=x[:12], y=np.arange(12)), "no class in the train split has 2"),
    }


@pytest.mark.parametrize("case", sorted(_bad_npz_cases()))
def test_bad_npz_raises_data_error_naming_the_file(tmp_path, case):
    arrays, pattern = _bad_npz_cases()[case]
    path = write_npz(tmp_path / f"{case}.npz", **arrays)
    with pytest.raises(DataError, match=pattern) as err:
        load_dataset(cfg(name="npz", path=str(path)))
    assert err.value.source == str(path)


def test_truncated_npz_is_a_data_error(tmp_path):
    x, y = images_and_labels(n=3000)
    path = tmp_path / "t.npz"
    np.savez_compressed(path, x=x, y=y)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match="truncated or corrupt|not a valid"):
            load_dataset(cfg(name="npz", path=str(path)))


def test_npz_kinds_tokens_vectors_and_official_test(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(100) % 4
    tok = load_dataset(cfg(name="npz", path=str(write_npz(tmp_path / "t.npz", x=rng.integers(0, 50, (100, 7)),
                                                                  y=y))))
    assert tok.info.kind == "tokens" and tok.info.vocab_size <= 50 and tok.info.input_shape == (7,)
    assert tok.info.mean is None and tok.train.x.dtype == np.int32
    vec = load_dataset(cfg(name="npz", path=str(write_npz(tmp_path / "v.npz", x=rng.normal(size=(100, 5)), y=y,
                                                                  x_test=rng.normal(size=(40, 5)),
                                                                  y_test=np.arange(40) % 4))))
    assert vec.info.kind == "vectors" and vec.train.x.dtype == np.float32  # float64 -> float32
    assert vec.info.sizes == {"train": 90, "val": 10, "test": 40}
    lo, hi = vec.info.value_range
    assert lo == pytest.approx(float(vec.train.x.min())) and hi == pytest.approx(float(vec.train.x.max()))


def test_mnist_keras_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = write_npz(tmp_path / "mnist.npz", x_train=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
                     y_train=np.arange(100) % 2, x_test=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
                     y_test=np.arange(30) % 2)
    d = load_dataset(cfg(name="mnist", path=str(tmp_path)))  # a folder holding mnist.npz also works
    assert d.info.sizes == {"train": 90, "val": 10, "test": 30} and d.info.source == str(path)
    assert d.train.x.dtype == np.uint8 and d.info.input_shape == (28, 28, 1) and d.info.value_range == (0.0, 255.0)
    with pytest.raises(DataError, match=r"missing array\(s\) \['x_test', 'y_test'\]"):
        load_dataset(cfg(name="mnist", path=str(write_npz(tmp_path / "m2.npz", x_train=np.zeros((4, 2, 2)),
                                                                y_train=np.arange(4)))))


# ------------------------------------------------------------------ pairs_npz
def _pairs(tmp_path: Path, y: np.ndarray, **extra) -> Path:
    rng = np.random.default_rng(0)
    n = y.shape[0]
    return write_npz(tmp_path / "pairs.npz", x1=rng.integers(0, 300, (n, 52)), x2=rng.integers(0, 900, (n, 600)),
                     y=y, **extra)


def test_pairs_npz_two_tower_tokens(tmp_path):
    d = load_dataset(cfg(name="pairs_npz", path=str(_pairs(tmp_path, np.arange(200) % 2))))
    assert isinstance(d.train, PairedSplit) and d.info.paired and d.info.num_classes is None
    assert d.info.input_shapes == ((52,), (600,)) and d.info.two_tower
    assert d.info.kind == "tokens" and 850 < d.info.vocab_size <= 900
    assert d.train.y.dtype == np.float32 and d.info.sizes == {"train": 140, "val": 20, "test": 40}
    for split in d.splits().values():
        assert 0 < split.y.mean() < 1
        assert split.x1.shape[0] == split.x2.shape[0] == split.y.shape[0]


def _digit_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` pairs of sklearn digits, half same-class, partners drawn with replacement (images recur)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.images.astype(np.uint8), d.target
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(y), n)
    same = rng.random(n) < 0.5
    b = np.array([rng.choice(np.flatnonzero((y == y[i]) if s else (y != y[i]))) for i, s in zip(a, same, strict=True)])
    return x[a], x[b], same.astype(np.int64)


def _rows(*arrays: np.ndarray) -> set[bytes]:
    return {row.tobytes() for a in arrays for row in a.reshape(len(a), -1)}


def test_pairs_npz_split_keeps_every_image_in_one_split(tmp_path):
    """Issue 12.5: pairs were split by pair, so most test images also sat in training pairs."""
    x1, x2, y = _digit_pairs(800)
    d = load_dataset(cfg(name="pairs_npz", path=str(write_npz(tmp_path / "p.npz", x1=x1, x2=x2, y=y))))
    train, val, test = (_rows(s.x1, s.x2) for s in (d.train, d.val, d.test))
    assert not train & test and not train & val and not val & test
    assert d.info.shared_rows == {"val": 0.0, "test": 0.0}
    assert sum(d.info.sizes.values()) == 800  # whole groups moved, no pair dropped
    assert abs(d.info.fractions["test"] - 0.2) < 0.02 and abs(d.info.fractions["val"] - 0.1) < 0.02
    for split in d.splits().values():
        assert 0.3 < split.y.mean() < 0.7  # both labels, roughly balanced


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 25), st.integers(0, 10_000))
def test_pair_groups_are_the_connected_components_of_shared_rows(n_pairs, n_rows, seed):
    from siamese_core.data.splits import carve_groups, pair_groups

    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 3, (n_rows, 2)).astype(np.uint8)  # duplicates among the rows too
    a, b = rng.integers(0, n_rows, n_pairs), rng.integers(0, n_rows, n_pairs)
    parent = {}  # reference: union-find over row contents

    def find(k):
        while parent.setdefault(k, k) != k:
            k = parent[k]
        return k
    for i, j in zip(a, b, strict=True):
        parent[find(rows[i].tobytes())] = find(rows[j].tobytes())
    expected = np.array([find(rows[i].tobytes()) for i in a])
    groups = pair_groups(rows[a], rows[b])
    if groups is None:
        assert len(set(expected)) == n_pairs
    else:
        same = groups[:, None] == groups[None, :]
        np.testing.assert_array_equal(same, expected[:, None] == expected[None, :])
        y = rng.integers(0, 2, n_pairs)
        rest, taken = carve_groups(groups, y, n_pairs // 4, rng=rng)
        assert not set(groups[rest]) & set(groups[taken]) and rest.size + taken.size == n_pairs
        assert taken.size <= n_pairs // 4 + 1


def test_pairs_npz_that_cannot_be_split_without_sharing_images_are_refused(tmp_path):
    """5,000 pairs over 1,797 images are one connected group: refused, with the leak a split by pair makes."""
    x1, x2, y = _digit_pairs(5000)
    with pytest.raises(DataError, match=r"largest holds 5000 of 5000 pairs.*% of the test inputs into training") as e:
        load_dataset(cfg(name="pairs_npz", path=str(write_npz(tmp_path / "p.npz", x1=x1, x2=x2, y=y))))
    assert "x1_test" in str(e.value) and "'npz'" in str(e.value)


def test_pairs_npz_label_problems(tmp_path):
    with pytest.raises(DataError, match="positives_only.*no negative pairs"):
        load_dataset(cfg(name="pairs_npz", path=str(_pairs(tmp_path, np.ones(50, int)))))
    with pytest.raises(DataError, match="only 0 and 1"):
        load_dataset(cfg(name="pairs_npz", path=str(_pairs(tmp_path, np.arange(50) % 3))))
    official = _pairs(tmp_path, np.arange(100) % 2, x1_test=np.zeros((10, 52), int), x2_test=np.ones((10, 600), int),
                      y_test=np.arange(10) % 2)
    d = load_dataset(cfg(name="pairs_npz", path=str(official)))
    assert d.info.sizes == {"train": 90, "val": 10, "test": 10} and np.all(d.test.x2 == 1)
    negatives_only = _pairs(tmp_path, np.arange(100) % 2, x1_test=np.zeros((10, 52), int),
                            x2_test=np.ones((10, 600), int), y_test=np.zeros(10))
    with pytest.raises(DataError, match="negatives_only.*test split"):
        load_dataset(cfg(name="pairs_npz", path=str(negatives_only)))
    with pytest.raises(ConfigError, match="dataset.split"):
        load_dataset(cfg(name="pairs_npz", path=str(_pairs(tmp_path, np.arange(50) % 2)), split="class"))


# --------------------------------------------------------------- image folder
def make_folder(root: Path, *, per_class: int = 10, classes=("cat", "dog")) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (10, 12), dtype=np.uint8)
            if i == 8:
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / name / "8.jpg")
            elif i == 9:
                Image.fromarray(np.stack([arr] * 3, -1)).save(root / name / "9.gif")
            elif i % 3 == 0:
                Image.fromarray(np.stack([arr, arr // 2, 255 - arr], -1)).save(root / name / f"{i}.png")
            elif i % 3 == 1:
                Image.fromarray(arr).save(root / name / f"{i}.png")
            else:
                Image.fromarray(rng.integers(0, 256, (16, 9, 3), dtype=np.uint8)).save(root / name / f"{i}.bmp")
    return root


def folder_cfg(root: Path, **kw) -> TrainConfig:
    return cfg(name="image_folder", path=str(root), val_fraction=0.3, test_fraction=0.3, **kw)


def test_image_folder_is_lazy_and_load_matches_tf_data(tmp_path):
    import tensorflow as tf
    from PIL import Image
    root = make_folder(tmp_path / "imgs")
    d = load_dataset(folder_cfg(root))
    assert isinstance(d.train.x, LazyInputs) and isinstance(d.train.x, ImageFiles)
    assert d.info.class_names == ("cat", "dog") and d.info.input_shape == (10, 12, 1)
    assert d.info.value_range == (0.0, 255.0) and d.info.sizes == {"train": 8, "val": 6, "test": 6}
    x = d.train.x
    dense = x.load()
    assert dense.dtype == np.uint8 and dense.shape == (8, 10, 12, 1)
    via_tf = np.concatenate([b.numpy() for b in tf.data.Dataset.from_tensor_slices(x.tf_source())
                             .map(x.tf_decode).batch(3)])
    np.testing.assert_array_equal(dense, via_tf)  # bit-identical across loaders
    np.testing.assert_array_equal(x.load(np.array([5, 1])), dense[[5, 1]])
    # a grayscale PNG at the target size decodes to exactly its pixels
    gray = [i for i, p in enumerate(x.paths) if p.endswith(("1.png", "4.png", "7.png"))]
    for i in gray:
        np.testing.assert_array_equal(dense[i, ..., 0], np.asarray(Image.open(x.paths[i])))


def test_a_class_folder_too_rare_for_every_split_is_named_by_its_folder(tmp_path):
    """The refusal named the class by our dense id ("class 1"); an image folder's user knows it as 'dog'."""
    root = make_folder(tmp_path / "imgs", classes=("cat",))
    make_folder(tmp_path / "one", per_class=1, classes=("dog",))
    (tmp_path / "one" / "dog").rename(root / "dog")
    with pytest.raises(DataError, match=r"too few samples of class 'dog' \(1 sample\) to reach train"):
        load_dataset(folder_cfg(root))


def test_image_folder_resize_and_rgb(tmp_path):
    root = make_folder(tmp_path / "imgs")
    d = load_dataset(folder_cfg(root, image_size=(6, 5), color_mode="rgb"))
    batch = d.test.x.load()
    assert batch.shape == (6, 6, 5, 3) and d.info.input_shape == (6, 5, 3)
    fp_gray = load_dataset(folder_cfg(root, image_size=(6, 5))).info.fingerprint
    assert fp_gray != d.info.fingerprint


def test_index_csv_escaping_the_folder_is_refused(tmp_path):
    root = make_folder(tmp_path / "imgs")
    outside = tmp_path / "secret.png"
    outside.write_bytes((root / "cat" / "1.png").read_bytes())
    os.symlink(outside, root / "cat" / "link.png")
    good = "".join(f"cat/{i}.png,cat\ndog/{i}.png,dog\n" for i in (0, 1, 3, 4, 6, 7))
    for bad in ("../etc/passwd", "/etc/passwd", "cat/../../secret.png", "cat/link.png"):
        (root / "index.csv").write_text(f"path,label\n{good}{bad},cat\n")
        with pytest.raises(DataError, match="outside the data folder") as err:
            load_dataset(folder_cfg(root, index="index.csv"))
        assert "line 14" in err.value.source and bad in str(err.value)
    (root / "index.csv").write_text(f"path,label\n{good}")
    d = load_dataset(folder_cfg(root, index="index.csv"))
    assert sum(d.info.sizes.values()) == 12 and d.info.class_names == ("cat", "dog")


def test_walk_mode_refuses_symlinks_out_of_the_folder(tmp_path):
    """Index mode refused them; walking the class folders followed them (read a file outside the folder)."""
    root = make_folder(tmp_path / "imgs")
    outside = tmp_path / "secret.png"
    outside.write_bytes((root / "cat" / "1.png").read_bytes())
    os.symlink(outside, root / "cat" / "link.png")
    with pytest.raises(DataError, match="outside the data folder"):
        load_dataset(folder_cfg(root))
    os.remove(root / "cat" / "link.png")
    elsewhere = make_folder(tmp_path / "elsewhere")
    os.symlink(elsewhere / "dog", root / "bird")
    with pytest.raises(DataError, match="outside the data folder"):
        load_dataset(folder_cfg(root))
    os.remove(root / "bird")
    os.symlink(root / "cat" / "1.png", root / "dog" / "inside-link.png")  # inside the folder: fine
    assert load_dataset(folder_cfg(root)).info.class_names == ("cat", "dog")


def test_corrupt_or_missing_images_are_named(tmp_path):
    root = make_folder(tmp_path / "imgs")
    target = root / "dog" / "4.png"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated PNG") as err:
        load_dataset(folder_cfg(root))
    assert err.value.source == str(target)
    target.write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        load_dataset(folder_cfg(root))
    target.write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match="not a PNG"):
        load_dataset(folder_cfg(root))
    # valid signature and end marker, garbage in between: caught when decoded, still named
    target.write_bytes(data[:16] + b"\x00" * 50 + data[-12:])
    files, labels, _ = scan_image_folder(root)  # cheap checks pass; only the first image is decoded
    assert len(files) == 20 and labels.tolist() == [0] * 10 + [1] * 10
    with pytest.raises(DataError, match="cannot decode image") as err:
        files.verify()
    assert err.value.source == str(target)
    target.unlink()
    (root / "index.csv").write_text("path,label\ndog/4.png,dog\ncat/1.png,cat\n")
    with pytest.raises(DataError, match="not found"):
        load_dataset(folder_cfg(root, index="index.csv"))


def test_odd_image_folders_are_said_or_refused_in_one_line(tmp_path, caplog):
    """The review of image_folder: a symlink loop was a RuntimeError (exit 1); a damaged PNG header was "declares
    2266943774 x 2688186891 pixels ... downscale it first"; images of other sizes were resized to the first file's,
    an empty class folder dropped, both without a word."""
    import logging

    root = make_folder(tmp_path / "imgs")  # 12x10, 20x20 and 9x16 images (width x height)
    (root / "bird").mkdir()
    with caplog.at_level(logging.WARNING, logger="siamese_core.data.image_folder"):
        d = load_dataset(folder_cfg(root))
    assert d.info.input_shape == (10, 12, 1) and d.info.class_names == ("cat", "dog")
    assert "have 3 sizes" in caplog.text and "all are resized to 12x10, the size of the first file" in caplog.text
    assert "class folders without an image under" in caplog.text and "not classes: bird" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="siamese_core.data.image_folder"):
        load_dataset(folder_cfg(root, image_size=(6, 5)))
    assert "sizes" not in caplog.text  # a size chosen: nothing to say about it

    damaged = root / "dog" / "4.png"
    good = damaged.read_bytes()
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8))
                        + b"IEND\xaeB`\x82")
    with pytest.raises(DataError, match="damaged PNG file") as err:
        load_dataset(folder_cfg(root))
    assert err.value.source == str(damaged)
    damaged.write_bytes(good)

    os.symlink("loop.png", root / "cat" / "loop.png")
    with pytest.raises(DataError, match="symlink loop"):
        load_dataset(folder_cfg(root))


def test_npz_inputs_that_used_to_exit_1_are_data_errors(tmp_path):
    """A .npy given as the archive, a header declaring a huge array, zero-width features, ids beyond any
    vocabulary: each a DataError naming the file (exit 2), before anything large is allocated."""
    import io
    import zipfile

    y = np.repeat(np.arange(4), 10)
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((40, 3), np.float32))
    with pytest.raises(DataError, match="expected an .npz archive"):
        load_dataset(cfg(name="npz", path=str(npy)))
    text = tmp_path / "junk.npz"  # it was "array '<archive>' holds Python objects (dtype object)"
    text.write_text("hello\n")
    with pytest.raises(DataError, match=r"not an \.npz archive \(np\.savez writes a zip file\)"):
        load_dataset(cfg(name="npz", path=str(text)))

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 8)})
    crafted = tmp_path / "crafted.npz"
    with zipfile.ZipFile(crafted, "w") as zf:
        zf.writestr("x.npy", buf.getvalue() + b"\0" * 64)
        zbuf = io.BytesIO()
        np.save(zbuf, y)
        zf.writestr("y.npy", zbuf.getvalue())
    with pytest.raises(DataError, match="declares shape"):
        load_dataset(cfg(name="npz", path=str(crafted)))

    with pytest.raises(DataError, match="zero-width"):
        load_dataset(cfg(name="npz", path=str(write_npz(tmp_path / "w.npz", x=np.zeros((40, 0), np.float32), y=y))))

    tokens = np.random.default_rng(0).integers(0, 50, size=(40, 6)).astype(np.int64)
    tokens[3, 2] = 2**40
    with pytest.raises(DataError, match="ids up to"):
        load_dataset(cfg(name="npz", path=str(write_npz(tmp_path / "t.npz", x=tokens, y=y))))


def test_image_declaring_huge_dimensions_is_refused_before_decoding(tmp_path):
    """A small PNG whose header declares 10000 x 10000 pixels (3 GB to decode) is a DataError at scan time."""
    import struct
    import zlib

    from siamese_core.data.image_folder import MAX_IMAGE_PIXELS, check_image

    root = make_folder(tmp_path / "imgs")
    side = 10_000
    assert side * side > MAX_IMAGE_PIXELS

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"".join(b"\0" + bytes(side) for _ in range(side)), 9)  # grayscale, all black
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    assert len(png) < 200_000
    (root / "cat" / "bomb.png").write_bytes(png)
    with pytest.raises(DataError, match="declares 10000 x 10000"):
        check_image(root / "cat" / "bomb.png")
    with pytest.raises(DataError, match="declares 10000 x 10000"):
        load_dataset(folder_cfg(root))
