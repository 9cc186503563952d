#!/usr/bin/env bash
# Create the Secrets that deploy/k8s expects, with random passwords.
#   deploy/k8s/create-secrets.sh [NAMESPACE]      (default: siamese-sweep; uses the current kubectl context)
# The values are written to a private temporary directory and passed with --from-file: they never
# appear on a command line (ps) or in the output. If every Secret exists already, nothing changes;
# if only some do, the script stops (the database URL and the role passwords must match).
#
#   Secret          keys                         mounted by
#   postgres-admin  password                     postgres (superuser; used by no other component)
#   optuna-db       password                     postgres (sets the optuna role's password at init)
#   optuna-storage  url                          workers, optuna-dashboard (postgresql URL, role optuna)
#   mlflow-db       password                     postgres (init), mlflow (role mlflow, database mlflow)
#   mlflow-auth-db  password                     postgres (init), mlflow (role mlflow_auth, database mlflow_auth)
#   mlflow-admin    password, flask-secret-key   mlflow; mlflow-setup (the password only)
#   mlflow-worker   username, password           mlflow-setup (creates the user), workers (log in as it)
#   dashboard       password                     optuna-dashboard (basic auth, user "optuna")
set -euo pipefail
ns="${1:-siamese-sweep}"
kubectl="${KUBECTL:-kubectl}"
umask 077
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT

rand() {  # 32 letters and digits: URL-safe, so it can sit in a database URL unquoted
  local v
  v="$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
  printf '%s' "${v:0:32}"
}
put() {  # put SECRET KEY VALUE: stage one key of one Secret
  mkdir -p "$dir/$1"
  printf '%s' "$3" > "$dir/$1/$2"
}

names=(postgres-admin optuna-db optuna-storage mlflow-db mlflow-auth-db mlflow-admin mlflow-worker dashboard)
existing=()
for name in "${names[@]}"; do
  if "$kubectl" -n "$ns" get secret "$name" >/dev/null 2>&1; then existing+=("$name"); fi
done
if [ ${#existing[@]} -eq ${#names[@]} ]; then
  echo "create-secrets: all Secrets exist in namespace $ns; nothing changed"
  exit 0
fi
if [ ${#existing[@]} -gt 0 ]; then
  echo "create-secrets: some Secrets exist already (${existing[*]}); delete them, or create the others by hand" >&2
  exit 1
fi

optuna_password="$(rand)"
put postgres-admin password "$(rand)"
put optuna-db password "$optuna_password"
put optuna-storage url "postgresql+psycopg2://optuna:${optuna_password}@postgres:5432/optuna"
put mlflow-db password "$(rand)"
put mlflow-auth-db password "$(rand)"
put mlflow-admin password "$(rand)"
put mlflow-admin flask-secret-key "$(rand)$(rand)"
put mlflow-worker username sweeps-worker
put mlflow-worker password "$(rand)"
put dashboard password "$(rand)"

"$kubectl" create namespace "$ns" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
for name in "${names[@]}"; do
  args=()
  for file in "$dir/$name"/*; do args+=("--from-file=$(basename "$file")=$file"); done
  "$kubectl" -n "$ns" create secret generic "$name" "${args[@]}" >/dev/null
  echo "create-secrets: created Secret $name"
done
