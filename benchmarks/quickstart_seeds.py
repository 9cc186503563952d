"""The quickstart over sampler seeds: does its best trial come from the TPE search, and is that lead real?

`make demo` runs the quickstart with ``study.sampler.seed: 0``: one seed says nothing about "the best trial comes
out of the search phase on most seeds". This runs the same sweep (the built-in ``quickstart`` spec, as
``siamese-sweep run quickstart``) once per sampler seed, each in a fresh ``siamese-sweep`` process against a new
SQLite Optuna storage and a new local MLflow store, and reads each study's report (``siamese-sweep report``'s
`sweeps.report.build_report`). Only the sampler's seed changes: the data, the pairs and each trial's training
seed are the spec's, so a seed changes which parameters are tried and nothing else.

Per seed it prints the best trial (chosen on validation), its phase (the 5 random start-up trials or the TPE
search), the best start-up trial's validation ROC AUC, and whether the search's lead over that start-up trial is
*shown*: its number is not among the trials the paired test (`sweeps.margin`, on the 2,000 validation pairs)
finds within two errors of the best ("no" where no paired test could be made). The best trial's test ROC AUC is
what the sweep returns (reported, never chosen on).

    python benchmarks/quickstart_seeds.py [--seeds 0 1 2 3 4] [--quick]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK_BASE, fresh_local_stores, markdown_table, median, run_measured  # noqa: E402


def one_seed(seed: int, quick: bool) -> dict[str, Any]:
    """Run the quickstart with sampler `seed` in its own process; the report of the study it made."""
    import optuna

    from sweeps.report import build_report
    from sweeps.storage import make_storage

    work, tracking = fresh_local_stores(f"quickstart-seed{seed}-")
    storage = f"sqlite:///{work}/optuna.db"
    sets = [f"study.sampler.seed={seed}"]
    if quick:  # digits, 6 trials: a smoke run of this script, numbers not meaningful
        sets += [f"base.{k}={json.dumps(v)}" for k, v in QUICK_BASE.items()] + ["study.trials=6"]
    # sys.exit: `main` returns the exit code (the console script exits with it), so a refused or unfinished sweep
    # raises here with its stderr instead of being tabulated
    cmd = [sys.executable, "-c", "import sys; from sweeps.cli import main; sys.exit(main())", "run", "quickstart",
           "--storage", storage, "--tracking-uri", tracking, "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    try:
        # in its folder: a SQLite tracking store keeps the runs' artifacts in ./mlruns (188 MB for ten seeds, left
        # in the caller's folder before)
        measured = run_measured(cmd, timeout=3600, cwd=work)
        study = optuna.load_study(study_name="quickstart", storage=make_storage(storage))
        report = build_report(study)
        assert report.best is not None, "no complete trial"
        best = study.trials[report.best["number"]]
        # the start-up trial that scored the start-up's best (`study.best_phase` gives its value)
        startup_number = min((t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                              and t.value == report.best_startup_value), default=None)
        margin = report.margin or {}  # None: no test made; unpaired: the bound, not the paired test
        within = margin.get("within") or []
        return {"seed": seed, "best": best.number, "phase": report.best["phase"], "val": best.value,
                "best_startup": startup_number, "startup_val": report.best_startup_value,
                "lead_shown": (report.best["phase"] == "search" and startup_number is not None
                               and bool(margin.get("paired")) and startup_number not in within),
                "paired": bool(margin.get("paired")),
                "test_roc_auc": best.user_attrs.get("test_roc_auc"), "counts": report.counts,
                "wall": measured["wall"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--quick", action="store_true", help="digits, 6 trials (numbers not meaningful)")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        r = one_seed(seed, args.quick)
        print(json.dumps(r), flush=True)
        rows.append(r)
    print()
    print(markdown_table(
        ["sampler seed", "best trial", "phase", "val ROC AUC", "best start-up (val)", "lead over it shown",
         "test ROC AUC", "complete / pruned"],
        [[r["seed"], f"#{r['best']}", r["phase"], f"{r['val']:.6f}",
          f"#{r['best_startup']} ({r['startup_val']:.6f})" if r["startup_val"] is not None else "-",
          "yes" if r["lead_shown"] else "no", f"{r['test_roc_auc']:.4f}" if r["test_roc_auc"] is not None else "-",
          f"{r['counts'].get('COMPLETE', 0)} / {r['counts'].get('PRUNED', 0)}"] for r in rows]))
    n = len(rows)
    search = sum(r["phase"] == "search" for r in rows)
    shown = sum(r["lead_shown"] for r in rows)
    tests = [r["test_roc_auc"] for r in rows if r["test_roc_auc"] is not None]
    print()
    print(f"best trial from the search phase: {search} of {n} seeds; its lead over the best start-up trial shown "
          f"(paired, two errors): {shown} of {n}")
    if tests:
        print(f"test ROC AUC of the returned trial: median {median(tests):.4f}, range {min(tests):.4f}-"
              f"{max(tests):.4f} (target: >= 0.963)")
    walls = ", ".join(f"{r['wall']:.0f}" for r in rows)
    print(f"process wall per seed (s): {walls}")


if __name__ == "__main__":
    main()
