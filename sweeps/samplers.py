"""Optuna samplers by name: ``get(name).build(spec, seed)``; `names()` for validation, CLI help and docs.

Optuna is imported inside the builders, so reading the names stays cheap (``siamese-sweep --help``).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from siamese_core.errors import ConfigError

from .by_name import ByName

if TYPE_CHECKING:
    from .spec import SweepSpec


@dataclass(frozen=True)
class Sampler:
    build: Callable[[SweepSpec, int | None], Any]  # (spec, seed) -> optuna.samplers.BaseSampler
    multi_objective: bool = True
    check: Callable[[SweepSpec], None] | None = None  # extra spec checks (ConfigError) before anything runs
    startup_phase: bool = True  # its first `n_startup_trials` are drawn at random, then it searches
    options: tuple[str, ...] = ("seed",)  # the `study.sampler` fields `build` reads (others are noted as unused)


_SAMPLERS: ByName[Sampler] = ByName("sampler", field="study.sampler.type")
get = _SAMPLERS.get
names = _SAMPLERS.names
expected = _SAMPLERS.expected


def multi_objective_names() -> tuple[str, ...]:
    return tuple(n for n in names() if get(n).multi_objective)


def _tpe(spec: SweepSpec, seed: int | None) -> Any:
    import optuna

    s = spec.study.sampler
    # constant_liar: parallel workers see each other's running trials and spread out
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
                                      constant_liar=True)


def _random(spec: SweepSpec, seed: int | None) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _grid(spec: SweepSpec, seed: int | None) -> Any:
    import optuna

    from .space import grid_values

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's, without its ``study.stop()`` once the grid is covered: that call only works inside
        ``study.optimize`` and workers ask and tell (`sweeps.worker`); the trial budget ends the sweep, as it
        did when each worker ran ``optimize`` one trial at a time (where the stop ended only that call)."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler(grid_values(spec), seed=seed)


def _check_grid(spec: SweepSpec) -> None:
    from .space import grid_size

    for key, dist in spec.distributions().items():
        if dist.type != "categorical" and dist.step is None:
            raise ConfigError(f"search_space.{key}", "the grid sampler needs categorical choices or a 'step' "
                                                     "for every numeric parameter")
        # the grid is the product of every parameter's values, whether its condition holds or not: a conditional
        # parameter of one value is harmless, one of several repeats each trial where its condition does not hold
        if dist.when and (size := grid_size(dist)) > 1:
            raise ConfigError(f"search_space.{key}.when", f"the grid sampler runs every combination of every "
                                                          f"parameter, so a conditional one of {size} values "
                                                          f"repeats the trials where its condition does not hold; "
                                                          f"drop 'when' (or sweep each branch as a study of its "
                                                          f"own), or use another sampler")


def _needs(module: str, what: str) -> Callable[[SweepSpec], None]:
    """A check that `module` is installed, run with the spec's: the builder runs after the study and the parent
    run exist, so an ImportError there left both behind."""
    def check(spec: SweepSpec) -> None:
        if importlib.util.find_spec(module) is None:  # without importing it (torch takes seconds)
            raise ConfigError("study.sampler.type", f"'{spec.study.sampler.type}' needs {what}")
    return check


def _cmaes(spec: SweepSpec, seed: int | None) -> Any:
    import optuna

    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=spec.study.sampler.n_startup_trials)


def _gp(spec: SweepSpec, seed: int | None) -> Any:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.study.sampler.n_startup_trials)


def _nsga2(spec: SweepSpec, seed: int | None) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


_SAMPLERS.register("tpe", Sampler(_tpe, options=("seed", "n_startup_trials", "multivariate")))
_SAMPLERS.register("random", Sampler(_random, startup_phase=False))
_SAMPLERS.register("grid", Sampler(_grid, check=_check_grid, startup_phase=False))
_SAMPLERS.register("cmaes", Sampler(_cmaes, multi_objective=False, options=("seed", "n_startup_trials"),
                                    check=_needs("cmaes", "the cmaes package: pip install cmaes")))
_SAMPLERS.register("gp", Sampler(_gp, multi_objective=False, options=("seed", "n_startup_trials"),
                                 check=_needs("torch", "PyTorch (pip install torch); use 'cmaes' or 'tpe'")))
_SAMPLERS.register("nsga2", Sampler(_nsga2, startup_phase=False))  # generations, not a start-up and a search
