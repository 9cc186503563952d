"""The PostgreSQL budget lock and Optuna's RDB storage behind a transaction-pooling pgbouncer.

In ``pool_mode = transaction`` pgbouncer gives a client a server connection for one transaction only, so
anything tied to a *session* (a session advisory lock) may be taken on one server connection and released
on (or leaked to) another. The budget lock is transaction-scoped (``pg_advisory_xact_lock`` in a transaction
held for the critical section), which pgbouncer keeps on one server connection.

pgbouncer is the Debian package's binary, started privately (``sweeps.stack.pgbouncer``); the tests skip
locally without it and fail under CI=true, like the PostgreSQL ones.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import optuna
import pytest

from sweeps.storage import AdvisoryLock, budget_lock, make_storage

pytestmark = [pytest.mark.postgres]


@pytest.fixture(scope="module")
def pgbouncer(postgres_server: Any) -> Iterator[Any]:
    """A private pgbouncer (pool_mode=transaction) with fewer server connections (3) than the test has workers (4).

    A worker blocked in ``pg_advisory_xact_lock`` would pin a server connection; with three waiters pinning all 3
    the holder could not run its storage queries (pgbouncer fails it after ``query_wait_timeout``, 30 s here), so
    the lock must wait without pinning one.
    """
    from sweeps.stack.pgbouncer import PgBouncer, find_pgbouncer

    try:
        find_pgbouncer()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))
    with PgBouncer(postgres_server, pool_mode="transaction", pool_size=3, query_wait_timeout=30) as bouncer:
        yield bouncer


def _autocommit_client(bouncer: Any) -> Any:
    import psycopg2

    pg = bouncer.pg
    conn = psycopg2.connect(host=bouncer.host, port=bouncer.port, user=pg.user, password=pg.password,
                            dbname=pg.database, connect_timeout=5)
    conn.autocommit = True
    return conn


def test_a_session_advisory_lock_is_not_exclusive_behind_transaction_pooling(pgbouncer: Any) -> None:
    """Why the lock is transaction-scoped: two clients both 'get' a session lock, on one shared server connection."""
    a, b = _autocommit_client(pgbouncer), _autocommit_client(pgbouncer)
    try:
        with a.cursor() as ca, b.cursor() as cb:
            ca.execute("SELECT pg_try_advisory_lock(4242), pg_backend_pid()")
            got_a, backend_a = ca.fetchone()
            cb.execute("SELECT pg_try_advisory_lock(4242), pg_backend_pid()")
            got_b, backend_b = cb.fetchone()
            assert got_a and got_b, "both clients hold the 'exclusive' lock"
            assert backend_a == backend_b  # the lock stayed on a pooled server connection, not with client a
            cb.execute("SELECT pg_advisory_unlock_all()")
    finally:
        a.close()
        b.close()


def _held_by_other(lock: AdvisoryLock, seconds: float) -> bool:
    """Try `lock` in a thread; True if it is still waiting after `seconds` (then let it finish)."""
    got = threading.Event()

    def take() -> None:
        lock.acquire()
        got.set()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    waiting = not got.wait(seconds)
    return waiting


def test_budget_lock_is_exclusive_and_released_through_pgbouncer(pgbouncer: Any) -> None:
    url = pgbouncer.url
    first, second = budget_lock(url, "study-x"), budget_lock(url, "study-x")
    assert isinstance(first, AdvisoryLock)
    first.acquire()
    try:
        assert _held_by_other(second, 1.0), "a second worker took the budget lock while the first held it"
    finally:
        first.release()
    deadline = time.monotonic() + 10
    while second._conn is None and time.monotonic() < deadline:  # the waiting thread gets it now
        time.sleep(0.05)
    assert second._conn is not None, "the lock was not handed over on release"
    second.release()
    second.release()  # idempotent: the worker releases once more on its way out
    third = budget_lock(url, "study-x")
    assert not _held_by_other(third, 5.0), "the lock stayed held after both releases"
    third.release()
    # another study's lock is independent
    other = budget_lock(url, "study-y")
    first.acquire()
    try:
        assert not _held_by_other(other, 5.0)
    finally:
        other.release()
        first.release()


HOLD_AND_WAIT = textwrap.dedent("""
    import sys, time
    from sweeps.storage import budget_lock
    lock = budget_lock(sys.argv[1], "study-kill")
    lock.acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def test_a_sigkilled_holder_releases_the_lock_through_pgbouncer(pgbouncer: Any) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_WAIT, pgbouncer.url], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        waiter = budget_lock(pgbouncer.url, "study-kill")
        assert _held_by_other(waiter, 1.0), "the lock was free while the holder lived"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 15
        while waiter._conn is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiter._conn is not None, "a killed worker's lock was never released"
        waiter.release()
    finally:
        holder.kill()
        holder.wait()


# One worker process: the project's coordination loop with an objective that does no training. A fresh
# interpreter, not a fork of pytest: a fork taken after another test imported TensorFlow inherits its threads'
# locks, and one such fork hung here. The storage URL comes through the environment, never argv.
WORKER = textwrap.dedent("""
    import json, os, sys, time
    import optuna
    from sweeps.storage import budget_lock, make_storage
    from sweeps.worker import take_trials
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, study_name, budget = os.environ["PGBOUNCER_TEST_URL"], sys.argv[1], int(sys.argv[2])
    study = optuna.load_study(study_name=study_name, storage=make_storage(url), sampler=optuna.samplers.RandomSampler())
    print("ready", flush=True)
    sys.stdin.readline()  # then all together
    lock = budget_lock(url, study_name)

    def objective(trial):
        time.sleep(0.02)  # long enough that workers overlap
        return trial.suggest_float("x", 0.0, 1.0)

    report = take_trials(study, lock, objective, default_budget=budget, max_failures=3, poll_s=0.1)
    print(json.dumps([os.getpid(), report.trials_run, report.budget_met]), flush=True)
""")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_worker_processes_through_pgbouncer_meet_the_exact_budget(pgbouncer: Any) -> None:
    """Optuna's RDB storage (SQLAlchemy + psycopg2) and the budget lock, all through transaction pooling."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pgbouncer.pg.create_database("pgbouncer_budget")
    url = pgbouncer.url_for("pgbouncer_budget")
    budget, workers = 24, 4
    storage = make_storage(url)
    optuna.create_study(study_name="through-bouncer", storage=storage)
    storage.dispose_connections()  # the workers open their own connections
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PGBOUNCER_TEST_URL": url}
    procs: list[subprocess.Popen] = []
    try:
        # started one at a time: Optuna's schema check holds a server connection while it opens a second
        for _ in range(workers):
            p = subprocess.Popen([sys.executable, "-c", WORKER, "through-bouncer", str(budget)], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    reports = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    assert all(p.returncode == 0 for p in procs)
    study = optuna.load_study(study_name="through-bouncer", storage=make_storage(url))
    states = [t.state for t in study.trials]
    assert len(states) == budget, f"{len(states)} trials for a budget of {budget} (over-run)"
    assert states.count(optuna.trial.TrialState.COMPLETE) == budget
    assert sum(r[1] for r in reports) == budget and all(r[2] for r in reports)
    assert sum(1 for r in reports if r[1] > 0) >= 2, "only one worker ran trials: nothing was concurrent"
