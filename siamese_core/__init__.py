"""siamese_core: train Siamese (metric-learning) networks correctly by construction.

    from siamese_core import train, TrainConfig
    result = train(TrainConfig.from_dict({"dataset": "digits", "epochs": 3}))

This is the one lazy import boundary of the package: it imports only pure-Python modules, so
``import siamese_core`` and config validation stay fast (TensorFlow takes 5-14 s to import). `train`,
`TrainResult`, `diagnose`, `load_dataset` and `load_model` load their modules on first access; every
module below this one imports what it needs at module level.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from . import allocator, quiet_import

allocator.tune()  # before TensorFlow allocates anything: see allocator.py (halves a CPU trial's time)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any submodule imports TensorFlow
quiet_import.install()  # TensorFlow's import-time log lines that TF_CPP_MIN_LOG_LEVEL misses: see quiet_import.py

from .config import TrainConfig, load_config, parse_set_options  # noqa: E402
from .data.pairs import DIFFERENT, SAME  # noqa: E402
from .errors import ConfigError, DataError, InfrastructureError, InputError, SiameseError, TrainingFailed  # noqa: E402
from .findings import Finding  # noqa: E402

__all__ = [
    "TrainConfig", "load_config", "parse_set_options", "train", "TrainResult", "diagnose", "load_dataset",
    "load_model", "Finding", "ConfigError", "DataError", "InputError", "InfrastructureError", "SiameseError",
    "TrainingFailed", "SAME", "DIFFERENT",
]
__version__ = "0.1.0"

# public name -> (module, attribute), imported on first access (they need TensorFlow)
_LAZY = {
    "train": ("training", "train"),
    "TrainResult": ("training", "TrainResult"),
    "diagnose": ("doctor", "diagnose"),
    "load_dataset": ("data.sources", "load_dataset"),
    "load_model": ("models.siamese", "load_model"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'siamese_core' has no attribute {name!r}")
