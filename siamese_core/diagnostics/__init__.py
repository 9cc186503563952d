"""Diagnostics: name every known Siamese failure before and during training.

* `diagnose(config) -> list[Finding]` — what ``siamese-sweep doctor`` runs: data checks, model-graph
  checks, loss checks and short probes (overfit 64 tuples, loader parity, a few mini-epochs).
* `training_watchers(config, data=, models=, bus=)` — the same checks as Keras callbacks in every
  training; findings go to ``bus.emit`` and codes in ``diagnostics.fail_on`` raise `TrainingFailed`.
* `render_report` / `report_json` / `mlflow_tags` / `prune_reason` — for people and for sweeps.
* `codes` — the stable codes with their usual severity and fix (`codes.CATALOGUE`).

Importing this package is cheap: TensorFlow loads only when a check runs.
"""
from __future__ import annotations

from typing import Any

from . import codes
from .codes import CATALOGUE, CODES
from .report import merge, mlflow_tags, prune_reason, render_report, report_json

__all__ = [
    "CATALOGUE",
    "CODES",
    "FindingCollector",
    "codes",
    "diagnose",
    "merge",
    "mlflow_tags",
    "prune_reason",
    "render_report",
    "report_json",
    "training_watchers",
]


def diagnose(config: Any, **kwargs: Any) -> list[Any]:
    from .doctor import diagnose as _diagnose

    return _diagnose(config, **kwargs)


def training_watchers(config: Any, *, data: Any, models: Any, bus: Any) -> list[Any]:
    from .watchers import training_watchers as _watchers

    return _watchers(config, data=data, models=models, bus=bus)


def __getattr__(name: str) -> Any:
    if name == "FindingCollector":
        from .watchers import FindingCollector

        return FindingCollector
    raise AttributeError(f"module 'siamese_core.diagnostics' has no attribute {name!r}")
