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
    return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=spec.base.epochs,
                                          reduction_factor=p.reduction_factor)


def _none(spec: SweepSpec) -> Any:
    import optuna

    return optuna.pruners.NopPruner()


_PRUNERS.register("median", Pruner(_median))
_PRUNERS.register("successive_halving", Pruner(_successive_halving))
_PRUNERS.register("hyperband", Pruner(_hyperband))
_PRUNERS.register("none", Pruner(_none))
