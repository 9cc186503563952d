"""Optuna storages from a URL, and the lock that keeps a global trial budget exact.

* ``sqlite:///optuna.db`` (default), ``postgresql://...``, ``mysql://...`` -> `RDBStorage`
  with a heartbeat, so a dead worker's trial is failed and retried.
* ``journal:///path/study.log`` (or a path ending in ``.log``/``.journal``) -> `JournalStorage`
  (no heartbeat: Optuna supports it on RDB storages only).
* ``memory`` -> in-process storage (tests, notebooks).

Starting a trial is "check the budget, then create the trial". Without a
lock two workers can both see 9 of 10 trials and both start one; the
`BudgetLock` (a transaction-scoped PostgreSQL advisory lock, or a file lock next to a
SQLite or journal file) makes that step atomic across processes and machines.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import random
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from siamese_core.errors import ConfigError

from . import names
from .secrets import mask_url


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal://"):
        return Path(url[len("journal://"):])
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    if "://" not in url and url.endswith((".log", ".journal")):
        return Path(url)
    return None


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///"):].split("?")[0]
        return Path(rest) if rest and rest != ":memory:" else None
    return None


def storage_kind(url: str) -> str:
    if url in ("memory", "inmemory", ":memory:"):
        return "memory"
    if _journal_path(url) is not None:
        return "journal"
    scheme = url.split("://", 1)[0].split("+")[0]
    if scheme in ("sqlite", "postgresql", "postgres", "mysql"):
        return "postgresql" if scheme == "postgres" else scheme
    raise ConfigError("study.storage", f"expected sqlite:///FILE, postgresql://..., mysql://..., journal:///FILE or "
                                       f"'memory'; received: {mask_url(url)!r}")


_MEMORY_STORAGES: dict[str, optuna.storages.InMemoryStorage] = {}


def make_storage(url: str, *, heartbeat_interval: int = 10, grace_period: int = 30,
                 max_retries: int = 2) -> optuna.storages.BaseStorage:
    """Build the Optuna storage for `url` (heartbeat + retry of stale trials on RDB storages)."""
    kind = storage_kind(url)
    if kind == "memory":
        return _MEMORY_STORAGES.setdefault(url, optuna.storages.InMemoryStorage())
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = _journal_path(url)
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if kind == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # several worker processes share the file: wait for locks instead of failing
        engine_kwargs["connect_args"] = {"timeout": 120}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                          grace_period=grace_period,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retries))


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and queue retries of) trials whose worker stopped sending heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def retried_trial_number(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the trial this one repeats, if it is a retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def frozen_trial(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The running `trial` as a `FrozenTrial` (system attrs included), through public API only.

    Optuna has no public ``Trial -> FrozenTrial``; the study's RUNNING trials are public and few.
    """
    running = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return next(t for t in running if t.number == trial.number)


def requeue_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, max_retries: int,
                  drop_user_attrs: tuple[str, ...] = ()) -> bool:
    """Queue a WAITING copy of `trial` (same params), recorded exactly as Optuna records heartbeat retries.

    Used for trials that stopped for reasons outside themselves (SIGTERM, MLflow down): the
    retry's ``failed_trial`` system attr names the original trial, like a stale trial's retry.
    Returns False when `trial` was already retried `max_retries` times.
    """
    history = [*trial.system_attrs.get(names.SYSTEM_ATTR_RETRY_HISTORY, []), trial.number]
    if len(history) > max_retries:
        return False
    # like RetryHeartbeatStaleTrialCallback: the first failed trial stays the one every retry names
    system_attrs: dict[str, Any] = {names.SYSTEM_ATTR_FAILED_TRIAL: trial.number, **trial.system_attrs,
                                    names.SYSTEM_ATTR_RETRY_HISTORY: history}
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in drop_user_attrs}
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions, user_attrs=user_attrs,
                                              system_attrs=system_attrs))
    return True


# ----------------------------------------------------------------- budget lock
class BudgetLock:
    """An exclusive lock around 'check the trial budget, then create a trial'."""

    def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> BudgetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class FileLock(BudgetLock):
    """``flock`` on a file beside the storage (same machine, any number of processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._thread_lock = threading.Lock()

    def acquire(self) -> None:
        self._thread_lock.acquire()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self._thread_lock.release()


class AdvisoryLock(BudgetLock):
    """A PostgreSQL transaction-scoped advisory lock (works across machines sharing the database).

    `acquire` opens one connection and tries ``pg_try_advisory_xact_lock`` in a transaction until it gets
    the lock; `release` ends that transaction, which is what frees the lock. Nothing outlives the
    transaction, so the lock holds behind a transaction-pooling pgbouncer (which pins one server connection
    to a client for exactly one transaction; a session lock could be taken on one server connection and left
    behind on it), and a killed worker's lock goes with its connection (the open transaction is aborted).

    Waiting polls (ROLLBACK, sleep, try again) instead of blocking in ``pg_advisory_xact_lock``: a blocked
    waiter would pin a pooled server connection, and with more waiting workers than pgbouncer's pool the
    holder could not get a connection to finish its work (a deadlock until ``query_wait_timeout``).
    """

    FIRST_POLL_S = 0.005
    MAX_POLL_S = 0.2

    def __init__(self, url: str, key: str) -> None:
        import sqlalchemy

        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        # no pool: the connection exists only while the lock is wanted or held
        self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self._key = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        self._conn: Any = None
        self._sql = sqlalchemy.text

    def acquire(self) -> None:
        conn = self._engine.connect()
        delay = self.FIRST_POLL_S
        try:
            while True:
                conn.begin()  # explicit: the lock lives exactly as long as this transaction
                if conn.execute(self._sql("SELECT pg_try_advisory_xact_lock(:k)"), {"k": self._key}).scalar():
                    break
                conn.rollback()  # hand the (pooled) server connection back while we wait
                time.sleep(delay * random.uniform(0.5, 1.0))  # jitter: waiters do not poll in step
                delay = min(2 * delay, self.MAX_POLL_S)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def release(self) -> None:
        """End the lock's transaction (frees the lock); idempotent, the worker releases once more on exit."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.rollback()  # nothing was written: ROLLBACK ends the transaction and its lock
            finally:
                conn.close()


class ThreadLock(BudgetLock):
    _locks: dict[str, threading.Lock] = {}

    def __init__(self, key: str) -> None:
        self._lock = self._locks.setdefault(key, threading.Lock())

    def acquire(self) -> None:
        self._lock.acquire()

    def release(self) -> None:
        if self._lock.locked():
            self._lock.release()


def budget_lock(url: str, study_name: str) -> BudgetLock:
    kind = storage_kind(url)
    if kind == "postgresql":
        return AdvisoryLock(url, f"siamese-sweep/{study_name}")
    if kind == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            return FileLock(path.with_name(f"{path.name}.{safe_filename(study_name)}.lock"))
    if kind == "journal":
        path = _journal_path(url)
        assert path is not None
        return FileLock(path.with_name(f"{path.name}.{safe_filename(study_name)}.lock"))
    return ThreadLock(f"{url}/{study_name}")


def safe_filename(name: str) -> str:
    """`name` with anything but letters, digits, ``-_.`` replaced by ``_`` (lock files, checkpoint folders)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
