"""Search space -> Optuna suggestions -> train-config overrides.

Parameter names are the dotted train-config keys themselves (``loss.margin``),
so Optuna's params, MLflow's params and the config all use one vocabulary.
A parameter with a ``when`` condition is only suggested when the condition
holds (e.g. ``loss.margin`` only for margin losses).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from siamese_core.config import TrainConfig
from siamese_core.errors import ConfigError

from .spec import Distribution, SweepSpec


def _condition_holds(when: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    for key, expected in when.items():
        allowed = expected if isinstance(expected, (list, tuple)) else [expected]
        if values.get(key) not in allowed:
            return False
    return True


def _ordered(space: Mapping[str, Distribution]) -> list[str]:
    """Unconditional parameters first, then those whose conditions are resolved (stable order)."""
    done: list[str] = []
    pending = list(space)
    while pending:
        progressed = False
        for key in list(pending):
            deps = set((space[key].when or {}).keys()) & set(space)
            if deps <= set(done):
                done.append(key)
                pending.remove(key)
                progressed = True
        if not progressed:
            raise ConfigError(f"search_space.{pending[0]}.when", "circular conditions between parameters")
    return done


def suggest(trial: optuna.Trial, name: str, dist: Distribution) -> Any:
    if dist.type == "categorical":
        return trial.suggest_categorical(name, list(dist.choices or ()))
    assert dist.low is not None and dist.high is not None  # Distribution checks: numeric ones have both bounds
    if dist.type == "int":
        return trial.suggest_int(name, int(dist.low), int(dist.high), step=int(dist.step or 1), log=dist.log)
    return trial.suggest_float(name, float(dist.low), float(dist.high), step=dist.step, log=dist.log)


def sample_overrides(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    """Fixed values plus one suggestion per (active) parameter, as dotted overrides."""
    base_flat = spec.base.flat()
    overrides: dict[str, Any] = dict(spec.fixed())
    space = spec.distributions()
    for key in _ordered(space):
        dist = space[key]
        if dist.when and not _condition_holds(dist.when, {**base_flat, **overrides}):
            continue
        overrides[key] = suggest(trial, key, dist)
    return overrides


def grid_values(spec: SweepSpec) -> dict[str, list[Any]]:
    """Every value of every parameter, for ``GridSampler``."""
    import numpy as np

    grid: dict[str, list[Any]] = {}
    for key, d in spec.distributions().items():
        if d.type == "categorical":
            grid[key] = list(d.choices or ())
        else:
            # bounds checked by Distribution, the step by the grid sampler's check
            assert d.low is not None and d.high is not None and d.step is not None
            values = np.arange(d.low, d.high + d.step / 2, d.step)
            grid[key] = [int(v) for v in values] if d.type == "int" else [float(v) for v in values]
    return grid


def check_space(spec: SweepSpec) -> None:
    """Fail before the study starts if any single choice or bound makes the base config invalid.

    Combinations can still conflict (e.g. cosine distance with margin 3); such
    a trial fails with reason ``invalid_config`` and the sweep goes on.
    """
    base = spec.base
    try:
        fixed_config = base.with_overrides(spec.fixed()) if spec.fixed() else base
    except ConfigError as exc:
        raise ConfigError(f"search_space.{exc.field}", exc.detail) from None
    for key, d in spec.distributions().items():
        values: list[Any] = list(d.choices or ()) if d.type == "categorical" else [d.low, d.high]
        if d.type == "int":
            values = [int(v) for v in values]
        # a conditional parameter is checked in the setting where it is active
        condition = {k: (v[0] if isinstance(v, (list, tuple)) else v) for k, v in (d.when or {}).items()}
        for value in values:
            try:
                fixed_config.with_overrides({**condition, key: value})
            except ConfigError as exc:
                if exc.field == key or exc.field.startswith(key + "."):
                    raise ConfigError(f"search_space.{key}", f"value {value!r} is invalid for the train config: "
                                                             f"{exc.detail}") from None


def trial_config(spec: SweepSpec, overrides: Mapping[str, Any]) -> TrainConfig:
    return spec.base.with_overrides(overrides)

