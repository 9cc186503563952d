"""`sweeps.sweep`: the Python API a notebook calls (tiny real sweeps on digits), also from a non-main thread."""
from __future__ import annotations

import signal
import threading
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from siamese_core.errors import ConfigError, InfrastructureError
from sweeps.storage import make_storage

from .conftest import make_spec_dict

TINY = {"epochs": 1, "pairs": {"pairs_per_epoch": 320, "val_pairs": 120, "test_pairs": 120}}


def _spec(**study) -> dict:
    spec = make_spec_dict(study={"name": "api", "trials": 2, **study})
    spec["base"] = {**spec["base"], **TINY}
    spec["search_space"] = {k: v for k, v in spec["search_space"].items() if k != "loader"}
    return spec


def test_sweep_from_python_then_resumed_from_a_non_main_thread(tmp_path: Path) -> None:
    import sweeps

    storage, uri = f"journal:///{tmp_path}/study.log", f"sqlite:///{tmp_path}/mlflow.db"
    result = sweeps.sweep(_spec(), storage=storage, tracking_uri=uri, progress=False)
    assert result.finished and result.budget_met and result.stopped_by == "budget"
    assert result.status["counts"]["COMPLETE"] + result.status["counts"]["PRUNED"] == 2
    assert result.best is not None and set(result.best_params) == {"loss.margin", "encoder.depth", "learning_rate"}
    assert isinstance(result.best_value, float)

    # a notebook's background thread: Python refuses signal.signal there (ValueError), so the sweep
    # must not install handlers, and the main thread's own handler stays as it was
    seen: dict = {}
    before = signal.getsignal(signal.SIGTERM)

    def resume() -> None:
        try:
            seen["result"] = sweeps.sweep(_spec(), trials=3, storage=storage, tracking_uri=uri, progress=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            seen["error"] = exc

    thread = threading.Thread(target=resume)
    thread.start()
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in seen, seen.get("error")
    assert signal.getsignal(signal.SIGTERM) is before
    again = seen["result"]
    assert again.finished and again.parent_run_id == result.parent_run_id
    study = optuna.load_study(study_name="api", storage=make_storage(storage))
    assert len([t for t in study.trials if t.state.is_finished()]) == 3
    runs = MlflowClient(uri).search_runs([again.experiment_id])
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]) == 3

    # no spec, the study's name: it resumes with the spec stored with it, as `run --study api` does (it was
    # resumed with the quickstart's spec and refused: "created with another spec")
    resumed = sweeps.sweep(study_name="api", trials=3, storage=storage, tracking_uri=uri, progress=False)
    assert resumed.finished and resumed.budget_met and resumed.parent_run_id == result.parent_run_id


def test_a_deleted_tracking_store_is_made_anew_in_the_same_kernel(tmp_path: Path) -> None:
    """A notebook deleted its ``mlflow.db`` and called `sweep` again: MLflow's cached store (one per URI, an engine
    per database, for the life of the process) wrote through its connection to the deleted file and the sweep
    failed ("attempt to write a readonly database"). This pins the private caches
    `sweeps.mlflow_globals.forget_deleted_sqlite_stores` clears."""
    from sweeps.registry import client_for as client
    from sweeps.tracking import Tracker

    uri, db = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "mlflow.db"
    first = Tracker(uri).experiment_id("a")
    client(uri).create_registered_model("m")
    db.unlink()
    again = Tracker(uri)
    made = again.experiment_id("b")
    assert db.exists() and again.client.get_experiment(made).name == "b"
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["b", "Default"] and first == made
    client(uri).create_registered_model("m")  # the registry's store is made anew too: no "already exists"
    assert [m.name for m in MlflowClient(uri).search_registered_models()] == ["m"]


def test_sweep_refuses_bad_input_before_creating_anything(tmp_path: Path) -> None:
    import sweeps

    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    for bad in ({"trials": 0}, {"trials": "3"}, {"workers": 1.5}, {"timeout": float("nan")}, {"threads": True}):
        with pytest.raises(ConfigError, match=next(iter(bad))):  # "3" was a TypeError, 1.5 ran one worker
            sweeps.sweep(_spec(), storage=storage, tracking_uri=uri, **bad)
    with pytest.raises(ConfigError, match=r"study\.sampler\.type"):
        sweeps.sweep(_spec(sampler={"type": "bayes"}), storage=storage, tracking_uri=uri)
    # arguments of the wrong type (a TypeError and an AttributeError before), a tracking URI MLflow cannot use (its
    # own exception, after the study existed)
    for kwargs, words in (({"study_name": 5}, "study_name: expected a string"),
                          ({"study_name": ""}, "study_name: expected a non-empty name"),
                          # an empty URL fell back to the spec's sqlite file (optuna.db in the working directory)
                          ({"storage": ""}, "storage: expected a URL; received an empty string"),
                          ({"tracking_uri": " "}, "tracking_uri: expected a URL; received an empty string"),
                          ({"overrides": ["epochs=2"]}, "overrides: expected a mapping"),
                          # the API's own argument, not the command line's flag (`--tracking-uri: ...` before)
                          ({"tracking_uri": "foo://x"}, "^tracking_uri: MLflow cannot use 'foo://x'"),
                          ({"study_name": "it's"}, "^study_name: expected 1-200 characters"),
                          # whole sentences (it was cut at 200 characters, mid-word)
                          ({"tracking_uri": f"file://{tmp_path}/mlruns"}, "to access the latest MLflow features.")):
        with pytest.raises(ConfigError, match=words):
            sweeps.sweep(_spec(), **{"storage": storage, "tracking_uri": uri, **kwargs})
    named = _spec()
    named["tracking"] = {**named.get("tracking", {}), "registered_model": "team/siamese"}  # MLflow refuses '/'
    with pytest.raises(ConfigError, match=r"tracking\.registered_model: .*without '/' or ':'"):
        sweeps.sweep(named, storage=storage, tracking_uri=uri)
    # a storage that cannot be opened: one line naming it, and no MLflow store made before it was tried
    with pytest.raises(InfrastructureError, match=r"cannot open the Optuna storage at postgresql://u:\*\*\*@"):
        sweeps.sweep(_spec(), storage="postgresql://u:pw@127.0.0.1:9/db", tracking_uri=uri)
    with pytest.raises(ConfigError, match="the database refused"):
        sweeps.sweep(_spec(), storage="postgresql://u@127.0.0.1:9/db?no_such_option=1", tracking_uri=uri)
    assert list(tmp_path.iterdir()) == []
    # move_study from Python: an int was an AttributeError from deep inside
    for kwargs, words in (({"from_storage": 5}, "^from_storage: expected a non-empty string"),
                          ({"to_tracking_uri": ""}, "^to_tracking_uri: expected a non-empty string"),
                          ({"from_tracking_uri": uri}, "^from_tracking_uri: no such SQLite file")):
        with pytest.raises(ConfigError, match=words):
            sweeps.move_study("s", **{"from_storage": storage, "from_tracking_uri": uri,  # type: ignore[arg-type]
                                      "to_storage": f"sqlite:///{tmp_path}/b.db", "to_tracking_uri": uri, **kwargs})
    assert list(tmp_path.iterdir()) == []
    from sweeps.promotion import promote, rollback

    with pytest.raises(ConfigError, match="^tracking_uri: MLflow cannot use 'foo://x'"):
        promote("s", storage=storage, tracking_uri="foo://x", dry_run=True)
    with pytest.raises(ConfigError, match="^alias: "):
        rollback(tracking_uri=uri, model_name="m", alias="bad alias!")
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_still_names_its_flags(tmp_path: Path) -> None:
    """The same code under `run`: its error names the flag the user typed (`ConfigError.cli_field`)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "run", "digits-smoke", "--storage",
                           f"sqlite:///{tmp_path}/o.db", "--tracking-uri", "foo://x"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: --tracking-uri: MLflow cannot use 'foo://x'"), \
        done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_leaves_mlflow_as_it_found_it(tmp_path: Path) -> None:
    """MLflow's process-wide tracking URI, ``$MLFLOW_TRACKING_URI`` and ``$MLFLOW_RUN_ID`` are put back: the next
    call's spec URI was ignored for the first call's (``$MLFLOW_TRACKING_URI`` left set), and a notebook's own run
    failed with "Run ... not found" (the global URI left on the sweep's store)."""
    import os

    import mlflow

    import sweeps

    mine = f"sqlite:///{tmp_path}/mine.db"
    mlflow.set_tracking_uri(mine)
    try:
        with mlflow.start_run() as own:
            os.environ["MLFLOW_RUN_ID"] = own.info.run_id  # as `mlflow run` sets it: a worker must not adopt it
            result = sweeps.sweep(_spec(trials=1), storage=f"sqlite:///{tmp_path}/optuna.db",
                                  tracking_uri=f"sqlite:///{tmp_path}/sweep.db", progress=False)
            assert result.budget_met
            assert mlflow.get_tracking_uri() == mine and os.environ["MLFLOW_TRACKING_URI"] == mine
            assert os.environ["MLFLOW_RUN_ID"] == own.info.run_id
            mlflow.log_metric("after", 2.0)  # "Run ... not found" when the URI stayed on sweep.db
        assert MlflowClient(mine).get_run(own.info.run_id).data.metrics == {"after": 2.0}
        # a second sweep with no tracking_uri argument uses its spec's (it took the first one's)
        os.environ.pop("MLFLOW_RUN_ID", None)  # MLflow's end_run unsets it
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        spec = _spec(trials=1)
        spec["tracking"] = {**spec.get("tracking", {}), "uri": f"sqlite:///{tmp_path}/from-spec.db"}
        sweeps.sweep(spec, storage=f"sqlite:///{tmp_path}/optuna2.db", progress=False)
        assert (tmp_path / "from-spec.db").exists() and not mlflow.is_tracking_uri_set()
    finally:
        os.environ.pop("MLFLOW_RUN_ID", None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def test_a_study_stop_object_is_checked_as_the_spec_is() -> None:
    from sweeps import StudyStop

    for kwargs, field in (({}, "study.stop"), ({"patience_trials": 0}, "patience_trials"),
                          ({"patience_trials": 2.5}, "patience_trials"), ({"target": float("nan")}, "target"),
                          ({"target": "high"}, "target"), ({"target": True}, "target")):
        with pytest.raises(ConfigError, match=field):
            StudyStop(**kwargs)
    assert StudyStop(target=0.9, patience_trials=3).patience_trials == 3


def test_resolve_spec_takes_objects_mappings_w_and_b_configs_paths_and_builtin_names(tmp_path: Path) -> None:
    import yaml

    from sweeps import SweepSpec, resolve_spec

    spec = resolve_spec(_spec(), {"study.trials": 5})
    assert isinstance(spec, SweepSpec) and spec.study.trials == 5
    assert resolve_spec(spec) is spec
    assert resolve_spec(spec, {"search_space.loss.margin.high": 1.2}).search_space["loss.margin"].high == 1.2
    wandb = {"method": "random", "metric": {"name": "val_roc_auc", "goal": "maximize"}, "run_cap": 4,
             "parameters": {"learning_rate": {"min": 1e-3, "max": 1e-2, "distribution": "log_uniform_values"}}}
    converted = resolve_spec(wandb)
    assert converted.study.sampler.type == "random" and converted.study.trials == 4
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec()))
    assert resolve_spec(path).study.name == resolve_spec(str(path)).study.name == "api"
    assert resolve_spec("digits-smoke").base.dataset.name == "digits"


_TWO_SWEEPS = """
import json, logging, os, random, sys
import numpy as np
from threadpoolctl import threadpool_info
import sweeps
from siamese_core.runtime import thread_counts

logging.basicConfig(level=logging.WARNING)
spec = json.loads(sys.argv[1])
before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
blas = sorted({i["num_threads"] for i in threadpool_info()})
random.seed(123); np.random.seed(123)
state = (random.getstate(), np.random.get_state()[1].tolist())
sweeps.sweep(spec, threads=1, storage="memory", tracking_uri=sys.argv[2], progress=False)
after = {k: os.environ.get(k) for k in before}
print(json.dumps({"before": before, "after": after, "pools": thread_counts(),
                  "blas": [blas, sorted({i["num_threads"] for i in threadpool_info()})],
                  "random": state == (random.getstate(), np.random.get_state()[1].tolist())}), flush=True)
sweeps.sweep(spec, threads=2, trials=2, storage="memory", tracking_uri=sys.argv[2], progress=False)
"""


def test_a_notebook_keeps_its_environment_and_hears_when_threads_cannot_change(tmp_path: Path) -> None:
    """`sweep(threads=1)` left OMP_NUM_THREADS=1 and MLflow's shortened HTTP retries in the notebook's environment;
    a second `sweep(threads=2)` ran on the first call's one thread without a word (TensorFlow's pools are set
    once per process)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
           and not k.startswith("MLFLOW_HTTP")}
    proc = subprocess.run([sys.executable, "-c", _TWO_SWEEPS, json.dumps(_spec(trials=1)),
                           f"sqlite:///{tmp_path}/m.db"], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads(proc.stdout.splitlines()[0])
    assert first["before"] == first["after"] == {"OMP_NUM_THREADS": None, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": None}
    assert first["pools"] == [1, 1]
    # numpy's BLAS pool stayed at 1 thread and its random draws were the trials' seed's (the review of session 46);
    # a BLAS library loaded during the call (scikit-learn's) is sized as numpy's was
    before, after = first["blas"]
    assert after == before and (max(before) > 1 or os.cpu_count() == 1), first["blas"]
    assert first["random"] is True
    said = ("TensorFlow's thread pools in this process are already 1/1 (intra/inter-op, 0: one per core) and "
            "cannot change; 2/2 applies in a new process")
    assert proc.stderr.count(said) == 1, proc.stderr[-3000:]  # it was said twice


_POOLS = """
import json
from threadpoolctl import threadpool_info
from siamese_core.cpus import cap_math_threads, usable_cores
from sweeps.api import _environment_kept

before = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
with _environment_kept():
    cap_math_threads(1)  # what sweep(threads=1) does
    import sklearn.decomposition, sklearn.ensemble  # what a sweep loads: scikit-learn's OpenMP among them
    during = {i["internal_api"]: i["num_threads"] for i in threadpool_info()}
after = [(i["internal_api"], i["num_threads"], before.get(i["filepath"])) for i in threadpool_info()]
print(json.dumps({"during": during, "after": after, "cores": usable_cores()}))
"""


def test_pools_loaded_during_a_call_start_as_they_would_have_without_it(tmp_path: Path) -> None:
    """scikit-learn's OpenMP, loaded by the sweep under the capped variables, stayed on one thread in the
    notebook: no library of its kind existed before the call to take the size from (the final review)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", _POOLS], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["during"].get("openmp") == 1, out  # capped while the call ran
    for _api, size, was in out["after"]:
        assert size == (was if was is not None else out["cores"]), out
