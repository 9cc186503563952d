"""Items 1, 2, 3, 9 of the reliability issue, with real `siamese-sweep` processes and a real MLflow server.

* four workers share one SQLite study; one is SIGKILLed mid-trial: its trial is failed through the
  heartbeat and retried (same params, from its checkpoint), the budget is met exactly, no lock errors;
* the only process is SIGKILLed: rerunning the same command finishes the budget, nothing left RUNNING (on a
  SQLite study through the heartbeat, on a journal file through the dead worker's pid, or, for a worker killed
  before it claimed its trial, through the trial staying unclaimed);
* SIGTERM: the trial is FAIL/KILLED, the process exits non-zero, and the rerun resumes the trial.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    LONG_EPOCHS,
    ROOMY_EPOCHS,
    Proc,
    S,
    check_sweep_invariants,
    clean_env,
    cli,
    load_study,
    running_trial_after_epoch,
    spec_dict,
    wait_for,
    worker_pid,
    write_spec,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

EPOCHS = LONG_EPOCHS["epochs"]


@pytest.fixture
def client(mlflow_server_pg, mlflow_env):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server_pg.url)


def _run_args(spec: Path, storage: str, *extra: str) -> list[str]:
    return ["run", str(spec), "--storage", storage, "--quiet", *extra]


def _signal_mid_trial(spec: Path, storage: str, study: str, client, tmp_path: Path, env: dict[str, str],
                      sig: int, wait_s: float) -> tuple[Proc, Any, int]:
    """Start `run`, send `sig` once a trial is past its second epoch; return the process, that trial, its exit code."""
    first = Proc(_run_args(spec, storage), tmp_path, env, name="run").start()
    try:
        victim = wait_for(lambda: running_trial_after_epoch(storage, study, client, 1), timeout=240,
                          what="a trial past its second epoch", procs=[first])
        first.signal(sig)
        code = first.wait(wait_s)
    finally:
        first.kill()
    return first, victim, code


def test_four_workers_one_sigkilled_meet_the_exact_budget_without_lock_errors(
        mlflow_server_pg, client, tmp_path: Path) -> None:
    budget = 5
    storage = f"sqlite:///{tmp_path}/optuna.db"
    spec = write_spec(tmp_path / "spec.yaml", spec_dict(tmp_path, name="four", trials=budget,
                                                        base=LONG_EPOCHS))
    env = clean_env(OPTUNA_STORAGE=storage, **mlflow_server_pg.env())
    workers = [Proc(["worker", str(spec), "--threads", "1"], tmp_path, env, name=f"w{i}").start() for i in range(4)]
    try:
        victim = wait_for(lambda: running_trial_after_epoch(storage, "four", client, 1), timeout=300,
                          what="a trial past its second epoch", procs=workers)
        killed = next(w for w in workers if w.pid == worker_pid(victim))
        killed.signal(signal.SIGKILL)
        killed.wait(30)
        for w in workers:
            if w is not killed:
                assert w.wait(420) == 0, w.stderr[-3000:]
    finally:
        for w in workers:
            w.kill()
    study = load_study(storage, "four")
    seen = check_sweep_invariants(study, client, epochs=EPOCHS, budget=budget)
    trials = {t.number: t for t in study.trials}
    assert trials[victim.number].state == S.FAIL
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == S.COMPLETE and retry.params == victim.params
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    assert seen["runs"][victim.number].info.status == "KILLED"
    assert seen["runs"][retry.number].data.tags["siamese_sweep.retry_of"] == str(victim.number)
    assert len(trials) == budget + 1  # the budget plus exactly the one failed trial
    for w in workers:
        err = w.stderr.lower()
        assert "database is locked" not in err and "operationalerror" not in err, w.stderr[-3000:]
        assert "traceback" not in err, w.stderr[-3000:]


def _rerun_retries_the_killed_trial(spec: Path, storage: str, name: str, client, tmp_path: Path,
                                    env: dict[str, str], victim: Any, reason: str) -> Proc:
    """Rerun the sweep: it finishes the budget, the killed trial's run KILLED with `reason`, its retry COMPLETE."""
    rerun = Proc(_run_args(spec, storage), tmp_path, env, name="rerun").start()
    assert rerun.wait(300) == 0, rerun.stderr[-3000:]
    study = load_study(storage, name)
    seen = check_sweep_invariants(study, client, epochs=EPOCHS, budget=2)
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == S.COMPLETE and retry.params == victim.params
    assert seen["runs"][victim.number].info.status == "KILLED"
    assert seen["runs"][victim.number].data.tags["siamese_sweep.reason"] == reason
    assert client.get_run(seen["parent_id"]).info.status == "FINISHED"
    return rerun


@pytest.mark.parametrize("kind, reason", [("sqlite", "stale_heartbeat"), ("journal", "dead_worker")])
def test_sigkill_of_the_only_process_then_rerun_finishes_with_nothing_left_running(
        mlflow_server_pg, client, tmp_path: Path, kind: str, reason: str) -> None:
    """On a journal file (no heartbeats) the rerun finds the trial's worker pid gone from this machine; before,
    that trial stayed RUNNING and the rerun waited for it until killed."""
    storage = f"sqlite:///{tmp_path}/optuna.db" if kind == "sqlite" else f"journal:///{tmp_path}/optuna.log"
    name = f"solo-{kind}"  # one MLflow server for the module: each study its own parent run
    spec = write_spec(tmp_path / "spec.yaml", spec_dict(tmp_path, name=name, trials=2, base=LONG_EPOCHS))
    env = clean_env(**mlflow_server_pg.env())
    _, victim, _ = _signal_mid_trial(spec, storage, name, client, tmp_path, env, signal.SIGKILL, 30)
    # what a crash leaves behind: a RUNNING trial and a RUNNING run
    assert load_study(storage, name).trials[victim.number].state == S.RUNNING
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "RUNNING"

    _rerun_retries_the_killed_trial(spec, storage, name, client, tmp_path, env, victim, reason)


_ASK_THEN_DIE = """
import os, signal, sys
from sweeps.spec import load_spec
from sweeps.study import ensure_parent_run, open_study
from sweeps.tracking import Tracker
spec = load_spec(sys.argv[1])
opened = open_study(spec, storage_url=sys.argv[2], study_name=sys.argv[3])
ensure_parent_run(opened, Tracker(os.environ["MLFLOW_TRACKING_URI"]), spec)  # as `run` does before any trial
opened.study.ask()
os.kill(os.getpid(), signal.SIGKILL)  # a worker killed right after asking, before it claimed the trial
"""


def test_a_worker_killed_right_after_asking_for_a_trial_on_a_journal_does_not_hang_the_rerun(
        mlflow_server_pg, client, tmp_path: Path) -> None:
    """The trial has no worker attr nor beat: the rerun fails it once it has stayed so for `study.grace_period`
    (4 s here) and finishes the budget; before, it waited for that trial for good."""
    import subprocess
    import sys

    storage, name = f"journal:///{tmp_path}/optuna.log", "unclaimed"
    spec = write_spec(tmp_path / "spec.yaml", spec_dict(tmp_path, name=name, trials=2))
    env = clean_env(**mlflow_server_pg.env())
    died = subprocess.run([sys.executable, "-c", _ASK_THEN_DIE, str(spec), storage, name], env=env,
                          capture_output=True, text=True, timeout=120)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    (orphan,) = load_study(storage, name).trials
    assert orphan.state == S.RUNNING and "worker" not in orphan.user_attrs

    rerun = Proc(_run_args(spec, storage), tmp_path, env, name="rerun").start()
    assert rerun.wait(300) == 0, rerun.stderr[-3000:]
    study = load_study(storage, name)
    check_sweep_invariants(study, client, epochs=spec_dict(tmp_path)["base"]["epochs"], budget=2)  # no run for it
    trials = {t.number: t for t in study.trials}
    assert trials[orphan.number].state == S.FAIL
    assert trials[orphan.number].user_attrs["reason"] == "dead_worker"
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == orphan.number]
    assert retry.state == S.COMPLETE and retry.user_attrs["worker"].endswith(f":{rerun.pid}")
    assert "no sign of its worker (none: it died right after asking for it) for 4s" in rerun.stderr


def test_a_worker_dead_in_another_pid_space_on_a_journal_is_failed_by_its_silence_and_the_rerun_finishes(
        mlflow_server_pg, client, tmp_path: Path) -> None:
    """What a worker dead on another machine leaves, made here: `run` in its own pid namespace (its trial's
    ``worker`` is ``host:1``, a pid that means another process here), SIGKILLed mid-trial. The rerun cannot
    check that pid; it fails the trial once its beat has stopped for `study.grace_period` (4 s) and finishes the
    budget. Before, the trial stayed RUNNING and the rerun waited for it for good."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) (util-linux)")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a pid namespace here: {probe.stderr.strip()}")
    storage, name = f"journal:///{tmp_path}/optuna.log", "elsewhere"
    spec = write_spec(tmp_path / "spec.yaml", spec_dict(tmp_path, name=name, trials=2, base=LONG_EPOCHS))
    # its $TMPDIR here: /proc cannot name a process of that namespace, so its scratch folder has a random name that
    # no later command removes after the kill (sweeps.scratch); in the real /tmp, every run of the suite left one
    (tmp_path / "tmp").mkdir()
    env = clean_env(**mlflow_server_pg.env(), TMPDIR=str(tmp_path / "tmp"))
    # --kill-child: the SIGKILL of `unshare` reaches `run` (pid 1 there) and, with it, all of that namespace
    first = Proc(_run_args(spec, storage), tmp_path, env, name="elsewhere",
                 prefix=["unshare", "--pid", "--fork", "--kill-child", "--"]).start()
    try:
        victim = wait_for(lambda: running_trial_after_epoch(storage, name, client, 1), timeout=240,
                          what="a trial past its second epoch", procs=[first])
        first.signal(signal.SIGKILL)
        first.wait(30)
    finally:
        first.kill()
    assert victim.user_attrs["worker"].endswith(":1")
    assert load_study(storage, name).trials[victim.number].state == S.RUNNING

    rerun = _rerun_retries_the_killed_trial(spec, storage, name, client, tmp_path, env, victim, "dead_worker")
    assert f"no sign of its worker {victim.user_attrs['worker']} for 4s" in rerun.stderr


def test_sigterm_fails_the_trial_kills_its_run_and_the_rerun_resumes_it(
        mlflow_server_pg, client, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    spec = write_spec(tmp_path / "spec.yaml", spec_dict(tmp_path, name="term", trials=2, base=LONG_EPOCHS))
    env = clean_env(**mlflow_server_pg.env())
    first, victim, code = _signal_mid_trial(spec, storage, "term", client, tmp_path, env, signal.SIGTERM, 60)
    assert code == 130, first.stderr[-3000:]
    assert "interrupted" in first.stderr
    study = load_study(storage, "term")
    trials = {t.number: t for t in study.trials}
    assert trials[victim.number].state == S.FAIL
    assert trials[victim.number].user_attrs["reason"] == "interrupted"
    run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["siamese_sweep.reason"] == "interrupted"
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"
    (queued,) = [t for t in study.trials if t.state == S.WAITING]
    assert queued.system_attrs["failed_trial"] == victim.number and queued.params == victim.params
    ckpt_root = tmp_path / "checkpoints"
    assert list(ckpt_root.glob(f"term-*/trial-{victim.number}/state.json")), "the interrupted trial's checkpoint"

    rerun = Proc(_run_args(spec, storage), tmp_path, env, name="rerun").start()
    assert rerun.wait(300) == 0, rerun.stderr[-3000:]
    study = load_study(storage, "term")
    seen = check_sweep_invariants(study, client, epochs=EPOCHS, budget=2)
    retry = study.trials[queued.number]
    assert retry.state == S.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 1
    assert seen["runs"][retry.number].data.tags["siamese_sweep.retry_of"] == str(victim.number)
    assert not list(ckpt_root.glob("term-*/trial-*")), "checkpoints are removed once trials complete"
    assert client.get_run(seen["parent_id"]).info.status == "FINISHED"


def _two_workers_inside_trials(tmp_path: Path, storage: str, uri: str, temp: Path) -> tuple[Proc, list[int]]:
    """`run --workers 2` with $TMPDIR at `temp`, once both workers are inside a trial; the parent and its tree."""
    from sweeps.stack._process import descendants

    # trials that never end by themselves, so that both workers are still inside theirs when the signal arrives
    # (with 10 epochs, ~3 s a trial, one CI run saw the first worker's trial COMPLETE before the signal)
    spec = write_spec(tmp_path / "spec.yaml", spec_dict(tmp_path, name="pair", trials=4, base={"epochs": 2000}))
    parent = Proc(["run", str(spec), "--workers", "2", "--storage", storage, "--tracking-uri", uri, "--quiet"],
                  tmp_path, clean_env(TMPDIR=str(temp)), name="run").start()
    try:
        wait_for(lambda: len(_running_with_runs(storage)) == 2, timeout=240, what="both workers inside a trial",
                 procs=[parent], interval=0.5)
    except BaseException:
        parent.kill()
        raise
    workers = descendants(parent.pid)
    assert len(workers) >= 2
    return parent, workers


def test_sigterm_to_run_with_two_workers_reaches_both_workers(tmp_path: Path) -> None:
    """`run --workers 2` forwards SIGTERM; both trials end FAIL/KILLED and are queued again; no worker is left,
    nor any temporary file of theirs."""
    from mlflow import MlflowClient

    from sweeps.stack._process import alive

    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    temp = tmp_path / "tmp"
    temp.mkdir()
    parent, workers = _two_workers_inside_trials(tmp_path, storage, uri, temp)
    try:
        parent.signal(signal.SIGTERM)
        code = parent.wait(90)
    finally:
        parent.kill()
    assert code == 130, parent.stderr[-3000:]
    assert not [p for p in workers if alive(p)], "a worker outlived the interrupted `run`"
    assert list(temp.glob("siamese-*")) == []  # ours (matplotlib may keep its cache here on a read-only $HOME)
    study = load_study(storage, "pair")
    interrupted = [t for t in study.trials if t.state == S.FAIL]
    assert len(interrupted) == 2 and all(t.user_attrs["reason"] == "interrupted" for t in interrupted), \
        [(t.number, t.user_attrs.get("reason")) for t in interrupted]
    queued = [t for t in study.trials if t.state == S.WAITING]
    assert sorted(t.system_attrs["failed_trial"] for t in queued) == sorted(t.number for t in interrupted)
    assert not [t for t in study.trials if t.state == S.RUNNING]
    assert interrupted[0].params != interrupted[1].params, "the two workers sampled the same parameters"
    client = MlflowClient(tracking_uri=uri)
    assert {client.get_run(t.user_attrs["mlflow_run_id"]).info.status for t in interrupted} == {"KILLED"}


def test_sigkill_of_run_with_two_workers_leaves_no_temporary_file_after_the_next_command(tmp_path: Path) -> None:
    """kill -9 of `run --workers 2` and of all its processes (the OOM killer, a node's time limit) runs no
    clean-up. Before, the spec file the parent wrote for its workers stayed in $TMPDIR for good, like any other
    temporary folder open at the kill; now the next `siamese-sweep` command on the machine removes them."""
    from sweeps.stack._process import alive

    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    temp = tmp_path / "tmp"
    temp.mkdir()
    parent, workers = _two_workers_inside_trials(tmp_path, storage, uri, temp)
    try:
        assert len(list(temp.rglob("spec.yaml"))) == 1  # the spec file the workers were started with
        for pid in [parent.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait(30)
    finally:
        parent.kill()
    wait_for(lambda: not [p for p in workers if alive(p)], timeout=30, what="the killed workers gone")
    assert list(temp.rglob("spec.yaml")), "a kill runs no clean-up"
    status = subprocess.run([*cli(), "status", "--storage", storage, "--study", "pair"], cwd=tmp_path,
                            env=clean_env(TMPDIR=str(temp)), capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr[-3000:]
    assert list(temp.glob("siamese-*")) == []


def _running_with_runs(storage: str) -> list:
    from .harness import try_load_study

    study = try_load_study(storage, "pair")
    if study is None:
        return []
    return [t for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)) if t.user_attrs.get("mlflow_run_id")]


@pytest.mark.parametrize("told", ["FAIL", "COMPLETE"])
def test_a_trial_failed_elsewhere_while_it_runs_does_not_stop_its_worker(tmp_path: Path, told: str) -> None:
    """What a late heartbeat causes (a storage restart, a stalled machine): another worker fails the trial while
    its worker still runs it. That worker's next write is refused by Optuna; it says so in one warning and goes
    on with the next trial (the soak found it exiting 1 with a traceback instead). A trial told COMPLETE by hand
    (Optuna's API on the storage) was said to be "failed by another worker" with a retry that never came."""
    from mlflow import MlflowClient

    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    # ROOMY_EPOCHS: with LONG_EPOCHS' 4 the trial had finished before the tell on the CI machine at b5ab94c
    epochs = ROOMY_EPOCHS["epochs"]
    spec = write_spec(tmp_path / "spec.yaml", spec_dict(tmp_path, name="late", trials=2, base=ROOMY_EPOCHS))
    worker = Proc(["worker", str(spec), "--threads", "1"], tmp_path,
                  clean_env(OPTUNA_STORAGE=storage, MLFLOW_TRACKING_URI=uri), name="w").start()
    try:
        victim = wait_for(lambda: running_trial_after_epoch(storage, "late", MlflowClient(uri), 1, before=epochs - 1),
                          timeout=300, what="a trial past its second epoch and still training", procs=[worker])
        if told == "FAIL":  # as another worker's heartbeat check does
            load_study(storage, "late").tell(victim.number, state=S.FAIL)
        else:
            load_study(storage, "late").tell(victim.number, 0.9999)
        assert worker.wait(420) == 0, worker.stderr[-3000:]
    finally:
        worker.kill()
    if told == "FAIL":
        assert f"trial {victim.number} was failed by another worker" in worker.stderr
    else:
        assert f"trial {victim.number} was told COMPLETE by another process" in worker.stderr
        assert "failed by another worker" not in worker.stderr
    assert "Traceback" not in worker.stderr and "Cannot tell" not in worker.stderr
    done = [t for t in load_study(storage, "late").trials if t.state in (S.COMPLETE, S.PRUNED)]
    assert len(done) == 2
    if told == "COMPLETE":  # 0.9999, measured by nobody, was the best of status, the report and the parent run
        from sweeps import names
        from sweeps.study import study_status

        status = study_status(load_study(storage, "late"))
        assert status["not_ranked"] == [victim.number], status
        assert status["best"] is None or status["best"]["number"] != victim.number, status
        tags = MlflowClient(uri).get_run(status["parent_run_id"]).data.tags
        assert tags.get(names.TAG_BEST_TRIAL) != str(victim.number), tags
