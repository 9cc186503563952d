"""``slurm submit``: a sweep as a Slurm job array of ``siamese-sweep worker`` tasks (see `sweeps.slurm`)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from ..cli import EXIT_OK, add_set_option, add_study_option, print_json
from ..names import ENV_OPTUNA_STORAGE, SECRET_ENV, SECRET_FILE_SUFFIX

if TYPE_CHECKING:
    from ..spec import SweepSpec


def register(sub: argparse._SubParsersAction) -> None:
    from ..slurm import DEFAULT_RETRIES, DEFAULT_SIGNAL_SECONDS

    group = sub.add_parser("slurm", help="run a sweep on a Slurm cluster",
                           description="Run a sweep as a Slurm job array: one worker per array task.")
    slurm_sub = group.add_subparsers(dest="slurm_command", required=True, metavar="SUBCOMMAND")
    p = slurm_sub.add_parser(
        "submit", help="submit a job array of workers for one study",
        description=(
            "Render a self-contained sbatch script (the resolved spec embedded; no shared disk assumed) and submit "
            "it with sbatch. Each array task runs `siamese-sweep worker`; together they meet the study's global "
            "trial budget. Connection URLs and passwords travel only in the environment: export OPTUNA_STORAGE, "
            "MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD (or the *_FILE variables "
            "naming files on the nodes) before submitting. Task exit codes: 0 done, 2 bad input (never retried), "
            "1 other error (retried in place --retries times), 130 interrupted (trial queued again)."))
    p.add_argument("spec", nargs="?", help="sweep spec YAML (default: the spec stored with the --study named, if "
                                           "$OPTUNA_STORAGE has it; else the built-in quickstart)")
    add_study_option(p)
    p.add_argument("--tasks", type=int, required=True, help="array tasks, i.e. worker processes (N)")
    p.add_argument("--trials", type=int, help="global trial budget, set on the study by every task's worker "
                                              "(default: the study's own, else the spec's study.trials)")
    p.add_argument("--time", help="time limit per task, e.g. 30, 4:00:00, 1-12 (sbatch --time)")
    p.add_argument("--partition", help="sbatch --partition")
    p.add_argument("--cpus-per-task", type=int, default=1,
                   help="CPUs per task; also the worker's TensorFlow threads (default 1)")
    p.add_argument("--gpus-per-task", type=int, help="GPUs per task (Slurm sets CUDA_VISIBLE_DEVICES)")
    p.add_argument("--mem", help="memory per node, e.g. 8G (sbatch --mem)")
    p.add_argument("--max-concurrent", type=int, help="at most this many tasks at once (--array=0-N%%M)")
    p.add_argument("--preempt-signal-seconds", type=int, default=DEFAULT_SIGNAL_SECONDS, metavar="N",
                   help=f"ask the worker to stop N seconds before the time limit, so it ends its trial cleanly "
                        f"(default {DEFAULT_SIGNAL_SECONDS}; keep it above SIAMESE_SWEEP_MLFLOW_RETRY_SECONDS)")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"rerun a worker that exits 1 (storage/MLflow down) this many times (default "
                        f"{DEFAULT_RETRIES}); exit 2 is never retried")
    p.add_argument("--no-requeue", dest="requeue", action="store_false",
                   help="don't let Slurm requeue tasks after preemption or node failure (default: requeue)")
    p.add_argument("--job-name", help="sbatch --job-name (default: siamese-<study>)")
    p.add_argument("--output", default="siamese-sweep-%x-%A_%a.out",
                   help="task log file, relative to the job's working directory (default: %(default)s)")
    p.add_argument("--worker-command", default="siamese-sweep",
                   help="how a node starts the CLI, e.g. 'apptainer exec sweep.sif siamese-sweep' or "
                        "'/opt/venv/bin/python -m sweeps.cli' (default: siamese-sweep)")
    p.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line run before the worker, e.g. 'module load cuda' (repeatable)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="--OPTION=VALUE",
                   help="one more #SBATCH option, e.g. --sbatch-arg=--account=ml (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the batch script; submit nothing")
    p.add_argument("--json", action="store_true", help='print {"job_id", "study", "tasks", "array"} as JSON')
    add_set_option(p, what="spec")
    # a *_FILE that names a file only the compute nodes have is the tasks' to read (docs/cluster.md): it was refused
    # here, as `cannot read the secret file`, by the CLI's reading of every *_FILE (`sweeps.secrets`)
    p.set_defaults(handler=cmd_submit, secret_files_on_nodes=True)


def _existing_study_spec(storage: str, study: str, overrides: dict[str, Any]) -> tuple[SweepSpec | None, bool]:
    """The spec stored with `study` in `storage`, its storage left to the tasks' environment (the URL may hold
    a password, which the embedded spec must not); None for no such study, or, with a warning, when this host
    cannot reach the storage or is not admitted to it (a database only the compute nodes reach or may log in
    to): the spec argument decides then. And whether the storage answered (asked again, an unreachable one
    cost its connection timeout twice)."""
    from siamese_core.errors import InfrastructureError

    from ..errors import HostNotAdmitted
    from ..spec import DEFAULT_STORAGE
    from ..study import stored_spec

    try:
        spec = stored_spec(storage, study, overrides, missing_ok=True, field=f"${ENV_OPTUNA_STORAGE}")
    except (InfrastructureError, HostNotAdmitted) as exc:
        _say_quickstart(study, f"from $OPTUNA_STORAGE here ({exc})")
        return None, False
    if spec is None:
        return None, True
    return spec.model_copy(update={"study": spec.study.model_copy(update={"storage": DEFAULT_STORAGE})}), True


def _say_quickstart(study: str, why: str) -> None:
    """The warning for a study whose stored spec could not be read here: its tasks' workers refuse the quickstart
    if the study exists with another spec, after the whole array has queued."""
    print(f"warning: could not read the spec stored with study {study!r} {why}; submitting the built-in "
          f"quickstart: pass the study's spec file if it exists", file=sys.stderr)


def _refuse_another_spec(storage: str, study: str, spec: SweepSpec, *, field: str) -> None:
    """`ConfigError` if `study` exists in `storage` with another spec, or does not and the spec fails the checks
    of a new study: every task's worker refused it (exit 2), after the whole array had queued. A storage this
    host cannot reach, or that does not admit its login, is left to the tasks, with a warning."""
    from siamese_core.errors import InfrastructureError

    from ..errors import HostNotAdmitted
    from ..preflight import refuse_spec_of_a_new_study
    from ..study import refuse_another_spec

    try:
        exists = refuse_another_spec(storage, study, spec, field=field)
    except (InfrastructureError, HostNotAdmitted) as exc:
        print(f"warning: could not compare the spec with the one stored with study {study!r} here ({exc}); "
              "each task's worker compares it", file=sys.stderr)
        return
    if not exists:
        refuse_spec_of_a_new_study(spec)


def cmd_submit(args: argparse.Namespace) -> int:
    import shlex

    from siamese_core.config import parse_set_options
    from siamese_core.errors import ConfigError

    from ..slurm import (
        FILE_SUFFIX,
        SlurmOptions,
        check_spec_for_cluster,
        describe,
        exported_names,
        job_environment,
        render_script,
        spec_yaml,
        submit,
    )
    from ..spec import load_spec
    from ..specs import resolve_spec_path
    from ..storage import storage_file

    overrides = parse_set_options(args.overrides)
    if args.trials is not None:
        if args.trials < 1:
            raise ConfigError("--trials", f"expected a positive number; received: {args.trials}")
        overrides["study.trials"] = args.trials
    spec, reached = None, True
    storage = os.environ.get(ENV_OPTUNA_STORAGE)
    unread = [name for name in SECRET_ENV  # files only the nodes have (`absent_ok`)
              if os.environ.get(name + SECRET_FILE_SUFFIX) and not os.environ.get(name)]
    if args.spec is None and args.study and storage:
        # an existing study (a moved one, resumed on the cluster) runs its own spec: the quickstart's was refused
        # by every task's worker ("created with another spec"), after the whole array had queued
        spec, reached = _existing_study_spec(storage, args.study, overrides)
    if spec is None:
        spec = load_spec(resolve_spec_path(args.spec), overrides)
    study = args.study if args.study is not None else spec.study.name  # `--study ''` is refused, not the spec's
    options = SlurmOptions(
        study=study, tasks=args.tasks, time=args.time, partition=args.partition, cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task, mem=args.mem, max_concurrent=args.max_concurrent,
        signal_seconds=args.preempt_signal_seconds, requeue=args.requeue, retries=args.retries,
        job_name=args.job_name, output=args.output, worker_command=tuple(shlex.split(args.worker_command)),
        setup=tuple(args.setup), sbatch_args=tuple(args.sbatch_arg),
        # a budget given here is the study's, as `worker --trials` sets it: in the spec alone, an existing study
        # kept its own and the tasks ran nothing
        trials=args.trials if args.trials is not None else
        (spec.study.trials if "study.trials" in overrides else None))
    options.validate()  # bad input is one line: before the warnings about the stores
    for name in unread:
        print(f"warning: {name}{SECRET_FILE_SUFFIX} names {os.environ[name + SECRET_FILE_SUFFIX]}, which this host "
              f"does not have: the tasks read it on their nodes, and what submit would check with it here is left "
              f"to them", file=sys.stderr)
    if args.spec is None and args.study and ENV_OPTUNA_STORAGE in unread:
        _say_quickstart(args.study, f"(${ENV_OPTUNA_STORAGE}{SECRET_FILE_SUFFIX} is read on the nodes)")
    env = job_environment(os.environ)  # what sbatch passes on; the checks see the values read from *_FILE too
    text = spec_yaml(spec)
    check = check_spec_for_cluster(spec, text, os.environ)
    for warning in check.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    names = exported_names(env, options.sbatch_args)
    unexported = [name for name in check.required_env if name not in names and name + FILE_SUFFIX not in names]
    if unexported:  # every task would stop with exit 2, after the whole array had queued
        # named where the export came from: sbatch reads $SBATCH_EXPORT before the script's lines
        raise ConfigError("$SBATCH_EXPORT" if env.get("SBATCH_EXPORT") else "--sbatch-arg",
                          f"the job's --export passes none of {', '.join(unexported)} (or its {FILE_SUFFIX} twin) "
                          f"that the tasks need: add them to --export")
    given_as = f"${ENV_OPTUNA_STORAGE}"  # (the CLI has read $OPTUNA_STORAGE_FILE into it: `sweeps.secrets`)
    if not storage and ENV_OPTUNA_STORAGE not in unread and storage_file(spec.study.storage) is not None:
        # the tasks use the spec's own storage then; a file (a relative one was refused above) is looked up here: a
        # spec naming its storage queued an array whose every task refused it. A server in the spec is left to the
        # tasks: its URL holds no password (refused above), so the login is the nodes' own (a ~/.pgpass, a trusted
        # address), which this host's can be refused where theirs is not
        storage, given_as = spec.study.storage, "study.storage"
    if storage and reached:  # the study the tasks join: --study, else the spec's own (the quickstart's without one)
        _refuse_another_spec(storage, study, spec, field=given_as)
    text = spec_yaml(spec, from_env=check.required_env)
    script = render_script(text, options, required_env=check.required_env, workdir=check.workdir)
    if args.dry_run:
        print(script)
        return EXIT_OK
    job_id = submit(script, env=env)
    if args.json:
        print_json(describe(job_id, options))
    else:
        print(f"submitted job {job_id}: {args.tasks} worker task(s) for study {study!r} "
              f"(environment passed: {', '.join(names) or 'none of the connection variables'})")
    return EXIT_OK
