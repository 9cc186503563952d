"""Data loading with and without the memory-mapped data cache (`siamese_core.data.cache`), in fresh processes.

Two measurements, each interleaved over repeats (source, cache, source, cache, ...):

* ``load_dataset`` alone: a fresh process imports ``siamese_core`` off the clock, then times one
  ``load_dataset`` of the quickstart's data config (Fashion-MNIST by default; ``--dataset digits`` for
  scikit-learn's digits). "source" decodes the files (``SIAMESE_SWEEP_DATA_CACHE=off``); "cache" maps the
  entry a first, untimed process wrote.
* a sweep worker's start-up: ``siamese-sweep worker <quickstart spec> --threads 1 --no-finalize`` (what
  ``run --workers N`` starts) joining a study whose budget is met (a one-trial study made before the clock
  starts), timed from launch to exit: imports, preflight (which loads
  the data), stores, study and parent run, and the exit once it finds nothing to do. That is what every worker of
  ``run --workers N``, ``worker``, Slurm and Kubernetes pays before its first trial.

CPU (user + sys), minor page faults and peak RSS come from ``os.wait4`` of that process alone.

    python benchmarks/data_cache.py [--repeats 5] [--dataset fashion_mnist] [--no-worker]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, median, run_measured  # noqa: E402

ENV = "SIAMESE_SWEEP_DATA_CACHE"
SPEC = "quickstart"


def child(dataset: str) -> None:
    """One timed load in this (fresh) process."""
    from siamese_core import TrainConfig
    from siamese_core.data.sources import load_dataset
    from sweeps.api import resolve_spec

    base = resolve_spec(SPEC).base.to_dict()
    base["dataset"] = {**base["dataset"], "name": dataset}
    config = TrainConfig.from_dict(base)
    t0 = time.perf_counter()
    data = load_dataset(config)
    seconds = time.perf_counter() - t0
    mapped = type(getattr(getattr(data.train, "x", None), "base", None)).__name__ == "memmap"
    print(json.dumps({"seconds": seconds, "mapped": mapped, "fingerprint": data.info.fingerprint}))


def load_row(cache: str, dataset: str) -> dict[str, Any]:
    r = run_measured([sys.executable, __file__, "--child", dataset], env={ENV: cache})
    out = json.loads(r["stdout"].strip().splitlines()[-1])
    return {**r, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    ap.add_argument("--no-worker", action="store_true", help="only the load_dataset measurement")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-data-cache-"))
    cache = str(work / "cache")
    warm = load_row(cache, args.dataset)  # writes the entry (untimed)
    assert not warm["mapped"]
    conditions = {"source (cache off)": "off", "cache (warm)": cache}
    loads: dict[str, list[dict[str, Any]]] = {c: [] for c in conditions}
    for rep in range(args.repeats):
        for name, setting in conditions.items():
            print(f"# load, repeat {rep}: {name}", file=sys.stderr, flush=True)
            row = load_row(setting, args.dataset)
            assert row["fingerprint"] == warm["fingerprint"], "the cache gave other data than the source"
            assert row["mapped"] == (setting != "off")
            loads[name].append(row)
    _table(f"`load_dataset` of {args.dataset} in a fresh process (imports off the clock)", loads, "seconds")

    if args.no_worker:
        return
    spec = ["siamese-sweep"]
    stores = ["--storage", f"sqlite:///{work}/optuna.db", "--tracking-uri", f"sqlite:///{work}/mlflow.db"]
    print("# a one-trial study for the workers to find finished (untimed)", file=sys.stderr, flush=True)
    run_measured([*spec, "run", SPEC, *stores, "--quiet", "--set", "study.trials=1", "--set", "base.epochs=1",
                  "--set", "base.pairs.pairs_per_epoch=1000", "--set", "base.pairs.test_pairs=1000"],
                 env={ENV: cache})
    # what `run --workers N` starts (sweeps.launch.WorkerProcesses): one thread, the parent finalizes
    worker = [*spec, "worker", SPEC, *stores, "--threads", "1", "--no-finalize", "--quiet", "--set", "study.trials=1",
              "--set", "base.epochs=1", "--set", "base.pairs.pairs_per_epoch=1000", "--set",
              "base.pairs.test_pairs=1000"]
    starts: dict[str, list[dict[str, Any]]] = {c: [] for c in conditions}
    for rep in range(args.repeats):
        for name, setting in conditions.items():
            print(f"# worker start-up, repeat {rep}: {name}", file=sys.stderr, flush=True)
            starts[name].append(run_measured(worker, env={ENV: setting}))
    _table("`siamese-sweep worker` joining a finished study, launch to exit", starts, "wall")


def _table(title: str, rows: dict[str, list[dict[str, Any]]], key: str) -> None:
    ref = median([r[key] for r in rows["source (cache off)"]])
    table = []
    for name, runs in rows.items():
        s = median([r[key] for r in runs])
        table.append([name, s, s / ref, median([r["user"] + r["sys"] for r in runs]),
                      median([r["minor_faults"] for r in runs]) / 1e3, median([r["peak_rss_mb"] for r in runs]),
                      " / ".join(f"{r[key]:.3f}" for r in runs)])
    print(f"\n{title}; median of {len(next(iter(rows.values())))} interleaved repeats\n")
    print(markdown_table(["condition", "wall s", "x source", "process CPU s", "minor faults (k)", "peak RSS MB",
                          "repeats"], table))
    saved = ref - median([r[key] for r in rows["cache (warm)"]])
    print(f"\nsaved by the cache: {saved:.2f} s per process")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
