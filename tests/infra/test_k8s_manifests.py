"""deploy/k8s, validated offline: no cluster, no network.

* rendered by tests/infra/kustomize_lite.py (and, where kubectl is installed, checked against
  ``kubectl kustomize``, so the lite renderer cannot drift from the real one);
* every object validated against the Kubernetes OpenAPI schemas bundled in ``kubernetes-validate``
  (strict: unknown fields are errors), for the oldest supported and the newest bundled version;
* what a cluster admin checks: restricted pod security, resources, no public exposure of the
  dashboard, secrets only as files, least privilege per component;
* the worker Job's exit-code policy, and its and the dashboard's command lines against the real CLI parser;
* the one contract with docker compose: the same PostgreSQL init script, and the MLflow server and the
  mlflow-setup Job started by docker/entrypoint.py from the manifests' variables;
* every environment variable set is one that the program in that container reads.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from .kustomize_lite import render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TARGETS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu"}
# podFailurePolicy is GA since 1.31; the newest schemas kubernetes-validate bundles
SCHEMA_VERSIONS = ("1.31.0", "1.37.0")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|CREDENTIAL", re.IGNORECASE)

ENTRYPOINT = ROOT / "docker" / "entrypoint.py"
INIT_SCRIPT = K8S / "base" / "postgres-initdb.sh"
# Variables read by the program in the image, not by this repository's code.
THIRD_PARTY_ENV = {
    "POSTGRES_USER": "postgres image",  # also postgres-initdb.sh
    "PGDATA": "postgres image",
    "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow server",
    "MLFLOW_TRACKING_URI": "mlflow client",
    "HOME": "keras, matplotlib caches",
}
# Which Secrets each component may mount: workers hold only the Optuna role and the non-admin MLflow user;
# only postgres holds the superuser; the MLflow admin password goes to the server and the setup Job only.
ALLOWED_SECRETS = {
    "postgres": {"postgres-admin", "optuna-db", "mlflow-db", "mlflow-auth-db"},
    "mlflow": {"mlflow-db", "mlflow-auth-db", "mlflow-admin"},
    "mlflow-setup": {"mlflow-admin", "mlflow-worker"},
    "optuna-dashboard": {"optuna-storage", "dashboard"},
    "worker": {"optuna-storage", "mlflow-worker"},
}


@pytest.fixture(scope="module", params=sorted(TARGETS))
def target(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def objects(target: str) -> list[dict[str, Any]]:
    return render(TARGETS[target])


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _workloads(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(component, pod spec) of every workload."""
    out = []
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            template = o["spec"]["template"]
            out.append((template["metadata"]["labels"]["app.kubernetes.io/component"], template["spec"]))
    return out


def _worker(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [o for o in _by_kind(objects, "Job") if o["metadata"]["name"] == "siamese-sweep-worker"]
    return job


def _key(o: dict[str, Any]) -> tuple[str, str, str]:
    return o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]


def _container(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in _by_kind(objects, kind) if o["metadata"]["name"] == name]
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


@pytest.fixture(scope="module")
def ep() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stack_entrypoint_manifests", ENTRYPOINT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ rendering and schemas
def test_lite_renderer_matches_kubectl_kustomize(target: str, objects: list[dict[str, Any]]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the lite renderer is not cross-checked here")
    res = subprocess.run([kubectl, "kustomize", str(TARGETS[target])], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    real = {_key(o): o for o in yaml.safe_load_all(res.stdout) if o}
    lite = {_key(o): o for o in objects}
    assert sorted(lite) == sorted(real)
    for key, obj in real.items():
        assert lite[key] == obj, key


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schema(objects: list[dict[str, Any]], version: str) -> None:
    import kubernetes_validate

    errors = []
    for o in objects:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{_key(o)}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_the_expected_objects_are_there(objects: list[dict[str, Any]]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("StatefulSet", "postgres"), ("Deployment", "mlflow"), ("Service", "mlflow"),
            ("Deployment", "optuna-dashboard"), ("Job", "siamese-sweep-worker"), ("Job", "mlflow-setup"),
            ("ConfigMap", "sweep-spec"), ("ConfigMap", "postgres-initdb"),
            ("NetworkPolicy", "default-deny-ingress")} <= kinds
    assert all(o["metadata"].get("namespace") == "siamese-sweep" for o in objects if o["kind"] != "Namespace")
    assert not _by_kind(objects, "Secret"), "secrets are created by create-secrets.sh, never committed"


# ------------------------------------------------------------------ what an admin checks
def test_pods_meet_the_restricted_pod_security_standard(objects: list[dict[str, Any]]) -> None:
    for component, pod in _workloads(objects):
        assert pod.get("automountServiceAccountToken") is False, component
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, component
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", component
        for c in pod["containers"] + pod.get("initContainers", []):
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, (component, c["name"])
            assert csc["capabilities"]["drop"] == ["ALL"] and "add" not in csc["capabilities"], c["name"]
            assert csc["readOnlyRootFilesystem"] is True, (component, c["name"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (component, c["name"], kind)
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
        for v in pod.get("volumes", []):
            assert set(v) - {"name"} <= {"emptyDir", "configMap", "secret", "persistentVolumeClaim"}, v
            if "secret" in v:
                assert v["secret"]["defaultMode"] & 0o007 == 0, f"{v['name']}: not world-readable"
    (ns,) = _by_kind(objects, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_nothing_is_exposed_outside_the_cluster_and_the_dashboard_not_at_all(objects: list[dict[str, Any]]) -> None:
    assert not _by_kind(objects, "Ingress")
    for svc in _by_kind(objects, "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
        assert svc["spec"]["selector"]["app.kubernetes.io/component"] != "optuna-dashboard"
    allowed = set()
    for policy in _by_kind(objects, "NetworkPolicy"):
        target = policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        if policy["spec"].get("ingress"):
            allowed.add(target)
    assert allowed == {"postgres", "mlflow"}, "only PostgreSQL and MLflow accept connections"


def test_secrets_reach_pods_only_as_files(objects: list[dict[str, Any]]) -> None:
    for component, pod in _workloads(objects):
        secret_mounts = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
        for c in pod["containers"] + pod.get("initContainers", []):
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            for e in c.get("env", []):
                name = e["name"]
                assert "valueFrom" not in e, f"{component}: {name} from a secretKeyRef; mount it as a file"
                value = str(e.get("value", ""))
                assert not re.search(r"://[^/\s]*:[^/\s]*@", value), f"{component}: credentials in {name}"
                if SECRET_NAME.search(name) and not name.endswith("_FILE"):
                    pytest.fail(f"{component}: {name} set to a literal; use {name}_FILE")
                if name.endswith("_FILE"):
                    directory = str(Path(value).parent)
                    assert mounts.get(directory) in secret_mounts, f"{component}: {name}={value} not in a Secret"


def test_each_component_mounts_only_its_own_secrets(objects: list[dict[str, Any]]) -> None:
    seen = {}
    for component, pod in _workloads(objects):
        seen[component] = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    assert seen == ALLOWED_SECRETS


# ------------------------------------------------------------------ the worker Job
def test_worker_job_is_indexed_with_the_exit_code_policy(objects: list[dict[str, Any]]) -> None:
    from sweeps.tracking import DEFAULT_RETRY_BUDGET_S, RETRY_BUDGET_ENV

    job = _worker(objects)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"] >= 1
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob",
                        "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]}}
    # the init container's exit 2 too (docker/entrypoint.py: its secrets missing or placeholders)
    assert {"action": "FailJob", "onExitCodes": {"containerName": "wait-for-mlflow-login", "operator": "In",
                                                 "values": [2]}} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    ignored = {r["onExitCodes"]["containerName"]: r["onExitCodes"]["values"] for r in rules
               if r["action"] == "Ignore" and "onExitCodes" in r}
    # a SIGTERM (drain, kubectl delete) while the init container waits for the login does not count either
    assert ignored == {"worker": [130, 143], "wait-for-mlflow-login": [143]}
    assert not any(1 in r.get("onExitCodes", {}).get("values", []) for r in rules), "exit 1 counts: backoffLimit"
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    retry_s = float(env.get(RETRY_BUDGET_ENV, DEFAULT_RETRY_BUDGET_S))
    assert pod["terminationGracePeriodSeconds"] >= retry_s + 30, "SIGKILL would cut the trial's clean-up short"


def test_worker_command_line_is_accepted_by_the_cli(objects: list[dict[str, Any]]) -> None:
    from sweeps.cli import build_parser

    (container,) = _worker(objects)["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["siamese-sweep"]
    args = container["args"]
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"siamese-sweep {' '.join(args)}: rejected by the parser ({exc})")
    assert parsed.command == "worker" and parsed.study
    assert parsed.threads == int(float(container["resources"]["requests"]["cpu"])), "--threads = the CPU request"
    spec_mount = next(m for m in container["volumeMounts"] if m["name"] == "spec")
    assert parsed.spec == f"{spec_mount['mountPath']}/spec.yaml"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^siamese-sweep = "sweeps\.cli:main"$', pyproject, flags=re.M)


def test_the_shipped_spec_is_a_valid_spec_without_connections() -> None:
    from sweeps.spec import spec_from_dict

    raw = yaml.safe_load((K8S / "base" / "sweep-spec.yaml").read_text())
    assert "storage" not in raw.get("study", {}) and "uri" not in raw.get("tracking", {})
    spec = spec_from_dict(raw)
    assert spec.study.name == "digits-k8s"


def test_worker_study_matches_the_spec(objects: list[dict[str, Any]]) -> None:
    (container,) = _worker(objects)["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    (configmap,) = [o for o in _by_kind(objects, "ConfigMap") if o["metadata"]["name"] == "sweep-spec"]
    assert args[args.index("--study") + 1] == yaml.safe_load(configmap["data"]["spec.yaml"])["study"]["name"]


# ------------------------------------------------------------------ environment variables
def _code_corpus() -> str:
    files = [*ROOT.glob("sweeps/**/*.py"), *ROOT.glob("siamese_core/**/*.py"), ENTRYPOINT, *K8S.glob("base/*.sh")]
    return "\n".join(p.read_text() for p in files)


def _file_variables(container: dict[str, Any], ep: ModuleType) -> set[str]:
    """The NAMEs whose ``NAME_FILE`` the program this container runs reads."""
    from sweeps.secrets import SECRET_VARIABLES

    command = container.get("command") or []
    if command[:1] == ["siamese-sweep"]:  # sweeps.cli.main: read_secret_files()
        return set(SECRET_VARIABLES)
    if container["image"].startswith("postgres:"):  # the image's docker-entrypoint.sh, and the init script
        return {"POSTGRES_PASSWORD", *re.findall(r"^\s*role_password (\w+)$", INIT_SCRIPT.read_text(), flags=re.M)}
    if "/usr/local/bin/stack-entrypoint" in command or (not command and "siamese-sweep/mlflow" in container["image"]):
        # docker/entrypoint.py: secret() and setting() accept NAME_FILE
        names = re.findall(r"\b(?:secret|setting)\(env, \"(\w+)\"", ENTRYPOINT.read_text())
        return {*names, *(variable for _role, variable in ep.DATABASES.values())}
    return set()


def test_every_environment_variable_set_is_read_somewhere(objects: list[dict[str, Any]], ep: ModuleType) -> None:
    """A plain variable is read by this repository's code or the image's program; a ``NAME_FILE`` variable only
    counts if the program in that container reads NAME from the file (the CLI: ``sweeps.secrets.SECRET_VARIABLES``;
    docker/entrypoint.py: its ``secret``/``setting`` names; postgres: the image and postgres-initdb.sh)."""
    corpus = _code_corpus()
    unknown = []
    for component, pod in _workloads(objects):
        for c in pod["containers"] + pod.get("initContainers", []):
            for e in c.get("env", []):
                name = e["name"]
                if name.endswith("_FILE"):
                    ok = name.removesuffix("_FILE") in _file_variables(c, ep)
                else:
                    ok = re.search(rf"\b{re.escape(name)}\b", corpus) is not None or name in THIRD_PARTY_ENV
                if not ok:
                    unknown.append(f"{component}/{c['name']}: {name}")
    assert not unknown, "set in the manifests, read by nothing: " + ", ".join(unknown)


def test_workers_wait_for_their_mlflow_login_before_starting(objects: list[dict[str, Any]]) -> None:
    """A worker that logged in before the mlflow-setup Job had created its user was refused, exit 2: FailJob
    ended the sweep (compose orders the two services; nothing ordered the Jobs)."""
    pod = _worker(objects)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (worker,) = pod["containers"]
    assert init["command"] == ["python", "/usr/local/bin/stack-entrypoint", "mlflow-login"]
    assert init["image"] == worker["image"]
    login = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME_FILE", "MLFLOW_TRACKING_PASSWORD_FILE"}
    assert {k: v for k, v in _env(init).items() if k in login} == {k: v for k, v in _env(worker).items() if k in login}
    assert set(_env(init)) == login  # its own login only: not the Optuna storage


# ------------------------------------------------------------------ one contract with docker compose
def test_postgres_runs_the_one_init_script(objects: list[dict[str, Any]]) -> None:
    """The ConfigMap is postgres-initdb.sh (which compose mounts too), executable so that the image runs it."""
    (configmap,) = [o for o in _by_kind(objects, "ConfigMap") if o["metadata"]["name"] == "postgres-initdb"]
    assert configmap["data"] == {"10-roles.sh": INIT_SCRIPT.read_text()}
    (sts,) = _by_kind(objects, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "postgres-initdb"]
    assert volume["configMap"]["defaultMode"] == 0o555
    container = _container(objects, "StatefulSet", "postgres")
    assert {"name": volume["name"], "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True} in \
        container["volumeMounts"]
    env = _env(container)
    for name in ("SIAMESE_SWEEP_OPTUNA_DB_PASSWORD", "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD",
                 "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD"):
        assert name + "_FILE" in env and name not in env, name
    assert env["POSTGRES_USER"] == "postgres"


def _with_secret_files(env: dict[str, str], tmp: Path) -> dict[str, str]:
    """The container's variables with every ``*_FILE`` pointing at a local file holding a made-up value."""
    out = dict(env)
    for name, path in env.items():
        if name.endswith("_FILE"):
            local = tmp / path.strip("/").replace("/", "_")
            local.write_text(f"{Path(path).parent.name}-{Path(path).name}-value-0123456789\n")
            out[name] = str(local)
    return out


def test_mlflow_server_starts_from_the_manifest_variables(objects: list[dict[str, Any]], ep: ModuleType,
                                                          tmp_path: Path) -> None:
    """The mlflow Deployment runs the image's entrypoint (docker/entrypoint.py mlflow) as compose does."""
    from sqlalchemy.engine import make_url

    container = _container(objects, "Deployment", "mlflow")
    assert "command" not in container and "args" not in container, "the image's entrypoint: stack-entrypoint mlflow"
    dockerfile = (ROOT / "docker" / "mlflow" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "/usr/local/bin/stack-entrypoint", "mlflow"]' in dockerfile
    env = _with_secret_files(_env(container), tmp_path)
    argv, child = ep.mlflow_command(env, tmp_path / "config")
    backend = make_url(child["MLFLOW_BACKEND_STORE_URI"])
    assert (backend.username, backend.host, backend.database) == ("mlflow", "postgres", "mlflow")
    assert backend.password == "mlflow-db-password-value-0123456789"
    ini = Path(child["MLFLOW_AUTH_CONFIG_PATH"]).read_text()
    auth_url = "postgresql+psycopg2://mlflow_auth:mlflow-auth-db-password-value-0123456789@postgres:5432/mlflow_auth"
    assert f"database_uri = {auth_url}\n" in ini
    assert "admin_password = mlflow-admin-password-value-0123456789\n" in ini
    assert child["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "mlflow-admin-flask-secret-key-value-0123456789"
    assert not any(name.endswith("PASSWORD_FILE") for name in child), "the server keeps no path to a password"
    assert argv[argv.index("--artifacts-destination") + 1] == "/mlartifacts"


def test_mlflow_setup_job_runs_the_entrypoint_with_the_workers_credentials(objects: list[dict[str, Any]],
                                                                            ep: ModuleType, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """mlflow-setup = compose's mlflow-users: same command; it creates the user the workers log in as."""
    container = _container(objects, "Job", "mlflow-setup")
    assert container["command"] == ["python", "/usr/local/bin/stack-entrypoint", "mlflow-users"]
    assert container["image"].startswith("siamese-sweep/mlflow:")
    env = _with_secret_files(_env(container), tmp_path)
    seen = {}

    class Health:  # the server answers /health
        def __enter__(self): return self  # noqa: E704
        def __exit__(self, *exc): return False  # noqa: E704

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: seen.setdefault("health", url) and Health())
    monkeypatch.setattr(ep, "ensure_user", lambda url, **kw: seen.update(url=url, **kw))
    assert ep.create_worker_user(env) == "mlflow-worker-username-value-0123456789"
    assert seen["health"] == "http://mlflow:5000/health" and seen["admin_username"] == "admin"
    assert seen["admin_password"] == "mlflow-admin-password-value-0123456789"
    assert seen["password"] == "mlflow-worker-password-value-0123456789"
    # ... from the very Secret keys the workers log in with
    worker = _env(_worker(objects)["spec"]["template"]["spec"]["containers"][0])
    setup = _env(container)
    assert worker["MLFLOW_TRACKING_USERNAME_FILE"] == setup["SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME_FILE"]
    assert worker["MLFLOW_TRACKING_PASSWORD_FILE"] == setup["SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD_FILE"]
    mlflow = _env(_container(objects, "Deployment", "mlflow"))
    assert setup["SIAMESE_SWEEP_MLFLOW_ADMIN_USERNAME"] == mlflow["SIAMESE_SWEEP_MLFLOW_ADMIN_USERNAME"]
    assert setup["MLFLOW_URL"] == worker["MLFLOW_TRACKING_URI"]


def test_compose_and_kubernetes_give_the_entrypoint_the_same_variables(objects: list[dict[str, Any]]) -> None:
    """Compose passes values, Kubernetes ``NAME_FILE`` paths: the same names otherwise."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    k8s_only = {"HOME", "STACK_CONFIG_DIR", "MLFLOW_ARTIFACTS_DESTINATION"}
    for service, (kind, name) in {"mlflow": ("Deployment", "mlflow"), "mlflow-users": ("Job", "mlflow-setup")}.items():
        k8s = {n.removesuffix("_FILE") for n in _env(_container(objects, kind, name))} - k8s_only
        assert k8s == set(services[service]["environment"]), service
    assert services["mlflow-users"]["entrypoint"] == _container(objects, "Job", "mlflow-setup")["command"]


def test_the_mlflow_images_entrypoint_imports_without_the_project(tmp_path: Path) -> None:
    """The MLflow image holds docker/entrypoint.py and a copy of sweeps/stack/mlflow_auth.py, not the project
    (docker/mlflow/Dockerfile). Without `siamese_core` the auth module's errors were built on a bare `Exception`
    before `ValueError`, which has no consistent MRO: the import raised TypeError and the image could not start."""
    dockerfile = (ROOT / "docker" / "mlflow" / "Dockerfile").read_text()
    assert "COPY sweeps/stack/mlflow_auth.py /usr/local/bin/mlflow_auth.py" in dockerfile
    for name, source in (("stack-entrypoint.py", ENTRYPOINT), ("mlflow_auth.py",
                                                               ROOT / "sweeps" / "stack" / "mlflow_auth.py")):
        shutil.copy(source, tmp_path / name)
    code = ("import sys; sys.modules['siamese_core'] = sys.modules['sweeps'] = None\n"
            "import importlib.util as u\n"
            "s = u.spec_from_file_location('ep', 'stack-entrypoint.py'); ep = u.module_from_spec(s)\n"
            "s.loader.exec_module(ep)\n"
            "import mlflow_auth\n"
            "assert ep.ensure_user is mlflow_auth.ensure_user\n"
            "assert issubclass(mlflow_auth.AuthConfigError, ValueError)\n"
            "assert issubclass(mlflow_auth.MlflowUnavailable, RuntimeError)\n"
            "print('imported')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-2000:]


def test_dashboard_runs_the_guarded_cli_from_the_worker_image(objects: list[dict[str, Any]]) -> None:
    from sweeps.cli import build_parser
    from sweeps.dashboard import PASSWORD_ENV

    container = _container(objects, "Deployment", "optuna-dashboard")
    assert container["image"].split(":")[0] == _worker(objects)["spec"]["template"]["spec"]["containers"][0][
        "image"].split(":")[0].removesuffix("-gpu")
    assert container["command"] == ["siamese-sweep"]
    parsed = build_parser().parse_args(container["args"])
    assert parsed.command == "dashboard" and not parsed.allow_writes and parsed.host == "0.0.0.0"
    (port,) = container["ports"]
    assert parsed.port == port["containerPort"]
    env = _env(container)
    assert {"OPTUNA_STORAGE_FILE", PASSWORD_ENV + "_FILE"} <= set(env), "else it would make up a password"
    for probe in ("readinessProbe", "livenessProbe"):  # without a password, HTTP answers 401
        assert container[probe]["tcpSocket"]["port"] == port["name"], probe


# ------------------------------------------------------------------ GPU overlay
def test_gpu_overlay_gives_each_worker_one_gpu() -> None:
    base, gpu = render(TARGETS["base"]), render(TARGETS["gpu"])
    (bc,) = _worker(base)["spec"]["template"]["spec"]["containers"]
    (gc,) = _worker(gpu)["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in bc["resources"]["limits"]
    assert gc["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gc["image"].startswith("siamese-sweep/worker-gpu:")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        _worker(gpu)["spec"]["template"]["spec"]["tolerations"]
    others = lambda objs: {_key(o): o for o in objs  # noqa: E731
                           if o["kind"] != "Job" or o["metadata"]["name"] != "siamese-sweep-worker"}
    assert others(base) == others(gpu), "the overlay touches only the workers"


# ------------------------------------------------------------------ create-secrets.sh
FAKE_KUBECTL = r'''#!/usr/bin/env python3
"""Stands in for kubectl: records argv, keeps "created" Secrets as files."""
import json, os, shutil, sys
state = os.environ["FAKE_STATE"]
with open(os.path.join(state, "argv.log"), "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\n")
args = sys.argv[1:]
if args[:2] == ["-n", os.environ["FAKE_NS"]]:
    args = args[2:]
if args[:2] == ["get", "secret"]:
    sys.exit(0 if os.path.isdir(os.path.join(state, "secrets", args[2])) else 1)
if args[:3] == ["create", "secret", "generic"]:
    target = os.path.join(state, "secrets", args[3])
    os.makedirs(target)
    for a in args[4:]:
        key, path = a[len("--from-file="):].split("=", 1)
        shutil.copyfile(path, os.path.join(target, key))
    sys.exit(0)
if args[:2] == ["create", "namespace"]:
    print("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x")
    sys.exit(0)
if args[:2] == ["apply", "-f"]:
    sys.stdin.read()
    sys.exit(0)
sys.exit(f"fake kubectl: unexpected {args}")
'''


def _secret_files_used(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(Secret, key) pairs the pods read through *_FILE variables (the init script too: postgres's)."""
    used = set()
    for _component, pod in _workloads(objects):
        volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
        for c in pod["containers"] + pod.get("initContainers", []):
            mounts = {m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", []) if m["name"] in volumes}
            for e in c.get("env", []):
                if e["name"].endswith("_FILE"):
                    path = Path(e["value"])
                    secret = mounts[str(path.parent)]
                    keys = {i["path"]: i["key"] for i in secret.get("items", [])}
                    assert not keys or path.name in keys, f"{e['name']}: {path.name} is not among the items mounted"
                    used.add((secret["secretName"], keys.get(path.name, path.name)))
    return used


def test_create_secrets_makes_every_secret_the_pods_read_without_putting_values_on_argv(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    fake = tmp_path / "kubectl"
    fake.write_text(FAKE_KUBECTL.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "KUBECTL": str(fake), "FAKE_STATE": str(state), "FAKE_NS": "sweeps-test"}
    res = subprocess.run(["bash", str(K8S / "create-secrets.sh"), "sweeps-test"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    secrets = {(d.name, f.name): f.read_text() for d in (state / "secrets").iterdir() for f in d.iterdir()}
    assert _secret_files_used(render(TARGETS["base"])) == set(secrets), "every Secret key the pods read, no other"
    assert secrets[("mlflow-worker", "username")] == "sweeps-worker"
    argv = (state / "argv.log").read_text()
    for (name, key), value in secrets.items():
        if key != "username":
            assert len(value) >= 12 and value not in argv and value not in res.stdout + res.stderr, (name, key)
    optuna_password = secrets[("optuna-db", "password")]
    assert secrets[("optuna-storage", "url")] == f"postgresql+psycopg2://optuna:{optuna_password}@postgres:5432/optuna"
    # a second run changes nothing
    again = subprocess.run(["bash", str(K8S / "create-secrets.sh"), "sweeps-test"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "nothing changed" in again.stdout
