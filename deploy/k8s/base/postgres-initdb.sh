#!/bin/bash
# Runs once, when the postgres container initialises an empty data volume (as the superuser).
# One role per database owner: workers and optuna-dashboard get only the `optuna` role, the MLflow
# server only the `mlflow` role (databases mlflow and mlflow_auth). The role passwords are read from
# the mounted Secret files inside psql (\set with backquotes), so they never appear on a command line.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\set optuna_password `cat /var/run/secrets/siamese-sweep/optuna-db/password`
\set mlflow_password `cat /var/run/secrets/siamese-sweep/mlflow-db/password`
CREATE ROLE optuna LOGIN PASSWORD :'optuna_password';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE optuna OWNER optuna;
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
REVOKE ALL ON DATABASE optuna, mlflow, mlflow_auth FROM PUBLIC;
GRANT CONNECT ON DATABASE optuna TO optuna;
GRANT CONNECT ON DATABASE mlflow, mlflow_auth TO mlflow;
SQL
