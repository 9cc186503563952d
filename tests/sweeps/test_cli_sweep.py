"""The ``siamese-sweep run/worker/status`` commands as users call them (real subprocesses)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient

from siamese_core.cpus import usable_cores
from sweeps.launch import threads_per_worker
from sweeps.storage import make_storage

from .conftest import make_spec_dict

CLI = [sys.executable, "-m", "sweeps.cli"]


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _write_spec(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(make_spec_dict(**sections)))
    return path


def test_two_worker_processes_meet_the_exact_global_budget(tmp_path: Path) -> None:
    # an option the pruner does not read: the warning is `run`'s, once, not each worker process's again
    spec = _write_spec(tmp_path / "spec.yaml", study={"pruner": {"type": "none", "reduction_factor": 4}})
    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "SIAMESE_SWEEP_ALLOCATOR")}
    # -X importtime lists on stderr the modules `run` itself imports (the workers are started without the flag)
    cli = [sys.executable, "-X", "importtime", "-m", "sweeps.cli"]
    proc = subprocess.Popen(cli + ["run", str(spec), "--workers", "2", "--trials", "3", "--storage", storage,
                                   "--tracking-uri", uri, "--quiet", "--json"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=600)
    imported = {line.rpartition("|")[2].strip() for line in stderr.splitlines() if line.startswith("import time:")}
    stderr = "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))
    assert proc.returncode == 0, stderr[-2000:]
    assert stderr.count("study.pruner.reduction_factor is not used by the 'none' pruner") == 1, stderr[-2000:]
    # the parent never imports TensorFlow: only to count cores for the workers' threads it once took 4.8 s
    # before the workers could start (siamese_core.cpus)
    assert "sweeps.runner" in imported and not {"tensorflow", "keras"} & imported
    status = json.loads(stdout)
    assert status["counts"]["COMPLETE"] + status["counts"]["PRUNED"] == 3
    study = optuna.load_study(study_name="t", storage=make_storage(storage))
    done = [t for t in study.trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]
    assert len(done) == 3 and len({t.number for t in study.trials}) == len(study.trials)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([status_experiment(client)], max_results=100)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == status["parent_run_id"]]
    numbers = sorted(int(r.data.tags["siamese_sweep.trial_number"]) for r in children)
    assert numbers == sorted(t.number for t in study.trials)
    assert len([r for r in runs if r.data.tags.get("siamese_sweep.role") == "parent"]) == 1
    assert all(r.info.status == "FINISHED" for r in children)
    # every trial ran in a worker process (not in `run` itself), and the allocator fix was in effect there:
    # the setting, and a probe measured inside the worker (re-faulted page share ~1 with glibc's defaults)
    pids = {int(r.data.tags["siamese_sweep.worker"].rsplit(":", 1)[1]) for r in children}
    assert proc.pid not in pids and os.getpid() not in pids
    assert {r.data.tags["siamese_sweep.allocator"] for r in children} == {"glibc-tuned"}
    assert all(float(r.data.tags["siamese_sweep.allocator_refaults"]) < 0.3 for r in children), \
        [r.data.tags["siamese_sweep.allocator_refaults"] for r in children]
    # each worker got its share of the cores and kept it (`worker --threads` was once reset to all cores
    # inside the worker, so `--workers 2` on 2 cores ran 2 x 2 threads)
    share = threads_per_worker(2)
    assert {r.data.tags["siamese_sweep.threads"] for r in children} == {f"{share}/{share}"}
    # a share of the cores leaves none idle for the recording helper, and neither does one core:
    # `finish_in_background: auto` records in line unless the worker's threads span two or more cores and all of them
    assert {r.data.tags["siamese_sweep.recording"] for r in children} == (
        {"in line"} if share < 2 or share < usable_cores() else {"background"})


def status_experiment(client: MlflowClient) -> str:
    return client.get_experiment_by_name("siamese-sweep/t").experiment_id


def test_status_json_reports_counts_and_best(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path / "spec.yaml", study={"trials": 2})
    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    assert _run(["run", str(spec), "--storage", storage, "--tracking-uri", uri, "--quiet"], tmp_path).returncode == 0
    proc = _run(["status", "--storage", storage, "--study", "t", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["counts"]["COMPLETE"] + status["counts"]["PRUNED"] == 2
    best = status["best"]
    assert {"number", "value", "params", "run_id"} <= set(best)
    run = MlflowClient(tracking_uri=uri).get_run(best["run_id"])
    assert run.data.tags["siamese_sweep.trial_number"] == str(best["number"])
    # one worker with every core (`finish_in_background: auto`): the helper records while the next trial trains
    assert run.data.tags["siamese_sweep.recording"] == ("background" if usable_cores() >= 2 else "in line")
    human = _run(["status", "--storage", storage, "--study", "t"], tmp_path)
    assert f"best trial #{best['number']}" in human.stdout


@pytest.mark.parametrize("content, field", [
    ("base: {dataset: digits}\nstudy: {trials: 0}\n", "study.trials"),
    ("base: {dataset: digits}\nsearch_space: {encoder.depht: {type: int, low: 1, high: 2}}\n",
     "search_space.encoder.depht"),
    ("base: {dataset: digits, encoder: {depth: 0}}\n", "base.encoder.depth"),
    ("base: [unclosed\n", "not valid YAML"),
    ("base: {dataset: digits}\nstudy: {sampler: {type: annealing}}\n", "study.sampler.type"),
    ("base: {dataset: digits}\nsearch_space: {learning_rate: {type: float, low: 0.1, high: 0.01}}\n",
     "search_space.learning_rate.high"),
    ("base: {dataset: digits}\nsearch_space: {loader: {type: categorical, choices: [memory, gpu]}}\n",
     "search_space.loader"),
])
def test_bad_specs_exit_2_with_one_line_naming_the_field(tmp_path: Path, content: str, field: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(content)
    proc = _run(["run", str(spec), "--storage", f"sqlite:///{tmp_path}/o.db",
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and field in lines[0], proc.stderr
    assert not (tmp_path / "o.db").exists(), "nothing may be created for an invalid spec"


def _processes_with(text: str) -> list[int]:
    """Live processes whose command line or environment mentions `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text.encode() in (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_data_exits_2_before_any_study_exists(tmp_path: Path, workers: int) -> None:
    """With --workers 2 the worker processes start before the preflight (sweeps.launch); the parent's one line
    and exit 2 stay the same, and they end having created nothing."""
    data = tmp_path / "one_class.npz"
    np.savez(data, x=np.zeros((40, 8, 8), np.uint8), y=np.zeros(40, np.int64))
    spec = _write_spec(tmp_path / "spec.yaml", base={**make_spec_dict()["base"],
                                                     "dataset": {"name": "npz", "path": str(data)}})
    proc = _run(["run", str(spec), "--workers", str(workers), "--storage", f"sqlite:///{tmp_path}/o.db",
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "one_class.npz" in proc.stderr and "class" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
    assert not (tmp_path / "o.db").exists() and not (tmp_path / "m.db").exists()
    assert _processes_with(f"{tmp_path}/o.db") == []  # no worker left behind, waiting or not


def test_workers_start_before_the_parent_checks_and_wait_for_the_study(tmp_path: Path) -> None:
    """`WorkerProcesses` as `sweeps.api.sweep` uses it: started, its workers import and wait; never released,
    they exit having created nothing; their spec file goes too."""
    from sweeps.launch import WorkerProcesses
    from sweeps.options import options_from
    from sweeps.spec import load_spec

    spec = load_spec(_write_spec(tmp_path / "spec.yaml"), {})
    options = options_from(spec, workers=2, storage=f"sqlite:///{tmp_path}/o.db",
                           tracking_uri=f"sqlite:///{tmp_path}/m.db")
    with WorkerProcesses(spec, options) as started:
        time.sleep(15)  # their imports take ~6 s here: long enough to be waiting on the parent by now
        assert [p.poll() for p in started.procs] == [None, None]
        pids = sorted(p.pid for p in started.procs)
        assert sorted(_processes_with(f"{tmp_path}/o.db")) == pids
    assert all(p.returncode is not None for p in started.procs)
    assert _processes_with(f"{tmp_path}/o.db") == []
    assert not (tmp_path / "o.db").exists() and not (tmp_path / "m.db").exists()


def test_workers_that_cannot_be_planned_leave_no_spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device plan that fails (e.g. a bad CUDA_VISIBLE_DEVICES) raises before the spec folder is made: nothing
    is left for the garbage collector, and no worker starts."""
    import gc
    import tempfile
    import warnings

    from sweeps import devices
    from sweeps.launch import WorkerProcesses
    from sweeps.options import options_from
    from sweeps.spec import load_spec

    def no_plan(workers: int) -> None:
        raise RuntimeError("no devices")

    spec = load_spec(_write_spec(tmp_path / "spec.yaml"), {})
    options = options_from(spec, workers=2, storage=f"sqlite:///{tmp_path}/o.db",
                           tracking_uri=f"sqlite:///{tmp_path}/m.db")
    monkeypatch.setattr(devices, "device_plan", no_plan)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="no devices"):
            WorkerProcesses(spec, options)
        gc.collect()
    assert list((tmp_path / "tmp").iterdir()) == []
    # before the fix the folder existed and was removed by the garbage collector, which warns about it
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


def test_set_overrides_apply_to_the_spec(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path / "spec.yaml")
    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    proc = _run(["run", str(spec), "--storage", storage, "--tracking-uri", uri, "--quiet", "--json",
                 "--set", "study.trials=1", "--set", "base.epochs=1", "--set", "study.name=renamed"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stdout)
    assert status["study"] == "renamed" and status["budget"] == 1
    run = MlflowClient(tracking_uri=uri).get_run(status["best"]["run_id"])
    assert run.data.params["epochs"] == "1"
