"""Run KerasTuner-style search spaces (``build(hp)`` / ``HyperModel``) under Optuna.

`OptunaHyperParameters` is a real ``keras_tuner.HyperParameters`` whose every
``hp.Int/Float/Choice/Boolean`` call becomes an Optuna suggestion, so existing
KerasTuner code gets Optuna's samplers and pruners and MLflow tracking
unchanged. Conditional scopes carry over: only active parameters reach Optuna.

In a sweep spec, ``hypermodel: my_pkg.space:build`` names a function (or a
``HyperModel`` class/instance) whose ``build(hp)`` returns the *encoder*
(one input -> embedding). Hyperparameters named like train-config keys
(``learning_rate``, ``loss.margin``, ``batch_size``) also set those fields.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import keras_tuner as kt
import optuna
from keras_tuner.engine import hyperparameters as hp_types  # the public export of the hyperparameter types

from siamese_core.errors import ConfigError

from .errors import InvalidTrialConfig

CURRENT_ENCODER = "sweeps.hypermodel:current_encoder"
_current: dict[str, Any] = {}


def _geometric(hp: Any, cast: Callable[[float], Any]) -> list[Any]:
    """KerasTuner's log sampling with a step multiplies: lo, lo*step, ... <= hi."""
    out, v = [], hp.min_value
    while v <= hp.max_value * (1 + 1e-9):
        out.append(cast(v))
        v *= hp.step
    return out


class OptunaHyperParameters(kt.HyperParameters):
    """KerasTuner hyperparameters answered by an Optuna trial."""

    def __init__(self, trial: optuna.Trial, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trial = trial
        # drawn before build(hp) runs: the spec's search_space. A hypermodel declaring one of them got the search
        # space's value without a word (learning_rate 0.72 outside its own hp.Float(1e-3, 1e-2))
        self.searched = frozenset(trial.params)

    # KerasTuner has no public hook for "answer a hyperparameter when it is declared": every public
    # hp.Int/Float/Choice/Boolean/Fixed builds the hyperparameter (name scopes and conditions applied) and
    # passes it to `_retrieve`, the one place that sees it whole. Overriding the public methods instead
    # would re-implement name scopes and conditional scopes. tests/sweeps/test_spec_space.py pins this.
    def _retrieve(self, hp: Any) -> Any:
        value = super()._retrieve(hp)  # registers hp; None when its condition is inactive
        if value is None and not self.is_active(hp):
            return None
        name, trial = hp.name, self.trial
        try:
            v = self._answer(hp, name, trial)
        except ValueError as exc:
            # Optuna keeps one distribution per name across a study; KerasTuner allows a name in two conditional
            # scopes with two kinds (`hp.Int("units")` and `hp.Choice("units")`): Optuna's ValueError named neither
            if "different distribution" not in str(exc):
                raise
            raise InvalidTrialConfig(f"hp {name!r} is declared here as {type(hp).__name__} and elsewhere in the "
                                     f"study with another kind of distribution; Optuna keeps one per name: give "
                                     f"each its own name") from exc
        self.values[name] = v
        return v

    def _answer(self, hp: Any, name: str, trial: optuna.Trial) -> Any:
        if name in self.searched:
            raise InvalidTrialConfig(f"hp {name!r} is declared by the hypermodel and in search_space, each with its "
                                     f"own range; declare it in one place")
        if name in trial.params:
            v = trial.params[name]
        elif isinstance(hp, hp_types.Fixed):
            v = hp.value
        elif isinstance(hp, hp_types.Boolean):
            v = trial.suggest_categorical(name, [False, True])
        elif isinstance(hp, hp_types.Choice):
            v = trial.suggest_categorical(name, list(hp.values))
        elif isinstance(hp, hp_types.Int):
            if hp.sampling != "linear" and hp.step not in (None, 1):
                v = trial.suggest_categorical(name, _geometric(hp, int))
            elif hp.sampling != "linear":
                v = trial.suggest_int(name, hp.min_value, hp.max_value, log=True)
            else:
                v = trial.suggest_int(name, hp.min_value, hp.max_value, step=hp.step or 1)
        elif isinstance(hp, hp_types.Float):
            if hp.sampling != "linear" and hp.step:
                v = trial.suggest_categorical(name, _geometric(hp, float))
            elif hp.sampling != "linear":
                v = trial.suggest_float(name, hp.min_value, hp.max_value, log=True)
            else:
                v = trial.suggest_float(name, hp.min_value, hp.max_value, step=hp.step)
        else:
            raise TypeError(f"unsupported KerasTuner hyperparameter type {type(hp).__name__}")
        return v


def load_hypermodel(path: str) -> Callable[[kt.HyperParameters], Any]:
    """Resolve ``module:attr`` to a ``build(hp)`` callable (function, HyperModel class or instance)."""
    from siamese_core.registry import import_object

    obj = import_object(path, field="hypermodel")
    if inspect.isclass(obj) and issubclass(obj, kt.HyperModel):
        obj = obj()
    if isinstance(obj, kt.HyperModel):
        return obj.build
    if callable(obj):
        return obj
    raise ConfigError("hypermodel", f"expected a build(hp) function or a keras_tuner.HyperModel; received: "
                                    f"{type(obj).__name__}")


def build_for_trial(trial: optuna.Trial, path: str, train_keys: set[str]) -> tuple[Any, dict[str, Any]]:
    """Call ``build(hp)``; returns the encoder model and the train-config overrides found in ``hp.values``."""
    hp = OptunaHyperParameters(trial)
    model = load_hypermodel(path)(hp)
    if model is None:  # it said "no encoder was built for this trial" when training began
        raise InvalidTrialConfig(f"{path} returned None: build(hp) must return the encoder (a Keras model)")
    overrides = {k: v for k, v in hp.values.items() if k in train_keys}
    return model, overrides


def set_current_encoder(model: Any) -> None:
    _current["model"] = model


def current_encoder(input_shape: tuple[int, ...]) -> Any:
    """The encoder built by ``build(hp)`` for the running trial (the train config points here)."""
    model = _current.get("model")
    if model is None:
        raise ConfigError("hypermodel", "no encoder was built for this trial")
    expected = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else None
    if expected is not None and tuple(expected) != tuple(input_shape):
        raise ConfigError("hypermodel", f"build(hp) returned a model for inputs {expected}; the dataset has "
                                        f"{tuple(input_shape)}")
    return model
