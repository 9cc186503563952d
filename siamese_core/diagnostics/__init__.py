"""Diagnostics: name every known Siamese failure, read-only over models and data.

* `codes` — the stable codes with their usual severity and fix (`CATALOGUE`, `CODES`).
* `render_report` / `report_json` / `mlflow_tags` / `prune_reason` / `merge` — findings for people and
  for sweeps.
* `data_checks`, `graph_checks`, `loss_checks`, `scores` — the checks themselves.
* `watchers` — the same checks as Keras callbacks in every training (`training_watchers`).

``siamese_core.doctor.diagnose`` (``siamese-sweep doctor``) runs them all, plus short probe trainings.

This package's ``__init__`` imports only the pure-Python catalogue and report (no TensorFlow):
`siamese_core.config` validates ``diagnostics.fail_on`` against `CODES`.
"""
from __future__ import annotations

from . import codes
from .codes import CATALOGUE, CODES
from .report import merge, mlflow_tags, prune_reason, render_report, report_json

__all__ = [
    "CATALOGUE",
    "CODES",
    "codes",
    "merge",
    "mlflow_tags",
    "prune_reason",
    "render_report",
    "report_json",
]
