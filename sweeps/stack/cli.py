"""``siamese-sweep stack up|down|status``: the docker-compose topology without Docker.

``up`` starts PostgreSQL and an MLflow server with basic auth (and, with ``--dashboard``, a password-guarded
read-only optuna-dashboard), in the foreground or with ``--detach`` in the background; ``down`` stops a
detached stack; ``status`` says what runs where. Least privilege, as in docker-compose.yml:

* one PostgreSQL role per database (``optuna``, ``mlflow``, ``mlflow_auth``), each the only one allowed to
  connect to its database; workers hold only the ``optuna`` role's credentials;
* workers log to MLflow as a non-admin user (``sweeps-worker``): they can create experiments and runs, but
  cannot create users or delete what others created; the admin's credentials are for operators
  (``promote``, the UI's user management).

Passwords come from the environment (or ``NAME_FILE``) or are generated once into ``<dir>/secrets.env``
(0600, shell-quoted) and reused. The MLflow admin password in MLflow's ini only takes effect on an empty auth
database, so a new one is set through MLflow's API with the saved one, and saved once MLflow has it. They are
validated before anything starts and never printed: workers ``source <dir>/client.env``, operators
``source <dir>/admin.env``.

A detached stack's supervisor records its servers' pids in ``stack.json``: if it is killed (SIGKILL, the OOM
killer), ``down`` stops what it left running, and ``up`` refuses the folder until then.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siamese_core.errors import ConfigError
from sweeps import names
from sweeps.argtypes import port_number, positive_int
from sweeps.procfs import start_ticks
from sweeps.secrets import mask_url, read_secret_files
from sweeps.stack._process import (
    ServerStartError,
    alive,
    port_is_free,
    send_signal,
    terminate_pid,
)
from sweeps.stack.mlflow_auth import (
    MIN_PASSWORD_LENGTH,
    AuthConfigError,
    MlflowUnavailable,
    change_password,
    ensure_user,
)
from sweeps.stack.mlflow_server import MlflowServer
from sweeps.stack.postgres import PostgresServer

# name -> what it protects; all generated with secrets.token_urlsafe(24) unless given
SECRETS = {
    names.ENV_DB_OPTUNA_PASSWORD: "PostgreSQL role 'optuna' (database optuna: the Optuna study)",
    names.ENV_DB_MLFLOW_PASSWORD: "PostgreSQL role 'mlflow' (database mlflow: runs, models)",
    names.ENV_DB_MLFLOW_AUTH_PASSWORD: "PostgreSQL role 'mlflow_auth' (database mlflow_auth: MLflow users)",
    names.ENV_ADMIN_PASSWORD: "MLflow admin user",
    names.ENV_WORKER_PASSWORD: "MLflow user the workers log as (not an admin)",
    names.ENV_DASHBOARD_PASSWORD: "optuna-dashboard basic auth",
}
MLFLOW_PASSWORDS = (names.ENV_ADMIN_PASSWORD, names.ENV_WORKER_PASSWORD)
PLACEHOLDER_PREFIX = "change-me"
STATE_FILE = "stack.json"
POSTGRES, MLFLOW, DASHBOARD = "PostgreSQL", "mlflow server", "optuna-dashboard"  # in stack.json and messages
READY_TIMEOUT_S = 300.0
# PostgreSQL that exits under a running stack (a crash, an OOM kill, `pg_ctl stop`) is started again, as
# docker-compose.yml's `restart: unless-stopped` does; more exits than this within the window stop the stack
# instead of looping on a server that cannot stay up (a full disk, a broken data folder)
PG_RESTARTS, PG_RESTART_WINDOW_S = 5, 300.0


# ---------------------------------------------------------------- files
def write_private(path: Path, lines: list[str]) -> None:
    """Write `lines` to a 0600 file (created 0600: never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)


def write_env_file(path: Path, values: dict[str, str], *, export: bool = False) -> None:
    """``KEY='value'`` lines, shell-quoted, so ``source`` and `read_env_file` give back every value exactly."""
    prefix = "export " if export else ""
    write_private(path, [f"{prefix}{key}={shlex.quote(value)}" for key, value in values.items()])


def read_env_file(path: Path) -> dict[str, str]:
    """Parse what `write_env_file` wrote (or a plain ``KEY=value`` file): shell quoting is undone exactly."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for raw in path.read_text().splitlines():
        line = raw.strip().removeprefix("export ").strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, rest = line.split("=", 1)
        try:
            words = shlex.split(rest)
        except ValueError:  # unbalanced quote: an unquoted value from an older version, kept as written
            words = [rest]
        out[key.strip()] = words[0] if len(words) == 1 else rest
    return out


# ---------------------------------------------------------------- secrets
def validate_secrets(values: dict[str, str]) -> None:
    """Refuse values MLflow or the env/ini files cannot hold — before any server starts or any file is written."""
    for name, value in values.items():
        if value != value.strip() or any(c in value for c in "\r\n\0"):
            raise ConfigError(name, "expected a password without newlines or surrounding whitespace")
        if value.lower().startswith(PLACEHOLDER_PREFIX):
            raise ConfigError(name, "still the placeholder value from .env.example; set a real secret")
        if name in MLFLOW_PASSWORDS and len(value) < MIN_PASSWORD_LENGTH:
            raise ConfigError(name, f"MLflow requires passwords of at least {MIN_PASSWORD_LENGTH} characters; "
                                    f"received: {len(value)} characters")


def load_or_create_secrets(stack_dir: Path) -> dict[str, str]:
    """Environment (or ``NAME_FILE``) > ``secrets.env`` > newly generated; validated, then saved (0600)."""
    read_secret_files(names=tuple(SECRETS))
    path = stack_dir / "secrets.env"
    saved = read_env_file(path)
    values: dict[str, str] = {}
    for var in SECRETS:
        env_value = os.environ.get(var)
        if env_value and saved.get(var) and env_value != saved[var]:
            print(f"warning: {var} from the environment differs from {path}; using the environment", file=sys.stderr)
        values[var] = env_value or saved.get(var) or secrets.token_urlsafe(24)
    validate_secrets(values)
    keep = dict(values)
    if saved.get(names.ENV_ADMIN_PASSWORD):  # the one MLflow has, until `_admin_password_set` changes it
        keep[names.ENV_ADMIN_PASSWORD] = saved[names.ENV_ADMIN_PASSWORD]
    if keep != {k: saved.get(k) for k in SECRETS}:
        write_env_file(path, keep)
    return values


def _admin_password_set(url: str, stack_dir: Path, admin_user: str, password: str) -> None:
    """Give MLflow's admin `password` if it is not the saved one, then save it. Saved before MLflow had it (as
    it was), the next start could no longer log in as the admin: every ``up`` failed, HTTP 401."""
    path = stack_dir / "secrets.env"
    saved = read_env_file(path)
    old = saved.get(names.ENV_ADMIN_PASSWORD)
    if old is None or old == password:
        return
    change_password(url, username=admin_user, old=old, new=password)
    write_env_file(path, {**saved, names.ENV_ADMIN_PASSWORD: password})
    print(f"changed the MLflow admin's password (saved in {path})", flush=True)


# ---------------------------------------------------------------- state of a running stack
@dataclass
class StackState:
    """What ``status``/``down`` need to find a running stack (no secrets: the file is world-readable)."""

    pid: int
    postgres: str = ""
    mlflow: str = ""
    dashboard: str = ""
    ready: bool = False
    # what it started -> [pid, start ticks], saved as each starts, for `down` if the supervisor is killed
    servers: dict[str, list[int]] = field(default_factory=dict)

    @staticmethod
    def path(stack_dir: Path) -> Path:
        return stack_dir / STATE_FILE

    def save(self, stack_dir: Path) -> None:
        tmp = self.path(stack_dir).with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__))
        tmp.replace(self.path(stack_dir))

    @classmethod
    def load(cls, stack_dir: Path) -> StackState | None:
        try:
            return cls(**json.loads(cls.path(stack_dir).read_text()))
        except (OSError, ValueError, TypeError):
            return None


# ---------------------------------------------------------------- up
def _check_up(args: argparse.Namespace, stack_dir: Path) -> None:
    """What `stack up` can check before it creates or starts anything: each of these was a Python exception or
    a failed background start (exit 1) that left the state folder, a data directory or secrets behind."""
    if stack_dir.exists() and not stack_dir.is_dir():
        raise ConfigError("--dir", f"{stack_dir} exists and is not a folder")
    try:
        socket.getaddrinfo(args.host, None)
    except (socket.gaierror, UnicodeError):
        raise ConfigError("--host", f"cannot resolve {args.host!r} to an address to bind") from None
    for flag, user in (("--admin-user", args.admin_user), ("--worker-user", args.worker_user)):
        if not re.fullmatch(r"[^\s:]{1,255}", user):  # basic auth splits user:password at the first ':'
            raise ConfigError(flag, f"expected 1-255 characters without spaces or ':'; received: {user!r}")
    if args.admin_user == args.worker_user and not args.no_auth:
        raise ConfigError("--worker-user", "must differ from --admin-user: workers log in as a non-admin user")
    _check_ports(args)


def _made_if_valid(stack_dir: Path) -> dict[str, str]:
    """Create the state folder and its secrets; a refused secret (say, a short password) leaves no new folder."""
    new = not stack_dir.exists()
    stack_dir.mkdir(parents=True, exist_ok=True)
    try:
        return load_or_create_secrets(stack_dir)
    except ConfigError:
        if new:
            shutil.rmtree(stack_dir, ignore_errors=True)
        raise


def _refuse_left_running(previous: StackState | None, stack_dir: Path, given: str) -> None:
    """A supervisor killed without its clean-up (SIGKILL, the OOM killer) leaves its servers running: a new
    PostgreSQL on the same data failed on the lock file (exit 1, in the log only)."""
    if previous is None or alive(previous.pid):
        return
    left = _left_running(previous, stack_dir)
    if left:
        servers = ", ".join(f"{name} (pid {pid})" for name, pid in left.items())
        raise ConfigError("--dir", f"{servers} still run from {stack_dir}, left by a stack whose supervisor "
                                   f"(pid {previous.pid}) was killed; 'siamese-sweep stack down --dir {given}' "
                                   "stops them")


def _check_ports(args: argparse.Namespace) -> None:
    ports = [("--pg-port", args.pg_port), ("--mlflow-port", args.mlflow_port)]
    if args.dashboard:
        ports.append(("--dashboard-port", args.dashboard_port))
    for flag, port in ports:
        if port and not port_is_free(port, args.host):
            raise ConfigError(flag, f"port {args.host}:{port} is in use (pass 0 for a free port)")


def up(args: argparse.Namespace) -> int:
    stack_dir = Path(args.dir).resolve()
    if args.detach:
        return _up_detached(args, stack_dir)
    previous = StackState.load(stack_dir)
    if previous is not None and alive(previous.pid) and previous.pid != os.getpid():
        raise ConfigError("--dir", f"a stack is already running from {stack_dir} (pid {previous.pid}); "
                                   f"'siamese-sweep stack down --dir {args.dir}' stops it")
    _refuse_left_running(previous, stack_dir, args.dir)
    _check_up(args, stack_dir)
    creds = _made_if_valid(stack_dir)  # validated before anything starts
    os.chmod(stack_dir, 0o755)  # the postgres OS user must traverse it; secrets files are 0600

    pg = PostgresServer(user="optuna", password=creds[names.ENV_DB_OPTUNA_PASSWORD], database="optuna", host=args.host,
                        port=args.pg_port or None, base_dir=stack_dir / "postgres")
    mlflow: MlflowServer | None = None
    dashboard: subprocess.Popen[bytes] | None = None
    state = StackState(pid=os.getpid())

    def on_stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too, and not only Python's default: a process started with SIGINT ignored (`stack up &` in a script,
    # a test runner launched that way) keeps it ignored, so "Ctrl-C stops the stack" was false there and the
    # stack ran on until SIGKILL; as a worker's `signals.stop_on_signals`, `up` takes both signals itself
    handlers_before = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"starting PostgreSQL in {stack_dir / 'postgres'} ...", flush=True)
        pg.start()
        state.servers = _servers(pg, mlflow, dashboard)
        state.save(stack_dir)  # not ready yet: but a `down` after a SIGKILL from here on finds its servers
        optuna_url = pg.url
        mlflow_db = pg.create_role("mlflow", creds[names.ENV_DB_MLFLOW_PASSWORD], database="mlflow")
        auth_db = pg.create_role("mlflow_auth", creds[names.ENV_DB_MLFLOW_AUTH_PASSWORD], database="mlflow_auth")
        mlflow = MlflowServer(mlflow_db, state_dir=stack_dir / "mlflow", host=args.host, port=args.mlflow_port or None,
                              workers=args.workers, auth=not args.no_auth, admin_username=args.admin_user,
                              admin_password=creds[names.ENV_ADMIN_PASSWORD], auth_database_uri=auth_db)
        print("starting mlflow server (15-35 s on a busy machine) ...", flush=True)
        mlflow.start()
        state.servers = _servers(pg, mlflow, dashboard)
        state.save(stack_dir)
        worker_env = {names.ENV_OPTUNA_STORAGE: optuna_url, names.ENV_MLFLOW_TRACKING_URI: mlflow.url}
        admin_env = dict(worker_env)
        if mlflow.auth:
            _admin_password_set(mlflow.url, stack_dir, args.admin_user, creds[names.ENV_ADMIN_PASSWORD])
            ensure_user(mlflow.url, admin_username=args.admin_user, admin_password=creds[names.ENV_ADMIN_PASSWORD],
                        username=args.worker_user, password=creds[names.ENV_WORKER_PASSWORD])
            worker_env.update({names.ENV_MLFLOW_TRACKING_USERNAME: args.worker_user,
                               names.ENV_MLFLOW_TRACKING_PASSWORD: creds[names.ENV_WORKER_PASSWORD]})
            admin_env.update({names.ENV_MLFLOW_TRACKING_USERNAME: args.admin_user,
                              names.ENV_MLFLOW_TRACKING_PASSWORD: creds[names.ENV_ADMIN_PASSWORD]})
        if args.dashboard:
            dashboard, state.dashboard = _start_dashboard(args, stack_dir, optuna_url,
                                                          creds[names.ENV_DASHBOARD_PASSWORD])
            admin_env[names.ENV_DASHBOARD_PASSWORD] = creds[names.ENV_DASHBOARD_PASSWORD]
            worker_env[names.ENV_DASHBOARD_URL] = state.dashboard  # workers tag parent runs with the study's page
        client_file, admin_file = stack_dir / "client.env", stack_dir / "admin.env"
        write_env_file(client_file, worker_env, export=True)
        write_env_file(admin_file, admin_env, export=True)
        state.postgres, state.mlflow, state.ready = pg.masked_url, mlflow.url, True
        state.servers = _servers(pg, mlflow, dashboard)
        state.save(stack_dir)
        _print_summary(pg, mlflow, state, client_file, admin_file, args)
        restarts: list[float] = []
        while mlflow.is_running() and (dashboard is None or dashboard.poll() is None):
            if not pg.is_running():
                if not _start_again(pg, restarts):
                    break
                state.servers = _servers(pg, mlflow, dashboard)  # a new postmaster
                state.save(stack_dir)
            time.sleep(0.5)
        which = ("PostgreSQL" if not pg.is_running() else "mlflow server" if not mlflow.is_running()
                 else "optuna-dashboard")
        print(f"error: {which} exited; stopping the stack", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except (ServerStartError, AuthConfigError, MlflowUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        # a second Ctrl-C must not abort the cleanup
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping ...", flush=True)
        if dashboard is not None and dashboard.poll() is None:
            dashboard.terminate()
            try:
                dashboard.wait(timeout=10)
            except subprocess.TimeoutExpired:
                dashboard.kill()
        if mlflow is not None:
            mlflow.stop()
        pg.stop()
        StackState.path(stack_dir).unlink(missing_ok=True)
        for sig, handler in handlers_before.items():  # None: one not set from Python
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _servers(pg: PostgresServer, mlflow: MlflowServer | None,
             dashboard: subprocess.Popen[bytes] | None) -> dict[str, list[int]]:
    found = {POSTGRES: pg.pid, MLFLOW: mlflow.pid if mlflow is not None else None,
             DASHBOARD: dashboard.pid if dashboard is not None else None}
    return {name: [pid, start_ticks(pid) or 0] for name, pid in found.items() if pid is not None}


def _left_running(state: StackState, stack_dir: Path) -> dict[str, int]:
    """The servers a stack whose supervisor is gone left running: those recorded in `state` still alive with the
    start time recorded (a pid reused since, after a reboot say, is another process) and, as far as /proc shows
    it, running from `stack_dir`."""
    left = {}
    for name, entry in state.servers.items():
        try:
            pid, started = int(entry[0]), int(entry[1])
        except (TypeError, ValueError, IndexError):  # not what `_servers` writes
            continue
        if start_ticks(pid) != started or _runs_from(pid, stack_dir) is False:
            continue
        left[name] = pid
    return left


def _runs_from(pid: int, stack_dir: Path) -> bool | None:
    """Whether `pid` has an argument in `stack_dir` (PostgreSQL's ``-D``) or works there (the others); None when
    /proc shows neither (root without CAP_SYS_PTRACE cannot read the postgres user's working folder)."""
    seen = False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        seen = True
        if any(Path(os.fsdecode(a)).is_relative_to(stack_dir) for a in args if a.startswith(b"/")):
            return True
    except OSError:
        pass
    try:
        if Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(stack_dir):
            return True
        seen = True
    except OSError:
        pass
    return False if seen else None


def _stop_left_running(left: dict[str, int], timeout: float) -> list[str]:
    """Stop them as the supervisor would have (PostgreSQL's fast shutdown, SIGTERM to the others' process
    groups: each was started in its own session), all at once, so that each has the whole `timeout` (one after the
    other, an MLflow that outlived its SIGTERM left PostgreSQL no time for its shutdown); SIGKILL what outlives it.
    What could not be stopped."""
    for name, pid in left.items():
        send_signal(pid, signal.SIGINT if name == POSTGRES else signal.SIGTERM, signal_group=name != POSTGRES)
    deadline = time.monotonic() + timeout
    return [f"{name} (pid {pid})" for name, pid in left.items()
            if terminate_pid(pid, first_signal=None, signal_group=name != POSTGRES,
                             timeout=max(0.0, deadline - time.monotonic()))]


def _start_again(pg: PostgresServer, restarts: list[float]) -> bool:
    """Start PostgreSQL again after it exited (same port, data and roles: workers' storage retries and MLflow's
    connection pool reconnect); False when it exited too often (`PG_RESTARTS`) or cannot start."""
    now = time.monotonic()
    restarts[:] = [t for t in restarts if now - t < PG_RESTART_WINDOW_S]
    if len(restarts) >= PG_RESTARTS:
        print(f"error: PostgreSQL exited {PG_RESTARTS + 1} times in {PG_RESTART_WINDOW_S:.0f} s (see "
              f"{pg.log_path})", file=sys.stderr, flush=True)
        return False
    restarts.append(now)
    print(f"warning: PostgreSQL exited (see {pg.log_path}); starting it again on the same port and data",
          file=sys.stderr, flush=True)
    try:
        pg.restart()
    except ServerStartError as e:
        print(f"error: PostgreSQL could not be started again: {e}", file=sys.stderr, flush=True)
        return False
    print("PostgreSQL is up again", flush=True)
    return True


def _start_dashboard(args: argparse.Namespace, stack_dir: Path, storage: str,
                     password: str) -> tuple[subprocess.Popen[bytes], str]:
    """`siamese-sweep dashboard` as a child; storage and password through its environment, never argv."""
    env = {**os.environ, names.ENV_OPTUNA_STORAGE: storage, names.ENV_DASHBOARD_PASSWORD: password}
    port = args.dashboard_port or _free_port(args.host)
    log = open(stack_dir / "dashboard.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "dashboard", "--host", args.host, "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=stack_dir)  # its folder: `_left_running` knows it so
    url = f"http://{args.host}:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"optuna-dashboard exited (see {stack_dir / 'dashboard.log'})")
        if not port_is_free(port, args.host):
            return proc, url
        time.sleep(0.3)
    proc.kill()
    raise ServerStartError("optuna-dashboard did not start listening within 120 s")


def _free_port(host: str) -> int:
    from sweeps.stack._process import free_port

    return free_port(host)


def _print_summary(pg: PostgresServer, mlflow: MlflowServer, state: StackState, client_file: Path, admin_file: Path,
                   args: argparse.Namespace) -> None:
    print(f"\nPostgreSQL  {pg.masked_url}   (log {pg.log_path})")
    print(f"MLflow      {mlflow.url}   auth={'on' if mlflow.auth else 'off'}   (log {mlflow.log_path})")
    if state.dashboard:
        print(f"dashboard   {state.dashboard}   read-only, basic auth (user optuna; password in {admin_file})")
    print(f"\nworkers:   source {client_file}   (0600: Optuna role + MLflow user {args.worker_user!r})")
    print(f"operators: source {admin_file}    (0600: MLflow admin {args.admin_user!r}, for promote and the UI)")
    print("  siamese-sweep worker SPEC.yaml --study NAME   # reads OPTUNA_STORAGE and MLFLOW_TRACKING_*")
    print("  siamese-sweep dashboard                       # reads OPTUNA_STORAGE; password-guarded, read-only")
    print("\nCtrl-C stops the stack." if not args.detached_child else "", flush=True)


def _up_detached(args: argparse.Namespace, stack_dir: Path) -> int:
    """Start ``stack up`` in its own session, wait until it is ready, print its summary, return."""
    previous = StackState.load(stack_dir)  # first: its ports are in use too, which is not the news
    if previous is not None and alive(previous.pid):
        raise ConfigError("--dir", f"a stack is already running from {stack_dir} (pid {previous.pid})")
    _refuse_left_running(previous, stack_dir, args.dir)
    _check_up(args, stack_dir)
    _made_if_valid(stack_dir)  # bad secrets: exit 2 here, not in the background
    argv = [sys.executable, "-m", "sweeps.cli", "stack", "up", "--detached-child", "--dir", str(stack_dir),
            "--host", args.host, "--pg-port", str(args.pg_port), "--mlflow-port", str(args.mlflow_port),
            "--workers", str(args.workers), "--admin-user", args.admin_user, "--worker-user", args.worker_user,
            "--dashboard-port", str(args.dashboard_port)]
    argv += ["--no-auth"] if args.no_auth else []
    argv += ["--dashboard"] if args.dashboard else []
    log_path = stack_dir / "stack.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        state = StackState.load(stack_dir)
        if state is not None and state.pid == proc.pid and state.ready:
            print(log_path.read_text().split("\n\n", 1)[-1].rstrip())
            print(f"\nrunning in the background (pid {proc.pid}, log {log_path}); "
                  f"'siamese-sweep stack down --dir {args.dir}' stops it")
            return 0
        if proc.poll() is not None:
            print(f"error: the stack exited with code {proc.returncode}; see {log_path}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    proc.terminate()
    print(f"error: the stack was not ready after {READY_TIMEOUT_S:.0f} s; see {log_path}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- down / status
def down(args: argparse.Namespace) -> int:
    stack_dir = Path(args.dir).resolve()
    state = StackState.load(stack_dir)
    if state is None or not alive(state.pid):
        left = _left_running(state, stack_dir) if state is not None else {}
        if not left:
            StackState.path(stack_dir).unlink(missing_ok=True)
            print(f"no stack is running from {stack_dir}")
            return 0
        stuck = _stop_left_running(left, args.timeout)
        if stuck:  # stack.json kept: it is how the next `down` finds them
            print(f"error: {', '.join(stuck)} did not stop within {args.timeout:.0f} s", file=sys.stderr)
            return 1
        StackState.path(stack_dir).unlink(missing_ok=True)
        print(f"stopped {', '.join(left)}, left running from {stack_dir} by a stack whose supervisor was killed")
        return 0
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and alive(state.pid):
        time.sleep(0.3)
    if alive(state.pid):
        print(f"error: the stack (pid {state.pid}) did not stop within {args.timeout:.0f} s", file=sys.stderr)
        return 1
    print(f"stopped the stack from {stack_dir}")
    return 0


def stack_status(stack_dir: Path) -> dict[str, Any]:
    """Whether a stack runs from `stack_dir`, its URLs (passwords masked) and whether MLflow answers."""
    import urllib.request

    state = StackState.load(stack_dir)
    if state is None or not alive(state.pid):
        left = _left_running(state, stack_dir) if state is not None else {}
        return {"running": False, "dir": str(stack_dir), "left_running": left}
    healthy = False
    if state.mlflow:
        try:
            with urllib.request.urlopen(state.mlflow + "/health", timeout=5) as resp:
                healthy = resp.status == 200
        except OSError:
            healthy = False
    return {"running": True, "dir": str(stack_dir), "pid": state.pid, "ready": state.ready,
            "postgres": mask_url(state.postgres), "mlflow": state.mlflow, "mlflow_healthy": healthy,
            "dashboard": state.dashboard or None}


def status(args: argparse.Namespace) -> int:
    info = stack_status(Path(args.dir).resolve())
    if args.json:
        print(json.dumps(info))
    elif not info["running"]:
        print(f"no stack is running from {info['dir']}")
        if info["left_running"]:  # `down` stops them, `up` refuses the folder until then
            servers = ", ".join(f"{name} (pid {pid})" for name, pid in info["left_running"].items())
            print(f"but {servers} still run from it, left by a stack whose supervisor was killed: "
                  f"'siamese-sweep stack down --dir {args.dir}' stops them")
    else:
        print(f"stack from {info['dir']} (pid {info['pid']}): PostgreSQL {info['postgres']}; MLflow {info['mlflow']} "
              f"({'healthy' if info['mlflow_healthy'] else 'NOT answering'})"
              + (f"; dashboard {info['dashboard']}" if info["dashboard"] else ""))
    return 0 if info["running"] else 3


# ---------------------------------------------------------------- parser
def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``stack up|down|status`` under an existing subparsers action (``siamese-sweep stack ...``)."""
    stack = sub.add_parser("stack", help="start/stop PostgreSQL + MLflow server (+ dashboard) without Docker",
                           description=__doc__.split("\n\n")[0])
    verbs = stack.add_subparsers(dest="stack_command", required=True, metavar="{up,down,status}")
    p = verbs.add_parser("up", help="start the stack (foreground; --detach for the background)")
    p.add_argument("--dir", default=".stack", help="state directory (data, logs, secrets); default .stack")
    p.add_argument("--host", default="127.0.0.1", help="bind address; default 127.0.0.1")
    p.add_argument("--pg-port", type=port_number, default=5432, help="PostgreSQL port (0 = any free port)")
    p.add_argument("--mlflow-port", type=port_number, default=5000, help="MLflow port (0 = any free port)")
    p.add_argument("--workers", type=positive_int, default=1, help="mlflow server worker processes")
    p.add_argument("--admin-user", default="admin", help="MLflow admin user name")
    p.add_argument("--worker-user", default="sweeps-worker", help="MLflow (non-admin) user the workers log as")
    p.add_argument("--no-auth", action="store_true", help="run MLflow without basic auth")
    p.add_argument("--dashboard", action="store_true", help="also start a read-only, password-guarded optuna-dashboard")
    p.add_argument("--dashboard-port", type=port_number, default=8080, help="dashboard port (0 = any free port)")
    p.add_argument("--detach", action="store_true", help="run in the background; 'stack down' stops it")
    p.add_argument("--detached-child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=up)
    d = verbs.add_parser("down", help="stop a stack started with --detach")
    d.add_argument("--dir", default=".stack")
    d.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a clean stop")
    d.set_defaults(handler=down)
    s = verbs.add_parser("status", help="is a stack running from --dir, where, and is MLflow answering (exit 3: none)")
    s.add_argument("--dir", default=".stack")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=status)
