"""Issue 6 end to end: `siamese-sweep worker` processes on a real PostgreSQL + MLflow server with basic auth.

Three workers join one study (the first creates it); one is SIGKILLed in the middle of a trial.
The survivors fail its trial through the Optuna heartbeat, retry it with the same parameters
(resuming from its epoch checkpoint), reconcile its MLflow run to KILLED, and finish exactly the
spec's trial budget. Nothing anywhere shows a password.
"""
from __future__ import annotations

import base64
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ..reliability.harness import (
    LONG_EPOCHS,
    Proc,
    S,
    all_param_and_tag_values,
    check_sweep_invariants,
    clean_env,
    load_study,
    running_trial_after_epoch,
    spec_dict,
    wait_for,
    worker_pid,
    write_spec,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BUDGET = 4
EPOCHS = LONG_EPOCHS["epochs"]


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_three_workers_on_postgres_and_mlflow_auth_survive_a_sigkill(
        postgres_server, mlflow_server_pg, mlflow_env, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    storage = postgres_server.create_database("optuna_e2e")
    spec = write_spec(tmp_path / "spec.yaml", spec_dict(
        tmp_path, name="e2e", trials=BUDGET, base=LONG_EPOCHS,
        study={"heartbeat_interval": 2, "grace_period": 6}))
    env = clean_env(OPTUNA_STORAGE=storage, **mlflow_server_pg.env())
    workers = [Proc(["worker", str(spec), "--study", "e2e", "--threads", "1"], tmp_path, env, name=f"w{i}").start()
               for i in range(3)]
    client = MlflowClient(tracking_uri=mlflow_server_pg.url)
    try:
        victim = wait_for(lambda: running_trial_after_epoch(storage, "e2e", client, 1), timeout=300,
                          what="a trial past its second epoch", procs=workers)
        pid = worker_pid(victim)
        killed = next(w for w in workers if w.pid == pid)
        killed.signal(signal.SIGKILL)
        assert killed.wait(30) == -signal.SIGKILL
        survivors = [w for w in workers if w is not killed]
        for w in survivors:
            assert w.wait(420) == 0, w.stderr[-3000:]
    finally:
        for w in workers:
            w.kill()

    study = load_study(storage, "e2e")
    seen = check_sweep_invariants(study, client, epochs=EPOCHS, budget=BUDGET)
    trials = {t.number: t for t in study.trials}

    # the killed trial failed through the heartbeat and was retried once, with its params, from its checkpoint
    assert trials[victim.number].state == S.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, [(t.number, t.system_attrs) for t in trials.values()]
    retry = retries[0]
    assert retry.state == S.COMPLETE and retry.params == victim.params
    assert retry.user_attrs.get("resumed_from_epoch", 0) >= 1, retry.user_attrs
    assert sum(t.state == S.COMPLETE for t in trials.values()) == BUDGET
    killed_run, retry_run = seen["runs"][victim.number], seen["runs"][retry.number]
    assert killed_run.info.status == "KILLED"
    assert killed_run.data.tags["siamese_sweep.reason"] == "stale_heartbeat"
    assert retry_run.data.tags["siamese_sweep.retry_of"] == str(victim.number)
    assert retry_run.data.tags["siamese_sweep.resumed_from_epoch"] == str(retry.user_attrs["resumed_from_epoch"])
    # more than one worker ran trials, and workers started together did not propose the same parameters
    assert len({t.user_attrs["worker"] for t in trials.values()}) >= 2
    fresh = [tuple(sorted(t.params.items())) for t in trials.values() if "failed_trial" not in t.system_attrs]
    assert len(set(fresh)) == len(fresh), fresh

    # the MLflow server refuses anonymous and wrong-password requests
    search = f"{mlflow_server_pg.url}/api/2.0/mlflow/experiments/search?max_results=5"
    assert _status(search) == 401
    assert _status(search, ("admin", "not-the-password-123")) == 401
    assert _status(search, (mlflow_server_pg.admin_username, mlflow_server_pg.admin_password)) == 200

    # no password in any param, tag or worker output; the storage URL on the parent is masked
    secrets = [postgres_server.password, mlflow_server_pg.admin_password]
    values = all_param_and_tag_values(client, seen["experiment_id"])
    assert not [v for v in values for s in secrets if s in v]
    parent = client.get_run(seen["parent_id"])
    assert parent.info.status == "FINISHED"
    storage_tag = parent.data.tags["siamese_sweep.storage"]
    assert "***" in storage_tag and "postgresql" in storage_tag
    for w in workers:
        for text in (w.stdout, w.stderr):
            assert not [s for s in secrets if s in text], w.name
