"""At home in MLflow: the trial's run is the active run while it trains, MLflow 3's model-centric view is
filled (dataset input, metrics on the LoggedModel, registered version description), runs and the dashboard
link to each other.

One real sweep on digits against a local SQLite MLflow store, with user code that calls MLflow's fluent API.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from sweeps import names
from sweeps.storage import make_storage
from sweeps.tracking import run_url, ui_base_url

from .conftest import make_spec_dict, run_small_sweep

TRIALS = 2
DASHBOARD = "http://127.0.0.1:8089/"


def _user_spec(**tracking: Any) -> dict[str, Any]:
    base = make_spec_dict()["base"]
    return make_spec_dict(
        study={"trials": TRIALS},
        base={**base, "loader": "memory",
              "encoder": {**base["encoder"], "type": "mlflow_user_code:logging_encoder"},
              "loss": {"type": "mlflow_user_code:logging_loss", "kind": "pair"}},
        search_space={"learning_rate": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True}},
        tracking={"log_plots": False, **tracking})


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import mlflow_user_code

    d = tmp_path_factory.mktemp("home")
    storage, uri = f"sqlite:///{d}/optuna.db", f"sqlite:///{d}/mlflow.db"
    mlflow_user_code.SEEN_RUNS.clear()
    with pytest.MonkeyPatch.context() as mp:
        # MLflow's default is 10 s; its monitor logs nothing for a run that ends within one interval, and a
        # trial of this sweep trained in under 1 s on a fast CPU (epochs of 0.04 s): sample every 0.2 s
        mp.setenv(names.ENV_MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, "0.2")
        mp.setenv(names.ENV_DASHBOARD_URL, DASHBOARD)
        result = run_small_sweep(_user_spec(system_metrics=True), storage=storage, tracking_uri=uri, study="home")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    study = optuna.load_study(study_name="home", storage=make_storage(storage))
    runs = client.search_runs([result.experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get(names.MLFLOW_PARENT_RUN_ID) == result.parent_run_id]
    return {"result": result, "client": client, "study": study, "runs": runs, "children": children,
            "storage": storage, "uri": uri, "seen": list(mlflow_user_code.SEEN_RUNS)}


def test_user_mlflow_calls_land_in_the_trial_run(home: dict[str, Any]) -> None:
    """mlflow.active_run() inside the user's encoder and loss is the trial's run, and their logs are there."""
    children = home["children"]
    assert len(children) == TRIALS
    child_ids = {r.info.run_id for r in children}
    assert set(home["seen"]) == child_ids  # every call saw a run, and it was a trial's
    for run in children:
        assert run.data.params["user.encoder"] == "logging_encoder"
        assert run.data.metrics["user.encoder_built"] == 1.0
        assert run.data.tags["user.loss"] == "logging_loss"


def test_no_stray_runs_and_the_trial_status_is_the_trackers(home: dict[str, Any]) -> None:
    import mlflow

    client = home["client"]
    all_runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    assert sorted(r.info.run_id for r in all_runs) == sorted(r.info.run_id for r in home["runs"])
    assert len(all_runs) == TRIALS + 1  # the parent and one run per trial; no run of the user's own
    assert mlflow.active_run() is None
    by_number = {t.number: t for t in home["study"].trials}
    for run in home["children"]:
        trial = by_number[int(run.data.tags[names.TAG_TRIAL_NUMBER])]
        assert trial.state.name == "COMPLETE"
        assert run.info.status == "FINISHED" and run.data.tags[names.TAG_STATE] == "COMPLETE"


def test_system_metrics_are_logged_when_enabled(home: dict[str, Any]) -> None:
    for run in home["children"]:
        assert "system/cpu_utilization_percentage" in run.data.metrics
        assert "system/system_memory_usage_megabytes" in run.data.metrics


def test_the_dataset_is_a_run_input_with_the_fingerprint_and_split_sizes(home: dict[str, Any]) -> None:
    by_number = {t.number: t for t in home["study"].trials}
    for run in home["children"]:
        inputs = run.inputs.dataset_inputs
        assert len(inputs) == 1
        ds = inputs[0].dataset
        fingerprint = by_number[int(run.data.tags[names.TAG_TRIAL_NUMBER])].user_attrs["dataset_fingerprint"]
        assert ds.name == "digits" and ds.digest == fingerprint[:16] == run.data.params["dataset.fingerprint"][:16]
        profile = json.loads(ds.profile)
        assert profile["fingerprint"] == fingerprint
        assert set(profile["splits"]) == {"train", "val", "test"} and sum(profile["splits"].values()) == 1797


def test_test_metrics_belong_to_the_trials_logged_model(home: dict[str, Any]) -> None:
    """The Models tab's metric columns: test_* on the LoggedModel, measured on the run's dataset."""
    client = home["client"]
    by_number = {t.number: t for t in home["study"].trials}
    for run in home["children"]:
        number = int(run.data.tags[names.TAG_TRIAL_NUMBER])
        models = client.search_logged_models([home["result"].experiment_id],
                                             filter_string=f"source_run_id = '{run.info.run_id}'")
        assert len(models) == 1
        model = models[0]
        assert model.name == f"trial-{number}"
        assert by_number[number].user_attrs["model_uri"] == f"models:/{model.model_id}"
        metrics = {m.key: m for m in model.metrics}
        for key in ("test_roc_auc", "test_pair_accuracy", "test_eer"):
            assert metrics[key].value == pytest.approx(run.data.metrics[key])
            assert (metrics[key].dataset_name, metrics[key].dataset_digest) == (
                "digits", run.inputs.dataset_inputs[0].dataset.digest)
        assert metrics["threshold"].value == pytest.approx(run.data.metrics["threshold"])


def test_registered_version_has_a_one_line_description_and_the_model_metrics(home: dict[str, Any]) -> None:
    from sweeps.promotion import promote

    decision = promote("home", storage=home["storage"], tracking_uri=home["uri"], model_name="home-models")
    assert decision.applied
    version = home["client"].get_model_version("home-models", decision.final_holder)
    best = home["study"].best_trial
    text = version.description
    assert "\n" not in text and text.startswith(f"study home, trial {best.number}: test AUC ")
    for word in ("accuracy", "EER", "threshold"):
        assert word in text
    # the version's source is the trial's LoggedModel (MLflow's SQL registry keeps no model_id column): the
    # registry UI shows that model's metrics and dataset
    assert version.source == best.user_attrs["model_uri"]
    model = home["client"].get_logged_model(version.source.removeprefix("models:/"))
    assert {m.key for m in model.metrics} >= {"test_roc_auc", "test_pair_accuracy", "test_eer"}


def test_parent_links_to_the_dashboard_and_local_runs_have_no_url(home: dict[str, Any]) -> None:
    parent = home["client"].get_run(home["result"].parent_run_id)
    study_id = make_storage(home["storage"]).get_study_id_from_name("home")
    assert parent.data.tags[names.TAG_DASHBOARD_URL] == f"{DASHBOARD.rstrip('/')}/dashboard/studies/{study_id}"
    for trial in home["study"].trials:
        assert names.TRIAL_ATTR_RUN_URL not in trial.user_attrs  # sqlite:// has no UI address


def test_run_urls_only_for_servers_and_never_with_credentials() -> None:
    assert ui_base_url("sqlite:///mlflow.db") is None
    assert ui_base_url("file:///tmp/mlruns") is None and ui_base_url("/tmp/mlruns") is None
    assert ui_base_url("https://user:s3cret@mlflow.example:8443/base/") == "https://mlflow.example:8443/base"
    assert run_url("http://127.0.0.1:5000", "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning")


def test_system_metrics_without_psutil_exit_2_and_create_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from sweeps.cli import main

    monkeypatch.setitem(sys.modules, "psutil", None)  # how Python marks a module as not importable
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(make_spec_dict(tracking={"system_metrics": True})))
    try:
        code = main(["run", str(spec), "--storage", f"sqlite:///{tmp_path}/o.db",
                     "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "tracking.system_metrics" in lines[0] and "system-metrics" in lines[0]
    assert not (tmp_path / "o.db").exists() and not (tmp_path / "m.db").exists()


def test_the_active_run_is_per_thread_and_released_without_ending(tmp_path: Path) -> None:
    """A trial in a worker thread makes its run active there only; releasing it leaves the status to `end`."""
    import threading

    import mlflow

    from sweeps.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracker.experiment_id("threads")
    parent = tracker.create_parent_run(exp, "threads")
    run = tracker.start_trial_run(exp, parent, study_name="threads", trial_number=0)
    seen: dict[str, Any] = {}

    def trial() -> None:
        with run.active():
            seen["inside"] = mlflow.active_run().info.run_id
            mlflow.log_metric("user.metric", 3.0)
            started.set()
            main_checked.wait(60)
        seen["after"] = mlflow.active_run()

    started, main_checked = threading.Event(), threading.Event()
    worker = threading.Thread(target=trial)
    worker.start()
    assert started.wait(60)
    seen["main"] = mlflow.active_run()  # the main thread has no active run meanwhile
    main_checked.set()
    worker.join(60)
    assert seen == {"inside": run.run_id, "main": None, "after": None}
    assert tracker.client.get_run(run.run_id).info.status == "RUNNING"  # released, not ended
    assert tracker.client.get_run(run.run_id).data.metrics["user.metric"] == 3.0
    run.end("FAILED")
    assert tracker.client.get_run(run.run_id).info.status == "FAILED"


def test_making_the_trial_run_active_sends_no_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mlflow.start_run(run_id=...)`` + ``end_run`` cost four requests per trial (read, set RUNNING, read, set
    RUNNING again); the run MLflow returned at its creation goes on the fluent stack instead (a private name:
    this pins that MLflow still reads the active run from there)."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from sweeps.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracker.experiment_id("active")
    run = tracker.start_trial_run(exp, tracker.create_parent_run(exp, "active"), study_name="active",
                                  trial_number=0)
    run.wait_side()
    calls: list[str] = []
    for name in ("get_run", "update_run_info"):
        real = getattr(SqlAlchemyStore, name)
        monkeypatch.setattr(SqlAlchemyStore, name, lambda self, *a, _n=name, _r=real, **k: (calls.append(_n),
                                                                                            _r(self, *a, **k))[1])
    with run.active():
        assert mlflow.active_run().info.run_id == run.run_id
        assert calls == []
        mlflow.log_metric("user.metric", 2.0)  # the user's fluent call lands in the trial's run
    assert calls == [] and mlflow.active_run() is None
    assert tracker.client.get_run(run.run_id).info.status == "RUNNING"
    assert tracker.client.get_run(run.run_id).data.metrics["user.metric"] == 2.0
    # without the entity (a run found, not created here) the public start_run/end_run path still works
    run.entity = None
    with run.active():
        assert mlflow.active_run().info.run_id == run.run_id
    assert calls.count("update_run_info") == 2 and mlflow.active_run() is None
    assert tracker.client.get_run(run.run_id).info.status == "RUNNING"
