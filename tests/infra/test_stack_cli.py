"""``python -m sweeps.stack up``: secrets handling, and one real foreground run."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sweeps.stack.cli import load_or_create_secrets

ROOT = Path(__file__).resolve().parents[2]


def test_secrets_generated_once_saved_0600_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_ADMIN_PASSWORD", raising=False)
    first = load_or_create_secrets(tmp_path)
    assert all(len(v) >= 12 for v in first.values())
    assert (tmp_path / "secrets.env").stat().st_mode & 0o777 == 0o600
    assert load_or_create_secrets(tmp_path) == first
    monkeypatch.setenv("POSTGRES_PASSWORD", "from-the-environment")
    assert load_or_create_secrets(tmp_path)["POSTGRES_PASSWORD"] == "from-the-environment"


@pytest.mark.slow
@pytest.mark.postgres
def test_up_runs_in_foreground_and_stops_on_ctrl_c(postgres_server: object) -> None:
    # postgres_server: only for its skip/fail-when-binaries-are-missing logic.
    # Not pytest's tmp_path: as root the cluster runs as 'postgres', which can't enter 0700 pytest dirs.
    stack = Path(tempfile.mkdtemp(prefix="sweeps-stack-test-"))
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.stack", "up", "--dir", str(stack), "--pg-port", "0", "--mlflow-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    out: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if "Ctrl-C stops both" in line:
                break
        text = "".join(out)
        assert "Ctrl-C stops both" in text, text

        secrets = dict(ln.split("=", 1) for ln in (stack / "secrets.env").read_text().split())
        for value in secrets.values():
            assert value not in text, "a password was printed"
        client_env = stack / "client.env"
        assert client_env.stat().st_mode & 0o777 == 0o600
        probe = (
            "import os, psycopg2, urllib.request as u\n"
            "from sqlalchemy.engine import make_url\n"
            "url = make_url(os.environ['OPTUNA_STORAGE'])\n"
            "psycopg2.connect(host=url.host, port=url.port, user=url.username,\n"
            "                 password=url.password, dbname=url.database).close()\n"
            "u.urlopen(os.environ['MLFLOW_TRACKING_URI'] + '/health')\n"
        )
        check = subprocess.run(
            ["bash", "-c", f'source {client_env} && exec "$0" -c "$1"', sys.executable, probe],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rest, _ = proc.communicate()
        leftovers = [pid for pid, cmd in _cmdlines().items() if str(stack) in cmd]
        shutil.rmtree(stack, ignore_errors=True)
    assert proc.returncode == 0, "".join(out) + rest
    assert "stopping" in rest
    assert leftovers == [], "servers outlived the CLI"


def _cmdlines() -> dict[int, str]:
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            out[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return out
