"""A real ``mlflow server`` process on loopback, optionally behind basic auth.

Why not the in-process test client: the reliability tests stop the tracking
server mid-sweep and restart it, and workers talk to it over HTTP exactly as in
production. Secrets stay off the command line (``ps`` shows argv to every local
user): the backend URI goes in ``MLFLOW_BACKEND_STORE_URI`` and the admin
password in a 0600 auth ini referenced by ``MLFLOW_AUTH_CONFIG_PATH``.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from sweeps.secrets import mask_url
from sweeps.stack._process import ServerStartError, free_port, port_is_free, terminate_tree, wait_until
from sweeps.stack.mlflow_auth import MIN_PASSWORD_LENGTH, ensure_user, write_auth_ini

__all__ = ["MIN_PASSWORD_LENGTH", "MlflowServer", "ensure_user", "write_auth_ini"]

# Variables of the parent that would silently override what we configure for the child.
_SCRUBBED_ENV = (
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_RUN_ID",
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "MLFLOW_DEFAULT_ARTIFACT_ROOT",
    "MLFLOW_REGISTRY_STORE_URI",
)
class MlflowServer:
    """Start, stop and restart one ``mlflow server`` (uvicorn) process tree.

    ``state_dir=None`` uses a temporary directory (log, auth ini, default
    artifact and auth stores) removed by :meth:`stop`; :meth:`restart` keeps it,
    the port and the stores.
    """

    def __init__(
        self,
        backend_store_uri: str,
        *,
        artifacts_destination: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        workers: int = 1,
        auth: bool = False,
        admin_username: str = "admin",
        admin_password: str | None = None,
        auth_database_uri: str | None = None,
        default_permission: str = "READ",
        auth_cache_ttl_seconds: int = 60,
        secret_key: str | None = None,
        allowed_hosts: Sequence[str] | None = None,
        job_execution: bool = False,
        startup_timeout: float = 180.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.backend_store_uri = backend_store_uri
        self._artifacts_destination = artifacts_destination
        self._state_dir = Path(state_dir).resolve() if state_dir is not None else None
        self._owns_state_dir = state_dir is None
        self.host = host
        self.port = port or 0
        self.workers = workers
        self.auth = auth
        self.admin_username = admin_username
        self.admin_password = admin_password if admin_password is not None else secrets.token_urlsafe(24)
        self._auth_database_uri = auth_database_uri
        self.default_permission = default_permission
        self.auth_cache_ttl_seconds = auth_cache_ttl_seconds
        self._secret_key = secret_key
        self.allowed_hosts = list(allowed_hosts) if allowed_hosts else None
        self.job_execution = job_execution
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    # ---------------------------------------------------------------- properties
    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            raise RuntimeError("MlflowServer has not been started")
        return self._state_dir

    @property
    def log_path(self) -> Path:
        return self.state_dir / "mlflow-server.log"

    @property
    def auth_config_path(self) -> Path:
        return self.state_dir / "basic_auth.ini"

    @property
    def artifacts_destination(self) -> str:
        if self._artifacts_destination is not None:
            return str(self._artifacts_destination)
        return str(self.state_dir / "artifacts")

    @property
    def auth_database_uri(self) -> str:
        return self._auth_database_uri or f"sqlite:///{self.state_dir / 'basic_auth.db'}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no credentials in it)."""
        return f"http://{self.host}:{self.port}"

    @property
    def username(self) -> str | None:
        return self.admin_username if self.auth else None

    @property
    def password(self) -> str | None:
        return self.admin_password if self.auth else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def env(self) -> dict[str, str]:
        """Environment a client (MlflowClient, a worker) needs to reach this server."""
        out = {"MLFLOW_TRACKING_URI": self.url}
        if self.auth:
            out["MLFLOW_TRACKING_USERNAME"] = self.admin_username
            out["MLFLOW_TRACKING_PASSWORD"] = self.admin_password
        return out

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"MlflowServer({self.url}, backend={mask_url(self.backend_store_uri)}, auth={self.auth}, {state})"

    # ---------------------------------------------------------------- lifecycle
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def health(self, timeout: float = 2.0) -> bool:
        """True when ``GET /health`` answers 200 (no credentials needed)."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def start(self) -> MlflowServer:
        if self.is_running():
            return self
        if self._state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="sweeps-mlflow-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        if not self.port:
            self.port = free_port(self.host)
        elif not wait_port_free(self.port, self.host):
            raise ServerStartError(f"port {self.host}:{self.port} is still in use")
        try:
            if "://" not in self.artifacts_destination:  # a local directory
                Path(self.artifacts_destination).mkdir(parents=True, exist_ok=True)
            self._launch()
        except BaseException:
            self._terminate()
            raise
        atexit.register(self._terminate)  # don't leak a server if the caller forgets stop()
        return self

    def stop(self) -> None:
        """Stop the whole process tree and remove a temporary state dir."""
        self._terminate()
        if self._owns_state_dir and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None

    def restart(self) -> MlflowServer:
        """Stop and start again on the same port with the same stores and credentials."""
        self._terminate()
        return self.start()

    def kill(self) -> None:
        """SIGKILL the process tree: a crash, for reliability tests (state dir kept)."""
        if self._proc is not None:
            terminate_tree(self._proc, first_signal=signal.SIGKILL, timeout=5.0)
            self._proc = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- internals
    def _terminate(self) -> None:
        atexit.unregister(self._terminate)
        if self._proc is not None:
            terminate_tree(self._proc, first_signal=signal.SIGTERM, timeout=20.0)
            self._proc = None

    def _flask_secret_key(self) -> str:
        """Stable across restarts (UI sessions survive): kept in a 0600 file in the state dir."""
        if self._secret_key:
            return self._secret_key
        path = self.state_dir / "flask_secret_key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        self._secret_key = path.read_text().strip()
        return self._secret_key

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env["MLFLOW_BACKEND_STORE_URI"] = self.backend_store_uri
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if self.job_execution else "false"
        env["PYTHONUNBUFFERED"] = "1"
        if self.auth:
            write_auth_ini(
                self.auth_config_path,
                admin_username=self.admin_username,
                admin_password=self.admin_password,
                database_uri=self.auth_database_uri,
                default_permission=self.default_permission,
                auth_cache_ttl_seconds=self.auth_cache_ttl_seconds,
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth_config_path)
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = self._flask_secret_key()
        return env

    def _argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "mlflow", "server",
            "--artifacts-destination", self.artifacts_destination,
            "--serve-artifacts",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", str(self.workers),
        ]  # fmt: skip
        if self.auth:
            argv += ["--app-name", "basic-auth"]
        if self.allowed_hosts:
            argv += ["--allowed-hosts", ",".join(self.allowed_hosts)]
        return argv + self.extra_args

    def _launch(self) -> None:
        env = self._child_env()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.state_dir,
                env=env,
                start_new_session=True,
            )
        self.startup_seconds = wait_until(
            self.health,
            timeout=self.startup_timeout,
            proc=self._proc,
            what="mlflow server",
            log_path=self.log_path,
            interval=0.5,
        )


def wait_port_free(port: int, host: str, timeout: float = 15.0) -> bool:
    """A restart reuses the port; give the old listener a moment to let go of it."""
    try:
        wait_until(lambda: port_is_free(port, host), timeout=timeout, what=f"port {port}", interval=0.2)
    except ServerStartError:
        return False
    return True

