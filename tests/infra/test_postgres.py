"""PostgresServer: a real server that Optuna's RDBStorage (with heartbeats) can use."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sweeps.stack import PostgresServer
from sweeps.stack._process import alive, descendants

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_accepts_password_login_over_tcp(postgres_server: PostgresServer) -> None:
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(postgres_server.url)
    assert url.drivername == "postgresql+psycopg2"
    assert url.host == "127.0.0.1" and url.port == postgres_server.port
    conn = psycopg2.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, current_database()")
            assert cur.fetchone() == (postgres_server.user, postgres_server.database)
    finally:
        conn.close()


def test_wrong_password_is_refused(postgres_server: PostgresServer) -> None:
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host=postgres_server.host, port=postgres_server.port, user=postgres_server.user,
            password="not-the-password", dbname=postgres_server.database,
        )  # fmt: skip


def test_repr_and_masked_url_hide_the_password(postgres_server: PostgresServer) -> None:
    assert postgres_server.password not in repr(postgres_server)
    assert postgres_server.password not in postgres_server.masked_url
    assert ":***@127.0.0.1:" in postgres_server.masked_url


def test_create_database_is_idempotent_and_owned_by_app_user(postgres_server: PostgresServer) -> None:
    from sqlalchemy import create_engine, text

    url1 = postgres_server.create_database("infra_extra")
    url2 = postgres_server.create_database("infra_extra")
    assert url1 == url2 and url1.endswith("/infra_extra")
    engine = create_engine(url1)
    try:
        with engine.begin() as conn:  # the app user may create tables: it owns the database
            conn.execute(text("CREATE TABLE t (x int)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_optuna_rdb_storage_with_heartbeat(postgres_server: PostgresServer) -> None:
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = postgres_server.create_database("optuna_infra")
    storage = RDBStorage(url, heartbeat_interval=1, grace_period=2)
    try:
        study = optuna.create_study(study_name="infra-heartbeat", storage=storage)
        study.optimize(lambda t: t.suggest_float("x", -1.0, 1.0) ** 2, n_trials=3)
        assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3

        # A trial whose worker stopped beating is failed once the grace period passes.
        stale = study.ask()
        storage.record_heartbeat(stale._trial_id)
        time.sleep(2.5)
        optuna.storages.fail_stale_trials(study)
        assert study.trials[stale.number].state == TrialState.FAIL

        # A second process-like handle sees the same study.
        again = optuna.load_study(study_name="infra-heartbeat", storage=url)
        assert len(again.trials) == 4
    finally:
        storage.remove_session()
        storage.engine.dispose()


def test_restart_keeps_data_then_stop_cleans_up(postgres_server: PostgresServer) -> None:
    # postgres_server is requested only for its skip/fail-when-binaries-are-missing logic.
    import psycopg2

    pg = PostgresServer(fsync=False).start()

    def query(sql: str) -> list[tuple]:
        conn = psycopg2.connect(
            host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=pg.database
        )
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    query("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    port, old_pid = pg.port, pg._proc.pid  # type: ignore[union-attr]
    pg.restart()
    assert pg.port == port and not alive(old_pid)
    assert query("SELECT x FROM kept") == [(42,)]

    pid = pg._proc.pid  # type: ignore[union-attr]
    children = descendants(pid)
    assert children, "postmaster should have background workers"
    base, sock = pg.base_dir, pg._sock_dir
    assert base.exists() and sock is not None and sock.exists()
    if os.geteuid() == 0:
        assert base.stat().st_uid != 0, "as root, the cluster must belong to an unprivileged OS user"
    pg.stop()
    assert not alive(pid)
    assert not [p for p in children if alive(p)]
    assert not Path(base).exists() and not Path(sock).exists()
    pg.stop()  # idempotent
