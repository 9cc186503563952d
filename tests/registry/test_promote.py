"""`promote` / `rollback` against a real registry: local SQLite store, and a real ``mlflow server``."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from siamese_core.errors import DataError
from sweeps.promotion import promote, rollback
from sweeps.registry import model_id_from_uri
from sweeps.storage import make_storage

from .conftest import Stores, test_split


def _client(stores: Stores) -> MlflowClient:
    return MlflowClient(tracking_uri=stores.tracking_uri, registry_uri=stores.tracking_uri)


def _best(stores: Stores, study: str) -> optuna.trial.FrozenTrial:
    return optuna.load_study(study_name=study, storage=make_storage(stores.storage)).best_trial


def _alias(client: MlflowClient, name: str, alias: str = "champion") -> str | None:
    aliases = client.get_registered_model(name).aliases
    return None if alias not in aliases else str(aliases[alias])


def test_promotion_lifecycle(stores: Stores) -> None:
    """dry-run changes nothing; better moves the alias; worse does not; rollback restores."""
    client, name = _client(stores), f"lifecycle-{stores.kind}"
    weak = _best(stores, "weak")

    d = promote("weak", **stores.kw(model_name=name, dry_run=True))
    assert (d.action, d.applied, d.dry_run) == ("promote", False, True)
    assert d.candidate["trial"] == weak.number and d.candidate["version"] is None
    assert not client.search_registered_models(f"name='{name}'")  # nothing created, nothing registered

    d = promote("weak", **stores.kw(model_name=name))
    assert (d.action, d.applied, d.final_holder) == ("promote", True, "1")
    v1 = client.get_model_version(name, "1")
    assert v1.source == weak.user_attrs["model_uri"]  # the trial's own LoggedModel, not a copy
    lm = client.get_logged_model(model_id_from_uri(v1.source))
    assert client.get_model_version_download_uri(name, "1") == lm.artifact_location
    tags = v1.tags
    assert tags["siamese_sweep.study"] == "weak" and tags["siamese_sweep.trial_number"] == str(weak.number)
    assert tags["siamese_sweep.run_id"] == weak.user_attrs["mlflow_run_id"]
    assert tags["siamese_sweep.dataset_fingerprint"] == weak.user_attrs["dataset_fingerprint"]
    assert float(tags["siamese_sweep.threshold"]) == pytest.approx(weak.user_attrs["threshold"])
    for k in ("pair_accuracy", "roc_auc", "eer"):
        assert float(tags[f"siamese_sweep.test_{k}"]) == pytest.approx(weak.user_attrs[f"test_{k}"], abs=1e-6)
    assert "siamese_sweep.promoted_at.champion" in tags and tags["siamese_sweep.eligible.champion"] == "true"
    assert _alias(client, name) == "1"

    d = promote("good", **stores.kw(model_name=name))  # better: moves
    assert (d.action, d.final_holder, d.previous) == ("promote", "2", "1")
    assert d.candidate["metrics"]["roc_auc"] > d.holder["metrics"]["roc_auc"]
    assert d.candidate["embeddings_reproduced"] is True
    assert _alias(client, name) == "2"
    assert client.get_model_version(name, "2").tags["siamese_sweep.previous.champion"] == "1"

    d = promote("weak", **stores.kw(model_name=name))  # worse: does not move, and no duplicate version
    assert (d.action, d.final_holder) == ("keep", "2") and "not better" in d.reason
    assert _alias(client, name) == "2"
    assert len(client.search_model_versions(f"name='{name}'")) == 2

    d = promote("good", **stores.kw(model_name=name))  # already the holder
    assert d.action == "keep" and "already holds" in d.reason

    d = rollback(tracking_uri=stores.tracking_uri, model_name=name, dry_run=True)
    assert (d.action, d.applied, d.previous) == ("rollback", False, "1") and _alias(client, name) == "2"

    d = rollback(tracking_uri=stores.tracking_uri, model_name=name)
    assert d.final_holder == "1" and _alias(client, name) == "1"
    assert client.get_model_version(name, "2").tags["siamese_sweep.eligible.champion"] == "rolled_back"
    last = json.loads(client.get_registered_model(name).tags["siamese_sweep.last_rollback.champion"])
    assert (last["from"], last["to"]) == ("2", "1")

    d = promote("good", **stores.kw(model_name=name))  # an explicit promotion brings it back
    assert d.final_holder == "2" and _alias(client, name) == "2"


def test_cli_promote_json_dry_run_and_rollback_errors(sqlite_stores: Stores, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeps.cli import main

    for key, value in sqlite_stores.env().items():
        if key in ("OPTUNA_STORAGE", "MLFLOW_TRACKING_URI"):
            monkeypatch.setenv(key, value)  # the CLI reads them like a user's shell would
    name = "cli-json"
    assert main(["promote", "--study", "good", "--model-name", name, "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["action"] == "promote" and decision["final_holder"] == "1" and decision["applied"]
    assert decision["candidate"]["metrics"]["roc_auc"] == pytest.approx(
        _best(sqlite_stores, "good").user_attrs["test_roc_auc"], abs=1e-6)
    assert main(["promote", "--study", "weak", "--model-name", name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "KEEP" in out and "not better" in out and "dry run" in out
    assert len(_client(sqlite_stores).search_model_versions(f"name='{name}'")) == 1  # dry run registered nothing
    assert main(["promote", "--rollback", "--model-name", name]) == 2
    assert "no previous holder" in capsys.readouterr().err
    assert main(["promote", "--rollback", "--model-name", "never-registered"]) == 2
    assert "not set" in capsys.readouterr().err


def test_default_model_name_comes_from_the_spec(sqlite_stores: Stores) -> None:
    assert promote("good", **sqlite_stores.kw(dry_run=True)).model_name == "siamese-good"
    assert promote("weak", **sqlite_stores.kw(dry_run=True)).model_name == "weak-models"  # tracking.registered_model


def test_force_and_metric(sqlite_stores: Stores) -> None:
    client, name = _client(sqlite_stores), "forced"
    promote("good", **sqlite_stores.kw(model_name=name))
    d = promote("weak", **sqlite_stores.kw(model_name=name, metric="test_eer"))
    assert (d.metric, d.higher_is_better, d.action) == ("eer", False, "keep")
    d = promote("weak", **sqlite_stores.kw(model_name=name, force=True))
    assert (d.action, d.forced, d.final_holder) == ("promote", True, "2") and _alias(client, name) == "2"
    assert client.get_model_version(name, "1").tags["siamese_sweep.eligible.champion"].startswith("superseded")
    assert rollback(tracking_uri=sqlite_stores.tracking_uri, model_name=name).final_holder == "1"


def test_reloaded_model_reproduces_the_trials_test_embeddings_exactly(sqlite_stores: Stores) -> None:
    import mlflow.pyfunc

    from sweeps.registry import download_model

    name = "determinism"
    promote("good", **sqlite_stores.kw(model_name=name))
    split, trial = test_split(sqlite_stores)
    v = _client(sqlite_stores).get_model_version_by_alias(name, "champion")
    assert v.source == trial.user_attrs["model_uri"]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        registry = mlflow.pyfunc.load_model(download_model(f"models:/{name}@champion", dst=f"{tmp}/a",
                                                           tracking_uri=sqlite_stores.tracking_uri))
        trial_model = mlflow.pyfunc.load_model(download_model(trial.user_attrs["model_uri"], dst=f"{tmp}/b",
                                                              tracking_uri=sqlite_stores.tracking_uri))
        wrapper = registry.unwrap_python_model()
        recorded = wrapper.reference_embeddings()  # computed by the in-memory model during the trial
        assert recorded is not None and recorded.shape == (256, 16)
        emb = wrapper.embed_arrays(split.reference_inputs)
        assert np.array_equal(emb[:len(recorded)], recorded)
        assert np.array_equal(emb, trial_model.unwrap_python_model().embed_arrays(split.reference_inputs))
        # and through the public pyfunc API (DataFrame in, embeddings out)
        import pandas as pd

        df = pd.DataFrame({"input": [x for x in split.reference_inputs[:512]]})
        via_api = np.stack(registry.predict(df, params={"mode": "embed"})["embedding"].to_numpy())
        assert np.array_equal(via_api[:len(recorded)].astype(np.float32), recorded)  # same batch of 512 rows


def test_changed_dataset_is_refused(sqlite_stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from siamese_core.data import sources

    real = sources.load_dataset

    def tampered(config: Any) -> Any:
        data = real(config)
        return dataclasses.replace(data, info=dataclasses.replace(data.info, fingerprint="0" * 64))
    monkeypatch.setattr(sources, "load_dataset", tampered)
    with pytest.raises(DataError, match="fingerprint .* differs"):
        promote("good", **sqlite_stores.kw(model_name="tampered"))
    assert not _client(sqlite_stores).search_registered_models("name='tampered'")
