"""``python -m sweeps.stack up``: the docker-compose topology without Docker.

Starts PostgreSQL (databases ``optuna``, ``mlflow``, ``mlflow_auth``) and an
MLflow server with basic auth in the foreground; Ctrl-C stops both. Passwords
come from the environment (POSTGRES_PASSWORD, MLFLOW_ADMIN_PASSWORD, as in
``.env``) or are generated once into ``<dir>/secrets.env`` (0600). They are
never printed: clients ``source <dir>/client.env``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from sweeps.secrets import mask_url
from sweeps.stack._process import ServerStartError, port_is_free
from sweeps.stack.mlflow_server import MlflowServer
from sweeps.stack.postgres import PostgresServer

SECRET_VARS = ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD")


def _write_private(path: Path, lines: list[str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)


def _read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip().removeprefix("export ").strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                out[key.strip()] = value.strip().strip("'\"")
    return out


def load_or_create_secrets(stack_dir: Path) -> dict[str, str]:
    """Environment > ``secrets.env`` > newly generated (then saved, 0600).

    The MLflow admin password only takes effect when the auth DB is empty, so it
    must stay the same across ``up`` runs: that is why it is saved.
    """
    path = stack_dir / "secrets.env"
    saved = _read_env_file(path)
    values: dict[str, str] = {}
    for var in SECRET_VARS:
        env_value = os.environ.get(var)
        if env_value and saved.get(var) and env_value != saved[var]:
            print(f"warning: {var} from the environment differs from {path}; using the environment", file=sys.stderr)
        values[var] = env_value or saved.get(var) or secrets.token_urlsafe(24)
    if values != {k: saved.get(k) for k in SECRET_VARS}:
        _write_private(path, [f"{k}={v}" for k, v in values.items()])
    return values


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def up(args: argparse.Namespace) -> int:
    stack_dir = Path(args.dir).resolve()
    stack_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(stack_dir, 0o755)  # the postgres OS user must traverse it; secrets files are 0600
    for port in (args.pg_port, args.mlflow_port):
        if port and not port_is_free(port, args.host):
            print(f"error: port {args.host}:{port} is in use (pass 0 for a free port)", file=sys.stderr)
            return 2
    creds = load_or_create_secrets(stack_dir)

    pg = PostgresServer(
        user="sweeps",
        password=creds["POSTGRES_PASSWORD"],
        database="optuna",
        host=args.host,
        port=args.pg_port or None,
        base_dir=stack_dir / "postgres",
    )
    mlflow: MlflowServer | None = None

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        print(f"starting PostgreSQL in {stack_dir / 'postgres'} ...", flush=True)
        pg.start()
        optuna_url = pg.url
        mlflow_db = pg.create_database("mlflow")
        auth_db = pg.create_database("mlflow_auth")
        mlflow = MlflowServer(
            mlflow_db,
            state_dir=stack_dir / "mlflow",
            host=args.host,
            port=args.mlflow_port or None,
            workers=args.workers,
            auth=not args.no_auth,
            admin_username=args.admin_user,
            admin_password=creds["MLFLOW_ADMIN_PASSWORD"],
            auth_database_uri=auth_db,
        )
        print("starting mlflow server (15-35 s on a busy machine) ...", flush=True)
        mlflow.start()

        client_env = {"OPTUNA_STORAGE": optuna_url, **mlflow.env()}
        client_file = stack_dir / "client.env"
        _write_private(client_file, [f"export {k}={_quote(v)}" for k, v in client_env.items()])
        print(f"\nPostgreSQL  {pg.masked_url}   (log {pg.log_path})")
        print(f"MLflow      {mlflow.url}   auth={'on' if mlflow.auth else 'off'}   (log {mlflow.log_path})")
        print(f"\nclient environment (passwords in {client_file}, mode 0600):")
        for k, v in client_env.items():
            shown = "***" if "PASSWORD" in k else mask_url(v)
            print(f"  export {k}={shown}")
        print(f"\n  source {client_file}")
        print("  siamese-sweep worker SPEC.yaml --study NAME   # reads OPTUNA_STORAGE and MLFLOW_TRACKING_*")
        print('  optuna-dashboard "$OPTUNA_STORAGE"')
        print("\nCtrl-C stops both.", flush=True)

        while pg.is_running() and mlflow.is_running():
            time.sleep(0.5)
        which = "PostgreSQL" if not pg.is_running() else "mlflow server"
        print(f"error: {which} exited; stopping the stack", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except ServerStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        # a second Ctrl-C must not abort the cleanup
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping ...", flush=True)
        if mlflow is not None:
            mlflow.stop()
        pg.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps.stack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="start PostgreSQL + MLflow server in the foreground")
    p.add_argument("--dir", default=".stack", help="state directory (data, logs, secrets); default .stack")
    p.add_argument("--host", default="127.0.0.1", help="bind address; default 127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432, help="PostgreSQL port (0 = any free port)")
    p.add_argument("--mlflow-port", type=int, default=5000, help="MLflow port (0 = any free port)")
    p.add_argument("--workers", type=int, default=1, help="mlflow server worker processes")
    p.add_argument("--admin-user", default="admin", help="MLflow admin user name")
    p.add_argument("--no-auth", action="store_true", help="run MLflow without basic auth")
    p.set_defaults(func=up)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
