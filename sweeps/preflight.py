"""Checks that must fail before any study, run or trial exists (no TensorFlow import needed).

A bad spec or bad data exits with code 2 and one line naming the field or
file; nothing is created in Optuna or MLflow.
"""
from __future__ import annotations

import importlib.util
from typing import Any

from siamese_core.errors import ConfigError

from . import space
from .spec import SweepSpec


def preflight(spec: SweepSpec) -> Any:
    """Validate the search space against the base config and load the base data; returns the data."""
    from siamese_core.data.pairs import make_sampler
    from siamese_core.data.sources import load_dataset

    space.check_space(spec)
    if spec.tracking.system_metrics and importlib.util.find_spec("psutil") is None:
        raise ConfigError("tracking.system_metrics", "MLflow's system metrics need psutil: "
                                                     "pip install 'siamese-sweep[system-metrics]'")
    data = load_dataset(spec.base)  # DataError now, not in trial 0
    make_sampler(spec.base, data)  # e.g. batch_size larger than the pairs per epoch
    if spec.hypermodel:
        from .hypermodel import load_hypermodel

        load_hypermodel(spec.hypermodel)
    return data
