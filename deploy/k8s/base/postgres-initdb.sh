#!/bin/sh
# PostgreSQL init script, the one for Kubernetes (ConfigMap postgres-initdb, mounted 0555) and docker compose
# (bind-mounted as /docker-entrypoint-initdb.d/10-roles.sh). The postgres image runs it once, on an empty data
# volume, as the superuser (POSTGRES_USER), which no service uses.
# One login role per database, each the only role that may connect to it:
#   optuna      -> database optuna       (workers, dashboard)
#   mlflow      -> database mlflow       (MLflow server: runs, models)
#   mlflow_auth -> database mlflow_auth  (MLflow server: users and password hashes)
# Passwords come from SIAMESE_SWEEP_OPTUNA_DB_PASSWORD, SIAMESE_SWEEP_MLFLOW_DB_PASSWORD, SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD, or the files named by
# SIAMESE_SWEEP_OPTUNA_DB_PASSWORD_FILE, ...; psql reads them with \getenv, so they never appear in a process argument list.
#
# The image executes an executable *.sh and *sources* any other one into its own bash. So that both work,
# everything happens in the subshell function below: neither `set -u`, nor the helper, nor the exported
# passwords reach the image's shell, and no name of the image's entrypoint (file_env, ...) is redefined.

siamese_sweep_initdb_roles() (
	set -eu

	role_password() {  # NAME: from $NAME, or the file named by $NAME_FILE (Docker/Kubernetes secrets); exported
		eval "value=\${$1:-}"
		eval "file=\${$1_FILE:-}"
		if [ -z "$value" ] && [ -n "$file" ]; then
			value="$(cat -- "$file")" || { echo "initdb: $1_FILE: cannot read $file" >&2; exit 1; }
		fi
		if [ -z "$value" ]; then echo "initdb: $1 (or $1_FILE) is not set" >&2; exit 1; fi
		export "$1=$value"
	}
	role_password SIAMESE_SWEEP_OPTUNA_DB_PASSWORD
	role_password SIAMESE_SWEEP_MLFLOW_DB_PASSWORD
	role_password SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD

	psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv optuna_pw SIAMESE_SWEEP_OPTUNA_DB_PASSWORD
\getenv mlflow_pw SIAMESE_SWEEP_MLFLOW_DB_PASSWORD
\getenv auth_pw SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD
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
)

# The last command: its status is the script's when executed, and stops the image's entrypoint (set -e) when sourced.
siamese_sweep_initdb_roles
