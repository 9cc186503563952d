"""`siamese-sweep slurm submit` on a real one-node Slurm cluster (munged + slurmctld + slurmd).

Tiny digits trials, one thread per task, SQLite Optuna and MLflow stores in the test's temp dir
(every task runs on this one machine, so a shared SQLite file is fine *here*; the batch script
itself knows nothing of it: the stores reach the tasks through the exported environment).

* a job array of 2 tasks meets the exact trial budget;
* ``scancel`` of a running task: its trial is failed ``interrupted`` and queued again, its run KILLED;
* a worker killed hard (SIGKILL, as the OOM killer does): the other task fails the stale trial,
  retries it and ends its run KILLED;
* the time-limit warning (``--signal=B:USR1@N``) ends the trial cleanly before the limit;
* bad data: the task exits 2 and is not retried.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from sweeps import names, outcomes

REASON_INTERRUPTED = outcomes.INTERRUPTED.reason
USER_ATTR_REASON, USER_ATTR_RUN, USER_ATTR_WORKER = (names.TRIAL_ATTR_REASON, names.TRIAL_ATTR_RUN_ID,
                                                     names.TRIAL_ATTR_WORKER)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

ROOT = Path(__file__).resolve().parents[2]
S = optuna.trial.TrialState
# MLflow tags are being renamed (optuna.* -> siamese_sweep.*); this module reads only run status and
# Optuna attributes. If a tag must be read, name it here, once.
RUN_STATUS_RUNNING = "RUNNING"
SECRET = "pw-" + "q9" * 12  # exported like a real password; must never appear in a script or an argv

BASE = {
    "dataset": "digits",
    "epochs": 1,
    "batch_size": 64,
    "loader": "memory",
    "pairs": {"pairs_per_epoch": 640, "val_pairs": 200, "test_pairs": 200},
    "encoder": {"depth": 1, "width": 8, "embedding_dim": 16},
}
# a trial still running when the test signals it after its first epoch (~0.5-3 s an epoch on 2 cores): with 4
# epochs a quick machine's trials ended 5 s after they started, between two polls ("the job ended while
# waiting for a trial in training"); 12 give the polls 11 epochs instead of 3
SIGNALLED = {"epochs": 12, "pairs": {"pairs_per_epoch": 1600, "val_pairs": 200, "test_pairs": 200}}
# a trial that never ends by itself: with 50 epochs a CI run's trial COMPLETEd before the time-limit warning
# came; the test signals this one within ~3 min of its start
ENDLESS = {"epochs": 5000, "pairs": {"pairs_per_epoch": 3200, "val_pairs": 200, "test_pairs": 200}}


def _spec(tmp: Path, name: str, *, trials: int, base: dict | None = None) -> Path:
    data = {
        "base": {**BASE, **(base or {})},
        "search_space": {"loss.margin": {"type": "float", "low": 0.5, "high": 1.5},
                         "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "study": {"name": name, "trials": trials, "pruner": "none", "sampler": {"type": "random", "seed": 0},
                  "heartbeat_interval": 1, "grace_period": 4},
        "tracking": {"log_plots": False, "log_models": False},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Sweep:
    """One submitted study: its stores, its job, and ways to look at both."""

    def __init__(self, cluster: Any, tmp: Path, name: str, empty_mlflow_db: Path) -> None:
        self.cluster, self.tmp, self.name = cluster, tmp, name
        self.storage = f"sqlite:///{tmp}/optuna.db"
        self.tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        self.env = cluster.env()
        for key in [k for k in self.env if k.startswith(("OPTUNA_", "MLFLOW_"))]:
            self.env.pop(key)
        self.env.update(OPTUNA_STORAGE=self.storage, MLFLOW_TRACKING_URI=self.tracking_uri,
                        MLFLOW_TRACKING_USERNAME="worker", MLFLOW_TRACKING_PASSWORD=SECRET,
                        PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
        self.job_id = ""
        # Both SQLite schemas exist before the tasks start: two tasks on fresh files race to create the
        # tables (MLflow: "table ... already exists"). A real deployment's servers have them already.
        # Creating MLflow's schema takes 5-15 s, so it is done once per session and copied.
        from sweeps.storage import make_storage

        make_storage(self.storage)
        shutil.copyfile(empty_mlflow_db, tmp / "mlflow.db")

    def submit(self, spec: Path, *args: str) -> str:
        cmd = [sys.executable, "-m", "sweeps.cli", "slurm", "submit", str(spec), "--json", "--cpus-per-task", "1",
               "--worker-command", f"{sys.executable} -m sweeps.cli", "--output", f"{self.tmp}/task-%a.out",
               "--retries", "0", *args]
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120, cwd=self.tmp)
        assert res.returncode == 0, res.stderr
        self.job_id = json.loads(res.stdout)["job_id"]
        return self.job_id

    def study(self) -> optuna.Study | None:
        from sweeps.storage import make_storage

        try:
            return optuna.load_study(study_name=self.name, storage=make_storage(self.storage))
        except Exception:  # noqa: BLE001 - not created yet
            return None

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def output(self, task: int) -> str:
        path = self.tmp / f"task-{task}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def outputs(self) -> str:
        return "\n".join(f"--- task {i}\n{self.output(i)[-3000:]}" for i in range(4) if self.output(i))

    def wait(self, *, count: int, timeout: float = 240) -> dict[int, Any]:
        try:
            jobs = self.cluster.wait_finished(self.job_id, timeout=timeout, count=count)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.outputs()}") from None
        return {j.task_id: j for j in jobs}

    def running_trial(self) -> optuna.trial.FrozenTrial | None:
        study = self.study()
        running = study.get_trials(deepcopy=False, states=(S.RUNNING,)) if study is not None else []
        return next((t for t in running if t.user_attrs.get(USER_ATTR_WORKER)), None)

    def training_trial(self) -> optuna.trial.FrozenTrial | None:
        """A RUNNING trial whose run has logged its first epoch (so it is mid-training)."""
        study = self.study()
        if study is None:
            return None
        for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)):
            run_id = t.user_attrs.get(USER_ATTR_RUN)
            if run_id and self.client().get_metric_history(run_id, "loss"):
                return t
        return None

    def poll(self, condition: Any, *, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            jobs = self.cluster.jobs(self.job_id)
            if jobs and all(j.finished for j in jobs):
                raise AssertionError(f"the job ended while waiting for {what}\n{self.outputs()}")
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.outputs()}")

    def run_status(self, trial: optuna.trial.FrozenTrial) -> str:
        return self.client().get_run(trial.user_attrs[USER_ATTR_RUN]).info.status

    def assert_no_run_left_running(self, *, sweep_finished: bool = True) -> None:
        """No trial's run is RUNNING; once the budget is met, no run at all (the parent run is FINISHED too)."""
        client = self.client()
        study = self.study()
        assert study is not None
        trial_runs = {t.number: t.user_attrs[USER_ATTR_RUN] for t in study.trials if t.user_attrs.get(USER_ATTR_RUN)}
        statuses = {n: client.get_run(r).info.status for n, r in trial_runs.items()}
        assert statuses and RUN_STATUS_RUNNING not in statuses.values(), statuses
        if sweep_finished:
            runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
            assert all(r.info.status != RUN_STATUS_RUNNING for r in runs), \
                [(r.info.run_id, r.info.status) for r in runs]


def _pid(trial: optuna.trial.FrozenTrial) -> int:
    return int(str(trial.user_attrs[USER_ATTR_WORKER]).rsplit(":", 1)[1])


def _task_of(pid: int) -> int:
    """The array task a worker process belongs to (Slurm put it in its environment)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"SLURM_ARRAY_TASK_ID=")).split(b"=", 1)[1])


def _retry_of(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
    return retry


def _cmdlines() -> list[bytes]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def make_sweep(slurm_cluster, tmp_path: Path, empty_mlflow_db: Path) -> Any:
    return lambda name: Sweep(slurm_cluster, tmp_path, name, empty_mlflow_db)


# ------------------------------------------------------------------ tests
def test_job_array_of_two_workers_meets_the_exact_budget(slurm_cluster, make_sweep, tmp_path: Path) -> None:
    sweep = make_sweep("array")
    sweep.submit(_spec(tmp_path, "array", trials=3), "--tasks", "2")
    # while it runs: the password travelled in the environment, never in an argv
    running = sweep.poll(sweep.running_trial, timeout=180, what="a running trial")
    assert not any(SECRET.encode() in c for c in _cmdlines())
    assert f"MLFLOW_TRACKING_PASSWORD={SECRET}".encode() in Path(f"/proc/{_pid(running)}/environ").read_bytes()
    script = slurm_cluster.scontrol("write", "batch_script", sweep.job_id, "-")
    assert script.startswith("#!/bin/bash") and SECRET not in script and str(tmp_path / "array.yaml") not in script

    tasks = sweep.wait(count=2)
    assert {t: (j.state, j.exit_code) for t, j in tasks.items()} == {0: ("COMPLETED", 0), 1: ("COMPLETED", 0)}, \
        sweep.outputs()
    study = sweep.study()
    assert study is not None
    states = [t.state for t in study.trials]
    assert states.count(S.COMPLETE) + states.count(S.PRUNED) == 3, [(t.number, t.state.name) for t in study.trials]
    assert S.RUNNING not in states and S.WAITING not in states
    sweep.assert_no_run_left_running()
    # a SQLite tracking store's artifacts go to ./mlruns of the worker's working directory: it was the task's
    # temporary folder, deleted at its end, with every run's files (the review of session 46)
    client = sweep.client()
    experiment = client.get_experiment_by_name(f"siamese-sweep/{sweep.name}")
    where = experiment.artifact_location.removeprefix("file://")
    assert where.startswith(str(tmp_path / "mlruns")), experiment.artifact_location
    done = [t for t in study.trials if t.state == S.COMPLETE]
    assert done and all(client.list_artifacts(t.user_attrs[USER_ATTR_RUN]) for t in done)


def test_scancel_of_a_running_task_requeues_its_trial_and_kills_its_run(slurm_cluster, make_sweep,
                                                                        tmp_path: Path) -> None:
    sweep = make_sweep("cancel")
    sweep.submit(_spec(tmp_path, "cancel", trials=2, base=SIGNALLED), "--tasks", "2")
    victim = sweep.poll(sweep.training_trial, timeout=180, what="a trial in training")
    task = _task_of(_pid(victim))
    slurm_cluster.scancel(f"{sweep.job_id}_{task}")  # SIGTERM to every process of the task, SIGKILL after KillWait
    tasks = sweep.wait(count=2)
    assert tasks[task].state == "CANCELLED", sweep.outputs()
    assert "interrupted (exit 130)" in sweep.output(task)
    assert tasks[1 - task].state == "COMPLETED" and tasks[1 - task].exit_code == 0, sweep.outputs()

    study = sweep.study()
    assert study is not None
    cancelled = study.trials[victim.number]
    assert cancelled.state == S.FAIL and cancelled.user_attrs[USER_ATTR_REASON] == REASON_INTERRUPTED
    assert sweep.run_status(cancelled) == "KILLED"
    retry = _retry_of(study, victim.number)
    assert retry.params == victim.params and retry.state == S.COMPLETE  # run by the other task
    done = [t for t in study.trials if t.state in (S.COMPLETE, S.PRUNED)]
    assert len(done) == 2
    sweep.assert_no_run_left_running()


def test_a_worker_killed_hard_is_failed_by_heartbeat_and_retried_by_the_other_task(
        slurm_cluster, make_sweep, tmp_path: Path) -> None:
    sweep = make_sweep("hardkill")
    sweep.submit(_spec(tmp_path, "hardkill", trials=2, base=SIGNALLED), "--tasks", "2")
    victim = sweep.poll(sweep.training_trial, timeout=180, what="a trial in training")
    pid = _pid(victim)
    task = _task_of(pid)
    os.kill(pid, signal.SIGKILL)  # the OOM killer; no clean-up runs
    tasks = sweep.wait(count=2)
    assert (tasks[task].state, tasks[task].exit_code) == ("FAILED", 128 + signal.SIGKILL), sweep.outputs()
    assert "attempt 2" not in sweep.output(task)  # killed by a signal: not retried in place
    assert tasks[1 - task].state == "COMPLETED", sweep.outputs()

    study = sweep.study()
    assert study is not None
    killed = study.trials[victim.number]
    assert killed.state == S.FAIL  # failed through its stale heartbeat by the other worker
    assert sweep.run_status(killed) == "KILLED"  # reconciled by the other worker
    assert _retry_of(study, victim.number).state == S.COMPLETE
    assert len([t for t in study.trials if t.state in (S.COMPLETE, S.PRUNED)]) == 2
    sweep.assert_no_run_left_running()


def _seconds(run_time: str) -> int:
    """``scontrol``'s RunTime ([D-]HH:MM:SS) in seconds."""
    days, _, hms = run_time.rpartition("-")
    h, m, sec = (int(x) for x in hms.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + sec


def test_the_time_limit_warning_ends_the_trial_cleanly_before_the_limit(slurm_cluster, make_sweep,
                                                                        tmp_path: Path) -> None:
    warning_s = 120
    sweep = make_sweep("timelimit")
    sweep.submit(_spec(tmp_path, "timelimit", trials=2, base=ENDLESS), "--tasks", "1", "--time", "10",
                 "--preempt-signal-seconds", str(warning_s))
    victim = sweep.poll(sweep.training_trial, timeout=180, what="a trial in training")
    (job,) = slurm_cluster.jobs(sweep.job_id)
    # Shorten the limit to L minutes, L*60 in [elapsed + 90, elapsed + 149]. The warning is sent by the
    # first of slurmctld's time-limit checks (every 30 s) that finds at most 120 s left, so the worker hears
    # USR1 -> SIGTERM with 60-120 s left before Slurm's own SIGTERM at the limit. ([elapsed + 40, ...] could
    # leave 10 s: a CI run's clean-up needed more, retrying a write to the SQLite file, and got TIMEOUT.)
    elapsed = _seconds(job.fields["RunTime"])
    minutes = -(-(elapsed + 90) // 60)
    slurm_cluster.scontrol("update", f"JobId={job.job_id}", f"TimeLimit={minutes}")
    (job,) = sweep.wait(count=1, timeout=240).values()
    out = sweep.output(0)
    assert (job.state, job.exit_code) == ("FAILED", 130), out[-3000:]  # not TIMEOUT: it stopped before the limit
    assert f"time limit in {warning_s} s or less" in out and "queued again" in out
    assert "DUE TO TIME LIMIT" not in out

    study = sweep.study()
    assert study is not None
    trial = study.trials[victim.number]
    assert trial.state == S.FAIL and trial.user_attrs[USER_ATTR_REASON] == REASON_INTERRUPTED
    assert sweep.run_status(trial) == "KILLED"
    retry = _retry_of(study, victim.number)
    assert retry.state == S.WAITING and retry.params == victim.params  # the next worker resumes it
    sweep.assert_no_run_left_running(sweep_finished=False)  # the parent run stays open until the budget is met


def test_bad_data_exits_2_and_the_task_is_not_retried(slurm_cluster, make_sweep, tmp_path: Path) -> None:
    sweep = make_sweep("bad")
    # valid on the submit host (a spec, not data, is checked there); the node finds no such file
    spec = _spec(tmp_path, "bad", trials=2, base={"dataset": {"name": "npz", "path": str(tmp_path / "missing.npz")}})
    sweep.submit(spec, "--tasks", "1", "--retries", "3")
    (job,) = sweep.wait(count=1, timeout=120).values()
    out = sweep.output(0)
    assert (job.state, job.exit_code, job.restarts) == ("FAILED", 2, 0), out[-3000:]
    assert "missing.npz" in out and "not retried" in out
    assert "attempt 1" in out and "attempt 2" not in out
    assert sweep.study() is None  # nothing was created


def test_secrets_given_as_files_travel_as_paths_and_a_refused_partition_is_bad_input(slurm_cluster, make_sweep,
                                                                                      tmp_path: Path) -> None:
    """With MLFLOW_TRACKING_PASSWORD_FILE the job's environment (which Slurm's admins can read) held the password:
    the CLI had read the file into its own environment and passed that to sbatch (docs/cluster.md). A partition
    sbatch refuses was exit 1, as if the controller were down."""
    sweep = make_sweep("files")
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    sweep.env.pop("MLFLOW_TRACKING_PASSWORD")
    sweep.env["MLFLOW_TRACKING_PASSWORD_FILE"] = str(secret_file)
    job = sweep.submit(_spec(tmp_path, "files", trials=1), "--tasks", "1", "--sbatch-arg=--hold")
    try:
        assert slurm_cluster.root is not None
        (stored,) = (slurm_cluster.root / "state").glob(f"hash.*/job.{job}/environment")
        environment = stored.read_bytes()
        assert f"MLFLOW_TRACKING_PASSWORD_FILE={secret_file}".encode() in environment
        assert SECRET.encode() not in environment and b"MLFLOW_TRACKING_PASSWORD=" not in environment
    finally:
        slurm_cluster.scancel(job)
    cmd = [sys.executable, "-m", "sweeps.cli", "slurm", "submit", str(_spec(tmp_path, "files", trials=1)),
           "--tasks", "1", "--partition", "nosuch"]
    res = subprocess.run(cmd, env=sweep.env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: sbatch: refused the job: ") and "nosuch" not in res.stdout
    assert "Invalid partition" in lines[0] and "--debug" not in lines[0]
