"""sweeps: Optuna studies of Siamese networks, every trial tracked in MLflow.

    from sweeps import sweep
    result = sweep("my_sweep.yaml", trials=20)     # = siamese-sweep run my_sweep.yaml --trials 20
    move_study("demo", from_storage=..., from_tracking_uri=..., to_storage=..., to_tracking_uri=...)  # = move

Names load on first access, so ``import sweeps.names`` (and ``siamese-sweep --help``) stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MoveResult", "StudyStop", "SweepResult", "SweepSpec", "load_spec", "move_study", "resolve_spec", "sweep"]

# public name -> (module, attribute)
_LAZY = {
    "sweep": ("api", "sweep"),
    "resolve_spec": ("api", "resolve_spec"),
    "SweepResult": ("runner", "SweepResult"),
    "SweepSpec": ("spec", "SweepSpec"),
    "load_spec": ("spec", "load_spec"),
    "StudyStop": ("stopping", "StudyStop"),
    "move_study": ("move", "move_study"),
    "MoveResult": ("move", "MoveResult"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'sweeps' has no attribute {name!r}")
