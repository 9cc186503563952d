"""A user encoder with a Keras layer of its own (the review of 6a): the sweep trained and logged it, then
`promote`, `predict` and `mlflow models serve` failed with Keras's "could not be deserialized" (a 3 kB config dump,
exit 1), even with the module on PYTHONPATH, as nothing imported it. Now the model records the module: the pyfunc
loader imports it, `predict`/`promote` take ``--import MODULE`` (a model's stored data never names code that
`predict` runs: `serving.load_model_dir`), and without it the line names the class, the module and the fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import BASE, Stores, run_sweep

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODULE = "user_code.layered"
NAME = "layered-models"

LOAD = r"""
import json, sys
import numpy as np, pandas as pd
import mlflow
pyf = mlflow.pyfunc.load_model(sys.argv[1])   # nothing imported first: the model's code imports user_code.layered
x = np.load(sys.argv[2])
out = pyf.predict(pd.DataFrame({"left": [x[0].tolist()], "right": [x[1].tolist()]}))
print(json.dumps({"distance": float(out["distance"][0])}))
"""


def _env(stores: Stores, *, with_user_code: bool) -> dict[str, str]:
    env = stores.env()
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != FIXTURES]
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), *paths] if with_user_code else paths)
    return env


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, env=env,
                          timeout=240, check=False)


@pytest.fixture(scope="module")
def layered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("layered")
    stores = Stores(f"sqlite:///{d}/optuna.db", f"sqlite:///{d}/mlflow.db", d, "sqlite")
    result = run_sweep({"base": {**BASE, "encoder": {"type": f"{MODULE}:scaled_mlp", "embedding_dim": 8}},
                        "search_space": {}, "study": {"name": "layered", "trials": 1, "pruner": "none"},
                        "tracking": {"log_plots": False, "registered_model": NAME}}, stores)
    assert result.best is not None and result.best["model_uri"].startswith("models:/"), result.status
    x = np.random.default_rng(0).integers(0, 17, size=(2, 8, 8, 1)).astype(np.uint8)
    np.save(d / "a.npy", x[0])
    np.save(d / "b.npy", x[1])
    np.save(d / "x.npy", x)
    return {"stores": stores, "uri": result.best["model_uri"], "dir": d}


def test_the_logged_model_records_the_user_module(layered: dict[str, Any]) -> None:
    import yaml

    from sweeps.registry import download_model

    local = download_model(layered["uri"], tracking_uri=layered["stores"].tracking_uri, dst=str(layered["dir"] / "dl"))
    conf = yaml.safe_load((Path(local) / "MLmodel").read_text())
    assert conf["flavors"]["python_function"]["config"]["user_modules"] == [MODULE]


def test_predict_names_the_missing_module_then_takes_it_with_import(layered: dict[str, Any]) -> None:
    stores, d = layered["stores"], layered["dir"]
    args = ["predict", layered["uri"], str(d / "a.npy"), str(d / "b.npy"), "--json",
            "--tracking-uri", stores.tracking_uri]
    for with_user_code in (False, True):  # on the path or not: nothing imported it
        done = _cli(args, _env(stores, with_user_code=with_user_code))
        assert done.returncode == 2, done.stderr[-3000:]
        lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Scale (module user_code.layered)" in lines[0], done.stderr[-3000:]
        assert f"--import {MODULE}" in lines[0] and "config=" not in done.stderr
    done = _cli([*args, "--import", MODULE], _env(stores, with_user_code=True))
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(json.loads(done.stdout)) >= {"distance", "same"}
    done = _cli([*args, "--import", "no_such_module_here"], _env(stores, with_user_code=True))
    assert done.returncode == 2 and "error: --import: cannot import no_such_module_here" in done.stderr, done.stderr
    assert "put its package on PYTHONPATH" in done.stderr
    (d / "raises_at_import.py").write_text("raise RuntimeError('boom at import')\n")
    env = _env(stores, with_user_code=True)
    env["PYTHONPATH"] = os.pathsep.join([str(d), env["PYTHONPATH"]])
    done = _cli([*args, "--import", "raises_at_import"], env)
    assert done.returncode == 2 and "RuntimeError: boom at import; its own code raised" in done.stderr, done.stderr


def test_the_pyfunc_loader_imports_the_user_module(layered: dict[str, Any]) -> None:
    stores = layered["stores"]
    args = [sys.executable, "-c", LOAD, layered["uri"], str(layered["dir"] / "x.npy")]
    done = subprocess.run(args, capture_output=True, text=True, env=_env(stores, with_user_code=True), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.isfinite(json.loads(done.stdout.strip().splitlines()[-1])["distance"])
    done = subprocess.run(args, capture_output=True, text=True, env=_env(stores, with_user_code=False), timeout=240)
    assert done.returncode != 0 and "cannot import user_code.layered" in done.stderr and "PYTHONPATH" in done.stderr


def test_promote_needs_the_import_and_then_registers(layered: dict[str, Any]) -> None:
    stores = layered["stores"]
    done = _cli(["promote", "--study", "layered"], _env(stores, with_user_code=True))
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"--import {MODULE}" in done.stderr and "config=" not in done.stderr
    from mlflow import MlflowClient

    assert not MlflowClient(tracking_uri=stores.tracking_uri).search_registered_models(f"name = '{NAME}'")
    done = _cli(["promote", "--study", "layered", "--import", MODULE], _env(stores, with_user_code=True))
    assert done.returncode == 0, done.stderr[-3000:]
    assert MlflowClient(tracking_uri=stores.tracking_uri).search_registered_models(f"name = '{NAME}'")


SAVE = r"""
import sys
import keras
import unreg_mod

@keras.saving.register_keras_serializable(package="nb")
class Twice(keras.layers.Layer):
    def call(self, x):
        return x * 2.0

i = keras.Input((4,))
keras.Model(i, Twice()(i)).save(sys.argv[1] + "/main.keras")
keras.Model(i, unreg_mod.Half()(i)).save(sys.argv[1] + "/unregistered.keras")
"""


def test_a_class_of_a_script_or_one_keras_never_registered_is_named(tmp_path: Path, monkeypatch) -> None:
    """The second review of this change: Keras writes ``"module": null`` for a class defined in a script or notebook
    (``__main__``), which was not seen as user code (exit 1, the dump); a class imported but never registered with
    Keras gave "--import it", then the dump again once imported."""
    from sweeps.serving import MissingUserCode, load_keras, user_classes

    (tmp_path / "unreg_mod.py").write_text("import keras\n\nclass Half(keras.layers.Layer):\n"
                                           "    def call(self, x):\n        return x * 0.5\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SAVE, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert user_classes(tmp_path / "main.keras") == [("__main__", "Twice", "nb>Twice")]
    with pytest.raises(MissingUserCode, match=r"Twice: defined in a script or notebook \(__main__\)"):
        load_keras(str(tmp_path / "main.keras"))
    with pytest.raises(MissingUserCode, match="--import unreg_mod"):
        load_keras(str(tmp_path / "unregistered.keras"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "unreg_mod", raising=False)
    import unreg_mod  # noqa: F401  (as --import does)

    with pytest.raises(MissingUserCode, match=r"Half \(module unreg_mod\): not registered with Keras"):
        load_keras(str(tmp_path / "unregistered.keras"))
    monkeypatch.delitem(sys.modules, "unreg_mod")
