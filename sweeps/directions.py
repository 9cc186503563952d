"""Which way is better for a metric: the one function sweeps asks (spec defaults, promotion, re-evaluation).

`metric_direction` looks a name up in `siamese_core.metrics` (the catalogue of every history and test key and
its direction), and in `TRIAL_METRICS` for what sweeps measures itself.
"""
from __future__ import annotations

import math
from typing import Literal

from siamese_core import metrics

Direction = Literal["maximize", "minimize"]
MAXIMIZE: Direction = "maximize"
MINIMIZE: Direction = "minimize"

# Objectives measured per trial by sweeps (not in the per-epoch history), with their direction.
TRIAL_METRICS: dict[str, Direction] = {"params": MINIMIZE, "latency_ms": MINIMIZE, "train_seconds": MINIMIZE}


def metric_direction(name: str) -> Direction:
    """``"minimize"`` or ``"maximize"`` for a history, test or trial metric name; `ValueError` for an unknown name
    or a reading without a better direction (it was a guess from the name's parts: anything else maximised)."""
    if name in TRIAL_METRICS:
        return TRIAL_METRICS[name]
    return MINIMIZE if metrics.direction(name) == "min" else MAXIMIZE


def lower_is_better(name: str) -> bool:
    return metric_direction(name) == MINIMIZE


def better_way(direction: Direction) -> str:
    """``"lower"`` or ``"higher"``: the words messages use for a direction ("val_loss is better lower")."""
    return "lower" if direction == MINIMIZE else "higher"


def better(a: float, b: float, metric: str) -> bool:
    """Is `a` strictly better than `b` on `metric`? NaN is never better; anything beats NaN."""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a < b if lower_is_better(metric) else a > b


def sort_key(value: float | None, metric: str) -> float:
    """Ascending key, best first; a missing or non-finite value sorts last."""
    if value is None or not math.isfinite(float(value)):
        return math.inf
    return float(value) if lower_is_better(metric) else -float(value)
