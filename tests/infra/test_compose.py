"""docker-compose.yml, Dockerfiles and .env.example: validated without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$", re.IGNORECASE)


def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    res = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    return res.returncode == 0


def _compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    # Only the env file may supply variables: drop any the caller's shell exported.
    env = {k: v for k, v in os.environ.items() if k not in _env_example() and not k.startswith("COMPOSE_")}
    return subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--env-file", str(env_file), "config", "--format", "json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip


needs_compose = pytest.mark.skipif(not _compose_available(), reason="docker compose (v2 CLI plugin) not installed")


# ------------------------------------------------------------------ .env.example
def test_env_example_holds_only_placeholders() -> None:
    values = _env_example()
    secrets = {k: v for k, v in values.items() if SECRET_NAME.search(k)}
    assert {"POSTGRES_PASSWORD", "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD", "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD",
            "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD", "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD",
            "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
            "SIAMESE_SWEEP_DASHBOARD_PASSWORD"} <= set(secrets)
    for key, value in secrets.items():
        assert value.startswith("change-me"), f"{key} must be a change-me placeholder, got {value!r}"
    for key, value in values.items():  # nothing random-looking anywhere else either
        assert not re.search(r"[A-Za-z0-9+/_\-]{24,}", value) or value.startswith("change-me"), key


def test_env_example_and_real_env_are_not_in_the_worker_image() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignore and ".stack" in ignore and ".git" in ignore


# ------------------------------------------------------------------ static structure (always runs)
def test_compose_structure() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert set(services) >= {"postgres", "mlflow", "optuna-dashboard", "worker"}

    worker = services["worker"]
    assert "container_name" not in worker, "container_name breaks `docker compose up --scale worker=N`"
    assert worker["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert "ports" not in worker

    image = services["postgres"]["image"]
    assert re.fullmatch(r"postgres:\d+\.\d+-\w+", image), f"pin a concrete postgres tag, got {image}"
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    for name in ("mlflow", "optuna-dashboard", "worker"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "/health" in str(services["mlflow"]["healthcheck"]["test"])
    for svc in services.values():  # published ports stay on the host's loopback
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


def test_compose_requires_secrets_from_env() -> None:
    text = COMPOSE.read_text()
    for var in ("POSTGRES_PASSWORD", "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD", "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD",
                "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD", "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD",
                "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                "SIAMESE_SWEEP_DASHBOARD_PASSWORD"):
        refs = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert refs, f"{var} not used"
        assert all(r.startswith(":?") for r in refs), f"{var} must be required (${{{var}:?...}}), got {refs}"
    assert "password1234" not in text


def test_images_pin_versions() -> None:
    mlflow_df = (ROOT / "docker/mlflow/Dockerfile").read_text()
    assert '"mlflow[auth]==3.17.2"' in mlflow_df and "psycopg2-binary==" in mlflow_df
    assert "COPY sweeps/stack/mlflow_auth.py" in mlflow_df, "the MLflow image shares the auth module, no copy of it"
    worker_df = (ROOT / "Dockerfile").read_text()
    assert "python:3.11-slim" in worker_df and 'pip install ".[distributed]"' in worker_df


def test_least_privilege_in_compose() -> None:
    """No service but postgres sees the superuser password; workers see neither the MLflow admin nor MLflow's DBs."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]

    def env_of(name: str) -> str:
        return " ".join(f"{k}={v}" for k, v in (services[name].get("environment") or {}).items())

    for name in services:
        if name != "postgres":
            assert "POSTGRES_PASSWORD" not in env_of(name), name
    for name in ("worker", "optuna-dashboard"):
        text = env_of(name)
        assert "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD" not in text and "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD" not in text
        assert "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD" not in text and "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD" in text
    assert "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD" not in env_of("mlflow")
    assert "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD" in env_of("worker")
    assert services["worker"]["depends_on"]["mlflow-users"]["condition"] == "service_completed_successfully"


INIT_SCRIPT = ROOT / "deploy" / "k8s" / "base" / "postgres-initdb.sh"
# What the postgres image's entrypoint (bash, `set -Eeo pipefail`, its own file_env) does with a non-executable
# initdb.d/*.sh: it sources it. After that, the entrypoint must run on unchanged.
SOURCING_ENTRYPOINT = r"""
set -Eeo pipefail
file_env() { echo image-file_env; }
. "$INIT_SCRIPT"
case $- in *u*) echo "initdb leaked set -u" >&2; exit 3;; esac
[ "$(file_env)" = image-file_env ] || { echo "initdb redefined file_env" >&2; exit 3; }
if type role_password >/dev/null 2>&1; then echo "initdb leaked its helper" >&2; exit 3; fi
[ -z "${SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD+x}${value+x}${file+x}" ] ||
  { echo "initdb leaked variables" >&2; exit 3; }
echo "entrypoint continues"
"""


def test_the_one_postgres_init_script_is_used_by_compose_and_kubernetes() -> None:
    postgres = yaml.safe_load(COMPOSE.read_text())["services"]["postgres"]
    assert "./deploy/k8s/base/postgres-initdb.sh:/docker-entrypoint-initdb.d/10-roles.sh:ro" in postgres["volumes"]
    assert not (ROOT / "docker" / "postgres").exists(), "one init script: deploy/k8s/base/postgres-initdb.sh"
    assert os.access(INIT_SCRIPT, os.X_OK), "executable in the checkout, so the image runs it rather than sourcing it"
    # Kubernetes: tests/infra/test_k8s_manifests.py::test_postgres_runs_the_one_init_script


def test_the_postgres_init_script_stops_the_entrypoint_without_a_password(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "INIT_SCRIPT": str(INIT_SCRIPT), "POSTGRES_USER": "postgres",
           "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD": "x" * 12, "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD": "y" * 12,
           "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD_FILE": str(tmp_path / "missing")}
    res = subprocess.run(["bash", "-c", SOURCING_ENTRYPOINT], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "entrypoint continues" not in res.stdout
    assert "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD_FILE: cannot read" in res.stderr
    del env["SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD_FILE"]
    res = subprocess.run([str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert ("SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD (or SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD_FILE) is not set"
            in res.stderr)


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["executed", "sourced"])
def test_the_postgres_init_script_makes_one_role_per_database(postgres_server: object, tmp_path: Path,
                                                              how: str) -> None:
    """deploy/k8s/base/postgres-initdb.sh run for real, by psql as the superuser, both ways the postgres image runs it.

    executed: as in Kubernetes (ConfigMap mounted 0555), every password from a ``*_FILE`` Secret file;
    sourced: as the image does with a non-executable file, in a bash like its entrypoint's, which must go on
    unchanged; passwords as variables (docker compose) and one from a file.
    """
    import psycopg2

    from sweeps.stack import PostgresServer

    base = Path(__import__("tempfile").mkdtemp(prefix="sweeps-initdb-test-"))
    passwords = {"SIAMESE_SWEEP_OPTUNA_DB_PASSWORD": "o'pw \"x $HOME `id`",
                 "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD": "m-pw-123", "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD": "a-pw-456"}
    pg = PostgresServer(user="bootstrap", database="bootstrap", base_dir=base, fsync=False)
    try:
        pg.start()
        env = {"PATH": f"{pg.bin_dir}:{os.environ['PATH']}", "POSTGRES_USER": "postgres", "PGHOST": str(pg._sock_dir),
               "PGPORT": str(pg.port), "INIT_SCRIPT": str(INIT_SCRIPT)}
        file_vars = set(passwords) if how == "executed" else {"SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD"}
        for name, value in passwords.items():
            if name in file_vars:
                (tmp_path / name).write_text(value + "\n")  # Secret files often end with a newline
                env[name + "_FILE"] = str(tmp_path / name)
            else:
                env[name] = value
        argv = [str(INIT_SCRIPT)] if how == "executed" else ["bash", "-c", SOURCING_ENTRYPOINT]
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert how == "executed" or "entrypoint continues" in res.stdout
        assert not any(v in res.stdout + res.stderr for v in passwords.values())

        def connect(role: str, password: str, db: str) -> None:
            psycopg2.connect(host=pg.host, port=pg.port, user=role, password=password, dbname=db,
                             connect_timeout=10).close()

        roles = {"optuna": "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD", "mlflow": "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD",
                 "mlflow_auth": "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD"}
        for role, var in roles.items():
            connect(role, passwords[var], role)
            for other in (set(roles) | {"postgres"}) - {role}:
                with pytest.raises(psycopg2.OperationalError, match="permission denied"):
                    connect(role, passwords[var], other)
    finally:
        pg.stop()
        __import__("shutil").rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------ docker compose config
@needs_compose
def test_docker_compose_config_accepts_env_example() -> None:
    res = _compose_config(ENV_EXAMPLE)
    assert res.returncode == 0, res.stderr
    cfg = json.loads(res.stdout)
    worker = cfg["services"]["worker"]
    assert "container_name" not in worker
    assert worker["build"]["dockerfile"] == "Dockerfile"
    assert Path(worker["build"]["context"]).resolve() == ROOT
    assert cfg["services"]["worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert cfg["services"]["mlflow"]["build"]["dockerfile"] == "docker/mlflow/Dockerfile"
    assert set(cfg["volumes"]) >= {"pgdata", "mlartifacts"}


@needs_compose
def test_docker_compose_config_fails_clearly_without_password(tmp_path: Path) -> None:
    env_file = tmp_path / "partial.env"
    lines = [ln for ln in ENV_EXAMPLE.read_text().splitlines() if not ln.startswith("POSTGRES_PASSWORD=")]
    env_file.write_text("\n".join(lines) + "\n")
    res = _compose_config(env_file)
    assert res.returncode != 0
    assert "POSTGRES_PASSWORD" in res.stderr and ".env" in res.stderr


@needs_compose
def test_a_dollar_in_a_password_is_written_twice_as_env_example_says(tmp_path: Path) -> None:
    """.env.example said any character works; compose reads "$word" as a variable and drops it."""
    assert '"$" as "$$"' in ENV_EXAMPLE.read_text()
    rendered = {}
    for name, written in (("single", "pa$word1#x"), ("double", "pa$$word1#x")):
        env_file = tmp_path / f"{name}.env"
        env_file.write_text("\n".join(f"SIAMESE_SWEEP_OPTUNA_DB_PASSWORD={written}"
                                      if ln.startswith("SIAMESE_SWEEP_OPTUNA_DB_PASSWORD=") else ln
                                      for ln in ENV_EXAMPLE.read_text().splitlines()) + "\n")
        res = _compose_config(env_file)
        assert res.returncode == 0, res.stderr
        rendered[name] = (json.loads(res.stdout)["services"]["worker"]["environment"]
                          ["SIAMESE_SWEEP_OPTUNA_DB_PASSWORD"], res.stderr)
    single, warned = rendered["single"]
    assert single == "pa#x" and "word1" in warned and "is not set" in warned
    assert rendered["double"][0] == "pa$$word1#x"  # compose's own escaped form of the literal "pa$word1#x"


def test_services_that_reuse_a_local_image_never_pull_it() -> None:
    """`optuna-dashboard` and `mlflow-users` run images that other services build; with compose's default pull
    policy a first `up` of them could ask a registry for an image that only exists on this host."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    built = {svc["image"]: name for name, svc in services.items() if "build" in svc}
    reusers = {name: svc["image"] for name, svc in services.items() if "build" not in svc and svc["image"] in built}
    assert set(reusers) == {"optuna-dashboard", "mlflow-users"}
    for name in reusers:
        assert services[name].get("pull_policy") == "never", name
    assert "docker compose build" in (ROOT / "docs" / "distributed.md").read_text()
