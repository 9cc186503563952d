"""A real sweep on digits, checked through MlflowClient: nesting, params, per-epoch metrics, artifacts, model.

Run twice: local SQLite MLflow store + SQLite Optuna storage, and a real
``mlflow server`` on 127.0.0.1 + Optuna journal storage.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from sweeps.names import EXPERIMENT_KIND_MODEL_TRAINING, MLFLOW_EXPERIMENT_KIND, STUDY_ATTR_PARENT_RUN_ID

from .conftest import make_spec_dict, run_small_sweep

TRIALS = 3
EPOCHS = 2


@pytest.fixture(scope="module", params=["sqlite", "server+journal"])
def sweep(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp(request.param.replace("+", "-"))
    if request.param == "sqlite":
        storage, uri = f"sqlite:///{d}/optuna.db", f"sqlite:///{d}/mlflow.db"
    else:
        server = request.getfixturevalue("mlflow_server_sqlite")
        storage, uri = f"journal:///{d}/optuna.log", server.url
    name = f"s-{request.param.replace('+', '-')}"  # a study name has no '+' (the --study check)
    result = run_small_sweep(make_spec_dict(), storage=storage, tracking_uri=uri, study=name)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment(result.experiment_id)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    from sweeps.storage import make_storage

    study = optuna.load_study(study_name=name, storage=make_storage(storage))
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    return {"result": result, "client": client, "exp": exp, "runs": runs, "children": children, "study": study,
            "uri": uri}


def test_one_experiment_one_parent_one_child_per_trial(sweep: dict[str, Any]) -> None:
    runs, children, result = sweep["runs"], sweep["children"], sweep["result"]
    parents = [r for r in runs if r.data.tags.get("siamese_sweep.role") == "parent"]
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    assert sweep["exp"].tags.get(MLFLOW_EXPERIMENT_KIND) == EXPERIMENT_KIND_MODEL_TRAINING
    assert len(children) == TRIALS == len(runs) - 1
    numbers = sorted(int(r.data.tags["siamese_sweep.trial_number"]) for r in children)
    assert numbers == sorted(t.number for t in sweep["study"].trials) == list(range(TRIALS))
    assert {r.data.tags["siamese_sweep.study"] for r in children} == {sweep["study"].study_name}
    assert sweep["study"].user_attrs[STUDY_ATTR_PARENT_RUN_ID] == result.parent_run_id


def test_states_match_between_optuna_and_mlflow(sweep: dict[str, Any]) -> None:
    by_number = {t.number: t for t in sweep["study"].trials}
    for run in sweep["children"]:
        trial = by_number[int(run.data.tags["siamese_sweep.trial_number"])]
        assert run.data.tags["siamese_sweep.state"] == trial.state.name
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        expected = "FINISHED" if trial.state.name in ("COMPLETE", "PRUNED") else "FAILED"
        assert run.info.status == expected
    parent = sweep["client"].get_run(sweep["result"].parent_run_id)
    assert parent.info.status == "FINISHED"


def test_params_are_the_full_resolved_config_with_dotted_keys(sweep: dict[str, Any]) -> None:
    by_number = {t.number: t for t in sweep["study"].trials}
    for run in sweep["children"]:
        params = run.data.params
        for key in ("encoder.depth", "loss.margin", "learning_rate", "loader", "batch_size", "epochs",
                    "encoder.width", "dataset.name", "pairs.pairs_per_epoch", "distance", "optimizer.name"):
            assert key in params, key
        assert len(params["dataset.fingerprint"]) == 64
        trial = by_number[int(run.data.tags["siamese_sweep.trial_number"])]
        assert params["loader"] == trial.params["loader"]
        assert int(params["encoder.depth"]) == trial.params["encoder.depth"]
        assert float(params["learning_rate"]) == pytest.approx(trial.params["learning_rate"], rel=1e-6)
        assert params["epochs"] == str(EPOCHS)


def test_every_trial_run_has_its_number_as_a_metric(sweep: dict[str, Any]) -> None:
    """`trial_number` (step 0): an axis for MLflow's compare view and charts, which plot metrics, not tags."""
    for run in sweep["children"]:
        history = sweep["client"].get_metric_history(run.info.run_id, "trial_number")
        assert [(m.step, m.value) for m in history] == [(0, float(run.data.tags["siamese_sweep.trial_number"]))]


def test_per_epoch_metric_histories_use_history_keys(sweep: dict[str, Any]) -> None:
    client = sweep["client"]
    for run in sweep["children"]:
        for key in ("loss", "val_loss", "val_pair_accuracy", "val_roc_auc", "raw_embedding_norm_mean",
                    "raw_embedding_norm_std", "embedding_spread", "val_pos_distance_mean", "val_neg_distance_mean",
                    "val_distance_gap", "learning_rate"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(EPOCHS)), key
        for key in ("test_pair_accuracy", "test_roc_auc", "test_eer", "threshold", "params"):
            assert key in run.data.metrics, key
        assert 0.5 < run.data.metrics["test_roc_auc"] <= 1.0


def test_trials_of_one_split_record_one_eval_fingerprint(sweep: dict[str, Any]) -> None:
    """Every trial's val/test metrics were measured on the same pairs, and the run and trial say so."""
    by_number = {t.number: t for t in sweep["study"].trials}
    seen = set()
    for run in sweep["children"]:
        trial = by_number[int(run.data.tags["siamese_sweep.trial_number"])]
        if trial.state.name != "COMPLETE":
            continue
        tag = run.data.tags["siamese_sweep.eval_fingerprint"]
        assert len(tag) == 64 and trial.user_attrs["eval_fingerprint"] == tag
        seen.add(tag)
    assert len(seen) == 1


def test_objective_value_is_the_last_epoch_metric(sweep: dict[str, Any]) -> None:
    client = sweep["client"]
    by_number = {t.number: t for t in sweep["study"].trials}
    for run in sweep["children"]:
        trial = by_number[int(run.data.tags["siamese_sweep.trial_number"])]
        history = sorted(client.get_metric_history(run.info.run_id, "val_roc_auc"), key=lambda m: m.step)
        assert trial.value == pytest.approx(history[-1].value)
        if trial.state == optuna.trial.TrialState.COMPLETE:  # what `promote --metric` ranks by: never test_*
            for key in ("val_roc_auc", "val_pair_accuracy", "val_eer"):
                last = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)[-1]
                assert trial.user_attrs[key] == pytest.approx(last.value)


def test_trial_artifacts_and_logged_model(sweep: dict[str, Any]) -> None:
    import mlflow

    client = sweep["client"]
    run = sweep["children"][0]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "diagnostics.json", "curves.png", "distance_histogram.png",
            "embeddings_pca.png"} <= names
    models = client.search_logged_models([sweep["exp"].experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    assert len(models) == 1
    assert float(models[0].params["siamese_sweep.threshold"]) == pytest.approx(run.data.metrics["threshold"], rel=1e-5)
    from sweeps.mlflow_globals import mlflow_internals_use

    with mlflow_internals_use(sweep["uri"]):  # `models:/` resolves through the global URI; put back after
        model = mlflow.keras.load_model(f"models:/{models[0].model_id}")
    x = np.zeros((4, 8, 8, 1), dtype="uint8")
    out = model([x, x], training=False)
    assert set(out) == {"distance", "score", "same"}
    assert np.all(np.asarray(out["same"]) == 1.0)  # identical inputs are "same" at any sane threshold


def test_parent_run_summarises_the_study(sweep: dict[str, Any]) -> None:
    client, parent_id = sweep["client"], sweep["result"].parent_run_id
    parent = client.get_run(parent_id)
    names = {a.path for a in client.list_artifacts(parent_id)}
    assert {"trials.csv", "optimization_history.png", "intermediate_values.png", "report.md"} <= names
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        page = Path(client.download_artifacts(parent_id, "report.md", tmp)).read_text()
        header = Path(client.download_artifacts(parent_id, "trials.csv", tmp)).read_text().splitlines()[0]
    assert page.startswith(f"# Sweep report: {sweep['study'].study_name}") and "## Failure map" in page
    # the trials keep their per-pair validation outcomes for the report; the table leaves those 6 KB a row out
    complete = [t for t in sweep["study"].trials if t.state.name == "COMPLETE"]
    assert complete and all("per_pair_validation" in t.user_attrs for t in complete)
    assert "user_attrs_eval_fingerprint" in header and "per_pair_validation" not in header
    best = sweep["study"].best_trial
    assert parent.data.tags["siamese_sweep.best_trial"] == str(best.number)
    assert parent.data.tags["siamese_sweep.best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert parent.data.tags["siamese_sweep.best_param.encoder.depth"] == str(best.params["encoder.depth"])
    history = client.get_metric_history(parent_id, "best_value")
    assert max(m.value for m in history) == pytest.approx(best.value)


def test_parent_run_has_the_interactive_study_plots(sweep: dict[str, Any]) -> None:
    import mlflow

    parent_id = sweep["result"].parent_run_id
    html = {a.path for a in sweep["client"].list_artifacts(parent_id, "study")}
    assert {"study/optimization_history.html", "study/parallel_coordinate.html",
            "study/intermediate_values.html"} <= html
    complete = [t for t in sweep["study"].trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert ("study/param_importances.html" in html) == (len(complete) >= 2)
    for path in html:
        local = mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path=path, tracking_uri=sweep["uri"])
        with open(local) as f:
            text = f.read()
        assert 'class="plotly-graph-div"' in text and "cdn.plot.ly" in text, path


def test_status_reports_counts_and_best(sweep: dict[str, Any]) -> None:
    status = sweep["result"].status
    assert status["counts"]["COMPLETE"] + status["counts"]["PRUNED"] == TRIALS
    assert status["counts"]["RUNNING"] == 0
    assert status["best"]["run_id"] in {r.info.run_id for r in sweep["children"]}
    assert set(status["best"]["params"]) == {"loss.margin", "encoder.depth", "learning_rate", "loader"}


def test_trials_link_to_their_run_page_on_a_server_only(sweep: dict[str, Any]) -> None:
    """optuna-dashboard shows user attrs: `mlflow_run_url` opens the trial's run (model-training mode)."""
    by_id = {r.info.run_id: r for r in sweep["children"]}
    for trial in sweep["study"].trials:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        if sweep["uri"].startswith("http"):
            assert trial.user_attrs["mlflow_run_url"] == (
                f"{sweep['uri'].rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
                "?workflowType=machine_learning")
        else:
            assert "mlflow_run_url" not in trial.user_attrs


def test_the_short_end_after_an_outage_takes_the_queued_metrics_along(tmp_path: Path) -> None:
    """After MLflow refused a call for its whole retry budget a trial's run is tagged and ended in two short tries;
    the tags' request sent the tags alone, and the run lost the epochs still queued (session 47's final review)."""
    from sweeps.tracking import RUN_KILLED, Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    exp = tracker.experiment_id("short-end")
    parent = tracker.create_parent_run(exp, "short-end", tags={})
    run = tracker.start_trial_run(exp, parent, study_name="short-end", trial_number=0)
    for step, value in enumerate((0.61, 0.72, 0.78)):
        run.log_metrics({"val_roc_auc": value}, step=step, send=False)  # what an outage left queued
    run.end_now({"siamese_sweep.state": "FAIL", "siamese_sweep.reason": "interrupted"}, RUN_KILLED, budget_s=5.0)
    got = MlflowClient(uri).get_run(run.run_id)
    assert run.closed and got.info.status == RUN_KILLED and got.data.tags["siamese_sweep.reason"] == "interrupted"
    history = MlflowClient(uri).get_metric_history(run.run_id, "val_roc_auc")
    assert [(m.step, m.value) for m in history] == [(0, 0.61), (1, 0.72), (2, 0.78)]
