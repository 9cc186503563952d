"""Issue 15.7: a study started on the laptop (SQLite ``optuna.db`` + ``mlflow.db``) moves with
`siamese-sweep move` to PostgreSQL + an MLflow server with auth, and continues there: `promote` picks a
moved trial, `run` adds trials to the same study under the same parent run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..sweeps.conftest import make_spec_dict, run_small_sweep

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

STUDY = "laptop"
REWRITTEN = ("mlflow_run_id", "mlflow_run_url", "model_uri")


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from sweeps.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _history(client: Any, run_id: str, key: str) -> list[tuple[float, int, int]]:
    return sorted((m.value, m.step, m.timestamp) for m in client.get_metric_history(run_id, key))


def _artifacts(client: Any, run_id: str, path: str = "") -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path or None):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_a_laptop_study_moves_to_postgres_and_mlflow_server_and_continues(
        postgres_server, mlflow_server_pg, mlflow_env, tmp_path: Path, capsys, monkeypatch) -> None:
    import mlflow.artifacts
    import optuna
    from mlflow import MlflowClient
    from mlflow.models import Model

    from sweeps.promotion import promote

    laptop_storage, laptop_tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    spec = make_spec_dict(base={"epochs": 1}, study={"name": STUDY, "trials": 3})
    run_small_sweep(spec, storage=laptop_storage, tracking_uri=laptop_tracking, trials=2)
    src_study = optuna.load_study(study_name=STUDY, storage=laptop_storage)
    src = MlflowClient(tracking_uri=laptop_tracking)
    src_parent = src.get_run(src_study.user_attrs["mlflow_parent_run_id"])
    experiment = src.get_experiment(src_parent.info.experiment_id).name

    pg = postgres_server.create_database("optuna_move")
    server = mlflow_server_pg.url
    dst = MlflowClient(tracking_uri=server)
    assert dst.get_experiment_by_name(experiment) is None
    # the target's passwords come from the environment (as a worker's do), never from argv
    monkeypatch.setenv("OPTUNA_STORAGE", pg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    laptop = ["--from-storage", laptop_storage, "--from-tracking-uri", laptop_tracking]

    capsys.readouterr()
    # refusals: one line, exit 2, nothing created on the target
    for argv, says in ((["--study", "nope", *laptop], "no study named 'nope'"),
                       (["--study", STUDY, *laptop, "--to-storage", "redis://127.0.0.1/0"], "--to-storage"),
                       (["--study", STUDY, *laptop, "--to-tracking-uri", "ftp://127.0.0.1/x"], "--to-tracking-uri"),
                       (["--study", STUDY, "--from-storage", f"sqlite:///{tmp_path}/missing.db",
                         "--from-tracking-uri", laptop_tracking], "no such SQLite file")):
        code, out, err = _cli(capsys, "move", *argv)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "missing.db").exists()
    assert optuna.study.get_all_study_names(pg) == []
    assert dst.get_experiment_by_name(experiment) is None

    code, out, err = _cli(capsys, "move", "--study", STUDY, *laptop)
    assert code == 0, err
    assert "moved study 'laptop': 2 trial(s), 3 MLflow run(s), 2 model(s)" in out
    assert postgres_server.password not in out + err and mlflow_server_pg.admin_password not in out + err
    code, _, err = _cli(capsys, "move", "--study", STUDY, *laptop)  # a second move is refused
    assert code == 2 and "already has a study named 'laptop'" in err and len(err.strip().splitlines()) == 1

    # ---- Optuna: the same study, attrs and trials, with the MLflow ids rewritten
    moved = optuna.load_study(study_name=STUDY, storage=pg)
    for key in ("spec", "spec_sha256", "siamese_sweep_uid", "objective_metrics", "trial_budget"):
        assert moved.user_attrs[key] == src_study.user_attrs[key], key
    exp_id = dst.get_experiment_by_name(experiment).experiment_id
    assert moved.user_attrs["mlflow_experiment_id"] == exp_id
    parent_id = moved.user_attrs["mlflow_parent_run_id"]
    assert parent_id != src_parent.info.run_id
    assert moved.directions == src_study.directions
    pairs = list(zip(src_study.trials, moved.trials, strict=True))
    for a, b in pairs:
        for attr in ("number", "state", "values", "params", "distributions", "intermediate_values",
                     "system_attrs", "datetime_start", "datetime_complete"):
            assert getattr(a, attr) == getattr(b, attr), (a.number, attr)
        assert {k: v for k, v in a.user_attrs.items() if k not in REWRITTEN} == \
               {k: v for k, v in b.user_attrs.items() if k not in REWRITTEN}
        assert b.user_attrs["mlflow_run_id"] != a.user_attrs["mlflow_run_id"]
        assert b.user_attrs["mlflow_run_url"].startswith(server) and b.user_attrs["mlflow_run_id"] in \
            b.user_attrs["mlflow_run_url"] and "@" not in b.user_attrs["mlflow_run_url"]
        assert b.user_attrs["model_uri"] != a.user_attrs["model_uri"]
    assert [t.intermediate_values for t in moved.trials if t.intermediate_values]  # something was compared

    # ---- MLflow: parent and trial runs, params, tags, metric histories, datasets, artifacts, models
    parent = dst.get_run(parent_id)
    assert parent.data.tags["siamese_sweep.study_uid"] == src_study.user_attrs["siamese_sweep_uid"]
    assert parent.data.tags["siamese_sweep.moved_from"] == src_parent.info.run_id
    assert parent.data.tags["siamese_sweep.storage"].startswith("postgresql") and \
        postgres_server.password not in parent.data.tags["siamese_sweep.storage"]
    assert _artifacts(dst, parent_id) == _artifacts(src, src_parent.info.run_id) and \
        "trials.csv" in _artifacts(dst, parent_id)
    for a, b in pairs:
        old, new = src.get_run(a.user_attrs["mlflow_run_id"]), dst.get_run(b.user_attrs["mlflow_run_id"])
        assert new.info.experiment_id == exp_id and new.info.run_name == old.info.run_name
        assert new.data.tags["mlflow.parentRunId"] == parent_id
        assert new.data.tags["siamese_sweep.moved_from"] == old.info.run_id
        for key in ("siamese_sweep.study", "siamese_sweep.trial_number", "siamese_sweep.state",
                    "siamese_sweep.sampled_params", "siamese_sweep.eval_fingerprint"):
            assert new.data.tags[key] == old.data.tags[key], key
        assert new.data.params == old.data.params and new.data.params
        assert (new.info.status, new.info.start_time, new.info.end_time) == \
               (old.info.status, old.info.start_time, old.info.end_time)
        assert set(new.data.metrics) == set(old.data.metrics)
        for key in old.data.metrics:
            assert _history(dst, new.info.run_id, key) == _history(src, old.info.run_id, key), key
        assert len(_history(dst, new.info.run_id, "val_roc_auc")) >= 1
        assert [(d.dataset.name, d.dataset.digest) for d in new.inputs.dataset_inputs] == \
               [(d.dataset.name, d.dataset.digest) for d in old.inputs.dataset_inputs] != []
        assert _artifacts(dst, new.info.run_id) == _artifacts(src, old.info.run_id)
        assert {"config.yaml", "diagnostics.json"} <= _artifacts(dst, new.info.run_id)
        model_id = b.user_attrs["model_uri"].removeprefix("models:/")
        model = dst.get_logged_model(model_id)
        assert model.source_run_id == new.info.run_id and model.experiment_id == exp_id
        assert str(model.status) == "READY" and model.name == f"trial-{a.number}"
        assert model.tags["siamese_sweep.moved_from"] == a.user_attrs["model_uri"].removeprefix("models:/")
        assert [o.model_id for o in new.outputs.model_outputs] == [model_id]
        src_model = src.get_logged_model(a.user_attrs["model_uri"].removeprefix("models:/"))
        assert sorted((m.key, m.value, m.step, m.dataset_name) for m in model.metrics) == \
               sorted((m.key, m.value, m.step, m.dataset_name) for m in src_model.metrics)  # its Models-tab metrics
        assert {"test_roc_auc", "threshold"} <= {m.key for m in model.metrics}
    # the MLmodel file names the new model and run
    best = moved.best_trial
    location = dst.get_logged_model(best.user_attrs["model_uri"].removeprefix("models:/")).artifact_location
    local = mlflow.artifacts.download_artifacts(artifact_uri=location,
                                                dst_path=str(tmp_path / "dl"), tracking_uri=server)
    meta = Model.load(os.path.join(local, "MLmodel"))
    assert meta.model_id == best.user_attrs["model_uri"].removeprefix("models:/")
    assert meta.run_id == best.user_attrs["mlflow_run_id"]

    # ---- promote picks a moved trial and reads its run and model on the server
    decision = promote(STUDY, storage=pg, tracking_uri=server, model_name="moved-laptop")
    assert decision.action == "promote" and decision.applied
    assert decision.candidate["trial"] == best.number
    assert decision.candidate["run_id"] == best.user_attrs["mlflow_run_id"]
    assert decision.candidate["embeddings_reproduced"] is True
    assert dst.get_model_version("moved-laptop", "1").source == best.user_attrs["model_uri"]

    # ---- a user who may not write to the admin's moved experiment (the stack's workers' account, default READ):
    # one line naming the 403, exit 2, and no trial asked (it said "unreachable", exit 1, a FAIL trial per attempt)
    from sweeps.stack.mlflow_auth import ensure_user

    ensure_user(server, admin_username=mlflow_server_pg.admin_username,
                admin_password=mlflow_server_pg.admin_password, username="reader-worker", password="x" * 16)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader-worker")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "x" * 16)
    code, out, err = _cli(capsys, "worker", "--study", STUDY, "--quiet")
    assert code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: MLFLOW_TRACKING_USERNAME: ") and "denied user 'reader-worker'" in last \
        and "403" in last and "EDIT" in last, err[-2000:]
    assert len(optuna.load_study(study_name=STUDY, storage=pg).trials) == 2
    for key, value in mlflow_env.items():
        monkeypatch.setenv(key, value)

    # ---- `siamese-sweep run SPEC` (storage and server from the environment) continues the same study:
    # the budget counts the moved trials, the parent run is the moved one
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    code, out, err = _cli(capsys, "run", str(spec_file), "--trials", "3", "--quiet", "--json")
    assert code == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["counts"]["COMPLETE"] == 3
    cont = optuna.load_study(study_name=STUDY, storage=pg)
    assert [t.number for t in cont.trials] == [0, 1, 2]
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in cont.trials) == 3
    assert cont.user_attrs["mlflow_parent_run_id"] == parent_id
    parents = dst.search_runs([exp_id], "tags.`siamese_sweep.role` = 'parent'")
    assert [p.info.run_id for p in parents] == [parent_id]
    new_run = dst.get_run(cont.trials[2].user_attrs["mlflow_run_id"])
    assert new_run.data.tags["mlflow.parentRunId"] == parent_id and "siamese_sweep.moved_from" not in new_run.data.tags
    # the laptop's study is untouched
    assert len(optuna.load_study(study_name=STUDY, storage=laptop_storage).trials) == 2
