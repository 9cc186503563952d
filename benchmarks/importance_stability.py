"""How many complete trials a parameter-importance ranking needs before its top parameter settles.

The sweep report adds a note to importances computed from fewer than `sweeps.importances.FEW_FOR_A_RANKING`
complete trials. This measures why: the 3-parameter study of tests/sweeps/test_importances.py (``a`` matters
most), TPE, one study of 40 trials per seed; for each n, fANOVA (`sweeps.importances`, as the report) on the
first n trials, and whether its top parameter is the one of all 40.

    python benchmarks/importance_stability.py [--seeds 10] [--trials 40]
"""
from __future__ import annotations

import argparse

import optuna
from common import markdown_table

from sweeps import importances

SIZES = (3, 5, 8, 10, 15, 20)


def objective(t: optuna.Trial) -> float:
    return (t.suggest_float("a", 0, 1) ** 2 + t.suggest_float("b", 1e-3, 1, log=True)
            + t.suggest_int("c", 1, 3) * 0.1)


def top(study: optuna.Study) -> str:
    ranked = importances.parameter_importances(study)
    return max(ranked, key=lambda k: ranked[k])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    same = {n: 0 for n in SIZES if n < args.trials}
    for seed in range(args.seeds):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        study.optimize(objective, n_trials=args.trials)
        whole = top(study)
        for n in same:
            first = optuna.create_study()
            first.add_trials(study.trials[:n])
            same[n] += top(first) == whole
    print(markdown_table(["complete trials", f"top parameter as with {args.trials} (of {args.seeds} seeds)"],
                         [[n, f"{k} of {args.seeds}"] for n, k in same.items()]))


if __name__ == "__main__":
    main()
