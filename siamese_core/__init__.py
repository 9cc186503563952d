"""siamese_core: train Siamese (metric-learning) networks correctly by construction.

    from siamese_core import train, TrainConfig
    result = train(TrainConfig.from_dict({"dataset": "digits", "epochs": 3}))

TensorFlow is imported lazily: importing this package and validating a
config stays fast.
"""
from __future__ import annotations

from typing import Any

from . import allocator

allocator.tune()  # before TensorFlow allocates anything: see allocator.py (halves a CPU trial's time)

from .config import TrainConfig, load_config, parse_set_options
from .data.pairs import DIFFERENT, SAME
from .errors import ConfigError, DataError, InputError, SiameseError, TrainingFailed
from .findings import Finding

__all__ = [
    "TrainConfig", "load_config", "parse_set_options", "train", "TrainResult", "diagnose", "load_dataset",
    "load_model", "Finding", "ConfigError", "DataError", "InputError", "SiameseError", "TrainingFailed",
    "SAME", "DIFFERENT",
]
__version__ = "0.1.0"

_LAZY = {
    "train": ("training", "train"),
    "TrainResult": ("training", "TrainResult"),
    "diagnose": ("diagnostics", "diagnose"),
    "load_dataset": ("data.sources", "load_dataset"),
}


def load_model(path: str) -> Any:
    """Load a saved Siamese model (``model.keras``) in Keras safe mode."""
    import keras

    from .models import layers  # noqa: F401  (registers the custom layers)

    return keras.models.load_model(path, safe_mode=True)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'siamese_core' has no attribute {name!r}")
