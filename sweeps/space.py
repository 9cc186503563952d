"""Search space -> Optuna suggestions -> train-config overrides.

Parameter names are the dotted train-config keys themselves (``loss.margin``),
so Optuna's params, MLflow's params and the config all use one vocabulary.
A parameter with a ``when`` condition is only suggested when the condition
holds (e.g. ``loss.margin`` only for margin losses).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import optuna

from siamese_core.config import TrainConfig
from siamese_core.errors import ConfigError

from .grid import values_in_grid
from .spec import Distribution, SweepSpec, allowed_values, condition_holds, conditional_order


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
    for key in conditional_order(space):
        dist = space[key]
        if dist.when and not condition_holds(dist.when, {**base_flat, **overrides}):
            continue
        overrides[key] = suggest(trial, key, dist)
    return overrides


def active_first_values(spec: SweepSpec, config: TrainConfig, given: Mapping[str, Any]) -> dict[str, Any]:
    """The first value (first choice, or `low`) of each conditional parameter whose condition holds once `given`
    is set on `config`: a setting the sweep can draw, for checks before the first trial."""
    values: dict[str, Any] = {**config.flat(), **given}
    out: dict[str, Any] = {}
    space = spec.distributions()
    for key in conditional_order(space):
        d = space[key]
        if d.when and key not in given and condition_holds(d.when, values):
            out[key] = values[key] = (list(d.choices or ())[0] if d.type == "categorical"
                                      else int(d.low or 0) if d.type == "int" else d.low)
    return out


def grid_size(d: Distribution) -> int:
    """How many values `d` has in a grid (`sweeps.grid.values_in_grid`)."""
    if d.type != "categorical":
        assert d.low is not None and d.high is not None and d.step is not None  # the grid sampler's check
    return values_in_grid({"type": d.type, "choices": d.choices, "low": d.low, "high": d.high, "step": d.step})


def grid_combinations(spec: SweepSpec) -> int | None:
    """How many trials the grid sampler has to run (each combination once), None for another sampler."""
    if spec.study.sampler.type != "grid":
        return None
    return math.prod(grid_size(d) for d in spec.distributions().values())


def grid_values(spec: SweepSpec) -> dict[str, list[Any]]:
    """Every value of every parameter, for ``GridSampler``: ``low + k * step`` up to ``high``, the values Optuna's
    stepped distributions contain (``numpy.arange`` went past ``high`` when the step did not divide the range:
    0.5..1.0 step 0.3 gave 1.1, which Optuna refused mid-sweep, and 0.1..0.3 step 0.1 gave 0.30000000000000004)."""
    grid: dict[str, list[Any]] = {}
    for key, d in spec.distributions().items():
        if d.type == "categorical":
            grid[key] = list(d.choices or ())
        else:
            # bounds checked by Distribution, the step by the grid sampler's check
            assert d.low is not None and d.high is not None and d.step is not None
            # in decimal, as written in the spec and as Optuna adjusts a stepped range (0.1 + 2 * 0.1 is 0.3)
            low, step = Decimal(str(d.low)), Decimal(str(d.step))
            values = [low + k * step for k in range(grid_size(d))]
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
    base_flat = base.flat()
    for key, d in spec.distributions().items():
        for other, expected in (d.when or {}).items():
            if other in base_flat:
                _check_condition_values(spec, fixed_config, key, other, expected)
        values: list[Any] = list(d.choices or ()) if d.type == "categorical" else [d.low, d.high]
        if d.type == "int":
            values = [int(v) for v in values]
        # a conditional parameter is checked in the setting where it is active
        condition = {k: (v[0] if isinstance(v, (list, tuple)) and v else v) for k, v in (d.when or {}).items()}
        for value in values:
            try:
                held = fixed_config.with_overrides({**condition, key: value}).flat().get(key)
            except ConfigError as exc:
                if exc.field == key or exc.field.startswith(key + "."):
                    raise ConfigError(f"search_space.{key}", f"value {value!r} is invalid for the train config: "
                                                             f"{exc.detail}") from None
                continue
            # its bounds are whole numbers the config takes, the values between them are not: every trial failed
            # (a whole-number step from a whole-number low draws whole numbers: W&B's q_uniform on batch_size)
            whole_steps = d.step is not None and float(d.low or 0).is_integer() and float(d.step).is_integer()
            if d.type == "float" and not whole_steps and isinstance(held, int) and not isinstance(held, bool):
                raise ConfigError(f"search_space.{key}.type", f"{key} is a whole number in the train config, and a "
                                                              f"float range draws fractions: use type: int")



def _check_condition_values(spec: SweepSpec, config: TrainConfig, key: str, other: str, expected: Any) -> None:
    """A condition on a value its key cannot have (a typo: `when: {loss.type: tripplet}`) left `key` unsampled in
    every trial, without a word. A value the spec can give `other` is fine (`loss.mining: batch_hard` is valid
    only beside a triplet loss the space also draws), and so is a valid value this space never draws: it is a
    narrowed space (`--set search_space.loss.type=contrastive` under a `when: {loss.type: triplet}`). A value the
    config would convert (`encoder.depth: "2"`) never equals what a trial holds (2): `sweeps.spec.condition_holds`
    compares."""
    d = spec.distributions().get(other)
    current = config.flat().get(other)
    where = f"search_space.{key}.when"
    for value in allowed_values(expected):
        if d is not None and d.type == "categorical" and value in (d.choices or ()):
            continue
        if d is not None and d.type != "categorical":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(where, f"{other} is drawn as a number, never {value!r}")
            # a number the range does not draw is a narrowed space, as a choice is; checked against the config
            # below (a continuous float range: `spec._check_conditions_on_ranges`)
        if d is None and value == current:
            continue
        try:
            held = config.with_overrides({other: value}).flat().get(other)
        except ConfigError as exc:
            if exc.field == other or exc.field.startswith(other + "."):  # not a clash with another base value
                raise ConfigError(where, f"{other} can never be {value!r}: {exc.detail}") from None
            continue
        if held != value:
            raise ConfigError(where, f"{other} would hold {held!r}, never {value!r}: write {held!r}")


def trial_config(spec: SweepSpec, overrides: Mapping[str, Any]) -> TrainConfig:
    return spec.base.with_overrides(overrides)

