"""``siamese-sweep dashboard``: optuna-dashboard on a study's storage, behind a password and read-only.

optuna-dashboard has no authentication of its own: on a shared machine any local user who can reach its
port can delete studies (an HTTP ``DELETE`` answered 204). Here its WSGI app is wrapped so that

* the storage URL (with its database password) comes from the environment (``OPTUNA_STORAGE`` or
  ``OPTUNA_STORAGE_FILE``), never from argv, where ``ps`` would show it;
* every request needs HTTP basic auth (``SIAMESE_SWEEP_DASHBOARD_PASSWORD`` or ``..._FILE``; when neither
  is set a password is generated and written to a 0600 file whose *path* is printed);
* only ``GET``/``HEAD`` pass unless ``--allow-writes`` is given (notes, renames and deletions change the study
  that workers are running);
* a trial's state, values and user attributes are never written from the dashboard, writes allowed or not
  (`TRIAL_RECORD_WRITES`; notes and artifacts are not what siamese-sweep records).
"""
from __future__ import annotations

import base64
import errno
import hmac
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from siamese_core.errors import ConfigError

from . import names

log = logging.getLogger(__name__)

PASSWORD_ENV = names.ENV_DASHBOARD_PASSWORD
DEFAULT_USER = "optuna"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REALM = "siamese-sweep dashboard"
# optuna-dashboard's routes that tell a trial (a state and values), set its user attributes or mark it skipped.
# siamese-sweep writes those itself, with the MLflow run behind them: a running trial told COMPLETE 0.9999 here
# had no run, model or test score, yet `run` and `status` reported it as the best with a "clear" lead, and
# attributes are what `promote` reads (`model_uri`, `val_*`). Refused even with --allow-writes, matched on the path
# as the router sees it (`routed_path`), any id.
TRIAL_RECORD_WRITES = re.compile(r"/api/trials/[^/]+/(tell|user-attrs)|/api/studies/[^/]+/[^/]+/skip")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class GuardedApp:
    """WSGI middleware: basic auth for every request; writes only when allowed."""

    def __init__(self, app: WSGIApp, *, username: str, password: str, allow_writes: bool = False) -> None:
        if not password:
            raise ValueError("a dashboard password is required")
        self.app = app
        self._expected = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.allow_writes = allow_writes

    def _authorised(self, environ: dict[str, Any]) -> bool:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "basic" and hmac.compare_digest(token.strip().encode(), self._expected.encode())

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self._authorised(environ):
            start_response("401 Unauthorized", [("WWW-Authenticate", f'Basic realm="{REALM}"'),
                                                ("Content-Type", "text/plain")])
            return [b"authentication required\n"]
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method not in SAFE_METHODS and not self.allow_writes:
            return _forbidden(start_response, b"read-only dashboard: restart it with --allow-writes to change studies")
        if method not in SAFE_METHODS and TRIAL_RECORD_WRITES.fullmatch(routed_path(environ)):
            return _forbidden(start_response, b"siamese-sweep records trial states, values and user attributes "
                              b"itself, with the trial's MLflow run; the dashboard may change notes, names and "
                              b"studies (--allow-writes), not trials")
        return self.app(environ, start_response)


def routed_path(environ: dict[str, Any]) -> str:
    """The path optuna-dashboard's router (bottle) matches: it decodes WSGI's latin-1 ``PATH_INFO`` as UTF-8 and
    drops what does not decode (`bottle.Bottle._handle`), then optuna-dashboard strips trailing slashes (its
    `remove_trailing_slashes_hook`), so ``/api/trials/4/%FFtell`` and ``/api/trials/4/tell/`` were routed to
    ``tell`` past a guard that matched the raw path (tests/infra/test_secrets.py pins both against the real app)."""
    return str(environ.get("PATH_INFO", "")).encode("latin1", "ignore").decode("utf8", "ignore").rstrip("/")


def _forbidden(start_response: Callable[..., Any], text: bytes) -> list[bytes]:
    start_response("403 Forbidden", [("Content-Type", "text/plain")])
    return [text + b"\n"]


def dashboard_password(*, state_dir: Path | None = None) -> tuple[str, Path | None]:
    """The password from the environment, else a new one written to a 0600 file (returned with its path)."""
    value = os.environ.get(PASSWORD_ENV)
    if value:
        return value, None
    directory = state_dir or Path(tempfile.mkdtemp(prefix="siamese-dashboard-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "dashboard.password"
    if path.exists():
        return path.read_text().strip(), path
    value = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value, path


def make_app(storage_url: str, *, username: str, password: str, allow_writes: bool = False,
             given_as: str = "--storage") -> GuardedApp:
    """optuna-dashboard's WSGI app on `storage_url` (named `given_as` in errors), guarded."""
    import optuna_dashboard

    from .storage import make_storage

    return GuardedApp(optuna_dashboard.wsgi(make_storage(storage_url, field=given_as)), username=username,
                      password=password, allow_writes=allow_writes)


def serve(app: WSGIApp, *, host: str, port: int, ready: Callable[[str], None] | None = None) -> None:
    """Serve `app` until interrupted (wsgiref, like optuna-dashboard's own ``run_server``)."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from .signals import StopRequest

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            log.debug("dashboard: " + format, *args)

    class StoppableServer(WSGIServer):
        # SIGTERM/Ctrl-C only record the stop (`stop_on_signals(raise_at_once=False)`): raised inside a request,
        # wsgiref's handler caught it as the app's error, answered 500 and served on
        def service_actions(self) -> None:  # serve_forever calls it at least every 0.5 s
            StopRequest.check()

    try:
        server = make_server(host, port, app, server_class=StoppableServer, handler_class=QuietHandler)
    except OSError as exc:  # a raw OSError, exit 1: the port taken by another dashboard, a host not on this machine
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError("--port", f"{port} is in use (pass 0 for a free port)") from None
        if exc.errno == errno.EACCES:  # a port below 1024 without the privilege
            raise ConfigError("--port", f"cannot listen on port {port}: {exc.strerror}") from None
        raise ConfigError("--host", f"cannot listen on {host!r}: {exc.strerror or exc}") from None
    with server:
        url = f"http://{host}:{server.server_port}"
        if ready is not None:
            ready(url)
        server.serve_forever()
