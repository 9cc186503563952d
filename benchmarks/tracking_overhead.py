"""Tracking overhead: the same trials with and without MLflow, against a real local ``mlflow server``.

Three ways to run the same trials (random sampler with one seed, no pruner, so every condition trains
exactly the same parameter sets on the same pairs), each in its own process, interleaved over repeats:

* ``no tracking`` — the trial work alone: sample, train (our loaders, per-epoch validation, Optuna
  reports), test evaluation, latency probe. Nothing is sent anywhere.
* ``optuna MLflowCallback`` — the same, plus ``optuna_integration.MLflowCallback`` (what people use today:
  after each trial one run with the params and the final value; no curves, no model, no plots).
* ``siamese-sweep, in line`` — ``run_sweep`` with full tracking recorded in the worker's thread
  (``tracking.finish_in_background: false``): parent run, one child run per trial with params, per-epoch
  metrics, tags, diagnostics, plots and the logged model (keras + pyfunc flavors), epoch checkpoints (copied to
  the server), study artifacts;
* ``siamese-sweep, background`` — ``tracking.finish_in_background: true`` (what the default, ``auto``, does with
  a worker's TensorFlow threads on two or more cores, all it may use): each trial's recording
  runs in the background while the next trial trains (`sweeps.finisher`), its plots and model in a helper
  process at idle priority (`sweeps.recorder`);
* ``siamese-sweep, log_plots: false`` — in line, three matplotlib figures per trial less (and no study plots);
* ``siamese-sweep, runs only`` — in line with ``log_plots: false``, ``log_models: false`` and ``checkpoints: local``
  (epoch checkpoints on the local disk only, not copied to the server): what is left is the runs themselves
  (params, per-epoch metrics, tags, small artifacts), the Optuna storage and the per-sweep work.

Imports (TensorFlow, Keras, MLflow, Optuna; for the sweeps also Optuna's RDB storage, alembic, matplotlib and
scikit-learn's forests, which they import lazily, once per process) happen before the clock starts in every
condition.

Time per trial = wall time of the whole optimize loop / trials (so per-sweep costs are included); CPU per
trial = the child's user + sys time over the same span (all its threads), and that of its own child processes
(the recording helper of the background condition, counted once the sweep's end has waited for it).

``--side-by-side``: why, and what it measures. Run one after the other, a condition's repeats differ by 5-24 %
of a trial on these shared machines (BENCHMARKS.md §2): the machine's speed drifts over the minutes a sweep takes,
and no number of sequential repeats we can afford shows 1 %. Side by side, each tracked sweep runs at the same
time as a no-tracking sweep of the same trials, each pinned to its own core with one TensorFlow thread (what
``--workers 2`` on 2 cores gives each worker), the tracked one's ``mlflow server`` and recording helper on its
core too; the cores are swapped every repeat. Both see the same drift, so the paired ratio is the tracking's.

    pip install "siamese-sweep[bench]"      # optuna-integration, for the MLflowCallback condition
    python benchmarks/tracking_overhead.py [--trials 10] [--repeats 2] \
        [--conditions "siamese-sweep, in line" "siamese-sweep, background"] [--side-by-side]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK_BASE, cpu_seconds, markdown_table, median, run_child  # noqa: E402

CONDITIONS = ("no tracking", "optuna MLflowCallback", "siamese-sweep, in line", "siamese-sweep, background",
              "siamese-sweep, log_plots: false", "siamese-sweep, runs only")
TARGET_PCT = 1.0  # issue 11.4: tracking overhead < 1 % of trial time

BASE: dict[str, Any] = {
    "dataset": "fashion_mnist", "loader": "tfdata", "epochs": 4, "batch_size": 128,
    "pairs": {"pairs_per_epoch": 20000, "val_pairs": 2000, "test_pairs": 10000},
}
SPACE: dict[str, Any] = {
    "loss.margin": {"type": "float", "low": 0.5, "high": 2.0},
    "encoder.depth": {"type": "int", "low": 1, "high": 3},
    "learning_rate": {"type": "float", "low": 3.0e-4, "high": 1.0e-2, "log": True},
}


def make_spec(base: dict[str, Any], tracking_uri: str, trials: int, name: str, *, plots: bool = True,
              background: bool = True, runs_only: bool = False) -> Any:
    from sweeps.spec import spec_from_dict

    tracking: dict[str, Any] = {"uri": tracking_uri, "log_plots": plots, "finish_in_background": background}
    if runs_only:
        tracking.update({"log_plots": False, "log_models": False, "checkpoints": "local"})
    return spec_from_dict({
        "base": base, "search_space": SPACE,
        "study": {"name": name, "metric": "val_roc_auc", "trials": trials,
                  "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "none"}},
        "tracking": tracking,
    })


def import_before_the_clock(*, sweep: bool) -> None:
    """What a condition imports once per process, before its clock starts (`sweep`: also what siamese-sweep
    imports lazily); `tracking_profile.py` calls it too, so both scripts leave the same imports outside."""
    import keras  # noqa: F401
    import mlflow  # noqa: F401
    import optuna  # noqa: F401

    import siamese_core.training  # noqa: F401
    import sweeps.callbacks  # noqa: F401
    import sweeps.runner  # noqa: F401

    if sweep:
        import alembic.command  # noqa: F401 - the Optuna RDB storage's schema check
        import matplotlib.pyplot  # noqa: F401 - the study plots at the sweep's end
        import optuna.storages._rdb.models  # noqa: F401
        import optuna.visualization.matplotlib  # noqa: F401
        import sklearn.ensemble  # noqa: F401 - Optuna's fANOVA importances (the study's param_importances plots)


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` and of its descendants to `cpus`.
    Per thread: ``sched_setaffinity`` of a pid moves that one thread; threads started later inherit it."""
    from sweeps.stack._process import descendants

    for proc in [pid, *descendants(pid)]:
        for task in Path(f"/proc/{proc}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except OSError:
                pass  # a thread that ended meanwhile


def wait_for_start(barrier: str | None, tag: str) -> None:
    """Side by side: say this child has done its imports, then wait until its partner has too."""
    if barrier is None:
        return
    Path(f"{barrier}.{tag}.ready").touch()
    while not Path(f"{barrier}.go").exists():
        time.sleep(0.01)


def child(condition: str, base: dict[str, Any], tracking_uri: str, trials: int, tag: str, *,
          threads: int | None = None, barrier: str | None = None) -> dict[str, Any]:
    import optuna

    import_before_the_clock(sweep=condition.startswith("siamese-sweep"))
    name = f"overhead-{tag}"
    spec = make_spec(base, tracking_uri, trials, name, plots="log_plots" not in condition,
                     background=condition == "siamese-sweep, background",
                     runs_only=condition == "siamese-sweep, runs only")
    if condition.startswith("siamese-sweep"):
        from sweeps.options import options_from
        from sweeps.runner import run_sweep

        work = tempfile.mkdtemp(prefix="bench-overhead-")
        opts = options_from(spec, storage=f"sqlite:///{work}/optuna.db", tracking_uri=tracking_uri,
                            study_name=name, progress=False, threads=threads)
        wait_for_start(barrier, tag)
        t0, c0 = time.perf_counter(), cpu_seconds(children=True)
        result = run_sweep(spec, opts)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds(children=True) - c0
        assert result.budget_met, result.status
        return {"seconds": seconds, "cpu": cpu, "trials": trials, "train": logged_train_seconds(tracking_uri, name)}

    from siamese_core.training import train
    from sweeps import space

    if threads:  # a sweep sets them from its options (`run_sweep`); here, as it would
        from siamese_core.runtime import configure_threads

        configure_threads(threads, threads)
    from sweeps.callbacks import OptunaReporter
    from sweeps.objective import measure_latency_ms
    from sweeps.worker import DataCache

    cache = DataCache()
    values: list[float] = []

    trained = [0.0]

    def objective(trial: optuna.Trial) -> float:
        config = space.trial_config(spec, space.sample_overrides(trial, spec))
        result = train(config, callbacks=[OptunaReporter(trial, "val_roc_auc")], data=cache(config))
        trained[0] += result.seconds
        measure_latency_ms(result)
        values.append(float(result.history[-1]["val_roc_auc"]))
        return values[-1]

    callbacks = []
    if condition == "optuna MLflowCallback":
        from optuna_integration.mlflow import MLflowCallback  # checked by main() before anything starts

        callbacks.append(MLflowCallback(tracking_uri=tracking_uri, metric_name="val_roc_auc"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # no pruner, as in the sweeps' spec: Optuna's default (median) would prune these trials from the 6th on
    study = optuna.create_study(study_name=name, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner())
    wait_for_start(barrier, tag)
    t0, c0 = time.perf_counter(), cpu_seconds(children=True)
    study.optimize(objective, n_trials=trials, callbacks=callbacks)
    return {"seconds": time.perf_counter() - t0, "cpu": cpu_seconds(children=True) - c0, "trials": trials,
            "values": values, "train": trained[0]}


def logged_train_seconds(tracking_uri: str, study_name: str) -> float:
    """The sum of the study's trials' ``train_seconds`` (what `siamese_core.training.train` took), off the clock."""
    from mlflow import MlflowClient

    from sweeps import names

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000, filter_string=(
        f"tags.`{names.TAG_STUDY}` = '{study_name}' and tags.`{names.TAG_ROLE}` = '{names.ROLE_TRIAL}'"))
    return float(sum(r.data.metrics["train_seconds"] for r in runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10, help="per sweep (issue 11.4 asks for >= 10)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), metavar="CONDITION",
                    help="a subset of: " + ", ".join(f"'{c}'" for c in CONDITIONS)
                         + " ('no tracking' is always run: it is the reference)")
    ap.add_argument("--quick", action="store_true", help="digits, tiny trials (a smoke run; overhead looks large)")
    ap.add_argument("--epochs", type=int, help=f"per trial (default {BASE['epochs']})")
    ap.add_argument("--pairs-per-epoch", type=int, help=f"(default {BASE['pairs']['pairs_per_epoch']:,})")
    ap.add_argument("--side-by-side", action="store_true",
                    help="run each tracked sweep at the same time as a no-tracking one, a core each (see above)")
    ap.add_argument("--child", choices=CONDITIONS, help=argparse.SUPPRESS)
    ap.add_argument("--base", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--uri", help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="0", help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--barrier", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.cpu is not None:  # before any thread starts: every later thread and child process inherits it
            os.sched_setaffinity(0, {args.cpu})
        print(json.dumps(child(args.child, json.loads(args.base), args.uri, args.trials, args.tag,
                               threads=1 if args.cpu is not None else None, barrier=args.barrier)))
        return

    import importlib.util

    wanted = [c.strip() for c in args.conditions]
    unknown = [c for c in wanted if c not in CONDITIONS]
    if unknown:
        raise SystemExit(f"--conditions: unknown {unknown}; choose from {list(CONDITIONS)}")
    conditions = [c for c in CONDITIONS if c in wanted or c == "no tracking"]
    if "optuna MLflowCallback" in conditions and importlib.util.find_spec("optuna_integration") is None:
        raise SystemExit("the 'optuna MLflowCallback' condition needs optuna-integration: "
                         "pip install 'siamese-sweep[bench]'")
    base = dict(BASE)
    if args.quick:
        base.update(QUICK_BASE)
    if args.epochs:
        base["epochs"] = args.epochs
    if args.pairs_per_epoch:
        base["pairs"] = {**base["pairs"], "pairs_per_epoch": args.pairs_per_epoch}
    from sweeps.stack import MlflowServer

    work = Path(tempfile.mkdtemp(prefix="bench-overhead-server-"))
    results: dict[str, list[float]] = {c: [] for c in conditions}
    cpu: dict[str, list[float]] = {c: [] for c in conditions}
    outside: dict[str, list[float]] = {c: [] for c in conditions}  # wall s / trial not spent in train()
    with MlflowServer(f"sqlite:///{work}/mlflow.db", artifacts_destination=work / "artifacts") as server:
        print(f"# mlflow server at {server.url}", file=sys.stderr)
        if args.side_by_side:
            side_by_side(server.url, server.pid, conditions, base, args.trials, args.repeats)
            return
        for rep in range(args.repeats):
            for i, condition in enumerate(conditions):
                print(f"# repeat {rep}: {condition}", file=sys.stderr, flush=True)
                r = run_child([__file__, "--child", condition, "--base", json.dumps(base), "--uri", server.url,
                               "--trials", str(args.trials), "--tag", f"{rep}-{i}"])
                results[condition].append(r["seconds"] / r["trials"])
                cpu[condition].append(r["cpu"] / r["trials"])
                outside[condition].append((r["seconds"] - r["train"]) / r["trials"])
    ref, ref_cpu = median(results["no tracking"]), median(cpu["no tracking"])
    rows = [[c, median(v), median(v) / ref, (median(v) / ref - 1) * 100, " / ".join(f"{x:.2f}" for x in v),
             median(cpu[c]), median(cpu[c]) / ref_cpu] for c, v in results.items()]
    print(f"\n{args.trials} trials x {base['epochs']} epochs x {base['pairs']['pairs_per_epoch']:,} pairs on "
          f"{base['dataset']}, median of {args.repeats} interleaved repeats, local `mlflow server` (SQLite).\n")
    print(markdown_table(["condition", "wall s / trial", "x no tracking", "overhead %", "repeats wall s/trial",
                          "CPU s / trial", "CPU x no tracking"], rows))
    spread = max(max(v) - min(v) for v in results.values()) / ref * 100
    print(f"\nlargest spread between repeats of one condition: {spread:.1f}% of the no-tracking trial time")
    # the trial's critical path outside training (sampling, test evaluation, latency, the recording in line, the
    # per-sweep work) moves far less between repeats than the training does on a shared machine
    ref_out = median(outside["no tracking"])
    paired = {c: [(x / n - 1) * 100 for x, n in zip(v, results["no tracking"], strict=True)]
              for c, v in results.items()}
    print("\nSplit of the wall time per trial: `train()` (training, validation, test; per-epoch logging and reports "
          "are inside it) and the rest, per condition; overhead paired with the no-tracking run of the same repeat.\n")
    print(markdown_table(["condition", "train() s / trial", "outside train() s / trial", "outside - no tracking s",
                          "outside - no tracking, % of trial", "paired overhead % per repeat"],
                         [[c, median(results[c]) - median(outside[c]), median(outside[c]), median(outside[c]) - ref_out,
                           (median(outside[c]) - ref_out) / ref * 100, " / ".join(f"{x:+.1f}" for x in paired[c])]
                          for c in conditions]))
    for c in conditions:
        if c.startswith("siamese-sweep"):
            ours = (median(results[c]) / ref - 1) * 100
            verdict = "met" if ours < TARGET_PCT else "NOT met"
            print(f"Target: {c}: tracking overhead < {TARGET_PCT:g}% of trial time: {ours:+.2f}% -> {verdict}")


def tree_cpu_seconds(pid: int) -> float:
    """User + sys CPU of `pid` and its live descendants so far (the ``mlflow server``'s uvicorn tree)."""
    from sweeps.stack._process import descendants

    total = 0.0
    for proc in [pid, *descendants(pid)]:
        try:  # the fields after "(comm)": utime and stime are fields 14 and 15 of proc(5)
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def side_by_side(url: str, server_pid: int | None, conditions: list[str], base: dict[str, Any], trials: int,
                 repeats: int) -> None:
    """Each tracked condition at the same time as its own no-tracking partner, one core each (module docstring)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or server_pid is None:
        raise SystemExit("--side-by-side needs two cores this process may use")
    tracked = [c for c in conditions if c != "no tracking"]
    barriers = Path(tempfile.mkdtemp(prefix="bench-overhead-barrier-"))
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in tracked}
    for rep in range(repeats):
        for i, condition in enumerate(tracked):
            mine, partner = (cores[0], cores[1]) if rep % 2 == 0 else (cores[1], cores[0])
            pin_tree(server_pid, {mine})  # the tracked sweep's server runs on the tracked sweep's core
            barrier, tags = str(barriers / f"{rep}-{i}"), (f"{rep}-{i}-t", f"{rep}-{i}-n")
            print(f"# repeat {rep}: {condition} on cpu {mine}, no tracking on cpu {partner}", file=sys.stderr,
                  flush=True)

            def launch(cond: str, cpu: int, tag: str, barrier: str = barrier) -> dict[str, Any]:
                return run_child([__file__, "--child", cond, "--base", json.dumps(base), "--uri", url, "--trials",
                                  str(trials), "--tag", tag, "--cpu", str(cpu), "--barrier", barrier])

            with ThreadPoolExecutor(2) as pool:
                ours = pool.submit(launch, condition, mine, tags[0])
                theirs = pool.submit(launch, "no tracking", partner, tags[1])
                while not all(Path(f"{barrier}.{t}.ready").exists() for t in tags):
                    if ours.done() or theirs.done():
                        break  # a child failed before its clock: its result() raises below
                    time.sleep(0.01)
                server_cpu = tree_cpu_seconds(server_pid)
                Path(f"{barrier}.go").touch()
                a, b = ours.result(), theirs.result()
                a["server_cpu"] = tree_cpu_seconds(server_pid) - server_cpu
            runs[condition].append({"cpu": mine, "ours": a, "theirs": b})
    print(f"\n{trials} trials x {base['epochs']} epochs x {base['pairs']['pairs_per_epoch']:,} pairs on "
          f"{base['dataset']}, side by side: each tracked sweep beside a no-tracking sweep of the same trials, one "
          "core and one TensorFlow thread each, cores swapped every repeat; local `mlflow server` (SQLite) on the "
          "tracked sweep's core.\n")
    rows, verdicts = [], []
    for condition, pairs in runs.items():
        for rep, pair in enumerate(pairs):
            a, b = pair["ours"], pair["theirs"]
            wall_a, wall_b = a["seconds"] / trials, b["seconds"] / trials
            rows.append([condition, rep, pair["cpu"], wall_a, wall_b, (wall_a / wall_b - 1) * 100,
                         (a["train"] / b["train"] - 1) * 100, (a["seconds"] - a["train"] - b["seconds"] + b["train"])
                         / trials, a["cpu"] / trials, b["cpu"] / trials, a["server_cpu"] / trials])
        paired = [r[5] for r in rows if r[0] == condition]
        verdicts.append(f"Target: {condition}: tracking overhead < {TARGET_PCT:g}% of trial time: median "
                        f"{median(paired):+.2f}%, repeats {min(paired):+.2f}% to {max(paired):+.2f}% -> "
                        + ("met" if max(paired) < TARGET_PCT else "NOT met") + " (met: every repeat under it)")
    print(markdown_table(["condition", "repeat", "its cpu", "wall s / trial", "no tracking, beside it",
                          "paired overhead %", "train() paired %", "outside train() - no tracking s / trial",
                          "CPU s / trial", "no tracking CPU s / trial", "server CPU s / trial"], rows))
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
