"""The rendered sbatch script, without Slurm: its text, and its behaviour run under plain bash with a stub worker.

Fast (no TensorFlow, no cluster): the exit-code policy, the retry loop, the USR1 -> SIGTERM
forwarding and the environment guard are exercised for real, with a tiny Python stub standing in
for ``siamese-sweep``.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweeps.slurm import (
    ClusterCheck,
    SlurmOptions,
    check_spec_for_cluster,
    exported_names,
    render_script,
    spec_yaml,
    time_limit_seconds,
)
from sweeps.spec import SweepSpec, load_spec, spec_from_dict
from sweeps.specs import resolve_spec_path

ROOT = Path(__file__).resolve().parents[2]

# The stub: records its argv, cwd and the spec it was given; exits with $STUB_EXIT (or as told by a
# file, per attempt); on SIGTERM writes "TERM" and exits 130 like the real worker.
STUB = r'''
import json, os, signal, sys, time
log = os.environ["STUB_LOG"]
def record(event):
    with open(log, "a") as fh:
        fh.write(json.dumps(event) + "\n")
def on_term(signum, frame):
    record({"signal": signum})
    sys.exit(130)
signal.signal(signal.SIGTERM, on_term)
spec_path = sys.argv[2]
record({"argv": sys.argv[1:], "cwd": os.getcwd(), "spec": open(spec_path).read(), "pid": os.getpid()})
codes = os.environ.get("STUB_EXITS", "0").split(",")
attempt = sum(1 for line in open(log) if '"argv"' in line) - 1
code = int(codes[min(attempt, len(codes) - 1)])
if code < 0:  # run until signalled (or for -code seconds)
    end = time.monotonic() + (-code)
    while time.monotonic() < end:
        time.sleep(0.05)
    code = 0
sys.exit(code)
'''


def _events(log: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def stub(tmp_path: Path) -> Path:
    path = tmp_path / "stub.py"
    path.write_text(STUB)
    return path


def _script(stub: Path, *, study: str = "s", retries: int = 2, required: tuple[str, ...] = (),
            **extra) -> str:
    spec = spec_yaml(load_spec(ROOT / "sweeps/specs/digits-smoke.yaml"))
    options = SlurmOptions(study=study, tasks=2, worker_command=(sys.executable, str(stub)), retries=retries,
                           retry_backoff_s=0, **extra)
    return render_script(spec, options, required_env=required)


def _start(script: str, tmp_path: Path, **env: str) -> subprocess.Popen:
    path = tmp_path / "job.sh"
    path.write_text(script)
    full = {"PATH": os.environ["PATH"], "STUB_LOG": str(tmp_path / "stub.log"), "TMPDIR": str(tmp_path),
            "SLURM_CPUS_PER_TASK": "3", **env}
    return subprocess.Popen(["bash", str(path)], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(script: str, tmp_path: Path, **env: str) -> tuple[int, str]:
    proc = _start(script, tmp_path, **env)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


# ------------------------------------------------------------------ text
def test_script_has_the_sbatch_lines_and_embeds_the_spec_verbatim(stub: Path) -> None:
    spec = spec_yaml(load_spec(ROOT / "sweeps/specs/digits-smoke.yaml"))
    options = SlurmOptions(study="fashion v1", tasks=4, time="2:00:00", partition="gpu", cpus_per_task=4,
                           gpus_per_task=1, mem="16G", max_concurrent=2, signal_seconds=240,
                           sbatch_args=("--account=ml",))
    script = render_script(spec, options)
    directives = re.findall(r"^#SBATCH (\S+)$", script, flags=re.M)
    assert directives == ["--job-name=siamese-fashion_v1", "--array=0-3%2", "--ntasks=1", "--cpus-per-task=4",
                          "--time=2:00:00", "--partition=gpu", "--gpus-per-task=1", "--mem=16G",
                          "--signal=B:USR1@240", "--requeue", "--open-mode=append",
                          "--output=siamese-sweep-%x-%A_%a.out", "--account=ml"]
    # the heredoc body is the spec, byte for byte, and loads back to the same spec
    tag = re.search(r"<<'(END_OF_SPEC_\w+)'", script).group(1)
    body = script.split(f"<<'{tag}'\n", 1)[1].split(f"\n{tag}\n", 1)[0]
    assert body + "\n" == spec
    assert spec_from_dict(yaml.safe_load(body)) == load_spec(ROOT / "sweeps/specs/digits-smoke.yaml")
    assert "--study 'fashion v1'" in script  # shell-quoted
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_no_requeue_and_defaults() -> None:
    script = render_script("a: 1\n", SlurmOptions(study="s", tasks=1, requeue=False))
    assert "#SBATCH --no-requeue" in script and "#SBATCH --signal=B:USR1@180" in script
    assert "--time" not in script.split("#\n", 1)[0]


@pytest.mark.parametrize("kwargs, flag", [
    ({"tasks": 0}, "--tasks"),
    ({"time": "1", "signal_seconds": 60}, "--preempt-signal-seconds"),
    ({"time": "ten minutes"}, "--time"),
    ({"partition": "a b"}, "--partition"),
    ({"sbatch_args": ("account=x",)}, "--sbatch-arg"),
    ({"sbatch_args": ("--comment='x y'",)}, "--sbatch-arg"),
    ({"setup": ("a\nb",)}, "--setup"),
    ({"signal_seconds": 0}, "--preempt-signal-seconds"),
    ({"retries": -1}, "--retries"),
    # the study's name is in a comment line of the script: a newline ran the rest as a command
    ({"study": "x\ntouch /tmp/pwned #"}, "--study"),
    ({"study": "it's"}, "--study"),  # every task's `worker --study` refused it (exit 2), after the submit
    ({"study": ""}, "--study"),
    ({"mem": "lots"}, "--mem"),  # was `#SBATCH --mem=lots`
    # options the script writes itself: sbatch takes the last (--array=0-5 queued 6 tasks where it said 2)
    ({"sbatch_args": ("--array=0-5",)}, "--sbatch-arg"),
    ({"sbatch_args": ("--account=ml", "--job-name=x")}, "--sbatch-arg"),
    ({"sbatch_args": ("--output=elsewhere.out",)}, "--sbatch-arg"),
    ({"sbatch_args": ("--no-requeue",)}, "--sbatch-arg"),
    # and a unique prefix sbatch takes for it (`sbatch -v`: `--arr=0-5` is `array : 0-5`)
    ({"sbatch_args": ("--arr=0-5",)}, "--sbatch-arg"),
    ({"sbatch_args": ("--job=x",)}, "--sbatch-arg"),
    ({"sbatch_args": ("--no-req",)}, "--sbatch-arg"),
])
def test_bad_options_are_config_errors_naming_the_flag(kwargs: dict, flag: str) -> None:
    from siamese_core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        render_script("a: 1\n", SlurmOptions(**{"study": "s", "tasks": 1, **kwargs}))
    assert err.value.field == flag


def test_other_sbatch_options_pass() -> None:
    script = render_script("a: 1\n", SlurmOptions(study="s", tasks=1, sbatch_args=(
        "--account=ml", "--qos=low", "--mem-per-cpu=2G", "--exclusive", "--time-min=10", "--gpus=1",
        "--ntasks-per-node=1", "--error=e.out")))
    assert "#SBATCH --account=ml" in script and "#SBATCH --time-min=10" in script
    assert "#SBATCH --gpus=1" in script  # GPUs per job: an option of its own, not --gpus-per-task abbreviated


def test_memory_sizes_slurm_takes_are_accepted() -> None:
    for mem in ("4000", "16G", "512M", "1T", "0"):
        assert f"#SBATCH --mem={mem}" in render_script("a: 1\n", SlurmOptions(study="s", tasks=1, mem=mem))


@pytest.mark.parametrize("value, seconds", [("30", 1800), ("1:30", 90), ("2:00:00", 7200), ("1-12", 129600),
                                            ("1-0:30", 88200), ("1-0:0:5", 86405), ("UNLIMITED", None)])
def test_time_limit_seconds(value: str, seconds: int | None) -> None:
    assert time_limit_seconds(value) == seconds


# ------------------------------------------------------------------ the spec and the stores
def _spec(**study):
    return spec_from_dict({"base": {"dataset": "digits"}, "study": {"name": "s", **study}})


def test_relative_or_memory_stores_are_refused_env_ones_required() -> None:
    from siamese_core.errors import ConfigError

    spec = _spec()
    with pytest.raises(ConfigError, match="private study"):  # default sqlite:///optuna.db
        check_spec_for_cluster(spec, spec_yaml(spec), {})
    with pytest.raises(ConfigError, match="private study"):
        check_spec_for_cluster(spec, spec_yaml(spec), {"OPTUNA_STORAGE": "memory", "MLFLOW_TRACKING_URI": "http://m"})
    env = {"OPTUNA_STORAGE": "postgresql://u:pw@db/optuna", "MLFLOW_TRACKING_URI_FILE": "/run/secrets/uri"}
    assert check_spec_for_cluster(spec, spec_yaml(spec), env) == ClusterCheck(
        (), ("OPTUNA_STORAGE", "MLFLOW_TRACKING_URI"))
    env = {"OPTUNA_STORAGE": "sqlite:////shared/optuna.db", "MLFLOW_TRACKING_URI": "http://m"}
    check = check_spec_for_cluster(spec, spec_yaml(spec), env)
    assert len(check.warnings) == 1 and "shared file system" in check.warnings[0]


def test_connections_from_the_environment_are_placeholders_in_the_embedded_spec() -> None:
    from siamese_core.errors import ConfigError
    from sweeps.storage import make_storage

    spec = _spec()
    text = spec_yaml(spec, from_env=("OPTUNA_STORAGE", "MLFLOW_TRACKING_URI"))
    data = yaml.safe_load(text)
    assert data["study"]["storage"] == "env:OPTUNA_STORAGE" and data["tracking"]["uri"] == "env:MLFLOW_TRACKING_URI"
    assert text.startswith("# study.storage: from $OPTUNA_STORAGE")
    # a worker that fell back to the spec's value would stop (exit 2), not open a private SQLite study
    with pytest.raises(ConfigError):
        make_storage(spec_from_dict(data).study.storage)


@pytest.mark.parametrize("args, sbatch_export, expected", [
    ((), None, ["OPTUNA_STORAGE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD_FILE"]),
    (("--export=ALL,FOO=1",), None, ["OPTUNA_STORAGE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD_FILE"]),
    (("--export=NONE",), None, []),
    (("--export=NIL",), None, []),
    (("--export=OPTUNA_STORAGE,PATH",), None, ["OPTUNA_STORAGE"]),
    (("--account=a",), "NONE", []),
    (("--export=ALL",), "NONE", []),  # sbatch's environment wins over the script's #SBATCH lines
    (("--export=NONE",), "ALL", ["OPTUNA_STORAGE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD_FILE"]),
    (("--export=NONE", "--export=ALL"), None, ["OPTUNA_STORAGE", "MLFLOW_TRACKING_URI",
                                               "MLFLOW_TRACKING_PASSWORD_FILE"]),
])
def test_the_names_said_to_pass_are_what_sbatchs_export_lets_through(args: tuple[str, ...],
                                                                     sbatch_export: str | None,
                                                                     expected: list[str]) -> None:
    # `--sbatch-arg=--export=NONE` printed "environment passed: OPTUNA_STORAGE, ..." for a job that got none
    env = {"OPTUNA_STORAGE": "postgresql://db/optuna", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
           "MLFLOW_TRACKING_PASSWORD_FILE": "/run/secrets/pw"}
    if sbatch_export is not None:
        env["SBATCH_EXPORT"] = sbatch_export
    assert exported_names(env, args) == expected


def test_a_password_in_the_spec_is_refused() -> None:
    from siamese_core.errors import ConfigError

    spec = _spec(storage="postgresql://u:hunter2hunter2@db/optuna")
    with pytest.raises(ConfigError) as err:
        check_spec_for_cluster(spec, spec_yaml(spec), {"MLFLOW_TRACKING_URI": "http://m"})
    assert err.value.field == "study.storage" and "hunter2" not in str(err.value)


def test_cli_dry_run_prints_the_script_and_keeps_secrets_out(tmp_path: Path) -> None:
    secret = "pw-" + "x7" * 12
    env = {**os.environ, "OPTUNA_STORAGE": f"postgresql://sweeps:{secret}@db:5432/optuna",
           "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_PASSWORD": secret,
           "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", "digits-smoke", "--tasks", "3",
                          "--time", "1:00:00", "--trials", "7", "--dry-run"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("#!/bin/bash\n#SBATCH ") and "#SBATCH --array=0-2" in res.stdout
    assert secret not in res.stdout + res.stderr
    assert "trials: 7" in res.stdout
    assert "storage: env:OPTUNA_STORAGE" in res.stdout and "uri: env:MLFLOW_TRACKING_URI" in res.stdout


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPTUNA_", "MLFLOW_"))}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", "digits-smoke", "--tasks", "2",
                          "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "private study" in res.stderr
    env["OPTUNA_STORAGE"], env["MLFLOW_TRACKING_URI"] = "postgresql://u@db/optuna", "http://m:5000"
    for study in ("", "x\ntouch pwned #"):  # `--study ''` used the spec's name
        res = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", "digits-smoke", "--tasks", "2",
                              "--study", study, "--dry-run"], env=env, capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
        assert res.returncode == 2 and res.stdout == "", res.stdout[-2000:]
        assert len(res.stderr.strip().splitlines()) == 1 and "--study" in res.stderr
    # a bad option beside stores that are files: the option's line only (the two store warnings came first)
    env["OPTUNA_STORAGE"], env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/o.db", f"sqlite:///{tmp_path}/m.db"
    res = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", "digits-smoke", "--tasks", "0",
                          "--dry-run"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: --tasks: expected a positive number of array tasks; received: 0"], res.stderr
    env["OPTUNA_STORAGE"], env["MLFLOW_TRACKING_URI"] = "postgresql://u@db/optuna", "http://m:5000"
    # a store read from a *_FILE is checked like one given directly: a private SQLite file is still refused
    secret = tmp_path / "storage-url"
    secret.write_text("sqlite:///optuna.db\n")
    file_env = {**{k: v for k, v in env.items() if k != "OPTUNA_STORAGE"}, "OPTUNA_STORAGE_FILE": str(secret)}
    res = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", "digits-smoke", "--tasks", "2",
                          "--dry-run"], env=file_env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and "private study" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    secret.unlink()
    # an argparse refusal is one line too (its usage block was 13 lines)
    res = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", "digits-smoke", "--tasks", "abc"],
                         env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "siamese-sweep slurm submit: error: argument --tasks: invalid int value: 'abc' "
        "(see siamese-sweep slurm submit --help)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(("message", "bad_input"), [
    ("sbatch: error: invalid partition specified: nosuch\nsbatch: error: Batch job submission failed: Invalid "
     "partition name specified", True),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not available", True),
    ("sbatch: error: Memory specification can not be satisfied\nsbatch: error: Batch job submission failed: "
     "Requested node configuration is not available", True),
    ("sbatch: unrecognized option '--nosuch'", True),
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)", False),
    ("sbatch: error: Batch job submission failed: Required partition not available (inactive or drain)", False),
    ("sbatch: error: Batch job submission failed: Requested nodes are busy", False),
    ("sbatch: error: Batch job submission failed: Requested operation is presently disabled", False),
])
def test_sbatch_refusing_the_input_is_bad_input_and_an_outage_is_not(tmp_path: Path, message: str,
                                                                     bad_input: bool) -> None:
    """A partition sbatch does not know was exit 1, as a controller it cannot reach is (and schedulers retry 1); a
    drained partition or busy nodes stay exit 1: they pass. The texts are sbatch 22.05's."""
    from siamese_core.errors import ConfigError
    from sweeps.slurm import SlurmError, submit

    fake = tmp_path / "sbatch"
    fake.write_text(f"#!/bin/sh\ncat > /dev/null\nprintf '%s\\n' {shlex.quote(message)} >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ConfigError if bad_input else SlurmError, match="refused the job"):
        submit("#!/bin/bash\n", sbatch=str(fake))


# ------------------------------------------------------------------ behaviour under bash
def test_worker_gets_the_spec_in_a_private_temp_dir_which_is_removed(stub: Path, tmp_path: Path) -> None:
    code, err = _run(_script(stub, study="a $HOME; b"), tmp_path, STUB_EXITS="0")  # shell-quoted, not expanded
    assert code == 0, err
    (event,) = _events(tmp_path / "stub.log")
    assert event["argv"][0] == "worker" and event["argv"][2:] == ["--study", "a $HOME; b", "--threads", "3"]
    assert event["cwd"].startswith(str(tmp_path / "siamese-sweep."))
    assert event["argv"][1] == event["cwd"] + "/spec.yaml"
    assert yaml.safe_load(event["spec"])["study"]["name"] == "digits-smoke"
    assert not list(tmp_path.glob("siamese-sweep.*")), "the task's temp dir must be removed"
    assert "siamese-sweep: done" in err


@pytest.mark.parametrize("exits, expected_code, attempts", [
    ("2", 2, 1),              # bad input: never retried
    ("1,1,1,1", 1, 3),        # other error: 1 + 2 retries
    ("1,0", 0, 2),            # transient error, then done
    ("1,2", 2, 2),            # a retry that finds bad input stops
    ("130", 130, 1),          # interrupted: not retried in place
    ("137", 137, 1),
])
def test_exit_code_policy(stub: Path, tmp_path: Path, exits: str, expected_code: int, attempts: int) -> None:
    code, err = _run(_script(stub, retries=2), tmp_path, STUB_EXITS=exits)
    assert code == expected_code, err
    assert len([e for e in _events(tmp_path / "stub.log") if "argv" in e]) == attempts, err
    if expected_code == 2:
        assert "not retried" in err


def _wait_for_worker(tmp_path: Path, proc: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = [e for e in _events(tmp_path / "stub.log") if "argv" in e]
        if events:
            return events[-1]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the stub worker did not start")


def test_usr1_warning_becomes_one_sigterm_for_the_worker_and_no_retry(stub: Path, tmp_path: Path) -> None:
    proc = _start(_script(stub), tmp_path, STUB_EXITS="-30")
    _wait_for_worker(tmp_path, proc)
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@N does: the batch shell only
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    events = _events(tmp_path / "stub.log")
    assert [e["signal"] for e in events if "signal" in e] == [signal.SIGTERM]
    assert len([e for e in events if "argv" in e]) == 1
    assert "time limit" in err and "queued again" in err


def test_sigterm_to_the_shell_is_not_forwarded_and_stops_retries(stub: Path, tmp_path: Path) -> None:
    """scancel/preemption signal the worker themselves; the shell must only wait for it, then not retry."""
    proc = _start(_script(stub), tmp_path, STUB_EXITS="-2,0")
    worker = _wait_for_worker(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert proc.poll() is None, "the shell must outlive SIGTERM while its worker cleans up"
    os.kill(worker["pid"], signal.SIGTERM)  # Slurm signals every process of the job
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    events = _events(tmp_path / "stub.log")
    assert [e["signal"] for e in events if "signal" in e] == [signal.SIGTERM]  # one, not two
    assert len([e for e in events if "argv" in e]) == 1


def test_missing_connection_variables_stop_the_task_with_exit_2(stub: Path, tmp_path: Path) -> None:
    script = _script(stub, required=("OPTUNA_STORAGE", "MLFLOW_TRACKING_URI"))
    code, err = _run(script, tmp_path, OPTUNA_STORAGE="postgresql://db/optuna")
    assert code == 2 and "MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_URI_FILE) is not set" in err
    assert not _events(tmp_path / "stub.log")
    code, err = _run(script, tmp_path, OPTUNA_STORAGE_FILE="/x", MLFLOW_TRACKING_URI="http://m")
    assert code == 0, err


def _study_made_with(spec: SweepSpec, storage: str, name: str) -> None:
    """A study as siamese-sweep makes one: its spec and the spec's hash (a spec alone, with no trials, is a creator
    still writing, which each submit waited 15 s for: `sweeps.study._attrs_once_created`)."""
    import optuna

    from sweeps import names

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(names.STUDY_ATTR_SPEC, spec.portable())
    study.set_user_attr(names.STUDY_ATTR_SPEC_HASH, spec.identity())


def test_an_existing_study_is_submitted_with_its_own_spec_and_a_given_budget(tmp_path: Path) -> None:
    """Without a spec file the quickstart was embedded: every task's worker refused it ("created with another
    spec", exit 2) after the whole array had queued. And `--trials` only went into the embedded spec, which an
    existing study's budget ignores: the tasks ran nothing."""

    from sweeps.spec import load_spec
    from sweeps.specs import resolve_spec_path

    storage = f"sqlite:///{tmp_path}/optuna.db"
    _study_made_with(load_spec(resolve_spec_path("digits-smoke")), storage, "moved")
    env = {**os.environ, "OPTUNA_STORAGE": storage, "MLFLOW_TRACKING_URI": "http://mlflow:5000",
           "PYTHONPATH": str(ROOT)}

    def dry_run(*extra: str) -> str:
        res = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", "--study", "moved", "--tasks",
                              "2", *extra, "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        return res.stdout

    script = dry_run("--trials", "9")
    assert "name: digits" in script and "fashion_mnist" not in script  # its spec, not the quickstart's
    assert '--study moved --threads "$threads" --trials 9 &' in script
    assert '--threads "$threads" &' in dry_run()  # no budget given: the study keeps its own
    assert '--threads "$threads" --trials 5 &' in dry_run("--set", "study.trials=5")


@pytest.mark.postgres
def test_an_existing_study_on_a_password_protected_server_or_an_unreachable_one(postgres_server,
                                                                                tmp_path: Path) -> None:
    """The stored spec took `$OPTUNA_STORAGE` with its password as study.storage, and the check that the embedded
    spec holds no password refused it (exit 2) for every `stack up` user. A database the submit host cannot reach
    (only the compute nodes do) failed the submit, exit 1: it now falls back to the spec argument, with a warning."""
    import optuna

    from sweeps import names
    from sweeps.spec import load_spec
    from sweeps.specs import resolve_spec_path

    url = postgres_server.url
    study = optuna.create_study(study_name="moved-pg", storage=url, direction="maximize")
    study.set_user_attr(names.STUDY_ATTR_SPEC, load_spec(resolve_spec_path("digits-smoke")).portable())
    env = {**os.environ, "OPTUNA_STORAGE": url, "MLFLOW_TRACKING_URI": "http://mlflow:5000",
           "PYTHONPATH": str(ROOT), "SIAMESE_SWEEP_STORAGE_RETRY_SECONDS": "0"}
    cmd = [sys.executable, "-m", "sweeps.cli", "slurm", "submit", "--study", "moved-pg", "--tasks", "2", "--dry-run"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "name: digits" in res.stdout and "storage: env:OPTUNA_STORAGE" in res.stdout
    assert postgres_server.password not in res.stdout + res.stderr
    env["OPTUNA_STORAGE"] = "postgresql://u:secretpw@127.0.0.1:1/optuna"
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "could not read the spec stored with study 'moved-pg'" in res.stderr
    assert "secretpw" not in res.stdout + res.stderr
    assert "fashion_mnist" in res.stdout  # the quickstart, as before


def test_a_sqlite_tracking_store_keeps_its_artifacts_beside_it(stub: Path, tmp_path: Path) -> None:
    """MLflow puts a SQLite store's artifacts in ./mlruns of the working directory: the task's temporary one,
    deleted at its end with every model (promote then failed: "No such artifact")."""
    spec = load_spec(ROOT / "sweeps/specs/digits-smoke.yaml")
    store = tmp_path / "stores"
    store.mkdir()
    env = {"OPTUNA_STORAGE": "postgresql://u@db/optuna", "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"}
    check = check_spec_for_cluster(spec, spec_yaml(spec), env)
    assert check.workdir == str(store)
    assert any(f"the tasks run their worker in {store}" in w for w in check.warnings)
    assert check_spec_for_cluster(spec, spec_yaml(spec), {**env, "MLFLOW_TRACKING_URI": "http://m:5000"}
                                  ).workdir is None
    options = SlurmOptions(study="s", tasks=1, worker_command=(sys.executable, str(stub)), retry_backoff_s=0)
    code, err = _run(render_script(spec_yaml(spec), options, workdir=check.workdir), tmp_path, STUB_EXITS="0")
    assert code == 0, err
    (event,) = _events(tmp_path / "stub.log")
    assert event["cwd"] == str(store) and event["argv"][1].startswith(str(tmp_path / "siamese-sweep."))
    assert not list(tmp_path.glob("siamese-sweep.*"))


def test_submit_runs_a_new_studys_spec_checks_and_resumes_an_existing_study_with_its_own(tmp_path: Path) -> None:
    """The spec checks made for a new study only (`preflight.refuse_spec_of_a_new_study`) were not made by
    `slurm submit`: an enqueue entry that would never run as listed queued the whole array, and every task's worker
    refused it (exit 2). A study made with such a spec is still submitted (its tasks resume it)."""


    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "base: {dataset: digits, epochs: 1, loss: {margin: 0.5}}\n"
        "search_space:\n"
        "  loss.type: {type: categorical, choices: [contrastive, bce]}\n"
        "  loss.margin: {type: categorical, choices: [2.0], when: {loss.type: contrastive}}\n"
        "  encoder.depth: {type: categorical, choices: [2], when: {loss.margin: 2.0}}\n"
        "study: {name: offbranch, trials: 2, pruner: none, enqueue: [{loss.type: bce, encoder.depth: 2}]}\n")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    env = {**os.environ, "OPTUNA_STORAGE": storage, "MLFLOW_TRACKING_URI": "http://mlflow:5000",
           "PYTHONPATH": str(ROOT)}

    def submit() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", str(spec_file), "--tasks", "2",
                               "--dry-run"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    done = submit()
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: study.enqueue[0].encoder.depth: never sampled when loss.margin=0.5"), done.stderr
    assert not (tmp_path / "optuna.db").exists()  # nothing created
    _study_made_with(load_spec(spec_file), storage, "offbranch")
    done = submit()
    assert done.returncode == 0 and "#SBATCH" in done.stdout, done.stderr
    # the storage named in the spec, not in $OPTUNA_STORAGE: the tasks use it, so it is looked up too (the review
    # of dbdbadf: only $OPTUNA_STORAGE was, and such a spec was submitted)
    own = f"sqlite:///{tmp_path}/own.db"
    spec_file.write_text(spec_file.read_text().replace("study: {name: offbranch,", f"study: {{storage: '{own}', "
                                                                                   f"name: offbranch,"))
    for name in ("OPTUNA_STORAGE", "OPTUNA_STORAGE_FILE"):
        env.pop(name, None)
    done = submit()
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(
        "error: study.enqueue[0].encoder.depth: never sampled when loss.margin=0.5"), done.stderr
    assert not (tmp_path / "own.db").exists()
    _study_made_with(load_spec(spec_file), own, "offbranch")
    done = submit()
    assert done.returncode == 0 and "#SBATCH" in done.stdout, done.stderr
    # a server named in the spec is not opened from the submit host (the review of b6fddaf: a login only the nodes
    # are allowed was refused, and an empty database got Optuna's tables): the tasks check it
    spec_file.write_text(spec_file.read_text().replace(own, "postgresql://siamese@127.0.0.1:9/optuna"))
    done = submit()
    assert done.returncode == 0 and "could not compare" not in done.stderr, done.stderr


def test_a_storage_file_only_the_nodes_have_is_theirs_to_read(tmp_path: Path) -> None:
    """docs/cluster.md: "export *_FILE variables instead, naming files readable on the nodes". One the submit host
    does not have was refused there ("cannot read the secret file", exit 2): the CLI read every *_FILE at start.
    Now it is passed on with a warning, and the spec's own storage, which the tasks will not use, is not looked
    up in its place. Every other command still refuses it."""
    on_nodes = "/nonexistent/on-the-nodes/storage-url"
    own = tmp_path / "own.db"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"base: {{dataset: digits, epochs: 1}}\nsearch_space: {{}}\n"
                         f"study: {{name: s, trials: 1, storage: 'sqlite:///{own}'}}\n")
    _study_made_with(load_spec(resolve_spec_path("digits-smoke")), f"sqlite:///{own}", "s")  # another spec
    env = {**{k: v for k, v in os.environ.items() if k not in ("OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")},
           "OPTUNA_STORAGE_FILE": on_nodes, "MLFLOW_TRACKING_URI": "http://mlflow:5000", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", str(spec_file), "--tasks", "2",
                           "--dry-run"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"warning: OPTUNA_STORAGE_FILE names {on_nodes}, which this host does not have" in done.stderr
    assert "OPTUNA_STORAGE (or OPTUNA_STORAGE_FILE) is not set" in done.stdout  # the task's own check
    # a study by name, without a spec file: its stored spec cannot be read here, and the quickstart goes, said so
    by_name = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", "--study", "s", "--tasks", "2",
                              "--dry-run"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert by_name.returncode == 0 and "name: quickstart" in by_name.stdout, by_name.stderr
    assert "could not read the spec stored with study 's' ($OPTUNA_STORAGE_FILE is read on the nodes); submitting " \
           "the built-in quickstart" in by_name.stderr, by_name.stderr
    # bad input is still one line, the warnings about the stores after it (the review of 03d51ed)
    bad = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", "--study", "s", "--tasks", "0",
                          "--dry-run"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --tasks: expected a positive number of array tasks; received: 0"], bad.stderr
    # still refused (the review of 5587652): a relative path, which is the submit folder's (a typo there), and a file
    # beside $OPTUNA_STORAGE, which the tasks would not use while submit checked the other
    for extra in ({"OPTUNA_STORAGE_FILE": "storage-url"}, {"OPTUNA_STORAGE": f"sqlite:///{own}"}):
        refused = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", str(spec_file), "--tasks",
                                  "2", "--dry-run"], env={**env, **extra}, capture_output=True, text=True,
                                 timeout=120, cwd=tmp_path)
        assert refused.returncode == 2 and refused.stdout == "", refused.stdout
        assert refused.stderr.strip().splitlines() == [
            f"error: OPTUNA_STORAGE_FILE: cannot read the secret file {extra.get('OPTUNA_STORAGE_FILE', on_nodes)}: "
            f"No such file or directory"], refused.stderr
    refused = subprocess.run([sys.executable, "-m", "sweeps.cli", "status", "--study", "s"], env=env,
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: OPTUNA_STORAGE_FILE: cannot read the secret file {on_nodes}: No such file or directory"]


def test_submit_refuses_what_every_task_would_refuse(tmp_path: Path) -> None:
    """Each was submitted (exit 0), then every task stopped with exit 2: a spec file other than the existing
    study's, a job whose --export passes none of the connection variables, and a relative *_FILE path (the tasks
    run in a temporary folder)."""

    from sweeps.slurm import job_environment
    from sweeps.specs import resolve_spec_path

    storage = f"sqlite:///{tmp_path}/optuna.db"
    smoke = load_spec(resolve_spec_path("digits-smoke"))
    _study_made_with(smoke, storage, "there")
    env = {**os.environ, "OPTUNA_STORAGE": storage, "MLFLOW_TRACKING_URI": "http://mlflow:5000",
           "PYTHONPATH": str(ROOT)}

    def submit(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", "submit", "--tasks", "2", *extra,
                               "--dry-run"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    done = submit("digits-smoke", "--study", "there", "--set", "base.epochs=5")
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: spec: study 'there' was created with another spec (differs in: base.epochs)"), done.stderr
    assert submit("digits-smoke", "--study", "there", "--trials", "9").returncode == 0  # its own spec, a budget
    _study_made_with(smoke, storage, "digits-smoke")
    done = submit("digits-smoke", "--set", "base.epochs=5")  # no --study: the spec's own name (the final review)
    assert done.returncode == 2 and "study 'digits-smoke' was created with another spec" in done.stderr
    assert submit("digits-smoke", "--study", "elsewhere", "--set", "base.epochs=5").returncode == 0  # a new study
    done = submit("digits-smoke", "--study", "there", "--sbatch-arg=--export=NONE")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "error: --sbatch-arg: the job's --export passes none of OPTUNA_STORAGE, MLFLOW_TRACKING_URI (or its _FILE "
        "twin) that the tasks need: add them to --export"), done.stderr
    assert submit("digits-smoke", "--study", "there",
                  "--sbatch-arg=--export=OPTUNA_STORAGE,MLFLOW_TRACKING_URI").returncode == 0
    env["SBATCH_EXPORT"] = "NONE"  # what sbatch reads before the script's lines: named, not --sbatch-arg
    done = submit("digits-smoke", "--study", "there")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(
        "error: $SBATCH_EXPORT: the job's --export passes none of"), done.stderr
    del env["SBATCH_EXPORT"]
    relative = job_environment({"OPTUNA_STORAGE_FILE": "storage-url", "MLFLOW_TRACKING_URI_FILE": "/abs/url",
                                "OTHER_FILE": "x"})
    assert relative == {"OPTUNA_STORAGE_FILE": os.path.abspath("storage-url"), "MLFLOW_TRACKING_URI_FILE": "/abs/url",
                        "OTHER_FILE": "x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.db"]
