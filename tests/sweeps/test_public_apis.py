"""Where sweeps leans on another library's behaviour that its public API does not promise, pin it here."""
from __future__ import annotations

import os
from pathlib import Path

import keras_tuner as kt
import mlflow
import optuna
import pytest

from sweeps import names
from sweeps.hypermodel import OptunaHyperParameters
from sweeps.mlflow_globals import mlflow_internals_use
from sweeps.storage import frozen_trial, make_storage

S = optuna.trial.TrialState


@pytest.mark.parametrize("global_uri, env_uri", [(None, None), (None, "sqlite:///env.db"),
                                                 ("sqlite:///global.db", "sqlite:///global.db"),
                                                 ("sqlite:///global.db", "sqlite:///other.db")])
def test_mlflow_internals_use_puts_back_what_was_there(global_uri: str | None, env_uri: str | None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(names.ENV_MLFLOW_TRACKING_URI, "")  # recorded: the teardown puts back what was there
    monkeypatch.delenv(names.ENV_MLFLOW_TRACKING_URI)
    mlflow.set_tracking_uri(global_uri)
    if env_uri is None:
        os.environ.pop(names.ENV_MLFLOW_TRACKING_URI, None)
    else:
        os.environ[names.ENV_MLFLOW_TRACKING_URI] = env_uri
    before = (mlflow.get_tracking_uri(), mlflow.is_tracking_uri_set(), os.environ.get(names.ENV_MLFLOW_TRACKING_URI))
    try:
        with mlflow_internals_use("sqlite:///inside.db"):
            assert mlflow.get_tracking_uri() == "sqlite:///inside.db"
        assert (mlflow.get_tracking_uri(), mlflow.is_tracking_uri_set(),
                os.environ.get(names.ENV_MLFLOW_TRACKING_URI)) == before
    finally:
        mlflow.set_tracking_uri(None)


def test_a_running_trial_is_found_with_its_system_attrs(tmp_path: Path) -> None:
    """Optuna has no public Trial -> FrozenTrial; `frozen_trial` finds it among the RUNNING trials."""
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path}/o.db"))
    study.ask()  # another RUNNING trial
    study.enqueue_trial({"x": 0.5})  # an enqueued trial carries a system attr
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    frozen = frozen_trial(trial)
    assert frozen.number == trial.number == 1 and frozen.state == optuna.trial.TrialState.RUNNING
    assert frozen.params == {"x": 0.5} and frozen.system_attrs


def test_keras_tuner_routes_every_hyperparameter_through_retrieve() -> None:
    """`OptunaHyperParameters` overrides KerasTuner's `_retrieve` (no public hook exists): every public
    hp.* call, with name scopes and conditions applied, must still pass through it."""
    assert callable(getattr(kt.HyperParameters, "_retrieve", None)), "KerasTuner renamed _retrieve: update hypermodel"
    assert callable(getattr(kt.HyperParameters, "_exists", None)), "KerasTuner renamed _exists: update hypermodel"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    hp = OptunaHyperParameters(trial)
    with hp.name_scope("block"):
        units = hp.Int("units", 8, 32, step=8)
        on = hp.Boolean("on")
        act = hp.Choice("act", ["relu", "tanh"])
        rate = hp.Float("rate", 0.0, 0.5)
    assert hp.Fixed("fixed", 3) == 3
    assert trial.params == {"block/units": units, "block/on": on, "block/act": act, "block/rate": rate}
    assert hp.values["block/units"] == units


def test_our_rdb_storage_keeps_optunas_heartbeat_and_cache(tmp_path: Path) -> None:
    """`RetryingStorage` uses two non-public Optuna names: `BaseHeartbeat` (without it Optuna starts no heartbeat
    thread and `fail_stale_trials` does nothing) and `_CachedStorage` (incremental reads, which Optuna adds by
    itself only around a bare `RDBStorage`). Pin what a study actually gets, and that stale trials still fail."""
    import time

    from optuna.storages import RDBStorage, _CachedStorage
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    from sweeps.storage import RetryingStorage, fail_stale_trials

    storage = make_storage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1, grace_period=1, max_retries=1)
    study = optuna.create_study(study_name="pin", storage=storage)
    got = study._storage  # what Optuna uses: not re-wrapped, since ours is not an RDBStorage
    assert got is storage and isinstance(got, RetryingStorage) and isinstance(got, BaseHeartbeat)
    assert isinstance(got._inner, _CachedStorage) and isinstance(got.rdb, RDBStorage)
    assert is_heartbeat_enabled(got)
    assert type(optuna.load_study(study_name="pin", storage=storage)._storage) is RetryingStorage
    # a heartbeat recorded, then silence: the trial goes stale, is failed, and its retry is queued
    trial = study.ask()
    got.record_heartbeat(trial._trial_id)
    time.sleep(2.2)
    fail_stale_trials(study)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING], states


def test_a_dead_local_workers_trial_on_a_journal_is_failed_with_its_reason_and_queued(tmp_path: Path) -> None:
    """`fail_dead_worker_trials` writes the reason through the storage (Optuna has no public user-attr write on a
    trial this process did not ask for). Only a trial whose worker named this host and a pid that is gone is
    failed; a live worker's, another host's and one with no worker yet stay RUNNING."""
    import socket
    import subprocess
    import sys

    from sweeps.objective import fail_dead_worker_trials

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    study = optuna.create_study(storage=make_storage(f"journal:///{tmp_path}/study.log"), direction="maximize")
    workers = [f"{host}:{gone.pid}", f"{host}:{os.getppid()}", f"elsewhere:{gone.pid}", None]
    for worker in workers:
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr(names.TRIAL_ATTR_RUN_ID, "run-1")
        if worker is not None:
            trial.set_user_attr(names.TRIAL_ATTR_WORKER, worker)
    assert fail_dead_worker_trials(study, max_retries=2) == [0]
    trials = study.get_trials()
    assert [t.state for t in trials[:4]] == [S.FAIL, S.RUNNING, S.RUNNING, S.RUNNING]
    assert trials[0].user_attrs[names.TRIAL_ATTR_REASON] == "dead_worker"
    (retry,) = trials[4:]
    assert retry.state == S.WAITING and retry.params == trials[0].params
    assert retry.system_attrs[names.SYSTEM_ATTR_FAILED_TRIAL] == 0
    assert names.TRIAL_ATTR_RUN_ID not in retry.user_attrs
    assert fail_dead_worker_trials(study, max_retries=2) == []  # once
    # a worker takes the retry; until its own worker attr lands, the dead one's must not make it look dead too
    # (it was copied to the retry before: the next round failed the retry as soon as it started)
    assert study.ask().number == retry.number
    assert fail_dead_worker_trials(study, max_retries=2) == []
    assert study.get_trials()[retry.number].state == S.RUNNING
    assert names.TRIAL_ATTR_WORKER not in retry.user_attrs


def test_a_trial_whose_worker_died_before_claiming_it_is_failed_after_the_grace_period(tmp_path: Path) -> None:
    """A worker killed between the ask and its `claim_trial` leaves a RUNNING trial with no worker attr: failed
    and queued once it has stayed so for `grace_s` of the checking process's clock (it hung the rerun before)."""
    from sweeps.objective import SilentTrials, claim_trial, fail_dead_worker_trials

    now = [100.0]
    silent = SilentTrials(30.0, clock=lambda: now[0])
    study = optuna.create_study(storage=make_storage(f"journal:///{tmp_path}/study.log"), direction="maximize")
    bare = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # its worker died right here
    late = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # a live worker, claiming a bit late
    assert fail_dead_worker_trials(study, max_retries=2, silent=silent) == []
    now[0] += 20.0
    claim_trial(late)
    assert fail_dead_worker_trials(study, max_retries=2, silent=silent) == []
    now[0] += 10.0
    assert fail_dead_worker_trials(study, max_retries=2, silent=silent) == [bare.number]
    trials = study.get_trials()
    assert trials[bare.number].state == S.FAIL and trials[late.number].state == S.RUNNING
    assert trials[bare.number].user_attrs[names.TRIAL_ATTR_REASON] == "dead_worker"
    (retry,) = trials[2:]
    assert retry.state == S.WAITING and retry.params == trials[bare.number].params
    assert fail_dead_worker_trials(study, max_retries=2, silent=silent) == []


def test_a_trial_whose_worker_stopped_beating_on_another_machine_is_failed_after_the_grace_period(
        tmp_path: Path) -> None:
    """A journal storage has no heartbeat of Optuna's: a worker's `Heartbeat` rewrites its trials' beat attr, and
    `SilentTrials` fails a trial whose beat has not changed for `grace_s` by the checker's own clock, wherever
    its worker ran (the pid of another host's worker says nothing here). Before, such a trial stayed RUNNING."""
    from sweeps.objective import SilentTrials, fail_dead_worker_trials

    now = [0.0]
    silent = SilentTrials(30.0, clock=lambda: now[0])
    study = optuna.create_study(storage=make_storage(f"journal:///{tmp_path}/study.log"), direction="maximize")
    trials = [study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}) for _ in range(2)]
    for i, trial in enumerate(trials):
        trial.set_user_attr(names.TRIAL_ATTR_WORKER, f"elsewhere-{i}:1234")
        study._storage.set_trial_system_attr(trial._trial_id, names.SYSTEM_ATTR_BEAT, 1000.0)
    assert fail_dead_worker_trials(study, max_retries=2, silent=silent) == []
    for beat in (1010.0, 1020.0, 1030.0):  # the second one's worker beats every 10 s; the first one's died
        now[0] += 10.0
        study._storage.set_trial_system_attr(trials[1]._trial_id, names.SYSTEM_ATTR_BEAT, beat)
        assert fail_dead_worker_trials(study, max_retries=2, silent=silent) == ([0] if now[0] >= 30 else [])
    frozen = study.get_trials()
    assert [t.state for t in frozen[:2]] == [S.FAIL, S.RUNNING]
    assert frozen[0].user_attrs[names.TRIAL_ATTR_REASON] == "dead_worker"
    (retry,) = frozen[2:]
    assert retry.state == S.WAITING and names.SYSTEM_ATTR_BEAT not in retry.system_attrs  # the dead one's beat


def test_the_heartbeat_beats_on_a_journal_until_the_trial_is_released(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """`Heartbeat` writes the beat attr at once when it takes a trial, then every `beat_interval`
    (``study.heartbeat_interval``); a trial told meanwhile is no error."""
    import time

    from sweeps.finisher import Heartbeat

    storage = make_storage(f"journal:///{tmp_path}/study.log", heartbeat_interval=1)
    assert storage.beat_interval == 1.0
    storage.beat_interval = 0.1
    study = optuna.create_study(storage=storage, direction="maximize")
    trial = study.ask()

    def beat() -> float:
        return float(study.get_trials()[0].system_attrs[names.SYSTEM_ATTR_BEAT])

    with Heartbeat(study) as heartbeat:
        heartbeat.hold(trial)
        first = beat()
        time.sleep(0.5)
        assert beat() > first
        study.tell(trial, 1.0)  # told before it is released: a beat may land on a finished trial
        time.sleep(0.3)
        heartbeat.release(trial)
        told = beat()
        time.sleep(0.3)
        assert beat() == told
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text


def test_a_worker_in_another_pid_namespace_of_this_machine_is_not_taken_for_dead(tmp_path: Path) -> None:
    """A container on this kernel with this host name numbers its processes apart: its worker's pid, gone here,
    says nothing. The pid space (boot id and pid namespace) is read from a real process in a new namespace."""
    import shutil
    import socket
    import subprocess
    import sys

    from sweeps.objective import fail_dead_worker_trials, pid_space

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) (util-linux)")
    inside = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c",
                             "import os; from sweeps.objective import pid_space; print(os.getpid(), pid_space())"],
                            capture_output=True, text=True)
    if inside.returncode != 0:
        pytest.skip(f"cannot make a pid namespace here: {inside.stderr.strip()}")
    pid, space = inside.stdout.split()
    here = pid_space()
    assert pid == "1" and space.partition("/")[0] == here.partition("/")[0] and space != here
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    study = optuna.create_study(storage=make_storage(f"journal:///{tmp_path}/study.log"), direction="maximize")
    rebooted = "another-boot-id/" + here.partition("/")[2]  # this machine before a reboot: its workers are gone
    for attrs in ({names.TRIAL_ATTR_WORKER_PID_SPACE: space, names.TRIAL_ATTR_WORKER: f"{host}:{gone.pid}"},
                  {names.TRIAL_ATTR_WORKER_PID_SPACE: here, names.TRIAL_ATTR_WORKER: f"{host}:{gone.pid}"},
                  {names.TRIAL_ATTR_WORKER_PID_SPACE: rebooted, names.TRIAL_ATTR_WORKER: f"{host}:{gone.pid}"}):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
    assert fail_dead_worker_trials(study, max_retries=2) == [1, 2]
    assert study.get_trials()[0].state == S.RUNNING
