"""Every trial logs ONE LoggedModel carrying the native keras flavor and our pyfunc, over one weights file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from sweeps import modelio
from sweeps.registry import download_model, model_id_from_uri
from sweeps.serving import load_model_dir
from sweeps.storage import make_storage

from .conftest import Stores, test_split


@pytest.fixture(scope="module")
def logged(sqlite_stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    study = optuna.load_study(study_name="good", storage=make_storage(sqlite_stores.storage))
    client = MlflowClient(tracking_uri=sqlite_stores.tracking_uri)
    best = study.best_trial
    local = download_model(best.user_attrs["model_uri"], tracking_uri=sqlite_stores.tracking_uri,
                           dst=str(tmp_path_factory.mktemp("model")))
    return {"study": study, "client": client, "best": best, "local": Path(local), "stores": sqlite_stores}


def test_one_logged_model_per_complete_trial_linked_to_its_run(logged: dict[str, Any]) -> None:
    client, study = logged["client"], logged["study"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    exp_id = study.user_attrs["mlflow_experiment_id"]
    models = list(client.search_logged_models(experiment_ids=[exp_id]))
    assert len(models) == len(complete)
    for t in complete:
        model_id = model_id_from_uri(t.user_attrs["model_uri"])
        lm = client.get_logged_model(model_id)
        assert lm.source_run_id == t.user_attrs["mlflow_run_id"]
        assert str(lm.status) in ("READY", "LoggedModelStatus.READY")
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
        assert t.user_attrs["diagnostics_errors"] == []


def test_mlmodel_has_both_flavors_over_one_weights_file(logged: dict[str, Any]) -> None:
    local: Path = logged["local"]
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    keras_flavor, pyfunc = mlmodel["flavors"]["keras"], mlmodel["flavors"]["python_function"]
    assert keras_flavor["data"] == "artifacts/model" and keras_flavor["save_exported_model"] is False
    # models-from-code: the wrapper is rebuilt by running a copy of sweeps/serving_code.py; nothing pickled
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(pyfunc["model_code_path"]).name == "serving_code.py" and "python_model" not in pyfunc
    assert (local / "serving_code.py").read_text() == modelio.CODE_FILE.read_text()
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*.pkl")) == []
    assert pyfunc["artifacts"]["keras_model"]["path"] == "artifacts/model.keras"
    assert [p.relative_to(local).as_posix() for p in local.rglob("*.keras")] == ["artifacts/model.keras"]
    assert (local / "artifacts" / "reference_embeddings.npz").is_file()
    assert (local / "serving_input_example.json").is_file()
    reqs = (local / "requirements.txt").read_text().split()
    assert all("==" in r for r in reqs if not r.startswith("-"))
    assert any(r.startswith(("tensorflow", "keras==")) for r in reqs)
    sig = mlmodel["signature"]
    inputs = {c["name"]: c for c in json.loads(sig["inputs"])}
    assert set(inputs) == {"left", "right", "input"} and not any(c["required"] for c in inputs.values())
    assert {p["name"] for p in json.loads(sig["params"])} == {"mode", "threshold", "side"}
    meta = mlmodel["metadata"]
    assert meta["siamese_sweep.threshold"] == pytest.approx(logged["best"].user_attrs["threshold"])
    assert meta["siamese_sweep.dataset_fingerprint"] == logged["best"].user_attrs["dataset_fingerprint"]


def test_keras_flavor_loads_in_safe_mode_with_the_threshold_inside(logged: dict[str, Any]) -> None:
    import mlflow.keras

    import siamese_core.models.layers  # noqa: F401  (what users do before mlflow.keras.load_model)
    from siamese_core.models.layers import ThresholdDecision

    model = mlflow.keras.load_model(str(logged["local"]), load_model_kwargs={"safe_mode": True, "compile": False})
    assert [i.name for i in model.inputs] == ["left", "right"]
    assert set(model.output) == {"distance", "score", "same"}
    decision = [layer for layer in model.layers if isinstance(layer, ThresholdDecision)]
    assert decision and decision[0].threshold == pytest.approx(logged["best"].user_attrs["threshold"])


def test_pyfunc_pairs_embeddings_and_errors(logged: dict[str, Any]) -> None:
    import mlflow.pyfunc

    split, trial = test_split(logged["stores"])
    model = mlflow.pyfunc.load_model(str(logged["local"]))
    n = 6
    df = pd.DataFrame({"left": [x.tolist() for x in split.left[:n]], "right": list(split.right[:n])})  # lists, arrays
    out = model.predict(df)
    assert list(out.columns) == ["distance", "score", "same"] and len(out) == n
    assert out["same"].dtype == bool
    assert np.all(out["distance"] >= 0) and np.all((out["score"] > 0) & (out["score"] <= 1))
    thr = trial.user_attrs["threshold"]
    assert (out["same"] == (out["distance"] <= thr)).all()
    assert model.predict(df, params={"threshold": 1e9})["same"].all()
    flat = pd.DataFrame({"left": [x.reshape(-1).tolist() for x in split.left[:2]],
                         "right": [x.reshape(-1).tolist() for x in split.right[:2]]})
    with pytest.raises(Exception, match="left"):  # the signature keeps the nesting (as the server does)
        model.predict(flat)
    wrapper = model.unwrap_python_model()  # the wrapper itself reshapes flattened cells
    data_only, _ = load_model_dir(logged["local"])  # what predict/promote load: the same numbers
    np.testing.assert_array_equal(data_only.predict(None, df)["distance"], out["distance"])
    np.testing.assert_allclose(wrapper.predict(None, flat)["distance"], out["distance"][:2], rtol=1e-5)
    ints = pd.DataFrame({"left": [split.left[0].astype(int).tolist()],
                         "right": [split.right[0].astype(float).tolist()]})
    assert model.predict(ints)["distance"][0] == pytest.approx(out["distance"][0], rel=1e-5)
    emb = model.predict(pd.DataFrame({"input": [x.tolist() for x in split.left[:3]]}), params={"mode": "embed"})
    assert list(emb.columns) == ["embedding"] and len(emb["embedding"][0]) == 16
    with pytest.raises(Exception, match="missing"):
        model.predict(pd.DataFrame({"left": [split.left[0].tolist()]}))
    with pytest.raises(Exception, match="expected 64 values"):
        wrapper.predict(None, pd.DataFrame({"left": [[1.0, 2.0]], "right": [[1.0, 2.0]]}))
