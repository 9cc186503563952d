"""A database that refuses the login is a wrong URL (exit 2), not an outage (exit 1, which schedulers retry)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sweeps import names

pytestmark = [pytest.mark.postgres]


def _status(url: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in names.SECRET_ENV}
    env[names.ENV_OPTUNA_STORAGE] = url  # as the stack's client.env gives it
    return subprocess.run([sys.executable, "-m", "sweeps.cli", "status", "--study", "demo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("wrong", ["password", "database", "user"])
def test_a_refused_login_exits_2_with_one_masked_line(postgres_server: Any, tmp_path: Path, wrong: str) -> None:
    """A wrong password exited 1 ("cannot open the Optuna storage"), as an unreachable database does: a Slurm
    job, a Kubernetes Job and a compose service retried it (docs/cluster.md, docs/distributed.md)."""
    url = {"password": postgres_server.url_for(postgres_server.database, password="not-the-password"),
           "database": postgres_server.url_for("no_such_database"),
           "user": postgres_server.url_for(postgres_server.database, user="nobody", password="not-the-password"),
           }[wrong]
    proc = _status(url, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused the login or has no such database" in lines[0], proc.stderr
    assert "not-the-password" not in proc.stderr and postgres_server.password not in proc.stderr
    assert ":***@" in lines[0]


def test_an_unreachable_database_still_exits_1(postgres_server: Any, tmp_path: Path) -> None:
    """Down is not wrong: exit 1, so that a scheduler's retry can find it up."""
    url = postgres_server.url.replace(f":{postgres_server.port}/", ":1/")
    proc = _status(url, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "cannot open the Optuna storage" in proc.stderr and postgres_server.password not in proc.stderr


def test_a_database_that_does_not_answer_is_asked_once(tmp_path: Path) -> None:
    """The review of the probe for Optuna's tables (`sweeps.storage.holds_no_study`): it asked an unreachable
    database, then the opener asked again, each waiting out the connection timeout; `slurm submit` asked twice more
    (the stored spec, then the spec check). One attempt each now: a socket that accepts and never answers counts
    them."""
    import socket
    import threading

    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    url = f"postgresql://u:secretpw@127.0.0.1:{silent.getsockname()[1]}/db?connect_timeout=2"
    try:
        status = _status(url, tmp_path)
        assert status.returncode == 1 and "cannot open the Optuna storage" in status.stderr, status.stderr
        assert len(accepted) == 1
        submitted = _submit(url, tmp_path)
        assert submitted.returncode == 0 and "could not read the spec stored with study 'demo'" in submitted.stderr
        assert len(accepted) == 2 and "secretpw" not in status.stderr + submitted.stderr
    finally:
        silent.close()
        for connection in accepted:
            connection.close()


def _tables(postgres_server: Any, database: str) -> list[str]:
    conn = postgres_server.connect_admin(database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return sorted(row[0] for row in cur.fetchall())
    finally:
        conn.close()


def _submit(url: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in names.SECRET_ENV}
    env.update({names.ENV_OPTUNA_STORAGE: url, "MLFLOW_TRACKING_URI": "http://mlflow:5000",
                "SIAMESE_SWEEP_STORAGE_RETRY_SECONDS": "0"})
    return subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", "--study", "demo", "--tasks", "2",
                           "--dry-run"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_reading_a_database_without_optuna_tables_writes_nothing_to_it(postgres_server: Any, tmp_path: Path) -> None:
    """`status`, `report` and `slurm submit` opened an empty database as an Optuna storage, which creates
    Optuna's tables in it, to then find no study (session 49's review): a read writes nothing now. `status` and
    `report` say the database holds no study (exit 2); `submit` checks the spec as a new study's."""
    url = postgres_server.create_database("no_optuna_tables")
    for command in ("status", "report"):
        env = {k: v for k, v in os.environ.items() if k not in names.SECRET_ENV}
        env[names.ENV_OPTUNA_STORAGE] = url
        proc = subprocess.run([sys.executable, "-m", "sweeps.cli", command, "--study", "demo"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (command, proc.stderr)
        assert "has no Optuna tables: no study in it" in proc.stderr and ":***@" in proc.stderr, proc.stderr
        assert postgres_server.password not in proc.stderr
    submitted = _submit(url, tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    assert "fashion_mnist" in submitted.stdout  # the quickstart: no study to take a spec from
    assert _tables(postgres_server, "no_optuna_tables") == []


def test_a_database_that_does_not_admit_this_host_is_left_to_slurms_nodes(tmp_path: Path) -> None:
    """A database whose pg_hba.conf lists only the compute nodes refused `slurm submit` on the login node (exit 2,
    as a wrong password), where docs/cluster.md promises a warning and the tasks' own checks. A worker here still
    stops with exit 2: no retry would be admitted either."""
    from sweeps.stack import PostgresServer

    with PostgresServer(user="sweeps", database="sweeps", fsync=False) as pg:
        (pg.data_dir / "pg_hba.conf").write_text("local all all trust\nhost all all 10.255.0.0/16 scram-sha-256\n")
        conn = pg.connect_admin()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()
        proc = _status(pg.url, tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "admits no login from this host with this user and database (pg_hba.conf)" in proc.stderr
        assert "no pg_hba.conf entry" in proc.stderr
        submitted = _submit(pg.url, tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        assert "could not read the spec stored with study 'demo'" in submitted.stderr, submitted.stderr
        assert "fashion_mnist" in submitted.stdout and pg.password not in submitted.stdout + submitted.stderr
