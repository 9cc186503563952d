"""Optuna storages from a URL, and the lock that keeps a global trial budget exact.

* ``sqlite:///optuna.db`` (default), ``postgresql://...``, ``mysql://...`` -> `RDBStorage`
  with a heartbeat, so a dead worker's trial is failed and retried.
* ``journal:///path/study.log`` (or a path ending in ``.log``/``.journal``) -> `SignalSafeJournalStorage`
  (Optuna's heartbeat is for RDB storages only: workers beat here themselves, `sweeps.finisher.Heartbeat`, and
  a trial whose beat stops is failed by `sweeps.objective.fail_dead_worker_trials`).
* ``memory`` -> in-process storage (tests, notebooks).

RDB storages come wrapped in `RetryingStorage`: a call that meets a database outage (a PostgreSQL
restart, a dropped connection) is retried for up to `STORAGE_RETRY_BUDGET_S` instead of failing the trial.

Starting a trial is "check the budget, then create the trial". Without a
lock two workers can both see 9 of 10 trials and both start one; the
`BudgetLock` (a transaction-scoped PostgreSQL advisory lock, or a file lock next to a
SQLite or journal file) makes that step atomic across processes and machines.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import optuna

# `_CachedStorage` and `BaseHeartbeat` are not public, and needed: Optuna runs heartbeats and `fail_stale_trials`
# only for storages that are instances of `BaseHeartbeat`, and reads trials incrementally only through
# `_CachedStorage` (which it adds on its own only around an `RDBStorage`, which our wrapper is not).
# tests/sweeps/test_public_apis.py pins both.
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from siamese_core.errors import ConfigError, InfrastructureError, first_line

from . import names
from .errors import HostNotAdmitted
from .secrets import mask_secrets, mask_url
from .signals import deferred_stop

# a database that refuses the login or does not have the database named is a wrong URL, not an outage: exit 2, not
# the exit 1 that Slurm, Kubernetes and compose retry (libpq's texts carry no SQLSTATE at connect: psycopg2's
# `pgcode` is None, so the server's own words; MySQL's 1045 and 1049 by their texts too)
_LOGIN_REFUSED = re.compile(r"password authentication failed|no password supplied|role \".*\" does not exist|"
                            r"database \".*\" does not exist|Access denied for user|Unknown database")
# no pg_hba.conf line for this host, user and database (or a `reject` line for them): a database that admits the
# compute nodes only, which another host's worker may not meet (`HostNotAdmitted`), or a wrong user or database
# name, which PostgreSQL words the same
_HOST_NOT_ADMITTED = re.compile(r"no pg_hba\.conf entry|pg_hba\.conf rejects connection")

if TYPE_CHECKING:
    import sqlalchemy.exc
    from optuna.study._frozen import FrozenStudy  # what `get_all_studies` returns (Optuna exports no name for it)

log = logging.getLogger(__name__)
T = TypeVar("T")

def _journal_path(url: str) -> Path | None:
    if url.startswith("journal://"):  # journal:///abs and journal:////abs (as sqlite writes it) are one file
        rest = url[len("journal://"):]
        return Path("/" + rest.lstrip("/") if rest.startswith("//") else rest)
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


def storage_file(url: str) -> Path | None:
    """The file a SQLite or journal storage URL names (None for servers and memory)."""
    return sqlite_path(url) or _journal_path(url)


def empty_file(path: Path) -> bool:
    """An existing regular file of 0 bytes: what SQLite creates when it opens a path, and what a store opened on
    it would fill with its tables (`status` and the read-only dashboard wrote Optuna's 13 into one)."""
    return path.is_file() and path.stat().st_size == 0


def holds_no_study(url: str, field: str | None = None) -> bool:
    """Whether the storage `url` names certainly holds no study, told without writing to it: a SQLite or journal
    file that does not exist or is empty, a SQLite file without tables, a database server without Optuna's
    ``studies`` table. Opening any of them to read a study would create the file, or Optuna's tables in it (an
    `RDBStorage` creates its schema when it opens). False where it cannot tell (a locked file, another store's
    file): whoever opens it then says why. A server that refuses the connection raises what `make_storage`
    would (`field`: where the URL came from), at once: asked again, an unreachable one cost its timeout twice."""
    path = storage_file(url)
    if path is not None:
        return not path.exists() or empty_file(path) or (sqlite_path(url) is not None and path.is_file()
                                                          and sqlite_tables(path) == set())
    try:
        server = storage_kind(url) in ("postgresql", "mysql")
    except ConfigError:  # an unknown scheme: refused by whoever opens it, naming where the URL came from
        return False
    return server and _server_lacks_optuna_tables(url, field or "--storage")


def _server_lacks_optuna_tables(url: str, field: str) -> bool:
    """A database server's database without Optuna's ``studies`` table, asked read-only over one connection that
    is not kept. A connection refused is `make_storage`'s error; another failure, False (its opener reports)."""
    import sqlalchemy
    import sqlalchemy.exc

    try:
        engine = sqlalchemy.create_engine(with_postgres_driver(url), poolclass=sqlalchemy.pool.NullPool)
    except (ImportError, sqlalchemy.exc.ArgumentError):  # no driver, a malformed URL: `make_storage`'s lines
        return False
    try:
        try:
            connection = engine.connect()
        except sqlalchemy.exc.OperationalError as exc:
            raise _connect_refusal(exc, url, field) from None
        with connection:
            return not sqlalchemy.inspect(connection).has_table("studies")
    except sqlalchemy.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def require_existing(url: str, flag: str = "--storage", *, servers: bool = True) -> None:
    """`ConfigError` naming `flag` if `url` is a storage that holds no study (`holds_no_study`), but an empty
    journal file, which reading writes nothing to (`load_study` then finds no such study): a command that only
    reads a study (status, report, promote, move's source) must not create a SQLite or journal file, nor write
    Optuna's tables into a file or a database. `servers` False: a database server is not asked (the dashboard
    serves the database of a stack whose workers have not made its tables yet)."""
    if storage_file(url) is None and not servers:
        return
    if not holds_no_study(url, flag):
        return
    path = storage_file(url)
    if path is None:
        raise ConfigError(flag, f"the database at {mask_url(url)} has no Optuna tables: no study in it (nothing "
                                f"was written to it)")
    if not path.exists():
        raise ConfigError(flag, f"no such {'SQLite' if sqlite_path(url) is not None else 'journal'} file: {path}")
    if sqlite_path(url) is not None:
        raise ConfigError(flag, f"{path} is an empty file: no study in it" if empty_file(path) else
                                f"{path} is a SQLite file without tables: no study in it")


def require_study_storage(url: str, field: str, *, servers: bool = True) -> None:
    """`ConfigError` naming `field` unless `url` is a storage a command that only reads a study can open: a
    known scheme and, for a file, an existing one (`require_existing`, which `servers` is passed to). For a
    check made before the URL reaches `load_study`, which does not know where it came from (`promote`, the
    dashboard)."""
    storage_kind(url, field)
    require_existing(url, field, servers=servers)


# a table that tells each SQLite store apart (both also have alembic's `alembic_version`), and what to call it
SQLITE_STORES = {"optuna": ("studies", "an Optuna storage"), "mlflow": ("experiments", "an MLflow tracking store")}


def sqlite_tables(path: Path) -> set[str] | None:
    """The tables of an existing SQLite file, read-only (a file that is not SQLite: ``{"?"}``; one that cannot be
    read now, say locked by another process's write for longer than the wait: None, it cannot tell)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as db:
            return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:
        return None
    except sqlite3.DatabaseError:  # "file is not a database"
        return {"?"}


def require_not_a_folder(path: Path, flag: str) -> None:
    """A store's file given as a directory: one line and exit 2 (SQLite's "unable to open database file" was exit 1,
    and `run` created its study first, then retried MLflow's store for two minutes)."""
    if path.exists() and not path.is_file():
        raise ConfigError(flag, f"{path} is a directory, not a file (name a file in it)" if path.is_dir()
                          else f"{path} is not a regular file")


def check_sqlite_store(url: str, store: str, flag: str) -> None:
    """`ConfigError` naming `flag` if `url` is a SQLite file that exists with tables, but not those of `store`
    (``optuna`` or ``mlflow``): opening it would add that store's tables to another one's database (say,
    ``--storage sqlite:///mlflow.db``), then fail on the mix."""
    path = sqlite_path(url)
    if path is not None:
        require_not_a_folder(path, flag)
    if path is None or not path.is_file() or empty_file(path):
        return
    table, what = SQLITE_STORES[store]
    tables = sqlite_tables(path)
    if tables and table not in tables:
        found = next((w for t, w in SQLITE_STORES.values() if t in tables),
                     "not a SQLite database" if tables == {"?"} else "another database")
        raise ConfigError(flag, f"{path} is not {what} (it is {found}); nothing was changed")


def refuse_one_file_for_both(storage: str, tracking_uri: str, flag: str) -> None:
    """`ConfigError` naming `flag` (the tracking URI's) when it is the SQLite file of the Optuna `storage` (a
    journal on it too): each store's check knows a file by its tables, a new one has none, so the study was
    created in it and MLflow's schema then failed on Optuna's ("Can't locate revision", exit 1); `move` copied
    every run into it first."""
    both = storage_file(storage), sqlite_path(tracking_uri)
    if both[0] is not None and both[1] is not None and both[0].resolve() == both[1].resolve():
        raise ConfigError(flag, f"is the same SQLite file as the Optuna storage ({both[1]}): give each store its "
                                f"own file")


def make_parent(path: Path, flag: str) -> None:
    """The folder of a store's file, created; one that cannot be (a file in the way, a read-only or virtual file
    system) is `ConfigError` naming `flag`: it was a raw ``FileExistsError``, exit 1, the code a scheduler
    retries."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(flag, f"cannot create the folder of {path}: {exc.strerror or exc}") from None


def require_creatable_folder(folder: Path, flag: str, what: str) -> None:
    """A `ConfigError` naming `flag` for a folder that cannot be made (a file in the way, a read-only or virtual
    file system), found without making it: a probe folder in its nearest existing ancestor, removed at once."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == folder and folder.is_dir():
        return
    if not existing.is_dir():
        raise ConfigError(flag, f"cannot create {what} {folder}: {existing} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".siamese-sweep-probe-", dir=existing))
    except OSError as exc:
        raise ConfigError(flag, f"cannot create {what} {folder}: {exc.strerror or exc}") from None


JOURNAL_PEEK_BYTES = 1 << 20  # a journal's first record is a study's creation: a few hundred bytes
JOURNAL_RECORD_START = b'{"op_code":'  # how every record Optuna's journal writer makes begins


def require_a_journal(path: Path, flag: str) -> None:
    """`ConfigError` naming `flag` if the existing file `path` does not start with an Optuna journal record: any
    path ending in ``.log`` is taken for a journal, and an application's log given as the storage failed with a
    raw ``JSONDecodeError``, exit 1. An empty file, or a first record cut before its end, is a journal. A first
    line that has no newline and does not begin as a record is not one: the writer would remove it as a cut
    record (a one-line note given as the storage was emptied)."""
    try:
        with path.open("rb") as f:
            first = f.readline(JOURNAL_PEEK_BYTES)
    except (FileNotFoundError, NotADirectoryError):  # a new journal (`make_parent` names a folder it cannot make)
        return
    except OSError as exc:
        raise ConfigError(flag, f"cannot read {path}: {exc.strerror or exc}") from None
    if not first.endswith(b"\n"):
        if first[:len(JOURNAL_RECORD_START)] == JOURNAL_RECORD_START[:len(first)]:
            return
        record = None
    else:
        try:
            record = json.loads(first)
        except ValueError:
            record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise ConfigError(flag, f"{path} is not an Optuna journal (its first line is not a journal record); "
                                "nothing was changed")


class WholeLineJournalLock(JournalFileSymlinkLock):
    """Optuna's journal lock, which removes a record cut before its end (a writer killed in the middle of its
    write, a full disk) once it holds the lock, so before every write.

    Optuna's reader skips a last line that does not end in a newline, but its writer appends after it: the next
    record was glued onto the cut one, the line stopped being the last, and every later read of the study failed
    with ``JSONDecodeError`` (exit 1, the study lost). Removing the cut record keeps what every reader has seen.
    Optuna has no hook around its append; its writer takes this lock (its public `lock_obj` argument) around
    each append and nothing else, and its reader takes none (tests/sweeps/test_journal_storage.py pins both).
    """

    def __init__(self, journal: str) -> None:
        super().__init__(journal)
        self._journal = Path(journal)

    def acquire(self) -> bool:
        held = super().acquire()
        try:
            _remove_a_cut_record(self._journal)
        except BaseException:
            self.release()
            raise
        return held


def whole_line_journal(path: Path) -> JournalFileBackend:
    """Optuna's journal file backend for `path`, with `WholeLineJournalLock` as its lock."""
    return JournalFileBackend(str(path), lock_obj=WholeLineJournalLock(str(path)))


def _remove_a_cut_record(path: Path, chunk: int = 1 << 16) -> None:
    """Truncate `path` after its last newline when it does not end with one (the caller holds the lock)."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            at = f.read(end - start).rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            end = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    log.warning("the journal %s ended in a record cut before its end (%d bytes: a writer killed while it wrote, "
                "or a full disk); removed it before writing (no reader had seen it)", path, size - keep)


def storage_kind(url: str, field: str = "study.storage") -> str:
    """The storage's kind from its URL's scheme; `field`: what a refusal names it as (the flag, the environment
    variable or the spec key it came from)."""
    if url in ("memory", "inmemory", ":memory:"):
        return "memory"
    if _journal_path(url) is not None:
        return "journal"
    scheme = url.split("://", 1)[0].split("+")[0]
    if scheme in ("sqlite", "postgresql", "postgres", "mysql"):
        return "postgresql" if scheme == "postgres" else scheme
    raise ConfigError(field, f"expected sqlite:///FILE, postgresql://..., mysql://..., journal:///FILE or "
                             f"'memory'; received: {mask_url(url)!r}")


_MEMORY_STORAGES: dict[str, optuna.storages.InMemoryStorage] = {}


def with_postgres_driver(url: str) -> str:
    """A PostgreSQL URL without a driver (``postgresql://``, ``postgres://``) with psycopg2's named.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which the ``distributed`` extra does not install
    (it installs psycopg2-binary): the bare URL failed with "Failed to import DB access module". Kept bare when
    psycopg 3 is installed, so that what the user chose is what runs."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    driver = "postgresql" if importlib.util.find_spec("psycopg") is not None else "postgresql+psycopg2"
    return f"{driver}://{rest}"


def make_storage(url: str, *, heartbeat_interval: int = 10, grace_period: int = 30,
                 max_retries: int = 2, field: str | None = None) -> optuna.storages.BaseStorage:
    """Build the Optuna storage for `url` (heartbeat + retry of stale trials on RDB storages); `field`: what errors
    name it as (`sweeps.options.storage_source`: the flag, the environment variable or the spec's
    ``study.storage``; not given: a scheme is the spec's, a path the flag's, as before it could be said)."""
    kind = storage_kind(url, field or "study.storage")
    field = field or "--storage"
    if kind == "memory":
        return _MEMORY_STORAGES.setdefault(url, optuna.storages.InMemoryStorage())
    if kind == "journal":
        path = _journal_path(url)
        assert path is not None
        require_not_a_folder(path, field)
        require_a_journal(path, field)
        make_parent(path, field)
        try:
            backend = whole_line_journal(path)
        except OSError as exc:  # a folder that cannot hold files: /proc, a read-only mount
            raise ConfigError(field, f"cannot create {path}: {exc.strerror or exc}") from None
        journal = SignalSafeJournalStorage(backend)
        journal.beat_interval = float(heartbeat_interval)
        return journal
    given, url = url, with_postgres_driver(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if kind == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            check_sqlite_store(url, "optuna", field)
            make_parent(path, field)
        # several worker processes share the file: wait for locks instead of failing
        engine_kwargs["connect_args"] = {"timeout": 120}
    import sqlalchemy.exc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                             grace_period=grace_period,
                             heartbeat_stale_trial_callback=RequeueStaleTrial(max_retries))
    except ImportError as exc:  # Optuna's "Failed to import DB access module": the URL's driver is not installed
        raise ConfigError(field, f"no database driver for {mask_url(given)!r} is installed ({exc}); name an "
                                       f"installed one in the URL, e.g. postgresql+psycopg2:// or mysql+pymysql://"
                          ) from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.ProgrammingError) as exc:  # a malformed URL or DSN option
        first = first_line(mask_secrets(str(getattr(exc, "orig", None) or exc)))
        raise ConfigError(field, f"the database refused {mask_url(given)!r}: {first[:300]}") from None
    except sqlalchemy.exc.OperationalError as exc:  # refused, unknown host, bad password: nothing was created
        raise _connect_refusal(exc, given, field) from None
    return RetryingStorage(rdb, budget_s=storage_retry_budget_s())


def _connect_refusal(exc: sqlalchemy.exc.OperationalError, given: str, field: str) -> Exception:
    """The error for a database server's `OperationalError` at connect (`exc`; `given`: its URL as given): a
    host it does not admit, a refused login, else an outage (exit 1, which schedulers retry)."""
    first = first_line(mask_secrets(str(exc.orig or exc)))
    if _HOST_NOT_ADMITTED.search(first):
        return HostNotAdmitted(field, f"the database at {mask_url(given)} admits no login from this host with this "
                                      f"user and database (pg_hba.conf): {first[:300]}")
    if _LOGIN_REFUSED.search(first):
        return ConfigError(field, f"the database at {mask_url(given)} refused the login or has no such database: "
                                  f"{first[:300]}")
    return InfrastructureError(f"cannot open the Optuna storage at {mask_url(given)}: {first[:300]}")


class SignalSafeJournalStorage(JournalStorage):
    """`JournalStorage` whose every call finishes before a stop signal is raised (`sweeps.signals.deferred_stop`).

    A journal file's writer holds a lock file (a symlink next to the log) around each append. A SIGTERM raised
    at the wrong bytecode of the lock's release left it behind (in one of three runs of 60 interrupted bursts of
    writes, ad hoc), and every later write of the process, the interrupted trial's FAIL and re-queue among them,
    then waited out Optuna's 30 s grace period for a stale lock. A call cut between reading the log and applying
    it would leave the replayed state half-updated too. Each public method runs whole, then the stop is raised.

    Optuna's heartbeat is for RDB storages only; `beat_interval` (``study.heartbeat_interval``) is how often a
    worker's `sweeps.finisher.Heartbeat` writes its trials' beat here instead.
    """

    beat_interval: float = 10.0


def _held(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> T:
        with deferred_stop():
            return method(*args, **kwargs)
    return call


# every public method Optuna's class defines (the abstract ones of `BaseStorage` among them: pinned by a test)
for _name, _method in list(vars(JournalStorage).items()):
    if callable(_method) and not _name.startswith("_"):
        setattr(SignalSafeJournalStorage, _name, _held(_method))


# ----------------------------------------------------------------- riding out a database outage
# Measured: a PostgreSQL restart here (fast shutdown, start, first login; `PostgresServer.restart`) takes 0.4-0.5 s
# on an idle 2-core machine and 0.7 s at load 5 (test_storage_outage.py prints it). Not measured here: a managed
# database's failover, typically tens of seconds. 60 s covers a restart many times over and most failovers, and
# stays below the MLflow budget (120 s); a storage gone for longer fails the call, as before.
STORAGE_RETRY_BUDGET_S = 60.0
STORAGE_FIRST_WAIT_S = 0.25
STORAGE_MAX_WAIT_S = 4.0


def storage_retry_budget_s() -> float:
    """`STORAGE_RETRY_BUDGET_S`, or ``$SIAMESE_SWEEP_STORAGE_RETRY_SECONDS`` (0 switches retries off)."""
    raw = os.environ.get(names.ENV_STORAGE_RETRY_SECONDS)
    try:
        return max(0.0, float(raw)) if raw else STORAGE_RETRY_BUDGET_S
    except ValueError:
        log.warning("%s=%r is not a number; using %.0f s", names.ENV_STORAGE_RETRY_SECONDS, raw,
                    STORAGE_RETRY_BUDGET_S)
        return STORAGE_RETRY_BUDGET_S


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps: Optuna raises `StorageInternalError` from SQLAlchemy's error) is the
    database being unreachable - refused or dropped connections, a server shutting down or starting up - rather
    than a bad request (too long a value, a constraint), which a retry cannot fix."""
    import sqlalchemy.exc as sa_exc

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        # a query that met the dropped connection left its session's transaction invalid; Optuna's `_get_trials`
        # then retries in that session ("falling back to a slower alternative") and raises PendingRollbackError
        # *while handling* the OperationalError (its context, not its cause). Optuna rolls the session back as it
        # raises, so the call succeeds once the database answers (a soak's PostgreSQL restart failed a trial so).
        if e.__cause__ is None and isinstance(e, sa_exc.PendingRollbackError):
            e = e.__context__
        else:
            e = e.__cause__
    return False


def from_optuna_storage(exc: BaseException) -> bool:
    """Whether `exc` came out of an Optuna storage (its traceback, or that of an error in its chain, passes
    through ``optuna/storages``): an MLflow SQL store raises the same SQLAlchemy errors."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, optuna.exceptions.StorageInternalError):
            return True
        tb = e.__traceback__
        while tb is not None:
            if f"optuna{os.sep}storages" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        e = e.__cause__ or e.__context__
    return False


def driver_message(exc: BaseException) -> str:
    """The database driver's own one-line message under Optuna's and SQLAlchemy's wrappers (Optuna's says "An
    exception is raised during the commit. This typically happens due to invalid data", for a refused connection
    too), masked."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    orig = getattr(cause, "orig", None) or cause  # the driver's own message, without SQLAlchemy's SQL and params
    return mask_secrets(first_line(orig) or type(orig).__name__)[:160]


def retry_transient(what: str, fn: Callable[[], T], *, budget_s: float, first_wait_s: float = STORAGE_FIRST_WAIT_S,
                    max_wait_s: float = STORAGE_MAX_WAIT_S, sleep: Callable[[float], None] | None = None,
                    on_retry: Callable[[BaseException], T | None] | None = None) -> T:
    """``fn()``, called again while it fails with a transient error (`is_transient`), with exponential backoff
    for at most `budget_s` seconds; one warning line per retry, starting with `what`.

    `on_retry` runs before each new attempt (after the storage answers again); a non-None result is returned
    instead of calling `fn` again.
    """
    deadline = time.monotonic() + budget_s
    wait = first_wait_s
    failed: BaseException | None = None
    while True:
        try:
            if failed is not None and on_retry is not None:
                settled = on_retry(failed)
                if settled is not None:
                    return settled
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + wait > deadline:
                raise
            log.warning("%s failed (%s: %s); retrying in %.2fs", what, type(exc).__name__, driver_message(exc), wait)
            failed = exc
            (sleep or time.sleep)(wait)  # looked up per call: a test may patch time.sleep
            wait = min(wait * 2, max_wait_s)


class RetryingStorage(optuna.storages.BaseStorage, BaseHeartbeat):
    """An Optuna RDB storage whose idempotent calls ride out a short database outage.

    Without it a PostgreSQL restart that lands on a trial's own storage write (an intermediate value, a user
    attr, a heartbeat, the final state) fails that trial, and when the re-queue falls in the same outage its
    parameters are never tried again. Retried, with exponential backoff for at most `budget_s`, one warning line
    per retry: reads, study and trial attrs, params, intermediate values, heartbeats (which give up with a
    warning instead of killing Optuna's heartbeat thread), and the final state write (`set_trial_state_values`
    to a finished state: a retry that finds the trial already in that state - the first attempt committed but
    its answer was lost - counts as success).

    Not retried (a lost answer would duplicate the row): ``create_new_trial`` (a second attempt could leave a
    phantom RUNNING trial that has no worker and no heartbeat), ``create_new_study``, ``delete_study``, and the
    WAITING -> RUNNING claim of a queued trial (a retry cannot tell its own claim from another worker's). They
    fail as before; the worker loop (`sweeps.worker.take_trials`) logs one warning and tries again.

    Wraps Optuna's own ``_CachedStorage`` (what ``optuna.load_study`` builds around a bare `RDBStorage`), so the
    reads stay incremental.

    On SQLite every call runs in `sweeps.signals.deferred_stop`: a SIGTERM raised in the middle of one can leave
    the file locked for the rest of the process (the clean-up's writes then wait out the 120 s lock timeout).
    """

    def __init__(self, rdb: RDBStorage, *, budget_s: float = STORAGE_RETRY_BUDGET_S,
                 first_wait_s: float = STORAGE_FIRST_WAIT_S, max_wait_s: float = STORAGE_MAX_WAIT_S,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rdb = rdb
        self._inner = _CachedStorage(rdb)
        self.budget_s = budget_s
        self.first_wait_s = first_wait_s
        self.max_wait_s = max_wait_s
        self._sleep = sleep
        self._where = mask_url(str(rdb.engine.url.render_as_string(hide_password=True)))
        self._hold_signals = rdb.engine.url.get_backend_name() == "sqlite"

    def __repr__(self) -> str:
        return f"RetryingStorage({self._where!r})"

    def _retry(self, what: str, fn: Callable[[], T], on_retry: Callable[[BaseException], T | None] | None = None
               ) -> T:
        settle = None if on_retry is None else (lambda exc: self._call(lambda: on_retry(exc)))
        return retry_transient(f"Optuna storage {self._where}: {what}", lambda: self._call(fn), budget_s=self.budget_s,
                               first_wait_s=self.first_wait_s, max_wait_s=self.max_wait_s, sleep=self._sleep,
                               on_retry=settle)

    def _call(self, fn: Callable[[], T]) -> T:
        """One attempt (the waits between attempts stay interruptible)."""
        with deferred_stop(when=self._hold_signals):
            return fn()

    # ------------------------------------------------------------- studies
    def create_new_study(self, directions: Sequence[optuna.study.StudyDirection], study_name: str | None = None
                         ) -> int:
        return self._call(lambda: self._inner.create_new_study(directions, study_name))  # not retried: see above

    def delete_study(self, study_id: int) -> None:
        self._call(lambda: self._inner.delete_study(study_id))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry("set_study_user_attr", lambda: self._inner.set_study_user_attr(study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry("set_study_system_attr", lambda: self._inner.set_study_system_attr(study_id, key, value))

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._retry("get_study_id_from_name", lambda: self._inner.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._retry("get_study_name_from_id", lambda: self._inner.get_study_name_from_id(study_id))

    def get_study_directions(self, study_id: int) -> list[optuna.study.StudyDirection]:
        return self._retry("get_study_directions", lambda: self._inner.get_study_directions(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry("get_study_user_attrs", lambda: self._inner.get_study_user_attrs(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry("get_study_system_attrs", lambda: self._inner.get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._retry("get_all_studies", self._inner.get_all_studies)

    # ------------------------------------------------------------- trials
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._call(lambda: self._inner.create_new_trial(study_id, template_trial))  # not retried: see above

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: optuna.distributions.BaseDistribution) -> None:
        # a repeat of a committed insert hits the (trial, name) unique key, which Optuna ignores here
        self._retry("set_trial_param", lambda: self._inner.set_trial_param(trial_id, param_name,
                                                                            param_value_internal, distribution))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._retry("get_trial_id_from_study_id_trial_number",
                           lambda: self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._retry("get_best_trial", lambda: self._inner.get_best_trial(study_id))

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
                               ) -> bool:
        def call() -> bool:
            return self._inner.set_trial_state_values(trial_id, state=state, values=values)

        if not state.is_finished():  # the WAITING -> RUNNING claim: not retried, see the class docstring
            return self._call(call)

        def already_written(_: BaseException) -> bool | None:
            trial = self._inner.get_trial(trial_id)
            if trial.state == state and _same_values(trial.values, values):
                log.warning("Optuna storage %s: trial %d was already %s (the write before the outage went "
                            "through)", self._where, trial.number, state.name)
                return True
            return None  # not written: write it (or, if another worker failed it meanwhile, let Optuna say so)

        return self._retry("set_trial_state_values", call, on_retry=already_written)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._retry("set_trial_intermediate_value",
                    lambda: self._inner.set_trial_intermediate_value(trial_id, step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._retry("set_trial_user_attr", lambda: self._inner.set_trial_user_attr(trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._retry("set_trial_system_attr", lambda: self._inner.set_trial_system_attr(trial_id, key, value))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._retry("get_trial", lambda: self._inner.get_trial(trial_id))

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
                       ) -> list[FrozenTrial]:
        return self._retry("get_all_trials", lambda: self._inner.get_all_trials(study_id, deepcopy, states))

    def remove_session(self) -> None:
        self.rdb.remove_session()

    def dispose_connections(self) -> None:
        """Close the pooled connections (before forking worker processes: a connection must not be shared)."""
        self.rdb.engine.dispose()

    # ------------------------------------------------------------- heartbeats
    def record_heartbeat(self, trial_id: int) -> None:
        """Retried; if the storage stays away longer than the budget, a warning and the next beat tries again
        (an exception here would end Optuna's heartbeat thread, with a traceback, for the rest of the trial)."""
        try:
            self._retry("record_heartbeat", lambda: self._inner.record_heartbeat(trial_id))
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("Optuna storage %s: heartbeat of trial id %d not recorded (%s); next beat tries again",
                        self._where, trial_id, driver_message(exc))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._retry("get_stale_trial_ids", lambda: self._inner._get_stale_trial_ids(study_id))

    def get_heartbeat_interval(self) -> int | None:
        return self._inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._inner.get_heartbeat_stale_trial_callback()


def _same_values(stored: Sequence[float] | None, wanted: Sequence[float] | None) -> bool:
    if wanted is None:
        return True
    if stored is None or len(stored) != len(wanted):
        return False
    return all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(stored, wanted, strict=True))


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


def requeue_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, max_retries: int) -> bool:
    """Queue a WAITING copy of `trial` (same params), with the system attrs Optuna gives its heartbeat retries.

    Used for trials that stopped for reasons outside themselves (SIGTERM, MLflow down) and for stale trials
    (`RequeueStaleTrial`): the retry's ``failed_trial`` system attr names the original trial. Attrs that are
    true of the original only (`names.RETRY_DROPS_USER_ATTRS`, `names.RETRY_DROPS_SYSTEM_ATTRS`) are not copied.
    A trial has at most one retry: a worker queues it while the trial is RUNNING, and if the worker is then
    killed before the trial is told, the trial goes stale and comes here again. Returns whether a retry of
    `trial` is queued (by this call or an earlier one): False when it was already retried `max_retries` times.
    """
    history = [*trial.system_attrs.get(names.SYSTEM_ATTR_RETRY_HISTORY, []), trial.number]
    if len(history) > max_retries:
        return False
    if any(list(t.system_attrs.get(names.SYSTEM_ATTR_RETRY_HISTORY) or [])[-1:] == [trial.number]
           for t in study.get_trials(deepcopy=False)):
        return True
    # like RetryHeartbeatStaleTrialCallback: the first failed trial stays the one every retry names
    inherited = {k: v for k, v in trial.system_attrs.items() if k not in names.RETRY_DROPS_SYSTEM_ATTRS}
    system_attrs: dict[str, Any] = {names.SYSTEM_ATTR_FAILED_TRIAL: trial.number, **inherited,
                                    names.SYSTEM_ATTR_RETRY_HISTORY: history}
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in names.RETRY_DROPS_USER_ATTRS}
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions, user_attrs=user_attrs,
                                              system_attrs=system_attrs))
    return True


class RequeueStaleTrial:
    """The retry of a trial whose heartbeat went stale (RDB storages), made by `requeue_trial`.

    Optuna's `RetryHeartbeatStaleTrialCallback` copies every user attr of the original to the retry: its run id
    and URL, its reason, its model and its results then showed as the retry's own until the retry wrote them,
    and for good when the retry failed or was pruned first (`status` gave the original's reason).
    """

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        requeue_trial(study, trial, max_retries=self.max_retries)


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

        url = with_postgres_driver(url)
        # no pool: the connection exists only while the lock is wanted or held
        self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self._key = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        self._conn: Any = None
        self._sql = sqlalchemy.text

    def acquire(self) -> None:
        """Take the lock; a database outage (a restart) is waited out like a storage call (`RetryingStorage`)."""
        retry_transient("budget lock: taking the lock", self._acquire, budget_s=storage_retry_budget_s())

    def _acquire(self) -> None:
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
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # the connection died (a database restart): its transaction, and so the lock, died with it
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
