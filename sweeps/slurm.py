"""Run a sweep on a Slurm cluster: a job array of ``siamese-sweep worker`` tasks, one rendered sbatch script.

``siamese-sweep slurm submit SPEC --tasks N`` renders one batch script and hands it to ``sbatch`` on
stdin. Each array task runs one worker; the workers share the study's global trial budget through
the Optuna storage (PostgreSQL in production), exactly as workers started by hand do.

Why a rendered script and not submitit: submitit pickles the function and its result into a
folder that the submit host and every node must share, and reads job state from files there. A
sweep must not assume the nodes share a disk with the submit host (nor with each other): its
state lives in the Optuna storage and the MLflow server. The script is self-contained instead:

* the resolved spec is embedded in it (a quoted heredoc, written to ``mktemp`` under ``$TMPDIR``
  on the node); no path on the submit host is read, and the task works in a fresh temporary
  directory, removed when it ends (the spec's data paths and user code must exist on the nodes);
* credentials never appear in the script or on a command line (``ps`` shows those): the tasks
  read ``OPTUNA_STORAGE``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME`` and
  ``MLFLOW_TRACKING_PASSWORD`` - or the ``*_FILE`` variables naming files readable on the nodes -
  from the environment that sbatch passes along (its default ``--export=ALL``). A spec that holds
  a password is refused;
* ``scontrol show batch_script JOBID`` shows exactly what runs.

Signals. ``#SBATCH --signal=B:USR1@N`` sends USR1 to the batch shell alone, N seconds before the
time limit (Slurm checks every ~30 s, so up to ~30 s earlier). The shell turns it into one SIGTERM
for the worker, which fails the running trial ``interrupted``, queues it again with the same
parameters, ends its MLflow run KILLED and exits 130. ``scancel``, preemption and the time limit
itself send SIGTERM to *every* process of the job, the worker included, and SIGKILL ``KillWait``
seconds later (``scancel --signal=KILL`` does the same on Slurm 22.05: SIGTERM first). So the shell
only forwards USR1: forwarding TERM too would hand the worker a second SIGTERM in the middle of
its clean-up. Checked on a one-node Slurm 22.05 cluster: B:USR1 reaches the batch shell only; the
time limit and ``scancel`` reach the shell and its children.

Exit status of a task (``ExitCode`` in ``scontrol show job``/``sacct``), from the CLI's codes:

=====  ==============================================  =====================================
code   meaning                                         retried?
=====  ==============================================  =====================================
0      the study's budget is met                       no
2      bad spec, data or config (one line on stderr)   never (would fail the same way)
1      other error: storage or MLflow unreachable,     in place, up to ``--retries`` times,
       too many trials failing in a row                after 15 s, 30 s, ...
130    interrupted (time-limit warning, scancel,       not in place (the allocation is
       preemption); its trial is queued again          ending); ``--requeue`` lets Slurm
                                                       restart a preempted task
>128   killed by signal 128-N before the worker        no
       could handle it (137: SIGKILL, OOM killer)
=====  ==============================================  =====================================

``#SBATCH --requeue`` is on by default: a task requeued after preemption or a node failure
simply rejoins the study (a worker that finds the budget met exits 0). Site-wide, an admin's
``RequeueExit=1`` would requeue on exit 1 too; never list 2 there.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from siamese_core.errors import ConfigError, InfrastructureError

from . import names
from .secrets import mask_secrets, mask_url
from .spec import SweepSpec

# worker exit codes (see sweeps.cli) as the batch script treats them
EXIT_RETRIED_IN_PLACE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

DEFAULT_SIGNAL_SECONDS = 180  # > SIAMESE_SWEEP_MLFLOW_RETRY_SECONDS (120 s): the trial's clean-up fits
DEFAULT_RETRIES = 2
RETRY_BACKOFF_S = 15
# what the tasks read from the environment sbatch exports (values never enter the script)
CONNECTION_ENV = (names.ENV_OPTUNA_STORAGE, names.ENV_MLFLOW_TRACKING_URI, names.ENV_MLFLOW_TRACKING_USERNAME,
                  names.ENV_MLFLOW_TRACKING_PASSWORD)
FILE_SUFFIX = names.SECRET_FILE_SUFFIX

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_SBATCH_VALUE = re.compile(r"^[^\s'\"\\]+$")
_MEM = re.compile(r"[0-9]+[KMGTkmgt]?")  # sbatch --mem: a size, units K, M, G or T (default M)


# the #SBATCH options `render_script` writes itself, and the flag that sets each: one given again through
# --sbatch-arg would win (sbatch takes the last), and the job would not be the one this command describes
RENDERED_OPTIONS = {"--array": "--tasks, --max-concurrent", "--job-name": "--job-name", "--output": "--output",
                    "--ntasks": "one worker per task", "--cpus-per-task": "--cpus-per-task", "--time": "--time",
                    "--partition": "--partition", "--gpus-per-task": "--gpus-per-task", "--mem": "--mem",
                    "--signal": "--preempt-signal-seconds", "--requeue": "--requeue / --no-requeue",
                    "--no-requeue": "--requeue / --no-requeue", "--open-mode": "append, for retries' logs"}

# sbatch options whose names begin a rendered one's (sbatch's man page, 22.05): an exact name wins over a prefix
SBATCH_OWN_PREFIXES = frozenset({"--gpus"})


class SlurmError(InfrastructureError, RuntimeError):
    """sbatch refused the job or could not reach the controller."""


# sbatch refusing what the user asked for (a partition, a size, an option): exit 2, not the exit 1 of a controller
# that could not be reached ("Batch job submission failed: Unable to contact slurm controller")
# (not "Required partition not available (inactive or drain)", "Requested nodes are busy", "... presently disabled")
_SBATCH_REFUSED_INPUT = re.compile(r"Batch job submission failed: (Invalid (?!.*(?:drain|busy|now\b))|"
                                   r"Requested node configuration is not available|Requested time limit is invalid|"
                                   r"Memory specification can not be satisfied|Node count specification invalid|"
                                   r"More processors requested than permitted)|sbatch: unrecognized option|"
                                   r"sbatch: invalid option")


def job_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What sbatch exports to the tasks: `env` without each secret the CLI read from its ``*_FILE`` (the CLI sets
    ``NAME`` from the file for its own use). Only the path travels, as docs/cluster.md says: the job environment,
    which Slurm's admins can read, held the password the file was meant to keep out of it. A relative ``*_FILE``
    path is made absolute: each task runs in a temporary folder, where `storage-url` named no file (exit 2 in
    every task, after submit said nothing)."""
    secret_files = {name + FILE_SUFFIX for name in names.SECRET_ENV}
    return {k: (os.path.abspath(v) if k in secret_files and v else v) for k, v in env.items()
            if not (k in names.SECRET_ENV and env.get(k + FILE_SUFFIX))}


@dataclass(frozen=True)
class SlurmOptions:
    """What goes into the ``#SBATCH`` lines and the task loop."""

    study: str
    tasks: int
    time: str | None = None
    partition: str | None = None
    cpus_per_task: int = 1
    gpus_per_task: int | None = None
    mem: str | None = None
    max_concurrent: int | None = None
    signal_seconds: int = DEFAULT_SIGNAL_SECONDS
    requeue: bool = True
    retries: int = DEFAULT_RETRIES
    job_name: str | None = None
    output: str = "siamese-sweep-%x-%A_%a.out"
    worker_command: tuple[str, ...] = ("siamese-sweep",)
    setup: tuple[str, ...] = ()
    sbatch_args: tuple[str, ...] = field(default_factory=tuple)
    retry_backoff_s: int = RETRY_BACKOFF_S  # before retry k: k * this (tests use 0)
    trials: int | None = None  # the study's budget, set by each task's worker (None: the study's own)

    def validate(self) -> None:
        """ConfigError (exit 2) naming the flag, before anything is submitted."""
        from .preflight import check_study_name

        check_study_name(self.study)  # what every task's `worker --study` would refuse, and it is in a comment line
        if self.mem is not None and not _MEM.fullmatch(self.mem):
            raise ConfigError("--mem", f"expected a size such as 4000, 16G or 512M (Slurm's --mem); received: "
                                       f"{self.mem!r}")
        if self.tasks < 1:
            raise ConfigError("--tasks", f"expected a positive number of array tasks; received: {self.tasks}")
        if self.trials is not None and self.trials < 1:
            raise ConfigError("--trials", f"expected a positive number; received: {self.trials}")
        if self.cpus_per_task < 1:
            raise ConfigError("--cpus-per-task", f"expected a positive number; received: {self.cpus_per_task}")
        if self.gpus_per_task is not None and self.gpus_per_task < 0:
            raise ConfigError("--gpus-per-task", f"expected 0 or more; received: {self.gpus_per_task}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError("--max-concurrent", f"expected a positive number; received: {self.max_concurrent}")
        if not 1 <= self.signal_seconds <= 65535:
            raise ConfigError("--preempt-signal-seconds", f"expected 1..65535 (Slurm's limit); received: "
                                                         f"{self.signal_seconds}")
        if self.retries < 0:
            raise ConfigError("--retries", f"expected 0 or more; received: {self.retries}")
        if not self.worker_command:
            raise ConfigError("--worker-command", "must not be empty")
        for flag, value in (("--partition", self.partition), ("--mem", self.mem), ("--job-name", self.job_name),
                            ("--output", self.output), ("--time", self.time)):
            if value is not None and not _SBATCH_VALUE.match(value):
                raise ConfigError(flag, f"no spaces, quotes or backslashes in an #SBATCH value; received: {value!r}")
        for value in self.sbatch_args:
            if not value.startswith("--") or "\n" in value or not _SBATCH_VALUE.match(value):
                raise ConfigError("--sbatch-arg", f"expected one long sbatch option such as --account=NAME "
                                                  f"(no spaces or quotes); received: {value!r}")
            given = value.split("=", 1)[0]
            # sbatch takes the last of a repeated option, and a long option's unique prefix (--arr for --array):
            # --array=0-5 queued 6 tasks where this command said 2, and --job-name or --output moved what the docs
            # point at. A prefix that is an option of its own (--gpus, per job) is that option
            written = [r for r in RENDERED_OPTIONS if r == given or (r.startswith(given) and len(given) > 3
                                                                     and given not in SBATCH_OWN_PREFIXES)]
            if written:
                raise ConfigError("--sbatch-arg", f"{written[0]} is written by siamese-sweep slurm submit "
                                                  f"({RENDERED_OPTIONS[written[0]]}); received: {value!r}")
        for line in self.setup:
            if "\n" in line or "\r" in line:
                raise ConfigError("--setup", "one shell line per --setup (repeat the flag for more)")
        if self.time is not None:
            limit = time_limit_seconds(self.time)
            if limit is not None and self.signal_seconds >= limit:
                raise ConfigError("--preempt-signal-seconds", f"the warning ({self.signal_seconds} s) must come "
                                                             f"before the time limit ({self.time} = {limit} s)")


def time_limit_seconds(value: str) -> int | None:
    """Seconds in a Slurm ``--time`` value (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``); None if unlimited."""
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _TIME.match(value)
    if not m:
        raise ConfigError("--time", f"expected minutes, MM:SS, HH:MM:SS or D-HH[:MM[:SS]]; received: {value!r}")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        return int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    if c is not None:  # HH:MM:SS
        return int(a) * 3600 + int(b) * 60 + int(c)
    if b is not None:  # MM:SS
        return int(a) * 60 + int(b)
    return int(a) * 60  # minutes


# ------------------------------------------------------------------ the spec
# where each connection sits in a spec
_SPEC_FIELDS = {names.ENV_OPTUNA_STORAGE: ("study", "storage"), names.ENV_MLFLOW_TRACKING_URI: ("tracking", "uri")}
ENV_PLACEHOLDER = "env:"  # no storage or tracking URI has this scheme: a worker that falls back to it fails loudly


def spec_yaml(spec: SweepSpec, *, from_env: tuple[str, ...] = ()) -> str:
    """The fully resolved spec (base inlined, defaults filled) as YAML: what every task loads.

    `from_env`: connections the tasks take from their environment. Their spec fields become
    ``env:NAME``, so a worker that somehow ignored the environment stops with an error instead of
    quietly running a private study in the default ``sqlite:///optuna.db`` of its temp directory.
    """
    data = spec.to_dict()
    data["search_space"] = {k: (v.model_dump(mode="json", exclude_none=True) if hasattr(v, "model_dump") else v)
                            for k, v in spec.search_space.items()}
    header = ""
    for name in from_env:
        section, key = _SPEC_FIELDS[name]
        data[section][key] = ENV_PLACEHOLDER + name
        header += f"# {section}.{key}: from ${name} (or ${name}{FILE_SUFFIX}) in the task's environment\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def _is_relative_file_url(url: str) -> bool:
    from .storage import _journal_path, sqlite_path

    if url.startswith("sqlite:///"):
        path = sqlite_path(url)
        return path is None or not path.is_absolute()  # also sqlite:///:memory:
    journal = _journal_path(url)
    if journal is not None:
        return not journal.is_absolute()
    return "://" not in url and not url.startswith("/")


def _is_local_file_url(url: str) -> bool:
    return url.startswith(("sqlite:", "journal:", "file:", "/")) or "://" not in url


@dataclass(frozen=True)
class ClusterCheck:
    warnings: tuple[str, ...] = ()
    required_env: tuple[str, ...] = ()  # the script stops with exit 2 if a task lacks all of these
    # where the tasks run their worker: a SQLite tracking store's folder, for MLflow puts its artifacts in
    # ./mlruns of the working directory, and the task's own one is deleted when it ends (every model was lost)
    workdir: str | None = None


def check_spec_for_cluster(spec: SweepSpec, text: str, env: Mapping[str, str]) -> ClusterCheck:
    """Refuse what cannot work on a cluster (ConfigError, exit 2); warn about what might not.

    * the spec is embedded in the script, so it must not hold a password;
    * a store that is a file relative to the working directory (the default ``sqlite:///optuna.db``)
      would give every task its own private study on its node: each would run the whole budget;
    * an absolute SQLite path works only where every task sees the same file (one node, or a shared
      file system with working locks): a warning;
    * a store given in the environment must reach the tasks: the script checks it is there.
    """
    for spec_field, value in (("study.storage", spec.study.storage), ("tracking.uri", spec.tracking.uri),
                              ("", text)):
        if mask_url(value) != value:  # user:password@ or ?password= in a URL
            raise ConfigError(spec_field or "spec", "holds a password in a URL, and the batch script embeds the "
                                                    "spec. Put connection URLs in OPTUNA_STORAGE / MLFLOW_TRACKING_URI "
                                                    "(or *_FILE) in the environment instead")
    warnings: list[str] = []
    required: list[str] = []
    workdir = None
    for env_name, spec_field, spec_value in ((names.ENV_OPTUNA_STORAGE, "study.storage", spec.study.storage),
                                              (names.ENV_MLFLOW_TRACKING_URI, "tracking.uri", spec.tracking.uri)):
        if env.get(env_name + FILE_SUFFIX) and not env.get(env_name):
            required.append(env_name)  # read on the node: nothing more to check here
            continue
        value, where = (env[env_name], f"${env_name}") if env.get(env_name) else (spec_value, "the spec's value")
        if value in ("memory", "inmemory", ":memory:") or _is_relative_file_url(value):
            raise ConfigError(spec_field, f"{where} = {mask_url(value)!r} is relative to each task's working "
                                          f"directory: every task would run its own private study. Export "
                                          f"{env_name} (or {env_name}{FILE_SUFFIX}) pointing at a server "
                                          f"(postgresql://..., http://...) every node reaches")
        if env.get(env_name):
            required.append(env_name)
        if _is_local_file_url(value):
            warnings.append(f"{where} = {mask_url(value)!r} is a file: every task must see the same file "
                            f"(one node, or a shared file system with working locks)")
            from .storage import sqlite_path  # as `_is_relative_file_url`: Optuna's storages load with it

            path = sqlite_path(value) if env_name == names.ENV_MLFLOW_TRACKING_URI else None
            if path is not None:
                workdir = str(path.parent)
                warnings.append(f"the tasks run their worker in {workdir}: a SQLite tracking store keeps its "
                                f"artifacts (models, plots) in ./mlruns of the working directory")
    return ClusterCheck(tuple(warnings), tuple(required), workdir)


# ------------------------------------------------------------------ rendering
def _delimiter(text: str) -> str:
    tag = "END_OF_SPEC_" + hashlib.sha256(text.encode()).hexdigest()[:12]
    assert tag not in text.splitlines()
    return tag


def _env_guard(names: tuple[str, ...]) -> str:
    """Stop (exit 2) if the job's environment lacks a connection the submit host had (sbatch --export=NONE...)."""
    lines = []
    for name in names:
        lines.append(f'if [ -z "${{{name}:-}}${{{name}{FILE_SUFFIX}:-}}" ]; then\n'
                     f'  echo "siamese-sweep: {name} (or {name}{FILE_SUFFIX}) is not set in this job\'s environment; '
                     f'it was at submission (sbatch --export?)" >&2\n'
                     f'  exit {EXIT_BAD_INPUT}\nfi')
    return "\n".join(lines) or "# (no connection variables required)"


def render_script(spec_text: str, options: SlurmOptions, *, required_env: tuple[str, ...] = (),
                  workdir: str | None = None) -> str:
    """The sbatch script: #SBATCH lines, the embedded spec, and a loop that runs and supervises one worker.

    `required_env`: variables (each, or its ``*_FILE`` twin) a task must find in its environment; `workdir`: the
    folder the worker runs in (`ClusterCheck.workdir`), else the task's temporary one.
    """
    options.validate()
    o = options
    array = f"0-{o.tasks - 1}" + (f"%{o.max_concurrent}" if o.max_concurrent else "")
    job_name = o.job_name or "siamese-" + re.sub(r"[^\w.\-]", "_", o.study)[:64]
    directives = [f"--job-name={job_name}", f"--array={array}", "--ntasks=1", f"--cpus-per-task={o.cpus_per_task}"]
    if o.time:
        directives.append(f"--time={o.time}")
    if o.partition:
        directives.append(f"--partition={o.partition}")
    if o.gpus_per_task:
        directives.append(f"--gpus-per-task={o.gpus_per_task}")
    if o.mem:
        directives.append(f"--mem={o.mem}")
    directives += [f"--signal=B:USR1@{o.signal_seconds}", "--requeue" if o.requeue else "--no-requeue",
                   "--open-mode=append", f"--output={o.output}", *o.sbatch_args]
    tag = _delimiter(spec_text)
    worker = shlex.join([*o.worker_command, "worker"])
    setup = "\n".join(o.setup)
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), _HEADER.format(
        study=o.study, tasks=o.tasks, retries=o.retries, env=", ".join(CONNECTION_ENV))]
    chdir = ("" if workdir is None else f"# a SQLite tracking store's artifacts go to ./mlruns: beside it, not in "
             f"$work (deleted at exit)\ncd {shlex.quote(workdir)} || exit 2\n")
    lines.append(_BODY.format(spec=spec_text.rstrip("\n"), tag=tag, setup=setup or "# (no --setup lines)",
                              chdir=chdir,
                              guard=_env_guard(required_env),
                              worker=worker, study=shlex.quote(o.study), cpus=o.cpus_per_task,
                              budget="" if o.trials is None else f" --trials {int(o.trials)}",
                              signal_seconds=o.signal_seconds, retries=o.retries, backoff=o.retry_backoff_s))
    return "\n".join(lines)


_HEADER = """#
# Rendered by `siamese-sweep slurm submit` for study {study}: {tasks} array task(s), one
# `siamese-sweep worker` each, sharing the study's global trial budget. Self-contained: the
# spec is embedded below and written to the node's $TMPDIR; nothing on the submit host is read.
# Credentials are not in this file: the worker reads {env}
# (or the *_FILE variables naming files on the node) from the job's environment.
#
# Task exit status: 0 budget met; 2 bad spec/data/config (never retried); 1 other error
# (retried here up to {retries} times); 130 interrupted by the time-limit warning, scancel or
# preemption (its trial is queued again in the study); >128 killed by a signal."""

_BODY = r"""
set -u
umask 077
{guard}
work=$(mktemp -d "${{TMPDIR:-/tmp}}/siamese-sweep.XXXXXXXX") || exit 1
trap 'cd /; rm -rf "$work"' EXIT
cat > "$work/spec.yaml" <<'{tag}'
{spec}
{tag}
cd "$work" || exit 1
{setup}
{chdir}
worker=""    # pid of the running worker
stop=""      # set once a stop was asked for: no retry after that
pending=0    # a trapped signal interrupted `wait`
# USR1 (--signal=B:USR1@N) reaches this shell only: pass it on as the SIGTERM the worker handles.
# scancel, preemption and the time limit send SIGTERM to the worker as well: don't send a second.
on_usr1() {{
  stop=USR1; pending=1
  echo "siamese-sweep: time limit in {signal_seconds} s or less: stopping the worker" >&2
  if [ -n "$worker" ]; then kill -TERM "$worker" 2>/dev/null; fi
}}
on_term() {{ stop=TERM; pending=1; }}
trap on_usr1 USR1
trap on_term TERM INT

threads="${{SLURM_CPUS_PER_TASK:-{cpus}}}"
attempt=0
while :; do
  attempt=$((attempt + 1))
  job="${{SLURM_ARRAY_JOB_ID:-${{SLURM_JOB_ID:-?}}}}"
  echo "siamese-sweep: task ${{SLURM_ARRAY_TASK_ID:-0}} of job $job on $(hostname), attempt $attempt" >&2
  {worker} "$work/spec.yaml" --study {study} --threads "$threads"{budget} &
  worker=$!
  rc=""; last=""
  while [ -z "$rc" ]; do
    pending=0
    wait "$worker"; status=$?
    if [ "$pending" = 0 ]; then rc=$status                         # the worker exited
    elif [ "$status" -eq 127 ] && [ -n "$last" ]; then rc=$last    # it had exited before the trap ran
    fi
    last=$status
  done
  worker=""
  if [ -n "$stop" ] || [ "$rc" -ne 1 ] || [ "$attempt" -gt {retries} ]; then break; fi
  echo "siamese-sweep: worker exited 1; retrying in $((attempt * {backoff})) s" >&2
  sleep $((attempt * {backoff})) & wait $!
  if [ -n "$stop" ]; then break; fi
done
case $rc in
  0) echo "siamese-sweep: done" >&2 ;;
  2) echo "siamese-sweep: bad spec, data or config (exit 2): not retried" >&2 ;;
  130) echo "siamese-sweep: interrupted (exit 130); the trial was queued again in the study" >&2 ;;
  *) echo "siamese-sweep: worker exited $rc" >&2 ;;
esac
exit "$rc"
"""


# ------------------------------------------------------------------ submitting
def find_sbatch() -> str:
    path = shutil.which("sbatch")
    if path is None:
        raise ConfigError("sbatch", "not found on PATH: run this on a Slurm login node (or use --dry-run to see "
                                    "the script)")
    return path


def submit(script: str, *, sbatch: str | None = None, env: Mapping[str, str] | None = None,
           timeout: float = 120) -> str:
    """Hand `script` to ``sbatch --parsable`` on stdin; return the job id.

    The environment is passed as it is (sbatch exports it to the tasks); nothing secret goes on
    sbatch's command line.
    """
    cmd = [sbatch or find_sbatch(), "--parsable"]
    res = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ if env is None else env))
    if res.returncode != 0:
        msg = " ".join(mask_secrets(res.stderr).split()) or f"exit {res.returncode}"
        if _SBATCH_REFUSED_INPUT.search(msg):
            raise ConfigError("sbatch", f"refused the job: {msg}")
        raise SlurmError(f"sbatch refused the job: {msg}")
    job_id = res.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {mask_secrets(res.stdout.strip())!r}")
    return job_id


def exported_names(env: Mapping[str, str], sbatch_args: tuple[str, ...] = ()) -> list[str]:
    """Which connection variables the tasks will receive (names only, for the user's peace of mind), as sbatch's
    ``--export`` lets them through: ``SBATCH_EXPORT``, which sbatch puts above the script's ``#SBATCH`` lines,
    else the last ``--sbatch-arg=--export=...`` (one of those lines), else ALL. ``--export=NONE`` printed every
    name set here although the job got none of them."""
    export = "ALL"
    for arg in sbatch_args:
        if arg.startswith("--export="):
            export = arg.split("=", 1)[1]
    export = env.get("SBATCH_EXPORT") or export
    listed = [item.split("=", 1)[0] for item in export.split(",")]
    kept = None if listed[0].upper() == "ALL" else set(listed)  # NONE and NIL list no variable of ours
    names = []
    for name in CONNECTION_ENV:
        for key in (name, name + FILE_SUFFIX):
            if env.get(key) and (kept is None or key in kept):
                names.append(key)
    return names


def describe(job_id: str, options: SlurmOptions) -> dict[str, Any]:
    return {"job_id": job_id, "study": options.study, "tasks": options.tasks,
            "array": f"{job_id}_[0-{options.tasks - 1}]"}
