"""Weights & Biases sweep files -> siamese-sweep specs.

A W&B sweep (``method``, ``metric: {name, goal, target}``, ``parameters`` with ``min/max/values/value/
distribution``, nested ``parameters``, ``early_terminate``, ``run_cap``) maps onto a spec like this:

==============================  ==============================================================
W&B                             siamese-sweep
==============================  ==============================================================
``method: bayes|random|grid``   ``study.sampler.type: tpe|random|grid``
``metric.name`` / ``goal``      ``study.metric`` / ``study.direction``
``metric.target``               ``study.stop.target`` (no worker starts a trial once one reached it)
``run_cap``                     ``study.trials`` (the global COMPLETE + PRUNED budget)
``early_terminate: hyperband``  ``study.pruner: {type: hyperband, min_resource: min_iter,
                                reduction_factor: eta}``
``values`` / ``value``          ``{type: categorical, choices}`` / a fixed value
``min``/``max`` (+ distribution) ``{type: float|int, low, high, log, step}``
nested ``parameters``           dotted keys (``optimizer.parameters.name`` -> ``optimizer.name``)
==============================  ==============================================================

W&B's ``early_terminate`` stops single runs, so it is a pruner here; the study-level stop is
``metric.target``. ``load_spec`` converts a W&B file it is given; ``siamese-sweep convert`` prints the result.

Parameter names must be train-config keys (``learning_rate``, ``loss.margin``, ``encoder.depth``...);
the spec's validation names any that are not. Unbounded distributions (``normal``, ``log_normal``...) have
no equivalent range and are refused with the field named; ``program``, ``command``, ``project`` and
``entity`` are W&B launcher settings and are dropped (listed in the notes).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from siamese_core.errors import ConfigError

METHODS = {"bayes": "tpe", "random": "random", "grid": "grid"}
IGNORED_TOP = ("program", "command", "project", "entity", "description", "controller", "job")
UNBOUNDED = ("normal", "q_normal", "log_normal", "q_log_normal")
# what a W&B sweep file may hold (the rest is noted as ignored: W&B itself refuses unknown keys, so it is a typo)
KNOWN_TOP = ("method", "parameters", "metric", "name", "run_cap", "early_terminate", *IGNORED_TOP)
KNOWN_PARAMETER = ("value", "values", "distribution", "min", "max", "q", "mu", "sigma", "probabilities")


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ConfigError(field, f"expected a finite number; received: {value!r}")
    return float(value)


def _given(field: str, value: Any) -> int | float:
    """A number as written (an int stays an int in the spec), checked like `_number`."""
    _number(field, value)
    return value


def _plain(value: float) -> str:
    return f"{value:g}"


def _parameter(field: str, p: Any, notes: list[str]) -> Any:
    """One W&B parameter -> a spec distribution (dict) or a fixed value."""
    if not isinstance(p, Mapping):
        raise ConfigError(field, f"expected a mapping with value, values or min/max; received: {p!r}")
    notes.extend(f"{field}.{k} ignored: not a W&B parameter key" for k in p if k not in KNOWN_PARAMETER)
    if "value" in p:
        return p["value"]
    dist = p.get("distribution")
    if "values" in p:
        values = p["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{field}.values", f"expected a non-empty list; received: {values!r}")
        if "probabilities" in p:
            notes.append(f"{field}.probabilities dropped: Optuna samples categorical choices without weights")
        return {"type": "categorical", "choices": values}
    if dist in UNBOUNDED:
        raise ConfigError(f"{field}.distribution", f"{dist!r} has no bounds; give min and max (uniform or "
                                                   f"log_uniform_values) for a search range")
    if "min" not in p or "max" not in p:
        raise ConfigError(field, "expected value, values, or min and max")
    low, high = _number(f"{field}.min", p["min"]), _number(f"{field}.max", p["max"])
    both_int = all(isinstance(p[k], int) and not isinstance(p[k], bool) for k in ("min", "max"))
    dist = dist or ("int_uniform" if both_int else "uniform")
    q = p.get("q")
    if dist == "int_uniform":  # the bounds as given: a fractional one is refused by the spec's check, not cut
        return {"type": "int", "low": p["min"], "high": p["max"]}
    if dist == "uniform":
        return {"type": "float", "low": low, "high": high}
    if dist == "q_uniform":  # W&B draws round(X / q) * q for X in [min, max]: the multiples of q nearest the range
        step = _number(f"{field}.q", q if q is not None else 1.0)
        kind = "int" if both_int and float(step).is_integer() else "float"
        low_q, high_q = (float(round(Decimal(str(v)) / Decimal(str(step))) * Decimal(str(step))) for v in (low, high))
        if not (math.isclose(low_q, low) and math.isclose(high_q, high)):
            notes.append(f"{field}: W&B's q_uniform draws multiples of q={p.get('q', 1)}: range {_plain(low_q)}.."
                         f"{_plain(high_q)} (given {_plain(low)}..{_plain(high)})")
        out: dict[str, Any] = {"type": kind, "low": low_q, "high": high_q, "step": step}
        return {k: (int(v) if kind == "int" and k in ("low", "high", "step") else v) for k, v in out.items()}
    if dist in ("log_uniform_values", "inv_log_uniform_values", "q_log_uniform_values"):
        if dist == "q_log_uniform_values":
            notes.append(f"{field}.q dropped: Optuna cannot combine a log scale with a step")
        return {"type": "float", "low": low, "high": high, "log": True}
    if dist in ("log_uniform", "inv_log_uniform", "q_log_uniform"):  # W&B: min/max are natural-log exponents
        if dist == "q_log_uniform":
            notes.append(f"{field}.q dropped: Optuna cannot combine a log scale with a step")
        if dist == "inv_log_uniform":  # W&B: log(1 / X) is uniform in [min, max], so X is in [e^-max, e^-min]
            return {"type": "float", "low": math.exp(-high), "high": math.exp(-low), "log": True}
        return {"type": "float", "low": math.exp(low), "high": math.exp(high), "log": True}
    raise ConfigError(f"{field}.distribution", f"unknown W&B distribution {dist!r}")


def _flatten_parameters(params: Any, prefix: str, notes: list[str], field: str) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise ConfigError(field, f"expected a mapping of parameters; received: {type(params).__name__}")
    out: dict[str, Any] = {}
    for name, p in params.items():
        key = f"{prefix}{name}"
        if isinstance(p, Mapping) and "parameters" in p:  # W&B nested parameters
            out.update(_flatten_parameters(p["parameters"], key + ".", notes, f"{field}.{name}.parameters"))
        else:
            out[key] = _parameter(f"{field}.{name}", p, notes)
    return out


def from_wandb(data: Mapping[str, Any], *, base: Mapping[str, Any] | None = None,
               study_name: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Convert a W&B sweep config to a spec dict; also returns notes on what had no equivalent."""
    if not isinstance(data, Mapping) or "parameters" not in data:
        raise ConfigError("parameters", "expected a W&B sweep config with a 'parameters' section")
    notes: list[str] = [f"{k} ignored (a W&B launcher setting)" for k in IGNORED_TOP if k in data]
    notes += [f"{k} ignored: not a W&B sweep key" for k in data if k not in KNOWN_TOP]
    method = data.get("method", "bayes")
    if method not in METHODS:
        raise ConfigError("method", f"expected one of {sorted(METHODS)}; received: {method!r}")
    study: dict[str, Any] = {"sampler": {"type": METHODS[method]}}
    if study_name or data.get("name"):
        study["name"] = study_name or str(data["name"])
    metric = data.get("metric")
    if metric is not None:
        if not isinstance(metric, Mapping) or "name" not in metric:
            raise ConfigError("metric", f"expected {{name, goal}}; received: {metric!r}")
        study["metric"] = str(metric["name"])
        goal = metric.get("goal", "minimize")
        if "goal" not in metric:
            notes.append(f"metric.goal not given: minimize {metric['name']}, W&B's default")
        if goal not in ("minimize", "maximize"):
            raise ConfigError("metric.goal", f"expected 'minimize' or 'maximize'; received: {goal!r}")
        study["direction"] = goal
        if "target" in metric:
            study["stop"] = {"target": _number("metric.target", metric["target"])}
    if "run_cap" in data:
        cap = data["run_cap"]
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ConfigError("run_cap", f"expected a positive integer; received: {cap!r}")
        study["trials"] = cap
    early = data.get("early_terminate")
    if early is not None:
        if not isinstance(early, Mapping) or early.get("type") != "hyperband":
            raise ConfigError("early_terminate.type", f"expected 'hyperband'; received: {early!r}")
        pruner: dict[str, Any] = {"type": "hyperband"}
        # as given: a fractional one is refused by the spec's check (int() cut 1.5 to 1 without a word)
        if "min_iter" in early:
            pruner["min_resource"] = _given("early_terminate.min_iter", early["min_iter"])
        if "eta" in early:
            pruner["reduction_factor"] = _given("early_terminate.eta", early["eta"])
        for key in ("max_iter", "s", "strict"):
            if key in early:
                notes.append(f"early_terminate.{key} dropped: Optuna's Hyperband takes its maximum from the epochs")
        study["pruner"] = pruner
    spec: dict[str, Any] = {"search_space": _flatten_parameters(data["parameters"], "", notes, "parameters"),
                            "study": study}
    if base:
        spec["base"] = dict(base)
    return spec, notes


def looks_like_wandb(data: Any) -> bool:
    """A W&B sweep file rather than a spec: ``parameters`` (and usually ``method``), no ``search_space``."""
    return isinstance(data, Mapping) and "parameters" in data and "search_space" not in data and "base" not in data
