"""``stack up|down|status`` (PostgreSQL + MLflow server without Docker) and ``dashboard`` (optuna-dashboard)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..cli import EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    from ..argtypes import port_number
    from ..stack.cli import add_parsers

    add_parsers(sub)
    d = sub.add_parser("dashboard", help="optuna-dashboard on a study's storage: password-guarded, read-only",
                       description="Serve optuna-dashboard for OPTUNA_STORAGE (or OPTUNA_STORAGE_FILE, or the "
                                   "spec's storage). The storage URL never goes on a command line.")
    d.add_argument("spec", nargs="?", help="sweep spec YAML (for its storage, when OPTUNA_STORAGE is not set)")
    d.add_argument("--host", default="127.0.0.1", help="bind address; default 127.0.0.1")
    d.add_argument("--port", type=port_number, default=8080, help="port (0 = any free port); default 8080")
    d.add_argument("--user", default="optuna", help="basic-auth user name; default optuna")
    d.add_argument("--allow-writes", action="store_true",
                   help="let the dashboard change studies (notes, renames, deletions; never a trial's state, "
                        "values or user attributes); default read-only")
    d.set_defaults(handler=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    import shutil

    from ..dashboard import dashboard_password, make_app
    from ..options import given_storage
    from ..signals import stop_on_signals
    from ..storage import require_study_storage

    storage, given_as = given_storage(None)  # it has no --storage: the environment, else the spec
    if not storage:
        from ..spec import load_spec
        from ..specs import resolve_spec_path

        storage, given_as = load_spec(resolve_spec_path(args.spec)).study.storage, "study.storage"
    # it only shows studies: a mistyped SQLite or journal path is not created (named as given: it has no --storage);
    # a database server's is served without Optuna's tables too (`stack up --dashboard` starts it before any worker)
    require_study_storage(storage, given_as, servers=False)
    password, path = dashboard_password()
    try:  # SIGTERM (`timeout`, `kill`, a service manager) as Ctrl-C: it ended the process past this `finally`
        with stop_on_signals(raise_at_once=False):  # checked between requests (`sweeps.dashboard.serve`)
            return _serve(make_app(storage, username=args.user, password=password, allow_writes=args.allow_writes,
                                   given_as=given_as), args, path)
    finally:  # a generated password lives as long as the dashboard: no secret file left in /tmp
        if path is not None:
            shutil.rmtree(path.parent, ignore_errors=True)


def _serve(app: Any, args: argparse.Namespace, path: Path | None) -> int:
    from ..dashboard import serve

    def ready(url: str) -> None:
        where = f"the password is in {path} (0600)" if path else "password from SIAMESE_SWEEP_DASHBOARD_PASSWORD"
        mode = "read-write" if args.allow_writes else "read-only"
        print(f"optuna-dashboard at {url} ({mode}; user {args.user!r}, {where}); Ctrl-C stops it", flush=True)

    try:
        serve(app, host=args.host, port=args.port, ready=ready)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return EXIT_OK
