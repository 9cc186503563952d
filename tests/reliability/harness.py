"""Helpers shared by tests/reliability and tests/distributed: real worker processes, polling, invariants.

Nothing here sleeps and hopes: every wait polls a condition against a deadline and fails with
what it was waiting for.
"""
from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

S = optuna.trial.TrialState

BASE = {
    "dataset": "digits",
    "epochs": 3,
    "batch_size": 64,
    "loader": "memory",
    "pairs": {"pairs_per_epoch": 1280, "val_pairs": 200, "test_pairs": 200},
    "encoder": {"depth": 1, "width": 8, "embedding_dim": 16},
}
# For tests that kill or interrupt a trial "after epoch 1": epochs long enough (~1 s each on a quiet
# machine, more on a busy one) that the trial is still running when the signal lands.
LONG_EPOCHS = {"epochs": 4, "pairs": {"pairs_per_epoch": 3200, "val_pairs": 200, "test_pairs": 200}}
# For tests that act on a trial after epoch 1 through a second client (a tell, an upload check) and need it
# unfinished then. LONG_EPOCHS' epochs take under a second on a fast machine (epoch 2 was uploaded 2.3-2.6 s after
# the trial started, TensorFlow's start included); with 4 epochs a poll or a tell that lagged by two epochs on a
# loaded CI machine met a finished trial (CI at 04788fd: `assert 2 <= uploaded < epochs` with 4 < 4; CI at b5ab94c:
# "Cannot tell a COMPLETE trial"). 12 epochs leave about 10 epochs of lag, ~1 s of test each.
ROOMY_EPOCHS = {**LONG_EPOCHS, "epochs": 12}
SPACE = {
    "loss.margin": {"type": "float", "low": 0.5, "high": 1.5},
    "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
}


def spec_dict(tmp: Path, *, name: str = "rel", trials: int = 2, base: dict | None = None,
              space: dict | None = None, study: dict | None = None, tracking: dict | None = None) -> dict[str, Any]:
    """A small digits sweep with a fast heartbeat; checkpoints under `tmp`."""
    return {
        "base": {**copy.deepcopy(BASE), **(base or {})},
        "search_space": copy.deepcopy(SPACE) if space is None else space,
        "study": {"name": name, "trials": trials, "pruner": "none",
                  "sampler": {"type": "random", "seed": 0}, "heartbeat_interval": 1, "grace_period": 4,
                  "checkpoint_dir": str(tmp / "checkpoints"), **(study or {})},
        "tracking": {"log_plots": False, **(tracking or {})},
    }


def write_spec(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli() -> list[str]:
    """The installed ``siamese-sweep`` command (the module if the script is not on PATH)."""
    exe = shutil.which("siamese-sweep")
    return [exe] if exe else [sys.executable, "-m", "sweeps.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OPTUNA_"))}
    env.update(PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    env.update(extra)
    return env


@dataclass
class Proc:
    """A CLI process with stdout/stderr in files (pipes could fill up and block it)."""

    args: list[str]
    cwd: Path
    env: dict[str, str]
    name: str = "proc"
    prefix: list[str] = field(default_factory=list)  # run the CLI under this command (e.g. unshare)
    popen: subprocess.Popen | None = None
    out_path: Path = field(init=False)
    err_path: Path = field(init=False)

    def __post_init__(self) -> None:
        logs = self.cwd / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        i = len(list(logs.glob(f"{self.name}*.err")))
        self.out_path = logs / f"{self.name}{i}.out"
        self.err_path = logs / f"{self.name}{i}.err"

    def start(self) -> Proc:
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(self.prefix + cli() + self.args, cwd=self.cwd, env=self.env, stdout=out,
                                          stderr=err, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} did not finish within {timeout:.0f}s; "
                                 f"stderr:\n{self.stderr[-3000:]}") from None

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.3,
             procs: Iterable[Proc] = ()) -> Any:
    """Poll `condition` until it returns something truthy; fail early if a watched process exits."""
    deadline = time.monotonic() + timeout
    procs = list(procs)
    while True:
        value = condition()
        if value:
            return value
        for p in procs:
            if p.popen is not None and p.popen.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.popen.returncode} while waiting for {what}; "
                                     f"stderr:\n{p.stderr[-3000:]}")
        if time.monotonic() > deadline:
            said = "".join(f"\n{p.name} stderr:\n{p.stderr[-3000:]}" for p in procs)
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{said}")
        time.sleep(interval)


def load_study(storage: str, name: str) -> optuna.Study:
    from sweeps.storage import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(storage))


def try_load_study(storage: str, name: str) -> optuna.Study | None:
    try:
        return load_study(storage, name)
    except (KeyError, Exception):  # noqa: BLE001 - not created yet (or tables not yet there)
        return None


def running_trial_after_epoch(storage: str, name: str, client: Any, epoch: int, *, before: int | None = None
                              ) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial whose MLflow run already holds the loss of `epoch` (so a checkpoint exists) and, with
    `before`, not yet the loss of that epoch: it is still training (a trial stays RUNNING while it is recorded)."""
    study = try_load_study(storage, name)
    if study is None:
        return None
    for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if not run_id:
            continue
        try:
            steps = {m.step for m in client.get_metric_history(run_id, "loss")}
        except Exception:  # noqa: BLE001 - server restarting
            continue
        if epoch in steps and (before is None or before not in steps):
            return t
    return None


def worker_pid(trial: optuna.trial.FrozenTrial) -> int:
    return int(str(trial.user_attrs["worker"]).rsplit(":", 1)[1])


def child_runs(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    runs = client.search_runs([experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def check_sweep_invariants(study: optuna.Study, client: Any, *, epochs: int, budget: int) -> dict[str, Any]:
    """What every finished sweep must satisfy, whatever went wrong during it.

    * exactly `budget` trials COMPLETE/PRUNED, none RUNNING or WAITING, unique numbers;
    * one parent run; exactly one child run per trial, under that parent; no run left RUNNING;
    * Optuna COMPLETE => MLflow run FINISHED with every epoch's metrics, the final test metrics and a
      READY model; Optuna and MLflow agree on each trial's state.
    """
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)), numbers
    states = [t.state for t in trials]
    assert S.RUNNING not in states and S.WAITING not in states, [(t.number, t.state.name) for t in trials]
    done = [t for t in trials if t.state in (S.COMPLETE, S.PRUNED)]
    assert len(done) == budget, [(t.number, t.state.name) for t in trials]

    parent_id = study.user_attrs["mlflow_parent_run_id"]
    experiment_id = study.user_attrs["mlflow_experiment_id"]
    all_runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("siamese_sweep.role") == "parent"
               and r.data.tags.get("siamese_sweep.study") == study.study_name]
    assert [p.info.run_id for p in parents] == [parent_id]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    by_number: dict[int, list[Any]] = {}
    for r in children:
        by_number.setdefault(int(r.data.tags["siamese_sweep.trial_number"]), []).append(r)
    duplicates = {n: len(rs) for n, rs in by_number.items() if len(rs) != 1}
    assert not duplicates, f"trials with more than one run: {duplicates}"
    # a trial that failed because MLflow was down when it started never got a run, nor one whose worker died
    # right after asking for it
    runless = {t.number for t in trials if t.user_attrs.get("reason") == "tracking_unavailable_at_start"
               or (t.user_attrs.get("reason") == "dead_worker" and "worker" not in t.user_attrs)}
    assert sorted(by_number) == sorted(set(numbers) - runless), (sorted(by_number), sorted(numbers), runless)
    assert all(r.info.status != "RUNNING" for r in children), [
        (r.data.tags["siamese_sweep.trial_number"], r.info.status) for r in children]
    for t in trials:
        if t.number in runless:
            assert t.state == S.FAIL and not t.user_attrs.get("mlflow_run_id"), t.user_attrs
            continue
        run = by_number[t.number][0]
        assert t.user_attrs.get("mlflow_run_id") == run.info.run_id, (t.number, t.user_attrs)
        if t.state == S.COMPLETE:
            check_complete_run(client, run, t, epochs=epochs)
        elif t.state == S.FAIL:
            assert run.info.status in ("FAILED", "KILLED"), (t.number, run.info.status)
    return {"parent_id": parent_id, "experiment_id": experiment_id, "runs": {n: rs[0] for n, rs in by_number.items()}}


def check_complete_run(client: Any, run: Any, trial: optuna.trial.FrozenTrial, *, epochs: int) -> None:
    assert run.info.status == "FINISHED", (trial.number, run.info.status)
    assert run.data.tags.get("siamese_sweep.state") == "COMPLETE", run.data.tags
    for key in ("loss", "val_loss", "val_roc_auc"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(epochs)), f"trial {trial.number}: {key} logged at steps {steps}"
    for key in ("test_pair_accuracy", "test_roc_auc", "threshold", "latency_ms"):
        assert key in run.data.metrics, f"trial {trial.number}: final metric {key} missing"
    if len(trial.values or ()) == 1:  # Optuna's curve too: a resumed retry had no values for its restored epochs
        assert sorted(trial.intermediate_values) == list(range(epochs)), (trial.number, trial.intermediate_values)
    uri = trial.user_attrs.get("model_uri")
    assert uri and uri.startswith("models:/"), trial.user_attrs
    model = client.get_logged_model(uri[len("models:/"):])
    assert str(model.status).endswith("READY"), model.status
    assert model.source_run_id == run.info.run_id


def all_param_and_tag_values(client: Any, experiment_id: str) -> list[str]:
    values = []
    for r in client.search_runs([experiment_id], max_results=1000):
        values += list(r.data.params.values()) + list(r.data.tags.values())
        values += list(r.data.params) + list(r.data.tags)
    exp = client.get_experiment(experiment_id)
    values += list(exp.tags.values())
    return values
