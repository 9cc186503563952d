"""``move``: continue a study elsewhere (the laptop's SQLite files -> the cluster's PostgreSQL + MLflow server)."""
from __future__ import annotations

import argparse
import sys

from .. import names
from ..cli import EXIT_OK, add_study_option, flag_or_env, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("move", help="copy a study and its MLflow runs and models to another storage and server",
                       description=(
        "Copy a study (trials, attrs, stored spec) to another Optuna storage and its parent and trial runs "
        "(params, tags, metric histories, datasets, artifacts, logged models) to another MLflow tracking store; "
        "the trials' run ids and model URIs are rewritten to the copies. Then 'run'/'worker'/'promote' with "
        "the target storage and tracking URI continue the same study. The source is only read (trials whose "
        "worker died are failed first). Give the "
        f"target's passwords through ${names.ENV_OPTUNA_STORAGE} / ${names.ENV_MLFLOW_TRACKING_URI} and "
        f"${names.ENV_MLFLOW_TRACKING_USERNAME}/${names.ENV_MLFLOW_TRACKING_PASSWORD} (or their *_FILE), "
        "not on the command line; those credentials go to both servers (for a source server with other ones, "
        "move in two steps through local sqlite files)."))
    add_study_option(p, help="the study to move")
    p.add_argument("--from-storage", default="sqlite:///optuna.db",
                   help="the study's Optuna storage now (default: sqlite:///optuna.db)")
    p.add_argument("--from-tracking-uri", default="sqlite:///mlflow.db",
                   help="the MLflow tracking store it logged to (default: sqlite:///mlflow.db)")
    p.add_argument("--to-storage", help=f"target Optuna storage (default: ${names.ENV_OPTUNA_STORAGE})")
    p.add_argument("--to-tracking-uri", help=f"target MLflow tracking URI (default: ${names.ENV_MLFLOW_TRACKING_URI})")
    p.add_argument("--replace-runs", action="store_true",
                   help="the target tracking store already has this study's runs (an interrupted move): delete "
                        "them and copy again")
    p.add_argument("--json", action="store_true", help="print what was copied as JSON")
    p.set_defaults(handler=cmd_move)


def continue_hint(study: str, *, from_flags: bool) -> str:
    """How to go on with the moved study, with the target's URLs in the environment: they hold passwords, and a
    command line is shown by `ps` to every user (the hint once said `--storage <target> --tracking-uri <target>`)."""
    env = f"${names.ENV_OPTUNA_STORAGE} and ${names.ENV_MLFLOW_TRACKING_URI}"
    where = f"with {env} set to the target" if from_flags else f"in this environment ({env} name the target)"
    return f"continue it with: siamese-sweep run --study {study}   ({where})"


def cmd_move(args: argparse.Namespace) -> int:
    from siamese_core.errors import ConfigError

    from ..secrets import mask_url

    if not args.study:
        raise ConfigError("--study", "which study? give --study NAME")
    to_storage = flag_or_env(args.to_storage, names.ENV_OPTUNA_STORAGE)
    to_tracking = flag_or_env(args.to_tracking_uri, names.ENV_MLFLOW_TRACKING_URI)
    if not to_storage:
        raise ConfigError("--to-storage", f"where to? give --to-storage or set ${names.ENV_OPTUNA_STORAGE}")
    if not to_tracking:
        raise ConfigError("--to-tracking-uri", f"where to? give --to-tracking-uri or set "
                                               f"${names.ENV_MLFLOW_TRACKING_URI}")
    from ..move import move_study
    from ..signals import stop_on_signals

    # SIGTERM as Ctrl-C: the half-copied study is deleted on the way out (killed by SIGTERM, `move` left one,
    # marked, that `status` showed as a study)
    with stop_on_signals():
        result = move_study(args.study, from_storage=args.from_storage, from_tracking_uri=args.from_tracking_uri,
                            to_storage=to_storage, to_tracking_uri=to_tracking, replace_runs=args.replace_runs)
    if args.json:
        print_json(result.to_dict())
    else:
        print(f"moved study {result.study!r}: {result.trials} trial(s), {len(result.runs)} MLflow run(s), "
              f"{len(result.models)} model(s) -> {mask_url(to_storage)}, {mask_url(to_tracking)}"
              + (f" (parent run {result.parent_run_id})" if result.parent_run_id else ""))
        print(continue_hint(result.study, from_flags=bool(args.to_storage or args.to_tracking_uri)), file=sys.stderr)
    return EXIT_OK
