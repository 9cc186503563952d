#!/bin/sh
# Runs once, on an empty data volume, as the PostgreSQL superuser (POSTGRES_USER), which no service uses.
# One login role per database, each the only role that may connect to it:
#   optuna      -> database optuna       (workers, dashboard)
#   mlflow      -> database mlflow       (MLflow server: runs, models)
#   mlflow_auth -> database mlflow_auth  (MLflow server: users and password hashes)
# Passwords come from OPTUNA_DB_PASSWORD, MLFLOW_DB_PASSWORD, MLFLOW_AUTH_DB_PASSWORD (or *_FILE); psql
# reads them with \getenv, so they never appear in a process argument list.
set -eu

file_env() {  # NAME -> from $NAME, or the file named by $NAME_FILE (Docker/Kubernetes secrets)
	var="$1"; file_var="${var}_FILE"
	eval "value=\${$var:-}"; eval "file=\${$file_var:-}"
	if [ -z "$value" ] && [ -n "$file" ]; then value="$(cat "$file")"; fi
	if [ -z "$value" ]; then echo "initdb: $var is not set" >&2; exit 1; fi
	export "$var=$value"
}
file_env OPTUNA_DB_PASSWORD
file_env MLFLOW_DB_PASSWORD
file_env MLFLOW_AUTH_DB_PASSWORD

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv optuna_pw OPTUNA_DB_PASSWORD
\getenv mlflow_pw MLFLOW_DB_PASSWORD
\getenv auth_pw MLFLOW_AUTH_DB_PASSWORD
SET log_min_error_statement = 'panic';
CREATE ROLE optuna LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'optuna_pw';
CREATE ROLE mlflow LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'mlflow_pw';
CREATE ROLE mlflow_auth LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'auth_pw';
CREATE DATABASE optuna OWNER optuna;
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow_auth;
REVOKE ALL ON DATABASE optuna, mlflow, mlflow_auth FROM PUBLIC;
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
GRANT ALL ON DATABASE optuna TO optuna;
GRANT ALL ON DATABASE mlflow TO mlflow;
GRANT ALL ON DATABASE mlflow_auth TO mlflow_auth;
SQL
