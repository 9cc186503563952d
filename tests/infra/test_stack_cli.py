"""``siamese-sweep stack up|down|status``: secrets handling, least privilege, and real runs."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweeps.stack.cli import SECRETS, load_or_create_secrets, read_env_file, write_env_file

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "sweeps.cli"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in SECRETS and not k.startswith(("MLFLOW_TRACKING", "OPTUNA_STORAGE"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


@pytest.fixture
def no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets unset during the test, and unset again after it: `load_or_create_secrets` sets a ``NAME`` read
    from ``NAME_FILE`` in ``os.environ`` itself, which a plain ``delenv`` of an absent name would not undo. Left
    set, the admin password read here from a file outlived the test, and a later file's MLflow setup in the same
    process logged in with it (HTTP 401; under pytest-xdist, which runs the files in another order)."""
    for var in SECRETS:
        for name in (var, var + "_FILE"):
            monkeypatch.setenv(name, "")  # recorded, so monkeypatch puts back what was there before the test
            monkeypatch.delenv(name)


def test_secrets_generated_once_saved_0600_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     no_secret_env: None) -> None:
    first = load_or_create_secrets(tmp_path)
    assert set(first) == set(SECRETS) and all(len(v) >= 12 for v in first.values())
    assert (tmp_path / "secrets.env").stat().st_mode & 0o777 == 0o600
    assert load_or_create_secrets(tmp_path) == first
    monkeypatch.setenv("SIAMESE_SWEEP_OPTUNA_DB_PASSWORD", "from-the-environment")
    assert load_or_create_secrets(tmp_path)["SIAMESE_SWEEP_OPTUNA_DB_PASSWORD"] == "from-the-environment"


@pytest.mark.parametrize("password", ["ends-with-a-quote'", "'quoted'", 'dq"inside"', "dollar$HOME`id`\\back",
                                      "spaces inside it", "percent%s%%"])
def test_passwords_survive_the_env_file_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                no_secret_env: None, password: str) -> None:
    """A password ending in a quote used to change on the second start (written unquoted, read back stripped)."""
    monkeypatch.setenv("SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD", password + "-long-enough")
    first = load_or_create_secrets(tmp_path)
    monkeypatch.delenv("SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD")
    assert load_or_create_secrets(tmp_path)["SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD"] == password + "-long-enough" == \
        first["SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD"]
    # and what bash reads from the same file is the same value
    script = f"source {tmp_path / 'secrets.env'} && printf %s \"$SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD\""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == password + "-long-enough"


def test_env_file_written_by_an_older_version_is_read_as_written(tmp_path: Path) -> None:
    (tmp_path / "old.env").write_text("A=plain\nB=ends-with-quote'\n")
    assert read_env_file(tmp_path / "old.env") == {"A": "plain", "B": "ends-with-quote'"}
    write_env_file(tmp_path / "new.env", {"A": "x'y"}, export=True)
    assert read_env_file(tmp_path / "new.env") == {"A": "x'y"}


@pytest.mark.parametrize(("var", "value", "expected"), [
    ("SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD", "short", "at least 12 characters"),
    ("SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD", "short", "at least 12 characters"),
    ("SIAMESE_SWEEP_OPTUNA_DB_PASSWORD", "change-me-please", "placeholder"),
    ("SIAMESE_SWEEP_MLFLOW_DB_PASSWORD", " padded-password ", "surrounding whitespace"),
])
def test_bad_password_exits_2_in_one_line_before_anything_starts(tmp_path: Path, var: str, value: str,
                                                                  expected: str) -> None:
    stack = tmp_path / "stack"
    proc = subprocess.run(CLI + ["stack", "up", "--dir", str(stack), "--pg-port", "0", "--mlflow-port", "0"],
                          env=_clean_env(**{var: value}), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and var in lines[0] and expected in lines[0], proc.stderr
    assert "***" not in lines[0], "the detail's first word was masked as if it were the password"
    assert value.strip() not in proc.stderr or len(value.strip()) < 6
    assert not stack.exists()  # not even the folder (an empty one was left)


@pytest.mark.parametrize("flags, words", [
    (["--pg-port", "70000"], "argument --pg-port: expected a port from 0 to 65535"),  # OverflowError, exit 1
    (["--dashboard", "--dashboard-port", "-5"], "argument --dashboard-port: expected a port"),
    (["--workers", "0"], "argument --workers: expected a whole number >= 1"),  # started a stack
    (["--host", "not_a_host!!"], "--host: cannot resolve 'not_a_host!!'"),  # failed in the background
    (["--admin-user", ""], "--admin-user: expected 1-255 characters"),
    (["--admin-user", "same", "--worker-user", "same"], "--worker-user: must differ from --admin-user"),
])
def test_bad_flags_exit_2_in_one_line_before_anything_starts(tmp_path: Path, flags: list[str], words: str) -> None:
    stack = tmp_path / "stack"
    proc = subprocess.run(CLI + ["stack", "up", "--detach", "--dir", str(stack), "--pg-port", "0", "--mlflow-port", "0",
                                 *flags], env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not stack.exists()
    (tmp_path / "afile").write_text("x")
    proc = subprocess.run(CLI + ["stack", "up", "--detach", "--dir", str(tmp_path / "afile")], env=_clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--dir: " in proc.stderr and "is not a folder" in proc.stderr, proc.stderr


def test_the_dashboard_refuses_a_missing_store_and_keeps_no_password_file(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]
                                                                          ) -> None:
    """It only shows studies: a mistyped SQLite path was created as an empty database; a generated password's
    file stayed in /tmp after the dashboard stopped."""
    from sweeps import dashboard
    from sweeps.cli import main

    def never(*a: object, **k: object) -> None:
        raise AssertionError("the dashboard served a store that does not exist")

    monkeypatch.setattr(dashboard, "serve", never)
    monkeypatch.delenv("SIAMESE_SWEEP_DASHBOARD_PASSWORD", raising=False)
    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path}/nope.db")
    assert main(["dashboard", "--port", "0"]) == 2
    # named as given: the dashboard has no --storage flag (it said "--storage", or "study.storage" for a scheme)
    assert "error: $OPTUNA_STORAGE: no such SQLite file" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()
    monkeypatch.setenv("OPTUNA_STORAGE", "bogus://x")
    assert main(["dashboard", "--port", "0"]) == 2
    assert "error: $OPTUNA_STORAGE: expected sqlite:///FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["dashboard", "--port", "70000"])
    assert refused.value.code == 2

    import optuna

    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/there.db")
    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path}/there.db")
    shown: list[Path] = []

    def serve_once(app: object, *, host: str, port: int, ready: object) -> None:
        ready(f"http://{host}:{port}/")  # type: ignore[operator]
        shown.append(Path(capsys.readouterr().out.split("the password is in ")[1].split(" (0600)")[0]))
        assert shown[0].is_file()

    monkeypatch.setattr(dashboard, "serve", serve_once)
    assert main(["dashboard", "--port", "0"]) == 0
    assert shown and not shown[0].exists() and not shown[0].parent.exists()


_SLOW_DASHBOARD = """
import sys, time
from sweeps.dashboard import serve
from sweeps.signals import stop_on_signals

def app(environ, start_response):  # a request that takes a second, as a dashboard's study listing can
    time.sleep(1.0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]

def ready(url):
    print(url, flush=True)

try:
    with stop_on_signals(raise_at_once=False):
        serve(app, host="127.0.0.1", port=0, ready=ready)
except KeyboardInterrupt:
    print("stopped", flush=True)
"""


def test_a_sigterm_during_a_dashboard_request_stops_it_after_the_answer() -> None:
    """Raised inside a request, the stop was caught by wsgiref as the app's error: the client got a 500 and the
    dashboard served on. It is checked between requests: the request is answered, then it stops."""
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_DASHBOARD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_clean_env())
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
        import threading

        answers: list[tuple[int, bytes]] = []

        def ask() -> None:
            with urllib.request.urlopen(url, timeout=30) as response:
                answers.append((response.status, response.read()))
        client = threading.Thread(target=ask)
        client.start()
        time.sleep(0.4)  # inside the request's second
        proc.send_signal(signal.SIGTERM)
        client.join(30)
        assert answers == [(200, b"done")]
        assert proc.wait(timeout=10) == 0 and proc.stdout.read().strip() == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_dashboard_stopped_with_sigterm_takes_its_password_file_along(tmp_path: Path) -> None:
    """`timeout 60 siamese-sweep dashboard` (SIGTERM) left its generated password in /tmp: the default SIGTERM
    ended the process without the cleanup Ctrl-C ran."""
    import optuna

    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/there.db")
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = subprocess.Popen(CLI + ["dashboard", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_clean_env(OPTUNA_STORAGE=f"sqlite:///{tmp_path}/there.db",
                                                      TMPDIR=str(temp)))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        password = Path(line.split("the password is in ")[1].split(" (0600)")[0])
        assert password.is_file() and password.parent.parent == temp, line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(temp.iterdir()) == []


def test_secret_files_are_read_and_a_conflict_is_refused(tmp_path: Path, no_secret_env: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from siamese_core.errors import ConfigError
    from sweeps.secrets import read_secret_files

    secret = tmp_path / "pw"
    secret.write_text("from-a-file-0123\n")
    env = {"SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD_FILE": str(secret)}
    assert read_secret_files(env) == ["SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD"]
    assert env["SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD"] == "from-a-file-0123"
    with pytest.raises(ConfigError, match="not both"):
        read_secret_files({"OPTUNA_STORAGE": "sqlite:///a.db", "OPTUNA_STORAGE_FILE": str(secret)})
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret_files({"OPTUNA_STORAGE_FILE": str(tmp_path / "missing")})
    monkeypatch.setenv("SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD_FILE", str(secret))
    assert load_or_create_secrets(tmp_path)["SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD"] == "from-a-file-0123"


# ---------------------------------------------------------------- a real detached stack
def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _http(url: str, *, method: str = "GET", auth: tuple[str, str] | None = None,
          body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = _basic(*auth)
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _cmdlines() -> dict[int, str]:
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            out[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return out


def _running_from(folder: Path) -> list[int]:
    """Processes whose command line names `folder` or whose working directory is in it: `mlflow server`'s
    uvicorn worker names neither the folder nor a file in it (one outlived a failed run of the foreground test
    here, unseen by a check of the command lines alone)."""
    found = []
    for pid, cmd in _cmdlines().items():
        with contextlib.suppress(OSError):
            if str(folder) in cmd or os.readlink(f"/proc/{pid}/cwd").startswith(f"{folder}{os.sep}"):
                found.append(pid)
    return found


@pytest.fixture(scope="module")
def detached_stack(postgres_server: object) -> Iterator[Path]:
    """``stack up --detach --dashboard`` once for this module; ``stack down`` at the end.

    postgres_server: only for its skip/fail-when-binaries-are-missing logic. Not pytest's tmp_path: as root
    the cluster runs as 'postgres', which can't enter 0700 pytest dirs.
    """
    stack = Path(tempfile.mkdtemp(prefix="sweeps-stack-test-"))
    os.chmod(stack, 0o755)
    up = subprocess.run(CLI + ["stack", "up", "--detach", "--dashboard", "--dir", str(stack / "s"), "--pg-port", "0",
                               "--mlflow-port", "0", "--dashboard-port", "0"],
                        env=_clean_env(), capture_output=True, text=True, timeout=400)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "stack down" in up.stdout
        yield stack / "s"
    finally:
        down = subprocess.run(CLI + ["stack", "down", "--dir", str(stack / "s")], env=_clean_env(),
                              capture_output=True, text=True, timeout=200)
        leftovers = _running_from(stack)
        shutil.rmtree(stack, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr
        assert leftovers == [], "servers outlived 'stack down'"


def _env_of(path: Path) -> dict[str, str]:
    return read_env_file(path)


@pytest.mark.slow
@pytest.mark.postgres
def test_status_reports_the_detached_stack_and_no_password_is_printed(detached_stack: Path) -> None:
    out = subprocess.run(CLI + ["stack", "status", "--dir", str(detached_stack), "--json"], env=_clean_env(),
                         capture_output=True, text=True, timeout=60)
    info = json.loads(out.stdout)
    assert out.returncode == 0 and info["running"] and info["mlflow_healthy"] and info["dashboard"]
    text = (detached_stack / "stack.log").read_text() + out.stdout
    for value in read_env_file(detached_stack / "secrets.env").values():
        assert value not in text, "a password was printed"
    for name in ("client.env", "admin.env", "secrets.env"):
        assert (detached_stack / name).stat().st_mode & 0o777 == 0o600
    secrets_ = read_env_file(detached_stack / "secrets.env").values()
    assert not [cmd for cmd in _cmdlines().values() if any(v in cmd for v in secrets_)], "a password is in argv"
    # a second `up` from the same folder says that, not that the first one's port is in use
    port = info["mlflow"].rsplit(":", 1)[1].strip("/")
    again = subprocess.run(CLI + ["stack", "up", "--detach", "--dir", str(detached_stack), "--pg-port", "0",
                                  "--mlflow-port", port], env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "a stack is already running from" in again.stderr, again.stderr


@pytest.mark.slow
@pytest.mark.postgres
def test_the_workers_database_role_reaches_only_the_optuna_database(detached_stack: Path) -> None:
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(_env_of(detached_stack / "client.env")["OPTUNA_STORAGE"])
    assert url.username == "optuna"

    def connect(db: str) -> None:
        psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password, dbname=db,
                         connect_timeout=10).close()

    connect("optuna")
    for db in ("mlflow", "mlflow_auth", "postgres"):
        with pytest.raises(psycopg2.OperationalError, match="permission denied"):
            connect(db)


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_log_as_a_non_admin_mlflow_user(detached_stack: Path) -> None:
    worker, admin = _env_of(detached_stack / "client.env"), _env_of(detached_stack / "admin.env")
    base = worker["MLFLOW_TRACKING_URI"]
    w_auth = (worker["MLFLOW_TRACKING_USERNAME"], worker["MLFLOW_TRACKING_PASSWORD"])
    a_auth = (admin["MLFLOW_TRACKING_USERNAME"], admin["MLFLOW_TRACKING_PASSWORD"])
    assert w_auth[0] == "sweeps-worker" and w_auth != a_auth
    assert _http(f"{base}/api/2.0/mlflow/experiments/create", method="POST", auth=a_auth,
                 body={"name": "operators-experiment"}) == 200
    admins = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=operators-experiment",
        headers={"Authorization": _basic(*a_auth)}), timeout=30).read())["experiment"]["experiment_id"]
    # what a sweep needs works; what it does not need is refused
    assert _http(f"{base}/api/2.0/mlflow/experiments/create", method="POST", auth=w_auth,
                 body={"name": "workers-experiment"}) == 200
    assert _http(f"{base}/api/2.0/mlflow/users/create", method="POST", auth=w_auth,
                 body={"username": "intruder", "password": "intruder-password-123"}) == 403
    assert _http(f"{base}/api/2.0/mlflow/experiments/delete", method="POST", auth=w_auth,
                 body={"experiment_id": admins}) == 403
    assert _http(f"{base}/api/2.0/mlflow/users/update-admin", method="PATCH", auth=w_auth,
                 body={"username": "sweeps-worker", "is_admin": True}) == 403


@pytest.mark.slow
@pytest.mark.postgres
def test_a_sweep_runs_with_only_the_workers_credentials(detached_stack: Path, tmp_path: Path) -> None:
    import yaml

    spec = {"base": {"dataset": "digits", "epochs": 1, "batch_size": 64, "encoder": {"depth": 1, "width": 8},
                     "pairs": {"pairs_per_epoch": 320, "val_pairs": 100, "test_pairs": 100}},
            "search_space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "study": {"name": "least-privilege", "trials": 1, "pruner": "none"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = _clean_env(**_env_of(detached_stack / "client.env"))
    proc = subprocess.run(CLI + ["run", str(tmp_path / "spec.yaml"), "--quiet", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout)
    assert status["counts"]["COMPLETE"] == 1
    # linked both ways: the parent run names the study's dashboard page, the trial its run's page
    import optuna
    from mlflow import MlflowClient

    admin = _env_of(detached_stack / "admin.env")
    dashboard = json.loads((detached_stack / "stack.json").read_text())["dashboard"]
    study = optuna.load_study(study_name="least-privilege", storage=env["OPTUNA_STORAGE"])
    trial = study.trials[0]
    assert trial.user_attrs["mlflow_run_url"].startswith(env["MLFLOW_TRACKING_URI"].rstrip("/") + "/#/experiments/")
    assert trial.user_attrs["mlflow_run_url"].split("/runs/")[1].split("?")[0] == trial.user_attrs["mlflow_run_id"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
        mp.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
        parent = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(study.user_attrs["mlflow_parent_run_id"])
    link = parent.data.tags["siamese_sweep.dashboard_url"]
    assert link.startswith(dashboard + "/dashboard/studies/")
    api = link.replace("/dashboard/studies/", "/api/studies/")
    assert _http(api, auth=("optuna", admin["SIAMESE_SWEEP_DASHBOARD_PASSWORD"])) == 200  # the study behind the link


@pytest.mark.slow
@pytest.mark.postgres
def test_the_dashboard_needs_a_password_and_is_read_only(detached_stack: Path) -> None:
    state = json.loads((detached_stack / "stack.json").read_text())
    url, password = state["dashboard"], _env_of(detached_stack / "admin.env")["SIAMESE_SWEEP_DASHBOARD_PASSWORD"]
    assert _http(f"{url}/api/studies") == 401
    assert _http(f"{url}/api/studies", auth=("optuna", "wrong-password")) == 401
    assert _http(f"{url}/api/studies", auth=("optuna", password)) == 200
    assert _http(f"{url}/api/studies/0", method="DELETE", auth=("optuna", password)) == 403


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_that_exits_under_the_stack_is_started_again(detached_stack: Path) -> None:
    """`pg_ctl stop` (or a crash) under `stack up` took the whole stack down, MLflow too, and the stop's clean-up
    removed the socket folder a manual restart needed; docker-compose.yml restarts it (`unless-stopped`)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(_env_of(detached_stack / "client.env")["OPTUNA_STORAGE"])
    admin = _env_of(detached_stack / "admin.env")
    base, auth = admin["MLFLOW_TRACKING_URI"], (admin["MLFLOW_TRACKING_USERNAME"], admin["MLFLOW_TRACKING_PASSWORD"])
    postmaster = [pid for pid, cmd in _cmdlines().items()
                  if "postgres -D" in cmd and str(detached_stack) in cmd and "setpriv" not in cmd]
    assert len(postmaster) == 1, postmaster
    os.kill(postmaster[0], signal.SIGINT)  # what `pg_ctl stop -m fast` sends

    def connect() -> None:
        psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password, dbname="optuna",
                         connect_timeout=5).close()

    deadline = time.monotonic() + 120
    while True:
        try:
            connect()
            break
        except psycopg2.OperationalError:
            assert time.monotonic() < deadline, (detached_stack / "stack.log").read_text()[-2000:]
            time.sleep(1)
    log = (detached_stack / "stack.log").read_text()
    assert "PostgreSQL exited" in log and "starting it again on the same port and data" in log
    assert "stopping the stack" not in log
    # MLflow kept running and reaches its database again (its pool may drop one stale connection first)
    codes = [_http(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", auth=auth) for _ in range(3)]
    assert codes[-1] == 200, codes
    info = json.loads(subprocess.run(CLI + ["stack", "status", "--dir", str(detached_stack), "--json"],
                                     env=_clean_env(), capture_output=True, text=True, timeout=60).stdout)
    assert info["running"] and info["mlflow_healthy"]


@pytest.mark.slow
@pytest.mark.postgres
def test_up_in_the_foreground_stops_on_ctrl_c_and_keeps_a_quote_ending_password(postgres_server: object) -> None:
    """Two starts of the same --dir: the saved password (ending in a quote) still lets clients in. The second
    starts with SIGINT ignored, as `stack up &` in a script does: Python then keeps it ignored and the stack ran
    on after Ctrl-C until SIGKILL. This test failed so whenever the suite was started as `( pytest ... & )`: bash
    starts a background command with SIGINT ignored, and every process below inherits it (`( cd x && pytest ... & )`
    runs pytest from a subshell that puts the signals back, which is why other runs passed)."""
    stack = Path(tempfile.mkdtemp(prefix="sweeps-stack-test-"))
    os.chmod(stack, 0o755)
    try:
        envs = (_clean_env(SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD="admin-password-ends-with'"), _clean_env())
        for attempt, (env, sigint) in enumerate(zip(envs, ("SIG_DFL", "SIG_IGN"), strict=True)):
            # the CLI exec'd with that SIGINT, whatever the test process has (a caught handler resets on exec)
            launch = [sys.executable, "-c", f"import os, signal, sys; signal.signal(signal.SIGINT, signal.{sigint}); "
                                            "os.execv(sys.argv[1], sys.argv[1:])"]
            up = ["stack", "up", "--dir", str(stack), "--pg-port", "0", "--mlflow-port", "0"]
            proc = subprocess.Popen(launch + CLI + up,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    start_new_session=True)
            out: list[str] = []
            try:
                deadline = time.monotonic() + 240
                assert proc.stdout is not None
                while time.monotonic() < deadline:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    out.append(line)
                    if "Ctrl-C stops the stack" in line:
                        break
                assert "Ctrl-C stops the stack" in "".join(out), "".join(out)
                admin = read_env_file(stack / "admin.env")
                assert admin["MLFLOW_TRACKING_PASSWORD"] == "admin-password-ends-with'"
                auth = (admin["MLFLOW_TRACKING_USERNAME"], admin["MLFLOW_TRACKING_PASSWORD"])
                assert _http(f"{admin['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1",
                             auth=auth) == 200, attempt
            finally:
                proc.send_signal(signal.SIGINT)
                try:  # a clean stop takes 2-10 s (the ignored SIGINT, above, was what outlasted 180 s)
                    rest, _ = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    rest, _ = proc.communicate()
            assert proc.returncode == 0, "".join(out) + rest
            assert "stopping" in rest
    finally:
        leftovers = _running_from(stack)
        for pid in leftovers:  # a failed run must not leave its servers to the rest of the suite
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(stack, ignore_errors=True)
    assert leftovers == [], "servers outlived the CLI"


def test_a_new_admin_password_is_saved_only_once_mlflow_has_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 no_secret_env: None) -> None:
    """MLflow's ini sets the admin password only on an empty auth database: saved at once, the new one locked
    the next start out (every `up` exit 1, HTTP 401)."""
    first = load_or_create_secrets(tmp_path)
    monkeypatch.setenv("SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD", "a-new-admin-password")
    assert load_or_create_secrets(tmp_path)["SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD"] == "a-new-admin-password"
    saved = read_env_file(tmp_path / "secrets.env")
    assert saved["SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD"] == first["SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD"]


def test_down_takes_only_the_recorded_processes_running_from_its_folder(tmp_path: Path) -> None:
    """`down` signals what `_left_running` returns: a pid reused by another process, or a server of a sibling
    folder (``/srv/stk2`` for ``/srv/stk``: a substring test took it), must not be in it."""
    from sweeps.procfs import start_ticks
    from sweeps.stack.cli import StackState, _left_running

    stack, sibling = tmp_path / "stk", tmp_path / "stk2"
    procs = {where: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                      "-D", str(where / "postgres" / "data")], cwd=tmp_path)
             for where in (stack, sibling)}
    try:
        time.sleep(0.3)
        ours, theirs = procs[stack].pid, procs[sibling].pid
        state = StackState(pid=2 ** 22 + 1, servers={"PostgreSQL": [ours, start_ticks(ours) or -1],
                                                     "mlflow server": [theirs, start_ticks(theirs) or -1]})
        assert _left_running(state, stack) == {"PostgreSQL": ours}
        state.servers["PostgreSQL"][1] -= 1  # the same pid, another start: a reused pid
        assert _left_running(state, stack) == {}
        assert _left_running(StackState(pid=1, servers={"PostgreSQL": ours}), stack) == {}  # not what it writes
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def _up_detached(stack: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + ["stack", "up", "--detach", "--dir", str(stack), "--pg-port", "0",
                                 "--mlflow-port", "0"], env=_clean_env(**env), capture_output=True, text=True,
                          timeout=400)


def test_left_servers_are_signalled_at_once_so_postgres_gets_its_shutdown(tmp_path: Path) -> None:
    """One after the other, an MLflow that outlived its SIGTERM used up `--timeout` and PostgreSQL got SIGINT and
    SIGKILL at the same moment: no clean shutdown. Stand-ins: one ignores SIGTERM, one takes 1 s after SIGINT."""
    from sweeps.stack.cli import MLFLOW, POSTGRES, _stop_left_running

    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
                "time.sleep(60)")
    slow = ("import signal, sys, time\n"
            "def down(*_):\n    time.sleep(1.0); open(sys.argv[1], 'w').write('clean'); sys.exit(0)\n"
            "signal.signal(signal.SIGINT, down); print('up', flush=True); time.sleep(60)\n")
    marker = tmp_path / "postgres-shut-down"
    procs = {MLFLOW: subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True,
                                      stdout=subprocess.PIPE, text=True),
             POSTGRES: subprocess.Popen([sys.executable, "-c", slow, str(marker)], start_new_session=True,
                                        stdout=subprocess.PIPE, text=True)}
    try:
        for proc in procs.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        stuck = _stop_left_running({name: proc.pid for name, proc in procs.items()}, timeout=3.0)
        assert stuck == []
        assert procs[POSTGRES].wait(timeout=10) == 0 and marker.read_text() == "clean"
        assert procs[MLFLOW].wait(timeout=10) == -signal.SIGKILL  # it outlived the timeout
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
@pytest.mark.postgres
def test_a_killed_supervisor_is_cleaned_up_by_down_and_a_new_admin_password_is_set(postgres_server: object) -> None:
    """A detached stack's supervisor SIGKILLed left PostgreSQL and MLflow running: `down` said "no stack" and
    deleted stack.json, and `up` failed on PostgreSQL's lock file (exit 1). Then a new admin password on the same
    folder: it was saved before MLflow had it, and every later `up` failed (HTTP 401)."""
    stack = Path(tempfile.mkdtemp(prefix="sweeps-stack-test-"))
    os.chmod(stack, 0o755)
    folder = stack / "s"
    try:
        starting = subprocess.Popen(CLI + ["stack", "up", "--detach", "--dir", str(folder), "--pg-port", "0",
                                           "--mlflow-port", "0"], env=_clean_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        early: dict = {}
        while starting.poll() is None and not early.get("servers"):  # PostgreSQL is recorded before it is ready
            with contextlib.suppress(OSError, ValueError):
                early = json.loads((folder / "stack.json").read_text())
            time.sleep(0.1)
        out, err = starting.communicate(timeout=400)
        assert starting.returncode == 0, out + err
        assert list(early["servers"]) == ["PostgreSQL"] and early["ready"] is False, early
        old = read_env_file(folder / "admin.env")["MLFLOW_TRACKING_PASSWORD"]
        state = json.loads((folder / "stack.json").read_text())
        assert set(state["servers"]) == {"PostgreSQL", "mlflow server"}
        os.kill(state["pid"], signal.SIGKILL)
        time.sleep(1)
        assert all(pid in _cmdlines() for pid, _ in state["servers"].values())  # what it left running
        status = subprocess.run(CLI + ["stack", "status", "--dir", str(folder)], env=_clean_env(),
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 3 and "still run from it" in status.stdout, status.stdout + status.stderr
        assert f"PostgreSQL (pid {state['servers']['PostgreSQL'][0]})" in status.stdout
        status_json = subprocess.run(CLI + ["stack", "status", "--json", "--dir", str(folder)], env=_clean_env(),
                                     capture_output=True, text=True, timeout=60)
        assert json.loads(status_json.stdout)["left_running"] == {name: pid for name, (pid, _)
                                                                  in state["servers"].items()}

        refused = _up_detached(folder)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "stack down --dir" in refused.stderr
        assert "still run from" in refused.stderr and (folder / "stack.json").exists()

        down = subprocess.run(CLI + ["stack", "down", "--dir", str(folder)], env=_clean_env(), capture_output=True,
                              text=True, timeout=200)
        assert down.returncode == 0 and "stopped PostgreSQL, mlflow server" in down.stdout, down.stdout + down.stderr
        assert _running_from(folder) == []

        new = "a-new-admin-password-0123"
        again = _up_detached(folder, SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD=new)
        assert again.returncode == 0, again.stdout + again.stderr + (folder / "stack.log").read_text()[-3000:]
        admin = read_env_file(folder / "admin.env")
        assert admin["MLFLOW_TRACKING_PASSWORD"] == new != old
        assert read_env_file(folder / "secrets.env")["SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD"] == new
        search = f"{admin['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _http(search, auth=(admin["MLFLOW_TRACKING_USERNAME"], new)) == 200
        subprocess.run(CLI + ["stack", "down", "--dir", str(folder)], env=_clean_env(), capture_output=True,
                       text=True, timeout=200, check=True)
        plain = _up_detached(folder)  # and the next start, with nothing in the environment, logs in with it
        assert plain.returncode == 0, plain.stdout + plain.stderr + (folder / "stack.log").read_text()[-3000:]
    finally:
        subprocess.run(CLI + ["stack", "down", "--dir", str(folder)], env=_clean_env(), capture_output=True,
                       text=True, timeout=200)
        leftovers = _running_from(stack)
        shutil.rmtree(stack, ignore_errors=True)
    assert leftovers == [], "servers outlived 'stack down'"


def test_a_dashboard_port_in_use_or_a_host_it_cannot_bind_is_one_line_and_exit_2(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                                 capsys: pytest.CaptureFixture[str]
                                                                                 ) -> None:
    """Both were a raw OSError/gaierror, exit 1."""
    import socket

    import optuna

    from sweeps.cli import main

    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/there.db")
    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path}/there.db")
    monkeypatch.setenv("SIAMESE_SWEEP_DASHBOARD_PASSWORD", "pass-word-0123")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--port", str(port)]) == 2
        assert f"error: --port: {port} is in use (pass 0 for a free port)" in capsys.readouterr().err
    assert main(["dashboard", "--host", "256.1.1.1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host: cannot listen on '256.1.1.1'") and len(err.strip().splitlines()) == 1
