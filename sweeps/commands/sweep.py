"""``run``, ``worker`` and ``status``: Optuna studies tracked in MLflow."""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from .. import names, pruners, samplers
from ..argtypes import output_file
from ..cli import EXIT_ERROR, EXIT_OK, add_set_option, add_study_option, flag_or_env, json_text, print_json
from ..launch import WAIT_FLAG


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help=f"Optuna storage URL (default: ${names.ENV_OPTUNA_STORAGE}, the spec's, "
                                     "else sqlite:///optuna.db)")
    p.add_argument("--tracking-uri", help=f"MLflow tracking URI (default: ${names.ENV_MLFLOW_TRACKING_URI}, the "
                                          "spec's, else sqlite:///mlflow.db)")
    add_study_option(p)
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    add_set_option(p, what="spec")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final study status as JSON on stdout")


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run (or resume) a sweep", description=(
        "Create or resume a study and run it to its trial budget. Running the same command again resumes it. "
        f"Samplers (study.sampler.type): {', '.join(samplers.names())}. "
        f"Pruners (study.pruner.type): {', '.join(pruners.names())}."))
    r.add_argument("spec", nargs="?", help="sweep spec YAML (default: the built-in quickstart)")
    r.add_argument("--trials", type=int, help="global trial budget (COMPLETE + PRUNED), across workers and restarts")
    r.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    r.add_argument("--threads", type=int, help="TensorFlow threads per worker (default: the CPUs this process may "
                   "use, affinity mask and cgroup quota, divided among --workers)")
    _common(r)
    r.set_defaults(handler=cmd_run)

    w = sub.add_parser("worker", help="join a running study from another shell or machine")
    w.add_argument("spec", nargs="?", help="sweep spec YAML; without it, --study joins with the spec stored with "
                                           "the study (a different spec is refused)")
    w.add_argument("--trials", type=int, help="set the study's global trial budget (COMPLETE + PRUNED), as run "
                   "--trials does (default: the budget the study has)")
    w.add_argument("--threads", type=int, help="TensorFlow threads for this worker "
                   "(default: the CPUs it may use: affinity mask and cgroup quota)")
    w.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    w.add_argument("--no-finalize", action="store_true", help=argparse.SUPPRESS)
    w.add_argument(WAIT_FLAG, dest="wait_for_go", action="store_true", help=argparse.SUPPRESS)  # from run --workers
    _common(w)
    w.set_defaults(handler=cmd_worker)

    s = sub.add_parser("status", help="trials by state, best trial, prune/fail reasons")
    s.add_argument("spec", nargs="?", help="sweep spec YAML (for its storage and study name)")
    s.add_argument("--storage", help=f"Optuna storage URL (default: ${names.ENV_OPTUNA_STORAGE}, else the spec's)")
    add_study_option(s, help="study name")
    add_set_option(s, what="spec")
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    s.set_defaults(handler=cmd_status)

    rp = sub.add_parser("report", help="what the sweep learned: best vs start-up, importances, failure map",
                        description="One Markdown page: the best trial against the random start-up trials, "
                                    "parameter importances, the failure map (which diagnostic or prune/fail "
                                    "reason hit which trials, and in which region of the search space) and a "
                                    "narrower search space. Also logged to the parent run as report.md.")
    rp.add_argument("spec", nargs="?", help="sweep spec YAML (for its storage and study name)")
    rp.add_argument("--storage", help=f"Optuna storage URL (default: ${names.ENV_OPTUNA_STORAGE}, else the spec's)")
    add_study_option(rp, help="study name")
    add_set_option(rp, what="spec")
    rp.add_argument("--json", action="store_true", help="print the report as JSON")
    rp.add_argument("-o", "--output", type=output_file,
                    help="write the report (Markdown, or JSON with --json) to this file instead of stdout")
    rp.set_defaults(handler=cmd_report)

    c = sub.add_parser("convert", help="turn a W&B sweep file into a siamese-sweep spec", description=(
        "Convert a Weights & Biases sweep config (method, metric {name, goal, target}, parameters, early_terminate, "
        "run_cap) into a spec and print it (or write it with -o). 'run' and 'worker' also read a W&B file "
        "directly; this shows what they make of it. What has no equivalent is listed on stderr."))
    c.add_argument("source", metavar="WANDB_YAML", help="the W&B sweep file")
    c.add_argument("-o", "--output", metavar="SPEC_YAML", type=output_file,
                   help="write the spec here instead of printing it")
    add_study_option(c, help="study name (default: the W&B sweep's name, else siamese-sweep)")
    c.set_defaults(handler=cmd_convert)


def _spec(args: argparse.Namespace, *, stored: str = "never", checked: bool = False):
    """The spec file's (default: the built-in quickstart); without a file but with --study, the spec stored
    with that study: ``stored="required"`` (worker) or ``"if-exists"`` (run). `checked`: a file `run --workers N`
    wrote for its workers, checked by the parent already (it may be a study's stored spec, which checks added
    since must not refuse: `sweeps.spec.spec_from_dict`)."""
    from siamese_core.config import parse_set_options

    from ..spec import load_spec
    from ..specs import resolve_spec_path

    overrides = parse_set_options(args.overrides)
    if stored != "never" and args.spec is None and args.study:
        from ..study import spec_stored_with

        spec = spec_stored_with(args.storage, args.study, overrides, missing_ok=stored == "if-exists")
        if spec is not None:
            return spec
    return load_spec(resolve_spec_path(args.spec), overrides, stored=checked)


def cmd_run(args: argparse.Namespace) -> int:
    from ..api import check_positive, sweep

    spec = _spec(args, stored="if-exists")
    check_positive("--workers", args.workers)
    check_positive("--trials", args.trials)
    check_positive("--timeout", args.timeout, whole=False)
    check_positive("--threads", args.threads)
    # `sweep` runs the preflight: a bad spec or data exits 2 before Optuna or MLflow create anything
    result = sweep(spec, trials=args.trials, timeout=args.timeout, workers=args.workers,
                   storage=args.storage or None,  # else $OPTUNA_STORAGE, read (and named) by `sweep`
                   tracking_uri=flag_or_env(args.tracking_uri, names.ENV_MLFLOW_TRACKING_URI),
                   study_name=args.study, progress=not args.quiet, threads=args.threads)
    _report(result.status, args.json)
    # a timeout from --timeout or the spec's study.timeout is a planned end (the spec's exited 1 without a word)
    return EXIT_OK if result.finished or result.stopped_by == "timeout" else EXIT_ERROR


def cmd_worker(args: argparse.Namespace) -> int:
    on_interrupt = None
    if args.wait_for_go:  # started by `run --workers N`, which stops its waiting workers itself on Ctrl-C
        on_interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    from siamese_core.config import parse_set_options

    from ..api import check_positive
    from ..preflight import preflight

    spec = _spec(args, stored="required", checked=args.wait_for_go)
    check_positive("--trials", args.trials)
    check_positive("--timeout", args.timeout, whole=False)
    check_positive("--threads", args.threads)
    from ..runner import set_worker_threads

    set_worker_threads(args.threads)  # before the preflight's first TensorFlow op
    if args.wait_for_go:
        from ..launch import wait_for_go

        if not wait_for_go(spec):
            return EXIT_OK  # the parent gave up before creating the study: nothing to join, nothing created
        signal.signal(signal.SIGINT, on_interrupt)
    data = preflight(spec, warn=args.worker_index == 0)  # a worker process of `run --workers N` does not repeat them

    from ..options import given_storage, options_from
    from ..runner import join_sweep

    # a budget given here is the study's, as `run --trials` sets it (`--set study.trials=N` too: it was ignored)
    budget = args.trials or (spec.study.trials if "study.trials" in parse_set_options(args.overrides) else None)
    storage, given_as = given_storage(args.storage)
    options = options_from(spec, trials=budget, timeout=args.timeout, storage=storage,
                           tracking_uri=flag_or_env(args.tracking_uri, names.ENV_MLFLOW_TRACKING_URI),
                           study_name=args.study, progress=not args.quiet, storage_given_as=given_as)
    options.sets_budget = budget is not None
    # join_sweep sets the pools again: with None it would give this worker every usable core, and two
    # `worker --threads 1` from `run --workers 2` ran with two threads each (a trial ~20 % slower beside the other)
    options.worker_index, options.finalize, options.threads = args.worker_index, not args.no_finalize, args.threads
    result = join_sweep(spec, options, data=data)
    if args.json:
        print_json(result.status)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from ..study import load_study, study_status

    storage, study, given_as = _study_of(args)
    loaded = load_study(study, storage, field=given_as)
    status = study_status(loaded)
    if args.json:  # the sweep report's findings too (best vs start-up, importances, failure map)
        from ..report import build_report

        status["report"] = build_report(loaded, status).to_dict()  # the margin status tested already
    _report(status, args.json)
    return EXIT_OK


def _study_of(args: argparse.Namespace) -> tuple[str, str, str]:
    """(storage, study name, where the storage came from) from the flags, the environment or the spec (as
    `status`)."""
    from ..options import given_storage

    storage, given_as = given_storage(args.storage)
    if args.spec or args.overrides or not (storage and args.study):
        spec = _spec(args)
        return storage or spec.study.storage, args.study or spec.study.name, given_as
    return storage, args.study, given_as


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..report import build_report, render_markdown
    from ..study import load_study

    storage, study, given_as = _study_of(args)
    if args.output:
        from ..storage import storage_file

        _refuse_writing_onto(args.output, {"the study's storage": storage_file(storage), "the spec": args.spec})
    report = build_report(load_study(study, storage, field=given_as))
    text = json_text(report.to_dict()) if args.json else render_markdown(report)
    if args.output:  # with --json too: `--json -o FILE` printed the JSON and wrote no file
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    return EXIT_OK


def _refuse_writing_onto(output: str, inputs: dict[str, Any]) -> None:
    """`ConfigError` for ``--output`` if it names one of `inputs` (label -> path or None): the command would
    replace what it reads."""
    from pathlib import Path

    from siamese_core.errors import ConfigError

    target = Path(output)
    for label, path in inputs.items():
        if path is not None and target.exists() and Path(path).exists() and target.samefile(path):
            raise ConfigError("--output", f"{output} is {label}; writing there would replace it: name another file")


def cmd_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from siamese_core.config import read_yaml_mapping
    from siamese_core.errors import ConfigError

    from ..convert import from_wandb, looks_like_wandb
    from ..space import check_space
    from ..spec import spec_from_dict

    source = Path(args.source)
    if args.output:  # its comments and launcher settings would be lost
        _refuse_writing_onto(args.output, {"the W&B file being converted": source})
    data = read_yaml_mapping(source, what="W&B sweep")
    if not looks_like_wandb(data):
        raise ConfigError("", f"{source} is not a W&B sweep file (expected a 'parameters' section and no "
                              "search_space or base); siamese-sweep specs need no conversion")
    spec, notes = from_wandb(data, study_name=args.study)
    check_space(spec_from_dict(spec))  # a converted file that would not run is refused here, with the field named
    text = f"# converted from {source.name} by siamese-sweep convert\n" + yaml.safe_dump(spec, sort_keys=False)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    return EXIT_OK


def _phase_line(status: dict) -> str:
    """Did the search find the best trial, or was it one of the random start-up trials?"""
    best, startup, early = status.get("best") or {}, status.get("startup_trials"), status.get("best_startup_value")
    if not best.get("phase") or not startup:
        return ""  # a sampler without a start-up phase (random, grid), or none configured
    if best["phase"] == "enqueued":
        return "a configuration you enqueued (study.enqueue), not drawn by the sampler"
    if best["phase"] == "search":
        if early is None or best.get("value") is None:
            return f"found by the search phase (after the {startup} random start-up trials)"
        # six decimals and the margin: a search-phase best that beats the start-up by 0.000002 (the quickstart's
        # seed 0) is a tie, and the line must let a user see that rather than read it as the search winning
        return (f"found by the search phase: {best['value']:.6f} against {early:.6f}, the best of the {startup} "
                f"random start-up trials ({best['value'] - early:+.6f})")
    if not status.get("search_trials"):
        return f"from the {startup} random start-up trials: no trial of the search phase has finished yet"
    return f"from the {startup} random start-up trials: the search phase did not improve on it"


def _report(status: dict, as_json: bool) -> None:
    if as_json:
        print_json(status)
        return
    from ..margin import one_line

    counts = status["counts"]
    print(f"study {status['study']}: " + (", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v)
                                          or "no trials yet")
          + (f" (budget {status['budget']})" if status.get("budget") else ""))
    if status.get("stopped"):
        print(f"stopped early by study.stop: {status['stopped']}")
    if status.get("move_unfinished"):  # the counts and the best below are of the trials copied so far
        print("a move that did not finish: only some trials are here; run the same `siamese-sweep move` again "
              "with --replace-runs")
    best = status.get("best")
    if best:
        print(f"best trial #{best['number']}: value={best['value']:.4f}  run={best['run_id']}")
        test = best.get("test") or {}
        if test:  # chosen on validation above; test is the estimate to report
            print("    test: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(test.items())))
        phase = _phase_line(status)
        if phase:
            print(f"    {phase}")
        lead = one_line(status.get("margin"))
        if lead:
            print(f"    {lead}")
        for k, v in best["params"].items():
            print(f"    {k} = {v}")
    if status.get("not_ranked"):
        print(f"not ranked: trial(s) {', '.join(f'#{n}' for n in status['not_ranked'])} told COMPLETE outside "
              "siamese-sweep (Optuna's own tell or add_trial): no results recorded by a worker")
    metrics = status.get("metrics") or []
    for b in status.get("best_trials", []):
        values = b["values"] or []
        shown = ("  ".join(f"{m}={v:.4g}" for m, v in zip(metrics, values, strict=True))
                 if len(metrics) == len(values) else f"values={values}")  # a plain study: no names stored
        print(f"pareto trial #{b['number']}: {shown}  run={b['run_id']}")
    for number, info in sorted(status.get("running", {}).items()):
        if info.get("worker_gone"):  # otherwise "running N" above says it (another machine's: not known here)
            print(f"trial #{number}: running, but its worker {info['worker']} is gone from this machine (killed?); "
                  "the next worker's dead-worker check fails it (and queues it again while it has retries left)")
    for number, info in sorted(status.get("reasons", {}).items()):
        state, why, epoch = info["state"].lower(), info["reason"], info.get("epoch")
        if why == state:  # the pruner's own (`outcomes.PRUNED`): "pruned (pruned)" said nothing; the epoch does
            print(f"trial #{number}: {state} by the pruner" + ("" if epoch is None else f" at epoch {epoch}"))
        else:
            print(f"trial #{number}: {state} ({why})" + ("" if epoch is None else f", last epoch {epoch}"))
