"""The real-server fixtures (postgres_server, mlflow_server_pg, mlflow_env) live in tests/conftest.py,
shared with tests/distributed and tests/reliability."""
