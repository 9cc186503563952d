"""Real servers for distributed sweeps: PostgreSQL and an MLflow tracking server.

Used by the test fixtures and by ``python -m sweeps.stack up`` (the same
topology as docker-compose.yml, without Docker).
"""

from __future__ import annotations

from sweeps.stack._process import ServerStartError
from sweeps.stack.mlflow_server import MlflowServer
from sweeps.stack.postgres import PostgresServer, find_pg_bin_dir

__all__ = ["MlflowServer", "PostgresServer", "ServerStartError", "find_pg_bin_dir"]
