"""Worker scaling: trials/hour of ``siamese-sweep run --workers 1`` vs ``--workers 2`` on this machine.

Same spec, same trial budget, a search space over cost-neutral parameters only (learning rate, margin),
so every trial does the same work; no pruner. ``--workers 2`` starts two worker processes that share one
SQLite Optuna storage and one local MLflow store, each with ``cores // 2`` TensorFlow threads. Wall time
includes process start-up, data loading and tracking — what a user waits for. Repeats are interleaved.

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
from common import QUICK_BASE, fresh_local_stores, markdown_table, median, run_child  # noqa: E402

BASE: dict[str, Any] = {
    "dataset": "fashion_mnist", "loader": "tfdata", "epochs": 2, "batch_size": 128,
    "pairs": {"pairs_per_epoch": 12000, "val_pairs": 2000, "test_pairs": 4000},
}
SPACE: dict[str, Any] = {
    "loss.margin": {"type": "float", "low": 0.5, "high": 2.0},
    "learning_rate": {"type": "float", "low": 3.0e-4, "high": 1.0e-2, "log": True},
}


def child(workers: int, base: dict[str, Any], trials: int) -> dict[str, Any]:
    from sweeps.runner import options_from, run_sweep
    from sweeps.spec import spec_from_dict

    work, tracking = fresh_local_stores("bench-workers-")
    spec = spec_from_dict({
        "base": base, "search_space": SPACE,
        "study": {"name": f"scaling-{workers}", "metric": "val_roc_auc", "trials": trials,
                  "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "none"}},
        "tracking": {"uri": tracking},
    })
    opts = options_from(spec, storage=f"sqlite:///{work}/optuna.db", tracking_uri=tracking, workers=workers,
                        progress=False)
    t0 = time.perf_counter()
    result = run_sweep(spec, opts)
    seconds = time.perf_counter() - t0
    complete = result.status["counts"].get("COMPLETE", 0)
    return {"seconds": seconds, "complete": complete, "budget_met": result.budget_met}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="digits, tiny trials (smoke run)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--base", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.base), args.trials)))
        return
    base = dict(BASE)
    if args.quick:
        base.update(QUICK_BASE)
    results: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for rep in range(args.repeats):
        for workers in (1, 2):
            print(f"# repeat {rep}: {workers} worker(s)", file=sys.stderr, flush=True)
            r = run_child([__file__, "--child", str(workers), "--base", json.dumps(base), "--trials", str(args.trials)])
            if r["complete"] != args.trials:
                raise SystemExit(f"{workers} workers completed {r['complete']} of {args.trials} trials")
            results[workers].append(r)
    rate = {w: median([args.trials / r["seconds"] * 3600 for r in rs]) for w, rs in results.items()}
    rows = [[f"--workers {w}", median([r["seconds"] for r in rs]), rate[w], rate[w] / rate[1],
             " / ".join(f"{r['seconds']:.0f}" for r in rs)] for w, rs in results.items()]
    print(f"\n{args.trials} trials x {base['epochs']} epochs x {base['pairs']['pairs_per_epoch']:,} pairs on "
          f"{base['dataset']}, {os.cpu_count()} cores, median of {args.repeats} interleaved repeats.\n")
    print(markdown_table(["run", "wall s", "trials/hour", "x 1 worker", "repeats wall s"], rows))
    ratio = rate[2] / rate[1]
    print(f"\nTarget: 2 workers >= 1.5x the trials/hour of one: {ratio:.2f}x -> {'met' if ratio >= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
