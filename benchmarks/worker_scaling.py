"""Worker scaling: trials/hour of N workers x 1 TensorFlow thread vs 1 worker x 1 thread (coordination cost).

Same spec, same trial budget, a search space over cost-neutral parameters only (learning rate, margin),
so every trial does the same work; no pruner. Three runs, interleaved per repeat and rotated (no condition
always runs first: drift within a repeat does not fall on one side of a ratio):

* ``1 worker x 1 thread`` (``run --threads 1``): the unit of work;
* ``2 workers x 1 thread`` (``run --workers 2``: each worker gets ``usable cores // 2`` = 1 thread): on 2 cores the
  question is what coordination (one SQLite Optuna storage, one local MLflow store, two processes) costs, so the
  ideal is 2x;
* ``1 worker x 2 threads`` (``run``, the default on 2 cores): what one process gets from both cores.

Each runs ``sweeps.api.sweep`` (what ``siamese-sweep run`` calls) in a fresh ``python`` process against a new
SQLite Optuna storage and a new local MLflow store whose schema the benchmark creates before the launch (as any
sweep after a user's first finds it). Wall time is the whole process, from its launch to its exit — what a user
waits for: interpreter and imports, preflight, worker start-up, trials, tracking and the closing study artifacts.
"start-up" is the time from the launch to the first trial's start; "closing" from the last trial's end to
``sweep()``'s return (the exit is in the wall time);
"trial s" the median duration of one trial (Optuna's start to complete, recording included), which shows what the
workers cost each other; "trial phase" the trials/hour from the first trial's start to the last one's end (what a
longer sweep approaches).

    python benchmarks/worker_scaling.py [--trials 8] [--repeats 2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK_BASE, fresh_local_stores, markdown_table, median, rotated, run_child  # noqa: E402

BASE: dict[str, Any] = {
    "dataset": "fashion_mnist", "loader": "tfdata", "epochs": 2, "batch_size": 128,
    "pairs": {"pairs_per_epoch": 12000, "val_pairs": 2000, "test_pairs": 4000},
}
SPACE: dict[str, Any] = {
    "loss.margin": {"type": "float", "low": 0.5, "high": 2.0},
    "learning_rate": {"type": "float", "low": 3.0e-4, "high": 1.0e-2, "log": True},
}


CONDITIONS = {"1 worker x 1 thread": (1, 1), "2 workers x 1 thread": (2, None), "1 worker x 2 threads": (1, None)}


def child(condition: str, base: dict[str, Any], trials: int, launched: float, work: Path) -> dict[str, Any]:
    from sweeps.api import sweep  # what `siamese-sweep run` calls: its imports are on the clock
    from sweeps.spec import spec_from_dict

    tracking = f"sqlite:///{work}/mlflow.db"
    workers, threads = CONDITIONS[condition]
    spec = spec_from_dict({
        "base": base, "search_space": SPACE,
        "study": {"name": f"scaling-{workers}", "metric": "val_roc_auc", "trials": trials,
                  "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "none"}},
        "tracking": {"uri": tracking},
    })
    t0, wall0 = time.perf_counter(), time.time()
    result = sweep(spec, storage=f"sqlite:///{work}/optuna.db", tracking_uri=tracking, workers=workers,
                   threads=threads, progress=False)
    seconds = time.perf_counter() - t0
    complete = result.status["counts"].get("COMPLETE", 0)
    import optuna

    spans = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp())
             for t in optuna.load_study(study_name=spec.study.name, storage=f"sqlite:///{work}/optuna.db").trials
             if t.datetime_start is not None and t.datetime_complete is not None]
    return {"seconds": seconds, "complete": complete, "budget_met": result.budget_met,
            "startup": min(a for a, _ in spans) - launched, "closing": wall0 + seconds - max(b for _, b in spans),
            "trial_seconds": [b - a for a, b in spans],
            "trial_phase": max(b for _, b in spans) - min(a for a, _ in spans)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="digits, tiny trials (smoke run)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--base", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--launched", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.base), args.trials, args.launched, Path(args.work))))
        return
    base = dict(BASE)
    if args.quick:
        base.update(QUICK_BASE)
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in CONDITIONS}
    conditions = list(CONDITIONS)
    for rep in range(args.repeats):
        for cond in rotated(conditions, rep):
            print(f"# repeat {rep}: {cond}", file=sys.stderr, flush=True)
            # an existing MLflow store, as for any sweep after a user's first: its schema is made off the clock
            work, _ = fresh_local_stores("bench-workers-")
            r = run_child([__file__, "--child", cond, "--base", json.dumps(base), "--trials", str(args.trials),
                           "--launched", repr(time.time()), "--work", str(work)])
            if r["complete"] != args.trials:
                raise SystemExit(f"{cond}: completed {r['complete']} of {args.trials} trials")
            results[cond].append(r)
    unit = next(iter(CONDITIONS))
    # the whole process (run_child's `process_seconds`): interpreter, imports, start-up, trials, closing
    rate = {c: median([args.trials / r["process_seconds"] * 3600 for r in rs]) for c, rs in results.items()}
    trial_s = {c: median([s for r in rs for s in r["trial_seconds"]]) for c, rs in results.items()}
    # from the first trial's start to the last one's end: the rate a longer sweep approaches
    phase = {c: median([args.trials / r["trial_phase"] * 3600 for r in rs]) for c, rs in results.items()}
    rows = [[c, median([r["process_seconds"] for r in rs]), rate[c], rate[c] / rate[unit],
             median([r["startup"] for r in rs]), trial_s[c], trial_s[c] / trial_s[unit],
             median([r["closing"] for r in rs]), phase[c] / phase[unit],
             " / ".join(f"{r['process_seconds']:.0f}" for r in rs)]
            for c, rs in results.items()]
    print(f"\n{args.trials} trials x {base['epochs']} epochs x {base['pairs']['pairs_per_epoch']:,} pairs on "
          f"{base['dataset']}, {os.cpu_count()} cores, median of {args.repeats} interleaved repeats.\n")
    print(markdown_table(["run", "wall s", "trials/hour", "x 1 worker x 1 thread", "start-up s", "trial s",
                          "trial s x 1 worker", "closing s", "trial phase x 1 worker", "repeats wall s"], rows))
    ratio = rate["2 workers x 1 thread"] / rate[unit]
    print(f"\nTarget: 2 workers x 1 thread >= 1.8x the trials/hour of 1 worker x 1 thread: {ratio:.2f}x -> "
          f"{'met' if ratio >= 1.8 else 'NOT met'} (whole sweep, start-up and closing included); "
          f"{phase['2 workers x 1 thread'] / phase[unit]:.2f}x in the trial phase")


if __name__ == "__main__":
    main()
