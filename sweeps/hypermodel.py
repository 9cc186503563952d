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
import logging
from collections.abc import Callable
from typing import Any

import keras_tuner as kt
import optuna
from keras_tuner.engine import hyperparameters as hp_types  # the public export of the hyperparameter types

from siamese_core.errors import ConfigError

from . import names
from .errors import InvalidTrialConfig

CURRENT_ENCODER = "sweeps.hypermodel:current_encoder"
_current: dict[str, Any] = {}
_warned: set[str] = set()  # hypermodels already warned about in this process (once per sweep worker, not per trial)

log = logging.getLogger(__name__)


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
        # KerasTuner answers a name declared again (same conditions) with its first value: `hp.Fixed("units", 7)`
        # then `hp.Int("units", 1, 100)` is 7 there; answered again here, it drew a new value over the fixed one
        again = self._exists(hp.name, hp.conditions)
        value = super()._retrieve(hp)  # registers hp; None when its condition is inactive
        if again or (value is None and not self.is_active(hp)):
            return value
        name, trial = hp.name, self.trial
        try:
            v = self._answer(hp, name, trial)
        except ValueError as exc:
            # Optuna keeps one distribution per name across a study; KerasTuner allows a name in two conditional
            # scopes with two kinds (`hp.Int("units")` and `hp.Choice("units")`) or two sets of choices: Optuna's
            # ValueError named neither
            if " not in (" in str(exc):  # an enqueued value not among the choices (a log grid's too)
                raise InvalidTrialConfig(f"hp {name!r} = {str(exc).partition(' not in ')[0]} (from study.enqueue?) "
                                         f"is outside the hypermodel's {_described(hp)}") from None
            if "different distribution" not in str(exc) and "dynamic value space" not in str(exc):
                raise
            raise InvalidTrialConfig(f"hp {name!r} is declared here as {_described(hp)} and elsewhere in the "
                                     f"study with another kind of distribution or other choices; Optuna keeps one "
                                     f"distribution per name: give each its own name") from exc
        _check_inside(hp, v)
        self.values[name] = v
        return v

    def _answer(self, hp: Any, name: str, trial: optuna.Trial) -> Any:
        if getattr(hp, "sampling", None) == "reverse_log":
            # dense near the top (KerasTuner: max + min - a log-uniform draw); Optuna has no such distribution,
            # and drawn as "log" it was dense near the bottom (median 11 of 1..100, KerasTuner's 90)
            raise InvalidTrialConfig(f"hp {name!r}: sampling='reverse_log' has no Optuna distribution; declare it "
                                     f"with sampling='linear' or 'log'")
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


def _described(hp: Any) -> str:
    """``Int(8..32, step 8)``, ``Choice(['relu', 'tanh'])``: what a message says the declaration was."""
    kind = type(hp).__name__
    if isinstance(hp, hp_types.Choice):
        return f"{kind}({list(hp.values)})"
    if isinstance(hp, (hp_types.Int, hp_types.Float)):
        step = f", step {hp.step}" if hp.step and not (isinstance(hp, hp_types.Int) and hp.step == 1) else ""
        return f"{kind}({hp.min_value}..{hp.max_value}{step}{', log' if hp.sampling == 'log' else ''})"
    return kind


def _check_inside(hp: Any, value: Any) -> None:
    """`InvalidTrialConfig` for a value the declaration does not allow: Optuna answers an enqueued value
    (``study.enqueue``) outside the range with only a warning, and the trial trained with it (999 units of an
    ``hp.Int(8, 32)``) and then crashed the sweep when it was recorded."""
    if isinstance(hp, hp_types.Choice):
        inside = value in list(hp.values)
    elif isinstance(hp, (hp_types.Int, hp_types.Float)):
        slack = 1e-9 * max(abs(hp.min_value), abs(hp.max_value), 1.0)  # `_geometric`'s own tolerance at the top
        inside = hp.min_value - slack <= value <= hp.max_value + slack
    else:
        return
    if not inside:
        raise InvalidTrialConfig(f"hp {hp.name!r} = {value!r} (from study.enqueue?) is outside the hypermodel's "
                                 f"{_described(hp)}")


def load_hypermodel(path: str) -> Callable[[kt.HyperParameters], Any]:
    """Resolve ``module:attr`` to a ``build(hp)`` callable (function, HyperModel class or instance)."""
    from siamese_core.registry import import_object

    obj = import_object(path, field="hypermodel")
    if inspect.isclass(obj) and issubclass(obj, kt.HyperModel):
        try:
            inspect.signature(obj).bind()
        except TypeError as exc:  # a class that needs arguments: it is made here without any
            raise ConfigError("hypermodel", f"{path} cannot be made without arguments ({exc}); name an instance "
                                            f"(module:instance) or a build(hp) function") from None
        except ValueError:
            pass  # no signature to check: the call will tell
        obj = obj()
    if isinstance(obj, kt.HyperModel):
        return obj.build
    if callable(obj):
        return obj
    raise ConfigError("hypermodel", f"expected a build(hp) function or a keras_tuner.HyperModel; received: "
                                    f"{type(obj).__name__}")


def build_for_trial(trial: optuna.Trial, path: str, train_keys: set[str]) -> tuple[Any, dict[str, Any]]:
    """Call ``build(hp)``; returns the encoder model and the train-config overrides found in ``hp.values``."""
    import keras

    hp = OptunaHyperParameters(trial)
    model = load_hypermodel(path)(hp)
    if not isinstance(model, keras.layers.Layer):  # None said "no encoder was built for this trial"; a str named
        # sweeps.hypermodel:current_encoder, not the user's function
        raise InvalidTrialConfig(f"{path} returned {type(model).__name__}: build(hp) must return the encoder (a "
                                 f"Keras model)")
    overrides = {k: v for k, v in hp.values.items() if k in train_keys}
    _warn_unused_enqueued(trial)
    if getattr(model, "optimizer", None) is not None and path not in _warned:
        _warned.add(path)
        # KerasTuner's build(hp) returns a compiled model; here it is the encoder, trained by the spec's loss and
        # optimizer: a learning rate searched inside compile() changed nothing (two trials, lr 0.002 and 0.006,
        # scored alike) while the report ranked it
        unused = sorted(k for k in hp.values if k not in train_keys)
        log.warning("%s returns a compiled model: its optimizer, loss and metrics are not used (siamese-sweep trains "
                    "the encoder with the spec's loss and optimizer, and takes its output as the embedding). "
                    "Hyperparameters named like train-config keys (learning_rate, loss.margin, batch_size) set "
                    "those; the others (%s) reach training only through the model build(hp) returns.",
                    path, ", ".join(unused) or "none")
    return model, overrides


def _warn_unused_enqueued(trial: optuna.Trial) -> None:
    """A warning for ``study.enqueue`` names this trial never asked for: a hypermodel's names are not known before
    its build(hp) runs, and a misspelt one (``unit_1`` for ``units_1``) was dropped without a word, the trial
    training with a drawn value instead."""
    from .storage import frozen_trial

    try:
        fixed = frozen_trial(trial).system_attrs.get(names.SYSTEM_ATTR_FIXED_PARAMS) or {}
    except StopIteration:  # no longer RUNNING (ended by another worker): its own outcome will say so
        return
    unused = sorted(k for k in fixed if k not in trial.params)
    if unused:
        log.warning("trial %d: study.enqueue gives %s, which build(hp) did not declare in this trial (a misspelt "
                    "name, or a branch this trial did not take): no effect", trial.number, ", ".join(unused))


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
