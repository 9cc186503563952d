"""`SweepSpec`: a validated sweep file.

A spec has four parts::

    base:          # a train config (inline mapping, or a path to a YAML file)
    search_space:  # dotted train-config key -> distribution, or a fixed value
    study:         # name, direction(s), metric(s), sampler, pruner, trials, storage
    tracking:      # MLflow URI, experiment name, what to log

Every error is a `ConfigError` naming the dotted field (``study.sampler.type``,
``search_space.loss.margin.low``), raised before any trial starts.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from siamese_core.config import TrainConfig, config_error_from, flatten, read_yaml_mapping, set_dotted
from siamese_core.errors import ConfigError
from siamese_core.metrics import GOALS

from . import names, pruners, samplers
from .convert import from_wandb, grid_budget_note, looks_like_wandb
from .directions import TRIAL_METRICS, Direction, better_way, metric_direction
from .grid import values_in_grid
from .registry import validate_model_name

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///optuna.db"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(_Section):
    """One search dimension: ``float``/``int`` in ``[low, high]`` (optionally log/step), or ``categorical``."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    when: dict[str, Any] | None = None  # condition: {other_key: value or [values]}

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("choices: a categorical parameter needs a non-empty list of choices")
            if self.low is not None or self.high is not None:
                raise ValueError("low: categorical parameters take 'choices', not low/high")
            for c in self.choices:
                if not (c is None or isinstance(c, (bool, int, float, str))):
                    raise ValueError(f"choices: expected scalars (str, int, float, bool, null); received: {c!r}")
            if self.log or self.step is not None:  # were accepted, and meant nothing
                raise ValueError(f"{'log' if self.log else 'step'}: only for float and int parameters, not "
                                 f"categorical ones")
            return self
        if self.choices is not None:
            raise ValueError(f"choices: only for categorical parameters; received type={self.type!r}")
        if self.low is None or self.high is None:
            raise ValueError(f"low: a {self.type} parameter needs both low and high")
        for name in ("low", "high"):  # .inf in an int range overflowed int() with an OverflowError (exit 1)
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: expected a finite number; received: {getattr(self, name)}")
        if not self.low < self.high:
            raise ValueError(f"high: expected low < high; received: low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"low: a log-scaled range needs low > 0; received: low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("step: cannot combine step with log=true")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step: expected step > 0; received: {self.step}")
        if self.type == "int":
            for name in ("low", "high"):
                value = getattr(self, name)
                if float(value) != int(value):
                    raise ValueError(f"{name}: an int parameter needs integer bounds; received: {value}")
            if self.step is not None and float(self.step) != int(self.step):  # was truncated: 2.5 sampled step 2
                raise ValueError(f"step: an int parameter needs a whole step; received: {self.step}")
        if abs(self.low) > 1e12 or abs(self.high) > 1e12:
            raise ValueError(f"high: bounds beyond ±1e12 are not meaningful; received: [{self.low}, {self.high}]")
        return self


def _registered_name(registry: Any, value: Any) -> str:
    """`value` if it names a built-in of `registry` (`sweeps.samplers`, `sweeps.pruners`)."""
    if not isinstance(value, str) or value not in registry.names():
        raise ValueError(f"{registry.expected()}; received: type={value!r}")
    return value


class SamplerSpec(_Section):
    type: str = "tpe"  # a name of sweeps.samplers
    seed: int | None = 0
    n_startup_trials: int = Field(5, ge=0, le=10_000)
    multivariate: bool = True

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> str:
        return _registered_name(samplers, v)


class PrunerSpec(_Section):
    type: str = "median"  # a name of sweeps.pruners
    n_startup_trials: int = Field(3, ge=0, le=10_000)
    n_warmup_steps: int = Field(1, ge=0, le=10_000)
    reduction_factor: int = Field(3, ge=2, le=100)
    min_resource: int = Field(1, ge=1, le=10_000)

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> str:
        return _registered_name(pruners, v)


class StopSpec(_Section):
    """End the whole study before its budget: once the best value reaches `target`, or once
    `patience_trials` trials have finished (COMPLETE or PRUNED) since the last new best."""

    target: float | None = None
    patience_trials: int | None = Field(None, ge=1, le=100_000)

    @model_validator(mode="after")
    def _check(self) -> StopSpec:
        if self.target is None and self.patience_trials is None:
            raise ValueError("study.stop: expected target (a value of the objective) and/or patience_trials")
        if self.target is not None and not math.isfinite(self.target):
            raise ValueError(f"target: expected a finite number; received: {self.target}")
        return self


class StudySpec(_Section):
    name: str = Field("siamese-sweep", min_length=1, max_length=200)
    direction: Direction | None = None
    directions: tuple[Direction, ...] | None = None
    metric: str = "val_roc_auc"
    metrics: tuple[str, ...] | None = None
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    trials: int = Field(10, ge=1, le=100_000)
    timeout: float | None = Field(None, gt=0)
    storage: str = DEFAULT_STORAGE
    max_failures: int = Field(5, ge=1, le=10_000)
    heartbeat_interval: int = Field(10, ge=1, le=3600)
    grace_period: int = Field(30, ge=2, le=86_400)
    max_retries: int = Field(2, ge=0, le=100)
    checkpoint_dir: str | None = None
    stop: StopSpec | None = None
    enqueue: tuple[dict[str, Any], ...] = ()  # known-good configurations, run first

    @field_validator("checkpoint_dir", mode="before")
    @classmethod
    def _checkpoint_dir(cls, v: Any) -> Any:
        # YAML reads an unquoted ``off`` (or ``false``/``no``) as False: the README's way to switch checkpoints off
        if v is False:
            return "off"
        if v is True:
            raise ValueError("expected a directory, or off to write no checkpoints; received: true")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[\w.\- ]+", v):
            raise ValueError(f"expected letters, digits, '_', '-', '.', ' '; received: {v!r}")
        return v

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        if self.metrics is not None and len(self.metrics) == 0:
            raise ValueError("study.metrics: expected at least one metric")
        n = len(self.objective_metrics)
        if self.directions is not None and len(self.directions) != n:
            raise ValueError(f"study.directions: expected {n} direction(s), one per metric; "
                             f"received: {list(self.directions)}")
        if n > 1 and not samplers.get(self.sampler.type).multi_objective:
            usable = ", ".join(repr(s) for s in samplers.multi_objective_names())
            raise ValueError(f"study.sampler.type: {self.sampler.type!r} supports one objective; use one of "
                             f"{usable} for {n} objectives")
        if self.stop is not None and n > 1:
            raise ValueError("study.stop: only for one objective (a Pareto front has no single best value to "
                             "reach or improve)")
        if len(self.enqueue) > self.trials:
            raise ValueError(f"study.enqueue: {len(self.enqueue)} configurations but a budget of {self.trials} "
                             "trials; raise study.trials or enqueue fewer")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"study.grace_period: expected more than heartbeat_interval ({self.heartbeat_interval}s); "
                             f"received: {self.grace_period}")
        return self

    @property
    def objective_metrics(self) -> tuple[str, ...]:
        return tuple(self.metrics) if self.metrics else (self.metric,)

    @property
    def objective_directions(self) -> tuple[Direction, ...]:
        if self.directions:
            return tuple(self.directions)
        if self.direction and len(self.objective_metrics) == 1:
            return (self.direction,)
        return tuple(metric_direction(m) for m in self.objective_metrics)

    @property
    def multi_objective(self) -> bool:
        return len(self.objective_metrics) > 1


class TrackingSpec(_Section):
    uri: str = DEFAULT_TRACKING_URI
    experiment: str | None = None
    log_models: bool = True
    log_plots: bool = True
    plots_every: int = Field(default=5, ge=0)  # re-log the HTML study plots every N finished trials; 0: at the end
    registered_model: str | None = None

    @field_validator("registered_model")
    @classmethod
    def _registered_model(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                validate_model_name(v, "tracking.registered_model")  # MLflow's rules, as for --model-name
            except ConfigError as exc:
                raise ValueError(exc.detail) from None
        return v
    system_metrics: bool = False  # MLflow's CPU/memory/GPU monitor in each trial's run (extra: system-metrics)
    # where epoch checkpoints live: "local" (study.checkpoint_dir only), "mlflow" (also copied into the trial's
    # run, so a retry on another machine resumes), "auto" (mlflow when `uri` is an http(s) server)
    checkpoints: Literal["auto", "local", "mlflow"] = "auto"
    # with checkpoints copied to MLflow: at most one copy per this many seconds of a trial's training (0: every
    # epoch), and the newest when a trial is stopped to be retried. A copy serves only a retry on another machine
    # after a worker died (SIGKILL, a lost machine), which then loses at most this and one epoch; a trial that
    # ends deletes its copies. Per epoch they were 4 uploads and a delete per trial of the tracking benchmark
    # (BENCHMARKS.md §2); at 60 s an upload of the default encoder (0.03-0.06 s) is under 0.1 % of training.
    checkpoint_copy_seconds: float = Field(default=60.0, ge=0)
    # true: a trial's recording runs while the next trial trains (`sweeps.finisher`): its plots, files and model
    # in a helper process at idle priority (`sweeps.recorder`), then final metrics, run end and Optuna's tell.
    # false: recorded in the worker's thread, without the helper process. A seeded sweep is the same sweep either
    # way (`sweeps.finisher.LookAhead`). auto (the default): true when the worker's TensorFlow threads span two or
    # more cores and all it may use, where the helper gets the CPU the training leaves idle; false on one core or
    # a share of them (``--workers N``), where it has none and costs more than recording in line
    # (`sweeps.finisher.records_in_background`, BENCHMARKS.md §2)
    finish_in_background: bool | Literal["auto"] = "auto"

    @field_validator("finish_in_background", mode="wrap")
    @classmethod
    def _true_false_or_auto(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(v)  # pydantic's booleans (true, off, 1, ...) or "auto"
        except ValidationError:  # one line, not an error per member of the union
            raise ValueError(f"expected true, false or auto; received: {v!r}") from None


class SweepSpec(_Section):
    base: TrainConfig = TrainConfig()
    search_space: dict[str, Distribution | Any] = Field(default_factory=dict)
    hypermodel: str | None = None
    study: StudySpec = StudySpec()
    tracking: TrackingSpec = TrackingSpec()

    @field_validator("hypermodel")
    @classmethod
    def _hypermodel(cls, v: str | None) -> str | None:
        if v is not None and not IMPORT_PATH.match(v):
            raise ValueError(f"expected an import path 'package.module:build'; received: {v!r}")
        return v

    def experiment_for(self, study_name: str) -> str:
        """The MLflow experiment of a study (``--study`` renames the default experiment with it)."""
        return self.tracking.experiment or names.default_experiment(study_name)

    def distributions(self) -> dict[str, Distribution]:
        return {k: v for k, v in self.search_space.items() if isinstance(v, Distribution)}

    def fixed(self) -> dict[str, Any]:
        return {k: v for k, v in self.search_space.items() if not isinstance(v, Distribution)}

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)

    def resolved_dict(self) -> dict[str, Any]:
        """A mapping `spec_from_dict` reads back into this spec (distributions without their unset fields)."""
        data = self.to_dict()
        data["search_space"] = {k: (v.model_dump(mode="json", exclude_none=True) if isinstance(v, Distribution)
                                    else v) for k, v in self.search_space.items()}
        return data

    def portable(self) -> dict[str, Any]:
        """The resolved spec as stored with its study: what any worker anywhere needs to join it.

        Per-machine values are left out (the study's storage URL and the tracking URI, which may carry
        credentials and differ between a laptop and a cluster node; the local checkpoint directory; the study
        name, which addresses the study). `spec_from_data` reads it back.
        """
        data = self.resolved_dict()
        for key in _MACHINE_KEYS:
            section, _, field = key.partition(".")
            data[section].pop(field, None)
        return data

    def identity(self) -> str:
        """sha256 of what makes trials of one study comparable: the portable spec without the runtime knobs
        (budget, timeout, failure cap, heartbeat settings) that workers may set for themselves."""
        return hashlib.sha256(json.dumps(_identity_dict(self.portable()), sort_keys=True).encode()).hexdigest()


# per-machine: never stored with a study (URLs may hold passwords; paths are local)
_MACHINE_KEYS = ("study.storage", "study.name", "study.checkpoint_dir", "tracking.uri")
# stored with the study but a worker may differ in them without changing what its trials mean
_RUNTIME_KEYS = ("study.trials", "study.timeout", "study.stop", "study.max_failures", "study.heartbeat_interval",
                 "study.grace_period", "study.max_retries", "tracking.checkpoints",
                 "tracking.checkpoint_copy_seconds",
                 "tracking.finish_in_background")  # the same trials either way (`sweeps.finisher.LookAhead`)


def _identity_dict(portable: Mapping[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(dict(portable))
    for key in _RUNTIME_KEYS:
        section, _, field = key.partition(".")
        (data.get(section) or {}).pop(field, None)
    for dist in (data.get("search_space") or {}).values():
        # an int range's step 1 is Optuna's default: written or not, the same distribution (`space.suggest`)
        if isinstance(dist, dict) and dist.get("type") == "int" and dist.get("step") == 1:
            del dist["step"]
    return data


def spec_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys (search-space keys kept whole) whose values differ between two portable specs.

    A key the stored spec lacks is no difference when the current spec holds its default: a field added by a
    later version of siamese-sweep must not lock workers out of studies created before it existed.
    """
    fa, fb = _flat_identity(stored), _flat_identity(current)
    defaults = _flat_identity(SweepSpec().portable())
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)
                  and not (k not in fa and k in defaults and fb.get(k) == defaults[k]))


def _flat_identity(d: Mapping[str, Any]) -> dict[str, Any]:
    ident = _identity_dict(d)
    out = {f"search_space.{k}": v for k, v in (ident.pop("search_space", None) or {}).items()}
    out.update(flatten(ident))
    return out


# ------------------------------------------------------------------- loading
_TRAIN_KEYS = set(flatten(TrainConfig().to_dict()))
_SECTION_KEYS = {k.split(".")[0] for k in _TRAIN_KEYS}
_NESTED_SECTIONS = {k.split(".")[0] for k in _TRAIN_KEYS if "." in k}  # encoder, loss, pairs, ...


def _validate_space_key(key: str, value: Any) -> None:
    """Search-space keys must be train-config leaves (``encoder.depth``), or whole shorthand sections."""
    if key in _TRAIN_KEYS or key == "dataset":
        return
    head = key.split(".")[0]
    if head not in _SECTION_KEYS:
        raise ConfigError(f"search_space.{key}", f"unknown train-config key; expected one of "
                                                  f"{sorted(_SECTION_KEYS)} or a dotted leaf like encoder.depth")
    under = sorted(k for k in _TRAIN_KEYS if k.startswith(head + "."))
    raise ConfigError(f"search_space.{key}", f"unknown train-config key {key!r}; keys under {head!r}: {under}")


def _parse_space(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError("search_space", f"expected a mapping of train-config keys to distributions; "
                                          f"received: {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, value in flat_space(raw).items():
        _validate_space_key(key, value)
        if isinstance(value, Mapping):
            try:
                out[key] = Distribution.model_validate(dict(value))
            except ValidationError as exc:
                raise config_error_from(exc, Distribution, prefix=f"search_space.{key}") from None
        else:
            out[key] = value
    return out


def flat_space(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The search space with the nested form (``{encoder: {depth: {...}}}``) as dotted keys; the flat form as
    it is. Before ``--set search_space.encoder.depth.low=2`` too, which named an unknown key in a nested space."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        # a section's own fixed type beside a searched key (`loss: {type: contrastive, margin: {...}}`); a
        # distribution has no mapping among its fields, so a misspelt field (`learning_rate: {..., hihg: 1}`)
        # stays a distribution and is named
        if str(key) in _NESTED_SECTIONS and (_is_section(value) or (
                isinstance(value, Mapping) and any(isinstance(v, Mapping) for k, v in value.items() if k != "when"))):
            flat.update(_nested(value, f"{key}."))
        else:
            flat[str(key)] = value
    return flat


def _is_section(value: Any) -> bool:
    """A nested section, not a distribution: no ``type``, or a searched one (``loss: {type: {type: categorical,
    ...}, margin: {...}}`` was read as one distribution of the type ``{...}``)."""
    return isinstance(value, Mapping) and ("type" not in value or isinstance(value["type"], Mapping))


def _nested(mapping: Mapping[str, Any], prefix: str) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in mapping.items():
        if _is_section(v):
            items.extend(_nested(v, f"{prefix}{k}."))
        else:
            items.append((f"{prefix}{k}", v))
    return items


def _check_conditions(space: dict[str, Any]) -> None:
    for key, dist in space.items():
        if isinstance(dist, Distribution) and dist.when:
            for other in dist.when:
                if other not in space and other not in _TRAIN_KEYS:
                    raise ConfigError(f"search_space.{key}.when", f"condition refers to unknown key {other!r}")
                if other == key:
                    raise ConfigError(f"search_space.{key}.when", "a parameter cannot depend on itself")
                if isinstance(dist.when[other], (list, tuple)) and not dist.when[other]:
                    raise ConfigError(f"search_space.{key}.when", f"an empty list for {other}: the condition "
                                                                  f"never holds")
    conditional_order(space)  # a cycle failed every trial, after the study and the parent run were made


def allowed_values(expected: Any) -> list[Any]:
    """The values a ``when:`` entry allows: one value, or a list of them."""
    return list(expected) if isinstance(expected, (list, tuple)) else [expected]


def condition_holds(when: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    """Does a parameter's ``when:`` hold for `values` (dotted keys; a key missing is None)? Sampling
    (`sweeps.space`) and `_entry_values`, which decides what an enqueue entry leaves to the sampler, ask here."""
    return all(values.get(key) in allowed_values(expected) for key, expected in when.items())


def conditional_order(space: Mapping[str, Any]) -> list[str]:
    """The parameters in the order they can be drawn: unconditional ones first, then those whose conditions are
    resolved (stable order); `ConfigError` for circular conditions."""
    def deps(key: str) -> set[str]:
        value = space[key]
        return set(value.when or {}) & set(space) if isinstance(value, Distribution) else set()

    done: list[str] = []
    pending = list(space)
    while pending:  # this order decides which draws of a seeded sampler each parameter gets: keep it
        progressed = False
        for key in list(pending):
            if deps(key) <= set(done):
                done.append(key)
                pending.remove(key)
                progressed = True
        if not progressed:
            raise ConfigError(f"search_space.{pending[0]}.when", "circular conditions between parameters")
    return done


def spec_from_dict(data: Mapping[str, Any], *, base_dir: Path | None = None, stored: bool = False) -> SweepSpec:
    """Validate a spec mapping (already with ``--set`` overrides applied). `stored`: the spec a study was created
    with (`sweeps.study.stored_spec`), which checks added since must not lock out of its own study: its identity
    cannot change, so `--set` could not mend it."""
    if not isinstance(data, Mapping):
        raise ConfigError("", "expected a mapping with base/search_space/study/tracking; "
                              f"received: {type(data).__name__}")
    data = dict(data)
    unknown = set(data) - {"base", "search_space", "hypermodel", "study", "tracking"}
    if unknown:
        raise ConfigError(sorted(unknown)[0],
                          "unknown key; allowed keys: base, hypermodel, search_space, study, tracking")
    base = data.get("base") or {}
    if isinstance(base, (str, Path)):
        path = Path(base)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        base = read_yaml_mapping(path, what="base config")
    if not isinstance(base, Mapping):
        raise ConfigError("base", f"expected a train config mapping or a path; received: {type(base).__name__}")
    try:
        base_config = TrainConfig.model_validate(dict(base))
    except ValidationError as exc:
        raise config_error_from(exc, TrainConfig, prefix="base") from None
    space = _parse_space(data.get("search_space"))
    _check_conditions(space)
    try:
        spec = SweepSpec.model_validate({
            "base": base_config, "search_space": space, "hypermodel": data.get("hypermodel"),
            "study": data.get("study") or {}, "tracking": data.get("tracking") or {}})
    except ValidationError as exc:
        raise config_error_from(exc, SweepSpec) from None
    for m in spec.study.objective_metrics:
        # a name no trial reports would prune every trial (nan_metric) instead of failing here
        if not (m in TRIAL_METRICS or m in GOALS):
            raise ConfigError("study.metric", f"expected a per-epoch metric with a direction ({', '.join(GOALS)}) "
                                              f"or one of {', '.join(TRIAL_METRICS)}; received: {m!r}")
    check = samplers.get(spec.study.sampler.type).check
    if check is not None:
        check(spec)
    if not stored:
        _check_objectives(spec.study)
        _check_pruner(spec)
    enqueued_params(spec, strict=False)
    return spec


def new_study_checks(spec: SweepSpec) -> None:
    """The spec's checks added after studies were made with what they refuse (`sweeps.preflight.
    refuse_for_a_new_study` runs them for a study about to be created only: an existing study resumes with its
    spec, whose file `run`, `status` and `report` read)."""
    _check_conditions_on_ranges(spec)
    enqueued_params(spec, strict=True)


def _check_conditions_on_ranges(spec: SweepSpec) -> None:
    """A condition on one value of a continuous float range holds with probability 0: its parameter was never
    drawn, without a word. (A value a stepped or int range does not draw is accepted, as a choice the space does
    not draw is: a narrowed space, `sweeps.space._check_condition_values`.)"""
    space = spec.distributions()
    for key, dist in space.items():
        for other in dist.when or {}:
            d = space.get(other)
            if d is not None and d.type == "float" and d.step is None:
                raise ConfigError(f"search_space.{key}.when", f"{other} is drawn from a continuous range, so it "
                                                              f"equals a given value with probability 0: give "
                                                              f"{other} a step, or make it categorical")


def _check_objectives(study: StudySpec) -> None:
    """Each ran to exit 0: minimising an AUC made the worst model the "best"; a `direction` next to several
    `metrics`, or a `metric` outside them, was dropped without a word."""
    if study.metrics is not None:
        if study.direction is not None and len(study.metrics) > 1:  # one metric: its direction, as before
            raise ConfigError("study.direction", "give study.directions (one per metric) with study.metrics")
        if study.metric != StudySpec.model_fields["metric"].default and study.metric not in study.metrics:
            raise ConfigError("study.metric", f"{study.metric!r} is not one of study.metrics; give the objectives "
                                              f"in study.metrics alone")
    for metric, way in zip(study.objective_metrics, study.objective_directions, strict=True):
        try:
            better = metric_direction(metric)
        except ValueError:  # a name no trial reports: refused by spec_from_dict before this
            continue
        if way != better:
            key = "study.directions" if study.directions else "study.direction"
            raise ConfigError(key, f"{metric} is better {better_way(better)}; "
                                   f"{way[:-1]}ing it would search for the worst models (use {better})")


def _check_pruner(spec: SweepSpec) -> None:
    """A pruner that can never prune is refused: Hyperband with ``min_resource`` 50 and 2-epoch trials has no
    bracket (Optuna builds it and never prunes), and ran to exit 0 as if pruning were on."""
    p = spec.study.pruner
    # a hypermodel may set epochs itself (hp.Int("epochs")): the most a trial runs is not known before it builds
    if p.type in ("hyperband", "successive_halving") and not spec.study.multi_objective and not spec.hypermodel:
        most = pruners.most_epochs(spec)
        if p.min_resource > most:
            raise ConfigError("study.pruner.min_resource", f"{p.min_resource} epochs before a first verdict, but "
                                                           f"trials run at most {most}: the {p.type} pruner would "
                                                           f"never prune; lower it (or use type: none)")


# ------------------------------------------------------------------- warm start
def _same_choice(value: Any, choice: Any) -> bool:
    """`value == choice` without Python's ``True == 1`` (a bool is not a number here)."""
    return value == choice and isinstance(value, bool) == isinstance(choice, bool)


def _enqueued_value(field: str, dist: Distribution, value: Any) -> Any:
    """`value` as Optuna will store it for `dist`, or a `ConfigError` naming `field`."""
    if dist.type == "categorical":
        choices = list(dist.choices or ())
        for c in choices:
            if _same_choice(value, c):
                return c
        raise ConfigError(field, f"expected one of the search space's choices {choices}; received: {value!r}")
    assert dist.low is not None and dist.high is not None  # numeric distributions have both (validated)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ConfigError(field, f"expected a number in [{dist.low}, {dist.high}]; received: {value!r}")
    if dist.type == "int" and float(value) != int(value):
        raise ConfigError(field, f"expected an integer in [{int(dist.low)}, {int(dist.high)}]; received: {value!r}")
    if not dist.low <= value <= dist.high:
        raise ConfigError(field, f"expected a value in the search space's range [{dist.low}, {dist.high}]; "
                                 f"received: {value!r}")
    if dist.step is not None:
        k = (value - dist.low) / dist.step
        if abs(k - round(k)) > 1e-8:
            raise ConfigError(field, f"expected low + k * step ({dist.low} + k * {dist.step}); received: {value!r}")
    return int(value) if dist.type == "int" else float(value)


def enqueued_params(spec: SweepSpec, *, strict: bool = True) -> list[dict[str, Any]]:
    """``study.enqueue`` checked against the search space, as Optuna params (``ConfigError`` naming
    ``study.enqueue[i].<param>`` otherwise). A parameter left out is sampled as usual, except by the grid
    sampler, which takes whole grid points only; a conditional parameter's entry names what its condition reads.
    Those two checks are `strict`'s: a study's stored spec from before them still resumes."""
    space = spec.distributions()
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(spec.study.enqueue):
        where = f"study.enqueue[{i}]"
        if not entry:
            raise ConfigError(where, "expected a mapping of search-space parameters to values; received: {}")
        params: dict[str, Any] = {}
        for key, value in entry.items():
            field = f"{where}.{key}"
            if key in space:
                params[key] = _enqueued_value(field, space[key], value)
            elif spec.hypermodel is not None:
                params[key] = value  # a hypermodel's own hp.* name: only its build() knows the range
            elif key in spec.fixed():
                raise ConfigError(field, f"fixed in the search space ({key}: {spec.fixed()[key]!r}); only sampled "
                                         f"parameters can be enqueued")
            else:
                raise ConfigError(field, f"not a parameter of the search space; expected one of {sorted(space)}")
        known, drawn = _entry_values(spec, params)
        if strict and spec.study.sampler.type == "grid" and spec.hypermodel is None and drawn:
            # Optuna's GridSampler fails such a trial ("All parameters must be specified"), and a retry ran a
            # combination twice; a parameter the entry's own values switch off is not drawn
            raise ConfigError(where, f"the grid sampler runs whole grid points: give every parameter (missing: "
                                     f"{', '.join(sorted(drawn))})")
        for key in params:
            dist = space.get(key)
            if dist is None or not dist.when:
                continue
            for other, expected in dist.when.items():
                allowed = allowed_values(expected)
                # a searched parameter the entry leaves switched off decides by its base value, as sampling
                # does; a stored spec is read as before that rule (from session 48), which accepted its entries
                decides = strict or other in params or other not in space
                # strict: a key nothing gives is None to sampling (`dataset` when only `dataset.name` is set)
                held = other in known or (strict and other not in drawn)
                if held and decides and known.get(other) not in allowed:
                    said = f"{other}={known[other]!r}" if other in known else f"{other} is not set"
                    raise ConfigError(f"{where}.{key}", f"never sampled when {said} (its condition: {other} in "
                                                        f"{allowed}); drop it from this entry")
                if strict and other in drawn:  # drawn by the sampler: the value was dropped where it missed
                    raise ConfigError(f"{where}.{key}", f"used only when {other} is in {allowed}, which this "
                                                        f"entry leaves to the sampler; give {other} here too")
        out.append(params)
    return out


def _entry_values(spec: SweepSpec, params: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """What a trial of an enqueued entry holds before the sampler draws (the entry's values, fixed values, and
    base values for keys nobody draws, a conditional parameter switched off included, as `sweeps.space.
    sample_overrides` decides conditions), and which parameters the sampler draws (those the entry leaves out
    that are on, or whose condition waits on a drawn one)."""
    space = spec.distributions()
    known: dict[str, Any] = {**spec.base.flat(), **spec.fixed(), **params}
    drawn: set[str] = set()
    for key in conditional_order(space):
        if key in params:
            continue
        when = space[key].when or {}
        if any(other in drawn for other in when) or condition_holds(when, known):
            drawn.add(key)
            known.pop(key, None)
    return known, drawn


def load_spec(path: str | Path | None, overrides: Mapping[str, Any] | None = None, *, stored: bool = False
              ) -> SweepSpec:
    """Read a spec YAML (optional: defaults + overrides) and apply dotted ``--set`` overrides.

    A Weights & Biases sweep file (`sweeps.convert.looks_like_wandb`) is converted first, so
    ``--set base.dataset=digits`` and the like apply to the converted spec.
    """
    data = read_yaml_mapping(path, what="sweep spec") if path is not None else {}
    if path is not None and not data:  # it ran 10 identical default trials on Fashion-MNIST, searching nothing
        raise ConfigError("", f"{path} is empty: a spec names at least its base, search_space or hypermodel (no "
                              f"file at all runs the built-in quickstart)")
    base_dir = Path(path).resolve().parent if path is not None else None
    if looks_like_wandb(data):
        return spec_from_wandb(data, overrides, base_dir=base_dir, stored=stored, source=str(path))
    return spec_from_data(data, overrides, base_dir=base_dir, stored=stored)


def spec_from_wandb(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, *,
                    base_dir: Path | None = None, stored: bool = False, source: str | None = None) -> SweepSpec:
    """A W&B sweep config converted (`sweeps.convert.from_wandb`), the overrides applied and validated, then said
    in one warning (notes) or info line, naming the file `source` if any: a library user has no logging set up,
    and Python shows warnings without it. Said once valid: a refused file is one line, the error. A grid without
    ``run_cap`` runs each combination of the grid the overrides make (a ``--set`` adding choices left them unrun)."""
    converted, notes = from_wandb(data)
    spec = spec_from_data(converted, overrides, base_dir=base_dir, stored=stored)
    if data.get("method") == "grid" and "run_cap" not in data and "study.trials" not in (overrides or {}):
        size = math.prod(values_in_grid(d.model_dump()) for d in spec.distributions().values())
        if size != spec.study.trials:
            spec = spec_from_data(converted, {**(overrides or {}), "study.trials": size}, base_dir=base_dir,
                                  stored=stored)
            notes = [grid_budget_note(size) if note == grid_budget_note(int(converted["study"]["trials"]))
                     else note for note in notes]
    if source is not None:
        (log.warning if notes else log.info)(
            "%s is a W&B sweep file: converted it (siamese-sweep convert %s prints the spec)%s", source, source,
            "".join(f"; {note}" for note in notes))
    else:
        (log.warning if notes else log.info)("a W&B sweep config: converted it (%s)",
                                             "; ".join(notes) or "nothing dropped")
    return spec


def spec_from_data(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, *,
                   base_dir: Path | None = None, stored: bool = False) -> SweepSpec:
    """A spec mapping with dotted overrides applied (``search_space.<key>.low`` included), validated."""
    if not isinstance(data, Mapping):
        return spec_from_dict(data, base_dir=base_dir, stored=stored)  # the one error message for a non-mapping
    raw: dict[str, Any] = copy.deepcopy(dict(data))
    for key, value in (overrides or {}).items():
        if key.startswith("base.") and isinstance(raw.get("base"), (str, Path)):
            p = Path(raw["base"])
            raw["base"] = read_yaml_mapping(p if p.is_absolute() or base_dir is None else base_dir / p,
                                             what="base config")
        if key.startswith("search_space."):
            # search-space keys contain dots themselves: search_space.<dotted key>[.low|.high|...]
            _set_space_override(raw, key[len("search_space."):], value)
            continue
        set_dotted(raw, key, value)
    return spec_from_dict(raw, base_dir=base_dir, stored=stored)


_DIST_FIELDS = {"type", "low", "high", "log", "step", "choices", "when"}


def _set_space_override(data: dict[str, Any], rest: str, value: Any) -> None:
    space = data.get("search_space") or {}
    if not isinstance(space, Mapping):
        return  # refused by the spec's validation, with the field (a TypeError here, exit 1)
    space = flat_space(space)
    data["search_space"] = space
    head, _, last = rest.rpartition(".")
    if head and last in _DIST_FIELDS and isinstance(space.get(head), dict):
        space[head] = {**space[head], last: value}
    else:
        space[rest] = value
