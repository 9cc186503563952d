"""A PostgreSQL restart (the Optuna storage) must not cost a trial: `sweeps.storage.RetryingStorage` retries the
storage's idempotent calls across the outage.

* a storage write issued while PostgreSQL is down succeeds once it is back (and a longer outage than the budget
  still fails, bounded);
* a worker running a trial across a PostgreSQL restart completes it: COMPLETE, its MLflow run complete, no
  traceback in its log;
* the final state write whose first attempt committed but whose answer was lost counts as done.

Each test runs its own PostgreSQL (restarting the session's server would take MLflow's store down with it).
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy

from sweeps import names
from sweeps.storage import RetryingStorage, make_storage

from .harness import (
    ROOMY_EPOCHS,
    Proc,
    S,
    check_sweep_invariants,
    clean_env,
    load_study,
    running_trial_after_epoch,
    spec_dict,
    wait_for,
    write_spec,
)

DOWN_S = 2.0  # how long each outage below keeps PostgreSQL down: several heartbeats (1 s) fall into it


@pytest.fixture
def private_pg(postgres_server: Any) -> Iterator[Any]:
    """A PostgreSQL of this test's own (`postgres_server` only for its skip-without-binaries logic)."""
    from sweeps.stack import PostgresServer

    with PostgresServer(user="sweeps", database="sweeps", fsync=False) as pg:
        yield pg


def _accepts_tcp(pg: Any) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((pg.host, pg.port)) == 0


def _outage(pg: Any, down_s: float = DOWN_S) -> tuple[threading.Thread, dict[str, float]]:
    """Restart `pg` in a thread, down for `down_s`; returns once it refuses connections."""
    took: dict[str, float] = {}

    def restart() -> None:
        t0 = time.monotonic()
        pg.restart(down_s=down_s)
        took["restart_s"] = time.monotonic() - t0 - down_s

    thread = threading.Thread(target=restart)
    thread.start()
    deadline = time.monotonic() + 30
    while _accepts_tcp(pg):
        assert time.monotonic() < deadline, "PostgreSQL did not go down"
        time.sleep(0.01)
    return thread, took


@pytest.mark.postgres
def test_a_read_that_falls_back_in_a_broken_session_is_transient_too() -> None:
    """Optuna's `_get_trials` meets the dropped connection, retries in the same session and raises
    PendingRollbackError while handling the OperationalError; wrapped in StorageInternalError, that is the
    restart too (a soak's PostgreSQL restart failed a trial at the first call). A PendingRollbackError on its
    own, or a bad request, is not."""
    import sqlalchemy.exc as sa_exc

    from sweeps.storage import is_transient

    def raised(make_inner: Any) -> BaseException:
        try:
            try:
                make_inner()
            except sa_exc.SQLAlchemyError as inner:
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from inner
        except optuna.exceptions.StorageInternalError as exc:
            return exc
        raise AssertionError("nothing raised")

    def dropped_then_pending() -> None:
        try:
            raise sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        except sa_exc.OperationalError:
            # noqa below: raised while handling, as in Optuna's fallback (a context, not a cause)
            raise sa_exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back.")  # noqa: B904

    def pending_alone() -> None:
        raise sa_exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back.")

    def too_long() -> None:
        try:
            raise sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        except sa_exc.OperationalError:
            raise sa_exc.DataError("INSERT", {}, Exception("value too long"))  # noqa: B904

    assert is_transient(raised(dropped_then_pending))
    assert not is_transient(raised(pending_alone))
    assert not is_transient(raised(too_long))  # only a pending rollback follows its context


def test_a_storage_write_issued_while_postgresql_restarts_succeeds_after_it(
        private_pg: Any, caplog: pytest.LogCaptureFixture) -> None:
    url = private_pg.create_database("optuna")
    storage = make_storage(url, heartbeat_interval=1, grace_period=4)
    study = optuna.create_study(study_name="outage", storage=storage)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    storage.record_heartbeat(trial._trial_id)  # a pooled connection that the restart will break
    caplog.set_level(logging.WARNING, logger="sweeps.storage")
    thread, took = _outage(private_pg)
    t0 = time.monotonic()
    try:
        # issued while PostgreSQL is down: each used to fail the trial with StorageInternalError
        trial.report(0.25, step=0)
        trial.set_user_attr("reached", "after the restart")
        storage.record_heartbeat(trial._trial_id)
        study.tell(trial, 1.0)
    finally:
        thread.join()
    waited = time.monotonic() - t0
    print(f"PostgreSQL restart: {took['restart_s']:.2f} s (+ {DOWN_S:.0f} s held down); the writes waited "
          f"{waited:.2f} s")
    done = load_study(url, "outage").trials[0]
    assert done.state == S.COMPLETE and done.value == 1.0
    assert done.intermediate_values == {0: 0.25} and done.user_attrs["reached"] == "after the restart"
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert retries, "no retry was logged"
    assert all(private_pg.password not in m and "***" in m for m in retries), retries
    assert len(caplog.text.splitlines()) == len(caplog.records), "a retry logged more than one line"


@pytest.mark.postgres
def test_an_outage_longer_than_the_budget_still_fails_the_call_in_bounded_time(
        private_pg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url = private_pg.create_database("optuna")
    monkeypatch.setenv(names.ENV_STORAGE_RETRY_SECONDS, "1")
    storage = make_storage(url)
    study = optuna.create_study(study_name="long", storage=storage)
    trial = study.ask()
    thread, _ = _outage(private_pg, down_s=6.0)
    t0 = time.monotonic()
    try:
        with pytest.raises(optuna.exceptions.StorageInternalError):
            trial.set_user_attr("k", "v")
        assert time.monotonic() - t0 < 5.0
    finally:
        thread.join()
    trial.set_user_attr("k", "v")  # and works again once the database is back


def test_a_final_state_write_whose_answer_was_lost_counts_as_done(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The first attempt commits, then the connection drops before the answer arrives (provoked with a public
    SQLAlchemy session hook): a blind retry would be refused ('Cannot tell a COMPLETE trial'), ours sees the
    trial already COMPLETE with the same value and reports success."""
    storage = make_storage(f"sqlite:///{tmp_path}/o.db")
    assert isinstance(storage, RetryingStorage)
    study = optuna.create_study(study_name="lost", storage=storage)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    armed = {"state_write": False, "lose_answer": False}

    def spot_the_state_write(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if armed["state_write"] and statement.lstrip().upper().startswith("UPDATE TRIALS SET STATE"):
            armed["state_write"], armed["lose_answer"] = False, True

    def lose_the_answer(conn: Any) -> None:  # ConnectionEvents.commit: runs just before the COMMIT is sent
        if armed["lose_answer"]:
            armed["lose_answer"] = False
            conn.connection.dbapi_connection.commit()  # the COMMIT reaches the database...
            # ...and its answer does not reach us
            raise sqlalchemy.exc.OperationalError("COMMIT", None, Exception("server closed the connection"))

    engine = storage.rdb.engine
    sqlalchemy.event.listen(engine, "before_cursor_execute", spot_the_state_write)
    sqlalchemy.event.listen(engine, "commit", lose_the_answer)
    try:
        caplog.set_level(logging.WARNING, logger="sweeps.storage")
        armed["state_write"] = True
        frozen = study.tell(trial, 0.5)
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", spot_the_state_write)
        sqlalchemy.event.remove(engine, "commit", lose_the_answer)
    assert not any(armed.values()), f"the hooks did not fire: nothing was tested ({armed})"
    assert "set_trial_state_values failed" in caplog.text, caplog.text
    assert frozen.state == S.COMPLETE and study.trials[0].value == 0.5
    assert "already COMPLETE" in caplog.text
    # a different finished state is not mistaken for ours: Optuna's refusal comes through
    other = study.ask()
    study.tell(other, state=optuna.trial.TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(other._trial_id, optuna.trial.TrialState.COMPLETE, [1.0])


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_runs_its_trial_across_a_postgresql_restart(private_pg: Any, mlflow_server_pg: Any,
                                                               mlflow_env: dict[str, str], tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server_pg.url)
    storage = private_pg.create_database("optuna")
    # ROOMY_EPOCHS: its only trial ran LONG_EPOCHS' 4 epochs in about 3 s on the CI machine at bd08bc0, and the
    # poll (a PostgreSQL study load and an MLflow query) never saw it RUNNING past epoch 0
    spec = write_spec(tmp_path / "spec.yaml", spec_dict(tmp_path, name="pgrestart", trials=1, base=ROOMY_EPOCHS))
    env = clean_env(OPTUNA_STORAGE=storage, **mlflow_server_pg.env())
    worker = Proc(["worker", str(spec), "--threads", "1"], tmp_path, env, name="w").start()
    try:
        wait_for(lambda: running_trial_after_epoch(storage, "pgrestart", client, 0), timeout=300,
                 what="a trial past its first epoch", procs=[worker])
        thread, _ = _outage(private_pg)  # heartbeats, epoch reports and attrs fall into it
        thread.join()
        assert worker.wait(300) == 0, worker.stderr[-3000:]
    finally:
        worker.kill()
    assert "Traceback" not in worker.stderr, worker.stderr[-3000:]
    assert "retrying in" in worker.stderr, "the outage hit no storage call: nothing was tested"
    study = load_study(storage, "pgrestart")
    assert [t.state for t in study.trials] == [S.COMPLETE], [(t.number, t.state.name) for t in study.trials]
    check_sweep_invariants(study, client, epochs=ROOMY_EPOCHS["epochs"], budget=1)


@pytest.mark.postgres
def test_the_budget_lock_waits_out_a_restart_and_a_dead_lock_releases_quietly(private_pg: Any) -> None:
    from sweeps.storage import budget_lock

    url = private_pg.create_database("optuna")
    lock = budget_lock(url, "study")
    lock.acquire()
    thread, _ = _outage(private_pg)  # the lock's connection dies with the server...
    try:
        lock.release()  # ...and so does its lock: releasing it is not an error
        lock.acquire()  # issued while the database is down: waits for it
    finally:
        thread.join()
    other = budget_lock(url, "study")
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (other.acquire(), got.set()))
    waiter.start()
    assert not got.wait(1.0), "the lock taken after the restart is not exclusive"
    lock.release()
    assert got.wait(10.0)
    waiter.join()
    other.release()


def test_a_worker_whose_trial_creation_meets_an_outage_warns_and_tries_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Creating a trial is not retried by the storage (Optuna's own 5 attempts aside); when they all fail, the
    worker loop logs one warning and tries again instead of dying with a traceback."""
    from sweeps.storage import ThreadLock
    from sweeps.worker import take_trials

    storage = make_storage(f"sqlite:///{tmp_path}/o.db")
    assert isinstance(storage, RetryingStorage)
    study = optuna.create_study(study_name="create", storage=storage)
    refusals = {"left": 5}  # Optuna's `_create_new_trial` tries 5 times

    def refuse_new_trials(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if refusals["left"] and statement.lstrip().upper().startswith("INSERT INTO TRIALS"):
            refusals["left"] -= 1
            raise sqlalchemy.exc.OperationalError(statement, None, Exception("connection refused"))

    sqlalchemy.event.listen(storage.rdb.engine, "before_cursor_execute", refuse_new_trials)
    caplog.set_level(logging.WARNING, logger="sweeps.worker")
    try:
        report = take_trials(study, ThreadLock("create"), lambda t: t.suggest_float("x", 0, 1), default_budget=2,
                             max_failures=2, poll_s=0.1)
    finally:
        sqlalchemy.event.remove(storage.rdb.engine, "before_cursor_execute", refuse_new_trials)
    assert refusals["left"] == 0, "the creation never failed: nothing was tested"
    assert report.budget_met and report.states == {"COMPLETE": 2}, report
    assert [t.state for t in study.trials] == [S.COMPLETE, S.COMPLETE]
    assert "Optuna storage was unreachable" in caplog.text
