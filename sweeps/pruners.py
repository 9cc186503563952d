"""Optuna pruners by name: ``get(name).build(spec)``; `names()` for validation, CLI help and docs.

The pruner hears one report per epoch (`sweeps.callbacks.OptunaReporter`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .by_name import ByName

if TYPE_CHECKING:
    from .spec import SweepSpec


@dataclass(frozen=True)
class Pruner:
    build: Callable[[SweepSpec], Any]  # spec -> optuna.pruners.BasePruner
    options: tuple[str, ...] = ()  # the `study.pruner` fields `build` reads (others are noted as unused)


_PRUNERS: ByName[Pruner] = ByName("pruner", field="study.pruner.type")
get = _PRUNERS.get
names = _PRUNERS.names
expected = _PRUNERS.expected


def _median(spec: SweepSpec) -> Any:
    import optuna

    p = spec.study.pruner
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def _successive_halving(spec: SweepSpec) -> Any:
    import optuna

    p = spec.study.pruner
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)


def _hyperband(spec: SweepSpec) -> Any:
    import optuna

    p = spec.study.pruner
    return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=most_epochs(spec),
                                          reduction_factor=p.reduction_factor)


def most_epochs(spec: SweepSpec) -> int:
    """The most epochs a trial can run (reports it can make): `epochs` fixed or searched in the search space
    wins over the base config's (a converted W&B sweep fixes it there; Hyperband got the base's 5 for 1-epoch
    trials)."""
    fixed = spec.fixed()
    if "epochs" in fixed:
        return int(fixed["epochs"])
    searched = spec.distributions().get("epochs")
    if searched is not None:
        return int(max(searched.choices or ()) if searched.type == "categorical" else searched.high or 0)
    return int(spec.base.epochs)


def _none(spec: SweepSpec) -> Any:
    import optuna

    return optuna.pruners.NopPruner()


_PRUNERS.register("median", Pruner(_median, options=("n_startup_trials", "n_warmup_steps")))
_PRUNERS.register("successive_halving", Pruner(_successive_halving, options=("min_resource", "reduction_factor")))
_PRUNERS.register("hyperband", Pruner(_hyperband, options=("min_resource", "reduction_factor")))
_PRUNERS.register("none", Pruner(_none))
