"""Fresh processes: load ``models:/NAME@champion`` as pyfunc and as Keras (safe mode); `siamese-sweep predict`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sweeps.promotion import promote

from .conftest import Stores, test_split

NAME = "loadable"

FRESH = r"""
import json, sys
import numpy as np, pandas as pd
import mlflow
uri = "models:/%s@champion"
pyf = mlflow.pyfunc.load_model(uri)                       # no siamese import needed: the wrapper registers the layers
x = np.load(sys.argv[1])
df = pd.DataFrame({"left": [x[0].tolist(), x[1].tolist()], "right": [x[2].tolist(), x[3].tolist()]})
pairs = pyf.predict(df)
emb = pyf.predict(pd.DataFrame({"input": [x[0].tolist()]}), params={"mode": "embed"})
try:  # the training data's range comes with the model (its pyfunc model_config): 0..255 for a 0..16 model
    pyf.predict(pd.DataFrame({"left": [(x[0].astype(float) * 255 / 16).round().tolist()], "right": [x[2].tolist()]}))
    scale = "accepted"
except Exception as exc:
    scale = str(exc)
import siamese_core.models.layers                          # what a user does before mlflow.keras.load_model
km = mlflow.keras.load_model(uri, load_model_kwargs={"safe_mode": True})
out = km.predict_on_batch([x[[0, 1]], x[[2, 3]]])
print(json.dumps({"pairs": pairs.to_dict(orient="list"), "embedding": emb["embedding"][0],
                  "keras_class": type(km).__name__, "keras_distance": np.asarray(out["distance"]).tolist(),
                  "keras_same": np.asarray(out["same"]).tolist(), "flavors": sorted(pyf.metadata.flavors),
                  "scale": scale}))
""".replace("%s", NAME)


@pytest.fixture(scope="module")
def promoted(sqlite_stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = promote("good", **sqlite_stores.kw(model_name=NAME))
    split, trial = test_split(sqlite_stores)
    tmp = tmp_path_factory.mktemp("samples")
    np.save(tmp / "x.npy", np.stack([split.left[0], split.left[1], split.right[0], split.right[1]]))
    return {"decision": d, "split": split, "trial": trial, "dir": tmp}


def test_fresh_process_loads_pyfunc_and_keras_by_alias(sqlite_stores: Stores, promoted: dict) -> None:
    proc = subprocess.run([sys.executable, "-c", FRESH, str(promoted["dir"] / "x.npy")], capture_output=True,
                          text=True, env=sqlite_stores.env(), timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["keras_class"] == "Functional" and out["flavors"] == ["keras", "python_function"]
    np.testing.assert_allclose(out["pairs"]["distance"], out["keras_distance"], rtol=1e-6)
    assert out["pairs"]["same"] == [bool(s) for s in out["keras_same"]]
    thr = promoted["trial"].user_attrs["threshold"]
    assert out["pairs"]["same"] == [d <= thr for d in out["pairs"]["distance"]]
    assert len(out["embedding"]) == 16
    assert "the model was trained on 0..16" in out["scale"], out["scale"]


def test_cli_predict_with_npy_and_image_files(sqlite_stores: Stores, promoted: dict,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from sweeps.cli import main

    d: Path = promoted["dir"]
    split = promoted["split"]
    a, b = split.left[0], split.right[0]  # digits: 8x8x1 uint8 in 0..16
    np.save(d / "a.npy", a)
    np.save(d / "b.npy", b[None])  # a batch of one is accepted too
    Image.fromarray((a[..., 0].astype(np.float64) * 255 / 16).round().astype(np.uint8)).save(d / "a.png")
    uri, tracking = f"models:/{NAME}@champion", ["--tracking-uri", sqlite_stores.tracking_uri]
    assert main(["predict", uri, str(d / "a.npy"), str(d / "b.npy"), "--json", *tracking]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"distance", "score", "same", "threshold"}
    assert out["threshold"] == pytest.approx(promoted["trial"].user_attrs["threshold"])
    assert out["same"] == (out["distance"] <= out["threshold"])
    distance = promoted["trial"].params.get("distance") or "cosine"  # the study's, else the default
    score = 1 - out["distance"] / 2 if distance == "cosine" else 1 / (1 + out["distance"])
    assert out["score"] == pytest.approx(score, rel=1e-5)
    # the PNG is decoded like an image folder and rescaled to the model's value range (0..16 for digits)
    assert main(["predict", uri, str(d / "a.png"), str(d / "b.npy"), *tracking]) == 0
    text = capsys.readouterr().out
    fields = dict(f.split("=") for f in text.split("(")[0].split())
    assert float(fields["distance"]) == pytest.approx(out["distance"], rel=1e-5)
    assert fields["same"] == str(out["same"]).lower() and "threshold" in text
    assert main(["predict", uri, str(d / "a.npy"), str(d / "missing.npy"), *tracking]) == 2
    assert "missing.npy" in capsys.readouterr().err
    (d / "empty.npy").write_bytes(b"")  # numpy's EOFError was exit 1 (a truncated file's ValueError was one line)
    assert main(["predict", uri, str(d / "empty.npy"), str(d / "b.npy"), *tracking]) == 2
    assert "empty.npy: A: not a readable .npy array" in capsys.readouterr().err
    np.save(d / "wrong.npy", np.zeros((3, 3)))
    assert main(["predict", uri, str(d / "a.npy"), str(d / "wrong.npy"), *tracking]) == 2
    assert "expected 64 values" in capsys.readouterr().err
    np.save(d / "a_255.npy", (a.astype(np.float64) * 255 / 16).round())  # the right shape, the wrong scale
    assert main(["predict", uri, str(d / "a_255.npy"), str(d / "b.npy"), *tracking]) == 2
    assert "the model was trained on 0..16" in capsys.readouterr().err
    np.save(d / "text.npy", np.array(["a"] * 64))  # strings: a DataError (exit 2), not a ValueError (exit 1)
    assert main(["predict", uri, str(d / "a.npy"), str(d / "text.npy"), *tracking]) == 2
    assert "expected numbers" in capsys.readouterr().err
    # a URI that names no model, and a threshold the served model refuses: input errors too (were exit 1, and 0)
    for bad in (f"models:/{NAME}@nope", f"models:/{NAME}/99"):
        assert main(["predict", bad, str(d / "a.npy"), str(d / "b.npy"), *tracking]) == 2
        assert f"{bad}: no model there" in capsys.readouterr().err
    for value in ("nan", "inf", "high"):
        with pytest.raises(SystemExit) as refused:  # argparse: usage and one line, exit 2
            main(["predict", uri, str(d / "a.npy"), str(d / "b.npy"), "--threshold", value, *tracking])
        assert refused.value.code == 2 and "--threshold" in capsys.readouterr().err


class _Marker:
    """Unpickling this writes a file: what a tampered python_model.pkl could do on the loading host."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def _plant_pickle(model_dir: Path, marker: Path) -> None:
    import pickle

    payload = pickle.dumps(_Marker(str(marker)))
    (model_dir / "python_model.pkl").write_bytes(payload)  # where MLflow's pickled pyfunc models keep it
    (model_dir / "artifacts" / "state.pkl").write_bytes(payload)


def _pair_frame(promoted: dict) -> Any:
    import pandas as pd

    split = promoted["split"]
    return pd.DataFrame({"left": [split.left[0].tolist()], "right": [split.right[0].tolist()]})


def test_no_loader_unpickles_the_model(sqlite_stores: Stores, promoted: dict, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A pickle planted in the model directory runs neither in predict/promote nor in mlflow.pyfunc (models
    from code: MLflow rebuilds the wrapper from serving_code.py and reads no python_model.pkl)."""
    import mlflow

    from sweeps.cli import main
    from sweeps.reevaluation import load_wrapper
    from sweeps.registry import download_model

    local = Path(download_model(f"models:/{NAME}@champion", tracking_uri=sqlite_stores.tracking_uri,
                                dst=str(tmp_path / "m")))
    marker = tmp_path / "marker"
    _plant_pickle(local, marker)
    d: Path = promoted["dir"]
    np.save(d / "a.npy", promoted["split"].left[0])
    np.save(d / "b.npy", promoted["split"].right[0])
    assert main(["predict", str(local), str(d / "a.npy"), str(d / "b.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == pytest.approx(promoted["trial"].user_attrs["threshold"])
    wrapper = load_wrapper(str(local), tracking_uri=sqlite_stores.tracking_uri, dst=str(tmp_path / "w"))
    assert wrapper.threshold == pytest.approx(out["threshold"])
    model = mlflow.pyfunc.load_model(str(local))
    pred = model.predict(_pair_frame(promoted))
    assert pred["distance"][0] == pytest.approx(out["distance"], rel=1e-5)
    assert not marker.exists()


def test_models_pickled_by_earlier_versions(sqlite_stores: Stores, promoted: dict, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A model in the old format (loader mlflow.pyfunc.model + python_model.pkl): predict reads only its data;
    mlflow.pyfunc refuses it with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false and unpickles it otherwise
    (what the README warns about)."""
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    from sweeps.cli import main
    from sweeps.registry import download_model

    local = Path(download_model(f"models:/{NAME}@champion", tracking_uri=sqlite_stores.tracking_uri,
                                dst=str(tmp_path / "m")))
    conf = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc = conf["flavors"]["python_function"]
    del pyfunc["model_code_path"]
    pyfunc.update(loader_module="mlflow.pyfunc.model", python_model="python_model.pkl")
    (local / "MLmodel").write_text(yaml.safe_dump(conf))
    (local / "serving_code.py").unlink()
    marker = tmp_path / "marker"
    _plant_pickle(local, marker)
    d: Path = promoted["dir"]
    np.save(d / "a.npy", promoted["split"].left[0])
    np.save(d / "b.npy", promoted["split"].right[0])
    assert main(["predict", str(local), str(d / "a.npy"), str(d / "b.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] == pytest.approx(
        promoted["trial"].user_attrs["threshold"])
    assert not marker.exists()
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(MlflowException, match="pickle is disallowed"):
        mlflow.pyfunc.load_model(str(local))
    assert not marker.exists()
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    try:  # MLflow's default: the pickle runs
        mlflow.pyfunc.load_model(str(local))
    except Exception:  # noqa: BLE001 - the unpickled object is no model; only the side effect matters
        pass
    assert marker.exists()


def test_bad_requests_are_one_clear_invalid_parameter_error(sqlite_stores: Stores, promoted: dict,
                                                            tmp_path: Path) -> None:
    """NaN, ±inf, 1e300 inputs and a NaN threshold got a confident answer; now HTTP 400-class errors."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from sweeps.reevaluation import load_wrapper
    from sweeps.serving import MAX_ROWS

    wrapper = load_wrapper(f"models:/{NAME}@champion", tracking_uri=sqlite_stores.tracking_uri, dst=str(tmp_path))
    a, b = promoted["split"].left[0].astype(float), promoted["split"].right[0].astype(float)
    ok = wrapper.predict(None, pd.DataFrame({"left": [a.tolist()], "right": [b.tolist()]}))
    assert len(ok) == 1
    for value, text in ((np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (1e300, "beyond")):
        bad = a.copy()
        bad.flat[5] = value
        with pytest.raises(MlflowException, match=text) as err:
            wrapper.predict(None, pd.DataFrame({"left": [a.tolist(), bad.tolist()], "right": [b.tolist()] * 2}))
        assert err.value.error_code == "INVALID_PARAMETER_VALUE" and "row 1" in err.value.message
    nested_null = a.tolist()
    nested_null[3][2] = [None]
    for cell in (None, nested_null):  # a JSON null recursed without end (RecursionError, a 2,980-frame stack trace)
        with pytest.raises(MlflowException, match="column 'left', row 1: .*received NoneType") as err:
            wrapper.predict(None, pd.DataFrame({"left": [a.tolist(), cell], "right": [b.tolist()] * 2}))
        assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match="params.threshold"):
        wrapper.predict(None, pd.DataFrame({"left": [a.tolist()], "right": [b.tolist()]}),
                        params={"threshold": float("nan")})
    # a uint8 (raw pixel) model: floats scaled to 0-1 were rounded to 0s and 1s (every pair "same"), 300 wrapped
    assert wrapper.inputs[0][1] == "uint8"
    for left, text in ((a / 16.0, "row 0: values that are not whole numbers, but the model takes uint8"),
                       (a + 300.0, "row 0: values outside 0..255"), (a - 1.0, "row 0: values outside 0..255")):
        with pytest.raises(MlflowException, match=text) as err:
            wrapper.predict(None, pd.DataFrame({"left": [left.tolist()], "right": [b.tolist()]}))
        assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match="values outside 0..255"):  # integers too: astype wrapped 300 to 44
        wrapper.predict(None, pd.DataFrame({"left": [(a.astype(int) + 300).tolist()], "right": [b.tolist()]}))
    # whole pixels on another scale: digits (0..16) sent as 0..255 scored at chance (0.495 accuracy) without a word
    on_255 = (a * 255 / 16).round()
    with pytest.raises(MlflowException, match="row 0: values from 0 to 255, but the model was trained on 0..16") \
            as err:
        wrapper.predict(None, pd.DataFrame({"left": [on_255.tolist()], "right": [b.tolist()]}))
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and wrapper.value_range == (0.0, 16.0)
    assert len(wrapper.predict(None, pd.DataFrame({"left": [np.minimum(a + 20, 32).tolist()],  # slack: 16 above
                                                   "right": [b.tolist()]}))) == 1
    with pytest.raises(MlflowException, match=r"params.side: expected one of \['left', 'right'\]; received: 'rihgt'"):
        wrapper.predict(None, pd.DataFrame({"input": [a.tolist()]}), params={"mode": "embed", "side": "rihgt"})
    right = wrapper.predict(None, pd.DataFrame({"input": [a.tolist()]}), params={"mode": "embed", "side": "right"})
    assert len(right["embedding"][0]) > 0
    with pytest.raises(MlflowException, match="at most"):
        wrapper.predict(None, pd.DataFrame({"left": [a.tolist()] * (MAX_ROWS + 1),
                                            "right": [b.tolist()] * (MAX_ROWS + 1)}))


def test_what_is_not_a_model_or_its_store_is_refused_and_nothing_is_touched(sqlite_stores: Stores, promoted: dict,
                                                                             tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]
                                                                             ) -> None:
    """One line, exit 2, nothing created or changed. Before: the Optuna database given as the tracking store got
    MLflow's tables (then alembic's error, exit 1); a mistyped SQLite path became an empty MLflow store; a malformed
    URI, a file that is no Keras archive and a bad model name were exit 1; an image given to a bare model.keras
    was scored at 0-255 against a model trained on 0-16, a decision that flipped; `score_arrays` scored NaN."""
    from PIL import Image

    from sweeps.cli import main
    from sweeps.registry import download_model
    from sweeps.serving import PredictError, load_model_dir
    from sweeps.storage import sqlite_tables

    d, split = promoted["dir"], promoted["split"]
    np.save(d / "a.npy", split.left[0])
    np.save(d / "b.npy", split.right[0])
    a, b = str(d / "a.npy"), str(d / "b.npy")
    uri, typo = f"models:/{NAME}@champion", f"sqlite:///{tmp_path}/typo/mlflow.db"
    optuna_db = Path(sqlite_stores.storage[len("sqlite:///"):])
    before = (sqlite_tables(optuna_db), optuna_db.stat().st_size)
    promote_args = ["promote", "--study", "good", "--dry-run", "--storage", sqlite_stores.storage]
    for argv, words in (
            (["predict", uri, a, b, "--tracking-uri", sqlite_stores.storage], "is not an MLflow tracking store"),
            (["predict", uri, a, b, "--tracking-uri", typo], "no such SQLite file"),
            (["predict", "models:/", a, b, "--tracking-uri", sqlite_stores.tracking_uri], "expected models:/NAME@"),
            (["predict", "foo://bar", a, b, "--tracking-uri", sqlite_stores.tracking_uri], "foo://bar: no model there"),
            (["predict", "no-such-folder", a, b, "--tracking-uri", sqlite_stores.tracking_uri],
             "expected models:/NAME@"),
            # a run without the model's path in it, and a folder that is no model: were exit 1
            (["predict", "runs:/" + "0" * 32, a, b, "--tracking-uri", sqlite_stores.tracking_uri],
             "runs:/<run_id>/PATH"),
            (["predict", str(tmp_path), a, b, "--tracking-uri", sqlite_stores.tracking_uri],
             f"{tmp_path}: not an MLflow model directory"),
            ([*promote_args, "--tracking-uri", sqlite_stores.storage], "is not an MLflow tracking store"),
            ([*promote_args, "--tracking-uri", typo], "no such SQLite file"),
            ([*promote_args, "--tracking-uri", "foo://x"], "MLflow cannot use 'foo://x'"),
            ([*promote_args, "--tracking-uri", sqlite_stores.tracking_uri, "--model-name", "bad/name"],
             "--model-name: expected a name without '/' or ':'")):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert (sqlite_tables(optuna_db), optuna_db.stat().st_size) == before
    assert not (tmp_path / "typo").exists()

    fake = tmp_path / "fake.keras"
    fake.write_text("x")
    assert main(["predict", str(fake), a, b]) == 2
    assert "not a Keras model archive" in capsys.readouterr().err
    local = Path(download_model(uri, tracking_uri=sqlite_stores.tracking_uri, dst=str(tmp_path / "m")))
    png = tmp_path / "a.png"
    Image.fromarray((split.left[0][..., 0].astype(np.float64) * 255 / 16).round().astype(np.uint8)).save(png)
    assert main(["predict", str(local / "artifacts" / "model.keras"), str(png), b]) == 2
    assert "records no value range" in capsys.readouterr().err
    assert main(["predict", str(local), str(png), b]) == 0  # the MLflow model knows its range (0..16)
    assert main(["predict", local.as_uri(), a, b]) == 0  # any artifact URI MLflow can download stays accepted
    capsys.readouterr()

    model, _ = load_model_dir(local)
    left, right = np.asarray(split.left[:3]), np.asarray(split.right[:3])
    assert model.score_arrays(left, right)["same"].shape == (3,)
    with pytest.raises(PredictError, match="NaN or infinite"):
        model.score_arrays(np.full(left.shape, np.nan), right)
    with pytest.raises(PredictError, match="expected one right per left"):
        model.score_arrays(left, right[:2])


def test_whole_pixels_after_a_float32_round_trip_are_taken_and_scaled_ones_refused() -> None:
    """A tolerance of 1e-6 refused 36 of the 256 pixel values after `x * 0.1 * 10` in float32."""
    from sweeps.serving import PredictError, to_batch

    pixels = np.arange(256, dtype=np.float32)
    trip = pixels * np.float32(0.1) * np.float32(10)
    assert np.any(np.abs(trip.astype(float) - pixels) > 1e-6)  # the case itself: not exact
    np.testing.assert_array_equal(to_batch([trip], (256,), "uint8", what="left")[0], np.arange(256))
    with pytest.raises(PredictError, match="not whole numbers"):
        to_batch([pixels / 255.0], (256,), "uint8", what="left")
    edges = np.array([np.float32(255) * np.float32(0.001) * (np.float32(1) / np.float32(0.001)), -1e-5])
    assert edges[0] != 255.0  # 255.000015: "outside 0..255" when the range was checked before rounding
    np.testing.assert_array_equal(to_batch([edges], (2,), "uint8", what="left")[0], [255, 0])
