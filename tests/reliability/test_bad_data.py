"""Item 7: corrupt or hostile data is one clear `DataError` before any study exists, and exit code 2.

Each case is checked twice: `preflight` raises `DataError` naming the file, and the real
``siamese-sweep run`` exits 2 with exactly one ``error:`` line, no traceback, and no Optuna
storage or MLflow store created (the CLI runs are started together, so the whole file stays fast).
"""
from __future__ import annotations

import gzip
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from siamese_core.errors import DataError

from .harness import clean_env, cli, spec_dict, write_spec

DIGITS_LIKE = (np.arange(60, dtype=np.uint8).reshape(60, 1, 1) * np.ones((1, 8, 8), np.uint8), np.arange(60) % 3)


def _idx(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _fashion_folder(d: Path, *, damage: str) -> dict:
    x = np.random.default_rng(0).integers(0, 255, (50, 28, 28), dtype=np.uint8)
    y = (np.arange(50) % 5).astype(np.uint8)
    files = {"train-images-idx3-ubyte.gz": x, "train-labels-idx1-ubyte.gz": y,
             "t10k-images-idx3-ubyte.gz": x[:20], "t10k-labels-idx1-ubyte.gz": y[:20]}
    for name, arr in files.items():
        (d / name).write_bytes(gzip.compress(_idx(arr)))
    target = d / "train-images-idx3-ubyte.gz"
    raw = target.read_bytes()
    if damage == "truncated_gzip":
        target.write_bytes(raw[: len(raw) // 2])
    else:  # a valid gzip whose IDX data stops short of what the header declares
        target.write_bytes(gzip.compress(_idx(x)[: 16 + 28 * 28 * 10]))
    return {"name": "fashion_mnist", "path": str(d)}


def _npz(d: Path, **arrays: np.ndarray) -> dict:
    path = d / "data.npz"
    np.savez(path, **arrays)
    return {"name": "npz", "path": str(path)}


def _truncated_npz(d: Path) -> dict:
    ds = _npz(d, x=DIGITS_LIKE[0], y=DIGITS_LIKE[1])
    raw = Path(ds["path"]).read_bytes()
    Path(ds["path"]).write_bytes(raw[: len(raw) * 2 // 3])
    return ds


def _nan_pixels(d: Path) -> dict:
    x = DIGITS_LIKE[0].astype(np.float32)
    x[7, 3, 3] = np.nan
    return _npz(d, x=x, y=DIGITS_LIKE[1])


def _image_folder_escape(d: Path) -> dict:
    from PIL import Image

    root = d / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "secret.png")
    rows = [f"{c}/{i}.png,{c}" for c in ("a", "b") for i in range(3)] + ["../secret.png,a"]
    (root / "index.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return {"name": "image_folder", "path": str(root), "index": "index.csv"}


CASES: dict[str, tuple[Callable[[Path], dict], str]] = {
    "truncated_idx_gzip": (lambda d: _fashion_folder(d, damage="truncated_gzip"), "train-images-idx3-ubyte.gz"),
    "idx_shorter_than_header": (lambda d: _fashion_folder(d, damage="short_data"), "train-images-idx3-ubyte.gz"),
    "truncated_npz": (_truncated_npz, "data.npz"),
    "wrong_dtype": (lambda d: _npz(d, x=DIGITS_LIKE[0].astype(np.complex64), y=DIGITS_LIKE[1]), "data.npz"),
    "wrong_shape": (lambda d: _npz(d, x=np.zeros(60, np.uint8), y=DIGITS_LIKE[1]), "data.npz"),
    "labels_disagree_with_images": (lambda d: _npz(d, x=DIGITS_LIKE[0], y=DIGITS_LIKE[1][:50]), "data.npz"),
    "nan_pixels": (_nan_pixels, "data.npz"),
    "one_class": (lambda d: _npz(d, x=DIGITS_LIKE[0], y=np.zeros(60, np.int64)), "data.npz"),
    "empty_split": (lambda d: _npz(d, x=DIGITS_LIKE[0][:0], y=DIGITS_LIKE[1][:0]), "data.npz"),
    "empty_test_split": (lambda d: _npz(d, x=DIGITS_LIKE[0], y=DIGITS_LIKE[1], x_test=DIGITS_LIKE[0][:0],
                                        y_test=DIGITS_LIKE[1][:0]), "data.npz"),
    "index_path_outside_data_dir": (_image_folder_escape, "index.csv"),
}


def _spec(d: Path, dataset: dict) -> Path:
    return write_spec(d / "spec.yaml", spec_dict(d, base={"dataset": dataset, "epochs": 1}))


@pytest.mark.parametrize("case", sorted(CASES))
def test_preflight_raises_one_data_error_naming_the_file(case: str, tmp_path: Path) -> None:
    from sweeps.preflight import preflight
    from sweeps.spec import load_spec

    make, culprit = CASES[case]
    spec = load_spec(_spec(tmp_path, make(tmp_path)))
    with pytest.raises(DataError) as info:
        preflight(spec)
    assert culprit in str(info.value), str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_cli_exits_2_before_any_study_or_run_exists(tmp_path: Path) -> None:
    procs = {}
    for case, (make, _) in CASES.items():
        d = tmp_path / case
        d.mkdir()
        spec = _spec(d, make(d))
        procs[case] = (d, subprocess.Popen(
            cli() + ["run", str(spec), "--storage", f"sqlite:///{d}/optuna.db", "--tracking-uri",
                     f"sqlite:///{d}/mlflow.db", "--quiet"],
            cwd=d, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for case, (d, proc) in procs.items():
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 2, (case, err[-2000:])
        assert "Traceback" not in err, (case, err)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and CASES[case][1] in errors[0], (case, err)
        assert not (d / "optuna.db").exists() and not (d / "mlflow.db").exists(), case
