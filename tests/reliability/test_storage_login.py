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
