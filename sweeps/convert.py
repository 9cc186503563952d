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
``early_terminate: hyperband``  ``study.pruner: {type: hyperband, min_resource: min_iter (or the
                                first band of max_iter and s), reduction_factor: eta}``
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

from .directions import better_way, metric_direction
from .grid import values_in_grid

METHODS = {"bayes": "tpe", "random": "random", "grid": "grid"}
IGNORED_TOP = ("program", "command", "project", "entity", "description", "controller", "job")
UNBOUNDED = ("normal", "q_normal", "log_normal", "q_log_normal")
SHAPED = ("beta", "q_beta")  # W&B's beta(a, b) over [min, max]: Optuna draws uniform ranges, not shaped ones
# what a W&B sweep file may hold (the rest is noted as ignored: W&B itself refuses unknown keys, so it is a typo)
KNOWN_TOP = ("method", "parameters", "metric", "name", "run_cap", "early_terminate", *IGNORED_TOP)
KNOWN_PARAMETER = ("value", "values", "distribution", "min", "max", "q", "mu", "sigma", "probabilities", "a", "b")
KNOWN_METRIC = ("name", "goal", "target")
KNOWN_EARLY_TERMINATE = ("type", "min_iter", "eta", "max_iter", "s", "strict")
# the parameter keys each kind of distribution reads (the rest of KNOWN_PARAMETER is noted as unused by it)
_USES_Q = ("q_uniform", "q_log_uniform", "q_log_uniform_values")


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ConfigError(field, f"expected a finite number; received: {value!r}")
    return float(value)


def _given(field: str, value: Any) -> int | float:
    """A number as written (an int stays an int in the spec), checked like `_number`."""
    _number(field, value)
    return value


def _first_band(early: Mapping[str, Any], notes: list[str]) -> int:
    """The first epoch W&B's Hyperband judges a run at, given ``max_iter`` and ``s``: its bands are
    ``int(max_iter / eta**i)`` for i = 1..s while at least 1, and ``max_iter`` with ``s`` wins over ``min_iter``
    (wandb/sweeps, ``hyperband_stopping.py``). Dropping both pruned from epoch 1 where W&B waited for its first
    band (epoch 3 of ``max_iter: 27, s: 2, eta: 3``)."""
    max_iter = _number("early_terminate.max_iter", early["max_iter"])
    eta = _number("early_terminate.eta", early.get("eta", 3))  # W&B's default
    if "s" not in early:
        raise ConfigError("early_terminate.s", "max_iter needs s, the number of bands W&B cuts it into (W&B "
                                               "refuses it without); or give min_iter instead")
    s = early["s"]
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ConfigError("early_terminate.s", f"expected a positive whole number of bands; received: {s!r}")
    if eta <= 1:
        raise ConfigError("early_terminate.eta", f"expected a number above 1; received: {early.get('eta')!r}")
    bands, band = [], max_iter
    for _ in range(s):  # divided step by step, as W&B does (eta ** i differs in the last digit for eta 1.1)
        band /= eta
        if band < 1:
            break
        bands.append(int(band))
    if not bands:
        raise ConfigError("early_terminate.max_iter", f"max_iter {_plain(max_iter)} / eta {_plain(eta)} is below 1: "
                                                      f"W&B has no band to stop a run at; raise max_iter")
    first = min(bands)
    if "min_iter" in early:
        notes.append("early_terminate.min_iter ignored: W&B builds its bands from max_iter and s when both are given")
    notes.append(f"early_terminate.max_iter and s: min_resource {first} (W&B's first band: the smallest of "
                 f"max_iter / eta**i, i = 1..s, that is at least 1); Optuna's Hyperband takes its maximum from the "
                 f"epochs")
    return first


def _plain(value: float) -> str:
    return f"{value:g}"


def _multiples(low: float, high: float, q: float) -> tuple[Decimal, Decimal]:
    """The least and greatest multiple of `q` that W&B's ``round(X / q) * q`` draws for X in [low, high] with a
    chance above zero. A bound halfway between two multiples is drawn only when X equals it exactly, so it rounds
    into the range (min 4, q 8 gives 8, not 0: round-half-to-even made the bound 0, a width W&B never draws)."""
    lo, hi, step = Decimal(str(low)), Decimal(str(high)), Decimal(str(q))
    return (math.floor(lo / step - Decimal("0.5")) + 1) * step, (math.ceil(hi / step + Decimal("0.5")) - 1) * step


def _number_of(value: Decimal, whole: bool) -> int | float:
    return int(value) if whole else float(value)


def _grid_values(low: float, high: float, q: float, whole: bool) -> list[int | float]:
    """W&B's grid of a ``q_uniform``: ``numpy.arange(min, max, q)``, which leaves `max` out."""
    lo, hi, step = Decimal(str(low)), Decimal(str(high)), Decimal(str(q))
    count = max(0, math.ceil((hi - lo) / step))
    return [_number_of(lo + k * step, whole) for k in range(count)]


_ONE_KEY_EACH = "give each setting its own parameter (a dotted key such as optimizer.name, or nested parameters)"


def _parameter(field: str, p: Any, notes: list[str], *, grid: bool = False) -> Any:
    """One W&B parameter -> a spec distribution (dict) or a fixed value; `grid`: ``method: grid``, whose W&B grid
    enumerates ``int_uniform`` and ``q_uniform`` ranges."""
    if not isinstance(p, Mapping):
        raise ConfigError(field, f"expected a mapping with value, values or min/max; received: {p!r}")
    notes.extend(f"{field}.{k} ignored: not a W&B parameter key" for k in p if k not in KNOWN_PARAMETER)
    if "value" in p:
        # "unknown train-config key 'encoder'" said nothing of why; a list is a value (dataset.image_size: [32, 32])
        if isinstance(p["value"], Mapping):
            raise ConfigError(f"{field}.value", f"a fixed value must not be a mapping; {_ONE_KEY_EACH}")
        return p["value"]
    dist = p.get("distribution")
    if "values" in p:
        values = p["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{field}.values", f"expected a non-empty list; received: {values!r}")
        if any(isinstance(v, (Mapping, list)) for v in values):  # the spec's check named the key as unknown
            raise ConfigError(f"{field}.values", "categorical choices must be single values (str, number, bool, "
                                                 f"null), not mappings or lists; {_ONE_KEY_EACH}")
        if "probabilities" in p:
            notes.append(f"{field}.probabilities dropped: Optuna samples categorical choices without weights")
        return {"type": "categorical", "choices": values}
    if dist in UNBOUNDED:
        raise ConfigError(f"{field}.distribution", f"{dist!r} has no bounds; give min and max (uniform or "
                                                   f"log_uniform_values) for a search range")
    if dist in SHAPED:
        raise ConfigError(f"{field}.distribution", f"W&B's {dist!r} (a beta shape over the range) has no Optuna "
                                                   f"equivalent; use uniform (or q_uniform) with min and max")
    if "min" not in p or "max" not in p:
        raise ConfigError(field, "expected value, values, or min and max")
    low, high = _number(f"{field}.min", p["min"]), _number(f"{field}.max", p["max"])
    both_int = all(isinstance(p[k], int) and not isinstance(p[k], bool) for k in ("min", "max"))
    dist = dist or ("int_uniform" if both_int else "uniform")
    q = p.get("q")
    unused = [k for k in ("q", "mu", "sigma", "a", "b") if k in p and not (k == "q" and dist in _USES_Q)]
    notes.extend(f"{field}.{k} ignored: W&B's {dist} does not use it"
                 + (" (a step needs q_uniform)" if k == "q" and dist in ("uniform", "int_uniform") else "")
                 for k in unused)
    if dist == "int_uniform":  # the bounds as given: a fractional one is refused by the spec's check, not cut
        # W&B's grid runs every whole number of the range; a grid sampler needs the step to enumerate it
        return {"type": "int", "low": p["min"], "high": p["max"], **({"step": 1} if grid else {})}
    if dist == "uniform":
        return {"type": "float", "low": low, "high": high}
    if dist == "q_uniform":  # W&B draws round(X / q) * q for X in [min, max]: the multiples of q nearest the range
        step = _number(f"{field}.q", q if q is not None else 1.0)
        if step <= 0:  # a decimal.InvalidOperation (q 0) before
            raise ConfigError(f"{field}.q", f"expected a positive number; received: {q!r}")
        whole = both_int and float(step).is_integer()
        if grid:  # W&B's grid is arange(min, max, q): max left out, min not rounded
            return {"type": "categorical", "choices": _grid_values(low, high, step, whole)}
        low_d, high_d = _multiples(low, high, step)
        low_q, high_q = float(low_d), float(high_d)
        if not (math.isclose(low_q, low) and math.isclose(high_q, high)):
            notes.append(f"{field}: W&B's q_uniform draws multiples of q={p.get('q', 1)}: range {_plain(low_q)}.."
                         f"{_plain(high_q)} (given {_plain(low)}..{_plain(high)})")
        return {"type": "int" if whole else "float", "low": _number_of(low_d, whole),
                "high": _number_of(high_d, whole), "step": int(step) if whole else step}
    if dist in ("log_uniform", "inv_log_uniform", "q_log_uniform"):  # W&B: min/max are natural-log exponents
        if dist == "log_uniform" and 0 < low < high <= 1:
            notes.append(f"{field}: W&B's log_uniform takes natural-log exponents, so this draws "
                         f"{_plain(math.exp(low))}..{_plain(math.exp(high))}; for the values "
                         f"{_plain(low)}..{_plain(high)} use log_uniform_values")
        if dist == "inv_log_uniform":  # W&B: log(1 / X) is uniform in [min, max], so X is in [e^-max, e^-min]
            return {"type": "float", "low": math.exp(-high), "high": math.exp(-low), "log": True}
        low, high = math.exp(low), math.exp(high)
    if dist in ("q_log_uniform", "q_log_uniform_values") and q is not None and _number(f"{field}.q", q) <= 0:
        raise ConfigError(f"{field}.q", f"expected a positive number; received: {q!r}")
    if dist in ("q_log_uniform", "q_log_uniform_values") and isinstance(q, int) and not isinstance(q, bool):
        # W&B gives whole numbers for an integer q (its tutorial's batch_size: q 1, e^3.47..e^5.55 = 32..256)
        low_d, high_d = _multiples(low, high, q)
        low_d = max(low_d, Decimal(q))  # 0 (min 0.1, q 1) has no log; W&B draws it only below q / 2
        if high_d < low_d:  # min 1, max 3, q 8: W&B draws 0 alone
            raise ConfigError(field, f"no multiple of q={q} above 0 lies in {_plain(low)}..{_plain(high)}: W&B "
                                     f"would draw only 0; lower q or widen the range")
        if q != 1:
            notes.append(f"{field}.q dropped: Optuna cannot combine a log scale with a step (every whole number of "
                         f"{int(low_d)}..{int(high_d)} can be drawn)")
        return {"type": "int", "low": int(low_d), "high": int(high_d), "log": True}
    if dist in ("log_uniform", "q_log_uniform", "log_uniform_values", "inv_log_uniform_values",
                "q_log_uniform_values"):
        if dist.startswith("q_"):
            notes.append(f"{field}.q dropped: Optuna cannot combine a log scale with a step")
        return {"type": "float", "low": low, "high": high, "log": True}
    raise ConfigError(f"{field}.distribution", f"unknown W&B distribution {dist!r}")


def _flatten_parameters(params: Any, prefix: str, notes: list[str], field: str, *, grid: bool = False
                        ) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise ConfigError(field, f"expected a mapping of parameters; received: {type(params).__name__}")
    out: dict[str, Any] = {}
    for name, p in params.items():
        key = f"{prefix}{name}"
        if isinstance(p, Mapping) and "parameters" in p:  # W&B nested parameters
            inner = _flatten_parameters(p["parameters"], key + ".", notes, f"{field}.{name}.parameters", grid=grid)
        else:
            inner = {key: _parameter(f"{field}.{name}", p, notes, grid=grid)}
        for dotted in inner:
            if dotted in out:  # a dotted name and a nested one: the second replaced the first in silence
                raise ConfigError(f"{field}.{name}", f"{dotted} is given twice (as a dotted name and nested "
                                                     f"parameters); keep one")
        out.update(inner)
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
    if method == "bayes" and data.get("metric") is None:  # W&B refuses it; here the spec's default metric applies
        notes.append("method bayes without metric: W&B requires one; the spec's default study.metric applies")
    if study_name or data.get("name"):
        study["name"] = study_name or str(data["name"])
    metric = data.get("metric")
    if metric is not None:
        if not isinstance(metric, Mapping) or "name" not in metric:
            raise ConfigError("metric", f"expected {{name, goal}}; received: {metric!r}")
        study["metric"] = name = str(metric["name"])
        notes += [f"metric.{k} ignored: not a W&B metric key" for k in metric if k not in KNOWN_METRIC]
        try:
            better = metric_direction(name)
        except ValueError:  # a name no trial reports: the spec's check names it
            better = None
        goal = metric.get("goal", "minimize")
        if goal not in ("minimize", "maximize"):
            raise ConfigError("metric.goal", f"expected 'minimize' or 'maximize'; received: {goal!r}")
        if "goal" not in metric and better is not None:
            goal = better  # W&B's default (minimize) on an AUC searched for the worst models
            notes.append(f"metric.goal not given: {better} {name} (W&B's default is minimize; {name} is better "
                         f"{better_way(better)})")
        elif "goal" not in metric:
            notes.append(f"metric.goal not given: minimize {name}, W&B's default")
        elif better is not None and goal != better:
            raise ConfigError("metric.goal", f"{name} is better {better_way(better)}: "
                                             f"goal {goal} would search for the worst models; use goal: {better}")
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
        if "min_iter" not in early and "max_iter" not in early:  # W&B's schema refuses it; here it pruned from 1
            raise ConfigError("early_terminate", "hyperband needs min_iter, or max_iter with s (as W&B requires): "
                                                 "the epoch of its first band")
        pruner: dict[str, Any] = {"type": "hyperband"}
        notes += [f"early_terminate.{k} ignored: not a W&B early_terminate key" for k in early
                  if k not in KNOWN_EARLY_TERMINATE]
        # as given: a fractional one is refused by the spec's check (int() cut 1.5 to 1 without a word)
        if "eta" in early:
            pruner["reduction_factor"] = _given("early_terminate.eta", early["eta"])
        if "max_iter" in early and ("s" in early or "min_iter" not in early):
            pruner["min_resource"] = _first_band(early, notes)
        elif "min_iter" in early:
            if "max_iter" in early:
                notes.append("early_terminate.max_iter ignored: without s it makes no bands; min_iter's are used")
            pruner["min_resource"] = _given("early_terminate.min_iter", early["min_iter"])
        if "strict" in early:
            notes.append("early_terminate.strict dropped: Optuna's Hyperband has no strict mode")
        study["pruner"] = pruner
    search = _flatten_parameters(data["parameters"], "", notes, "parameters", grid=method == "grid")
    if not data["parameters"]:  # W&B's schema refuses it too (minProperties 1)
        raise ConfigError("parameters", "empty: nothing to search")
    if method == "grid":
        # W&B runs each combination once, then ends the sweep; without run_cap the spec's default budget (10)
        # repeated a small grid's combinations and left a larger one's unrun, without a word
        # a range without a step is refused by the spec's grid check, naming it (counting it was a KeyError)
        size = math.prod(values_in_grid(d) for d in search.values()
                         if isinstance(d, Mapping) and ("choices" in d or "step" in d))
        if "trials" not in study:
            study["trials"] = size
            notes.append(grid_budget_note(size))
        elif study["trials"] > size:
            notes.append(f"run_cap {study['trials']} is more than the grid's {size} combinations: the sweep runs "
                         f"{size} (W&B ends a grid once each combination has run)")
            study["trials"] = size
    spec: dict[str, Any] = {"search_space": search, "study": study}
    if base:
        spec["base"] = dict(base)
    return spec, notes


def grid_budget_note(size: int) -> str:
    return f"study.trials: {size}, the grid's combinations (W&B runs each once; no run_cap given)"


def looks_like_wandb(data: Any) -> bool:
    """A W&B sweep file rather than a spec: ``parameters`` (and usually ``method``), no ``search_space``."""
    return isinstance(data, Mapping) and "parameters" in data and "search_space" not in data and "base" not in data
