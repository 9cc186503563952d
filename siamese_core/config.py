"""`TrainConfig`: one frozen, validated description of a training run.

Validation happens here, before TensorFlow is imported, so a typo costs
milliseconds rather than a model build. Errors name the dotted field
(``encoder.depth``) and the allowed values, in the Keras style
"Expected ..., received: x=...".
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .diagnostics.codes import CODES
from .errors import ConfigError, first_line
from .metrics import MONITORS
from .registry import (
    AUGMENTATIONS,
    DATASETS,
    DISTANCES,
    ENCODERS,
    IMPORT_PATH,
    LOADERS,
    LOSSES,
    NORMALIZATIONS,
    OPTIMIZERS,
    Registry,
)

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _registered(registry: Registry[Any], *, plugins: bool = False) -> Callable[[str], str]:
    """A validator: the value must be a name in `registry` (or, with `plugins`, a user import path)."""
    extra = " or an import path 'package.module:function'" if plugins else ""

    def check(value: str) -> str:
        if value in registry or (plugins and IMPORT_PATH.match(value)):
            return value
        # a custom error type: `config_error_from` then appends "received: field=value" with list positions
        raise PydanticCustomError("registered_name", "expected one of {names}{extra}",
                                  {"names": str(list(registry.names())), "extra": extra})
    return check


def _with(registry: Registry[Any], flag: str) -> str:
    """The names registered with `flag` set, quoted: "'rmsprop' and 'sgd'"."""
    names = [repr(n) for n in registry.names() if registry.info(n).get(flag)]
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]


DatasetName: TypeAlias = Annotated[str, AfterValidator(_registered(DATASETS))]
LoaderName: TypeAlias = Annotated[str, AfterValidator(_registered(LOADERS))]
DistanceName: TypeAlias = Annotated[str, AfterValidator(_registered(DISTANCES))]
OptimizerName: TypeAlias = Annotated[str, AfterValidator(_registered(OPTIMIZERS))]
NormalizationName: TypeAlias = Annotated[str, AfterValidator(_registered(NORMALIZATIONS))]
AugmentationName: TypeAlias = Annotated[str, AfterValidator(_registered(AUGMENTATIONS))]
EncoderType: TypeAlias = Annotated[str, AfterValidator(_registered(ENCODERS, plugins=True))]
LossType: TypeAlias = Annotated[str, AfterValidator(_registered(LOSSES, plugins=True))]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: Any) -> Any:
        # pydantic's lax mode would read `batch_size: true` as 1; a boolean is never a count or a rate
        if isinstance(v, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation is not bool and bool not in get_args(annotation):
                raise ValueError(f"expected a number, received a boolean: {v}")
        return v


def _check_monitor(v: str) -> str:
    """EarlyStopping/ReduceLROnPlateau watch history keys; `metrics.MONITORS` lists those with a direction."""
    if v not in MONITORS:
        raise ValueError(f"expected one of {list(MONITORS)}; received: {v!r}")
    return v


class DatasetConfig(_Section):
    """Where the data comes from and how it is split."""

    name: DatasetName = "fashion_mnist"
    path: str | None = None
    split: Literal["sample", "class"] = "sample"
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    max_train_samples: int | None = Field(None, ge=2)
    max_eval_samples: int | None = Field(None, ge=2)
    image_size: tuple[int, int] | None = None
    color_mode: Literal["grayscale", "rgb"] = "grayscale"
    index: str | None = None

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        options = DATASETS.info(self.name)
        if options.get("needs_path") and not self.path:
            raise ValueError(f"dataset.path: required for dataset '{self.name}'; received: path=None")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "dataset.val_fraction: val_fraction + test_fraction must leave at least 10% for training; "
                f"received: val_fraction={self.val_fraction}, test_fraction={self.test_fraction}")
        if self.image_size is not None and min(self.image_size) < 4:
            raise ValueError(f"dataset.image_size: expected two sizes >= 4; received: {self.image_size}")
        if self.index is not None and not options.get("image_options"):
            raise ValueError(f"dataset.index: only used with dataset {_with(DATASETS, 'image_options')}")
        if not options.get("image_options") and (self.image_size is not None or self.color_mode != "grayscale"):
            key = "image_size" if self.image_size is not None else "color_mode"
            raise ValueError(f"dataset.{key}: only used with dataset {_with(DATASETS, 'image_options')} (other "
                             f"datasets keep their stored shape); received: name={self.name!r}")
        return self


class PairsConfig(_Section):
    """How many pairs (or triplets) each epoch and evaluation sees."""

    pairs_per_epoch: int | None = Field(None, ge=1, le=50_000_000)
    positive_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    val_pairs: int = Field(4000, ge=20, le=5_000_000)
    test_pairs: int = Field(10000, ge=20, le=5_000_000)


class EncoderConfig(_Section):
    """The shared tower that maps one input to an embedding."""

    type: EncoderType = "conv"
    depth: int = Field(3, ge=1, le=12)
    width: int = Field(16, ge=1, le=4096)
    embedding_dim: int = Field(64, ge=1, le=8192)
    l2_normalize: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batch_norm: bool = True
    activation: Literal["relu", "gelu", "tanh", "elu", "swish"] = "relu"
    kernel_size: int = Field(3, ge=1, le=11)
    # conv: how the last feature map becomes a vector ("flatten" keeps where features are; "gap" averages them away)
    pooling: Literal["flatten", "gap"] = "gap"
    # sequence encoders
    vocab_size: int | None = Field(None, ge=2)
    token_embedding_dim: int = Field(64, ge=1, le=4096)
    rnn: Literal["lstm", "gru"] = "lstm"
    bidirectional: bool = False


# The encoder.* fields each built-in body reads (`siamese_core.models.encoders`, with `build_encoder` around it);
# a body registered since reads what it likes. tests/core/test_models.py builds each built-in with every other
# field changed and finds the same model.
_READ_BY_EVERY_ENCODER = frozenset({"type", "depth", "width", "embedding_dim", "l2_normalize", "dropout"})
BUILTIN_ENCODER_READS: dict[str, frozenset[str]] = {
    "conv": _READ_BY_EVERY_ENCODER | {"batch_norm", "activation", "kernel_size", "pooling"},
    "mlp": _READ_BY_EVERY_ENCODER | {"batch_norm", "activation"},
    "sequence": _READ_BY_EVERY_ENCODER | {"vocab_size", "token_embedding_dim", "rnn", "bidirectional"},
}


class PreprocessingConfig(_Section):
    """In-model preprocessing: normalisation, then augmentation (training only)."""

    normalize: NormalizationName = "rescale"
    augmentation: tuple[AugmentationName, ...] = ()

    @field_validator("augmentation", mode="before")
    @classmethod
    def _aug(cls, v: Any) -> Any:
        if v is None or v == "none":
            return ()
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return v


class LossConfig(_Section):
    """Loss on (distance, label) pairs or (anchor, positive, negative) triplets."""

    type: LossType = "contrastive"
    # 0.5 with the default cosine distance: chosen on validation pairs, 3 seeds (BENCHMARKS.md section 5c)
    margin: float = Field(0.5, gt=0.0, le=1000.0)
    mining: Literal["random", "batch_hard"] = "random"
    kind: Literal["pair", "triplet"] | None = None

    @property
    def builtin(self) -> bool:
        """A registered loss (else a user loss by import path)."""
        return self.type in LOSSES

    @property
    def is_triplet(self) -> bool:
        kind = LOSSES.info(self.type)["kind"] if self.builtin else self.kind
        return kind == "triplet"

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        builtin_kind = LOSSES.info(self.type)["kind"] if self.builtin else None
        if builtin_kind and self.kind not in (None, builtin_kind):
            raise ValueError(f"loss.kind: the built-in loss {self.type!r} is a {builtin_kind} loss; omit kind or set "
                             f"kind: {builtin_kind}; received: kind={self.kind!r}")
        if not self.builtin and self.kind is None:
            raise ValueError("loss.kind: a user loss needs kind 'pair' or 'triplet' (see README, 'Your own encoder, "
                             "loss and data'); received: kind=None")
        if self.mining == "batch_hard" and not self.is_triplet:
            raise ValueError(f"loss.mining: 'batch_hard' mining applies to triplet losses only; "
                             f"received: type={self.type!r}")
        return self


class OptimizerConfig(_Section):
    name: OptimizerName = "adam"
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    clipnorm: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        if self.momentum and not OPTIMIZERS.info(self.name).get("momentum"):
            hint = " (Adam has its own beta_1)" if self.name == "adam" else ""
            raise ValueError(f"optimizer.momentum: only used by {_with(OPTIMIZERS, 'momentum')}{hint}; "
                             f"received: momentum={self.momentum} with name={self.name!r}")
        return self


class EarlyStoppingConfig(_Section):
    enabled: bool = False
    monitor: str = "val_roc_auc"
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0.0)

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, v: str) -> str:
        return _check_monitor(v)


class ReduceLROnPlateauConfig(_Section):
    enabled: bool = False
    monitor: str = "val_loss"
    factor: float = Field(0.5, gt=0.0, lt=1.0)
    patience: int = Field(2, ge=0)
    min_lr: float = Field(1e-6, ge=0.0)

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, v: str) -> str:
        return _check_monitor(v)


class DiagnosticsConfig(_Section):
    """Checks that run during every training (see `siamese_core.diagnostics`)."""

    enabled: bool = True
    fail_on: tuple[str, ...] = ("nan_loss", "collapse")
    preflight: bool = True                            # static model/loss checks at train begin (~0.5 s)
    no_learning_patience: int = Field(3, ge=1, le=1000)  # epochs at chance AUC before `no_learning`

    @field_validator("fail_on", mode="before")
    @classmethod
    def _codes(cls, v: Any) -> Any:
        items = (v,) if isinstance(v, str) else v
        if items is not None and not isinstance(items, (list, tuple)):  # a TypeError here would escape pydantic
            raise ValueError(f"expected a list of diagnostic codes; received: {v!r}")
        unknown = [c for c in items or () if c not in CODES]
        if unknown:
            raise ValueError(f"unknown diagnostic code(s) {unknown}; expected any of {list(CODES)}")
        return items


class TrainConfig(_Section):
    """Everything that defines one training run. Frozen; build variants with `.with_overrides`."""

    dataset: DatasetConfig = DatasetConfig()
    loader: LoaderName = "tfdata"
    pairs: PairsConfig = PairsConfig()
    encoder: EncoderConfig = EncoderConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    # cosine (with loss.margin 0.5): val ROC AUC 0.9457 +- 0.0068 vs 0.9388 +- 0.0093 for euclidean, margin 1
    # (seeds 0-2, chosen on validation only; BENCHMARKS.md section 5c)
    distance: DistanceName = "cosine"
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    batch_size: int = Field(128, ge=1, le=65536)
    epochs: int = Field(5, ge=1, le=10_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    deterministic: bool = False
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    reduce_lr: ReduceLROnPlateauConfig = ReduceLROnPlateauConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _cross_field(self) -> TrainConfig:
        bounds = DISTANCES.info(self.distance)
        bound = bounds["upper_bound"] or (bounds["unit_bound"] if self.encoder.l2_normalize else None)
        margin_loss = self.loss.builtin and LOSSES.info(self.loss.type)["margin"]
        if bound is not None and margin_loss and self.loss.margin > bound:
            l2 = " and l2_normalize" if not bounds["upper_bound"] else ""
            raise ValueError(
                f"loss.margin: with distance={self.distance!r}{l2} distances lie in [0, {bound:g}], so a margin above "
                f"{bound:g} can never be met; expected 0 < margin <= {bound:g}, received: margin={self.loss.margin}")
        if self.pairs.pairs_per_epoch is not None and self.batch_size > self.pairs.pairs_per_epoch:
            raise ValueError(
                f"batch_size: expected batch_size <= pairs.pairs_per_epoch ({self.pairs.pairs_per_epoch}); "
                f"received: batch_size={self.batch_size}")
        if self.loss.is_triplet and DATASETS.info(self.dataset.name).get("paired"):
            pair_losses = ", ".join(n for n in LOSSES.names() if LOSSES.info(n)["kind"] == "pair")
            raise ValueError(f"loss.type: triplet losses need class labels; pre-paired data (dataset "
                             f"{self.dataset.name!r}) only has same/different labels. Use a pair loss ({pair_losses}).")
        if self.encoder.type == "sequence" and self.preprocessing.augmentation:
            raise ValueError("preprocessing.augmentation: image augmentations do not apply to token sequences")
        return self

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        """Fully resolved config as plain JSON-able Python."""
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> leaf values (``encoder.depth`` -> 2), e.g. for MLflow params."""
        return flatten(self.to_dict())

    def with_overrides(self, overrides: Mapping[str, Any]) -> TrainConfig:
        """A new config with dotted-key overrides applied and re-validated."""
        data = self.to_dict()
        for key, value in overrides.items():
            set_dotted(data, key, value)
        return TrainConfig.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Validate a mapping (nested or with shorthands); a `ConfigError` names the first bad field."""
        if not isinstance(data, Mapping):
            raise ConfigError("", f"expected a mapping of config keys; received: {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise config_error_from(exc) from None


# ---------------------------------------------------------------------- loading
# Values a config may expand to, aliases counted at each use. The largest shipped spec has < 200; a 493-byte
# alias bomb ("billion laughs") expands to ~10^9 and cost 56 s and 2.2 GB before a MemoryError.
MAX_YAML_VALUES = 100_000


def _check_expansion(root: yaml.Node | None, path: Path) -> None:
    """`ConfigError` if the document expands (through repeated aliases) to more than `MAX_YAML_VALUES` values."""
    stack, seen = [root] if root is not None else [], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise ConfigError("", f"{path} expands to more than {MAX_YAML_VALUES:,} values (nested YAML "
                                  f"aliases?); refusing to load it")
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def read_yaml_mapping(path: str | Path, *, what: str = "config") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file."""
    p = Path(path)
    if p.exists() and not p.is_file():  # a FIFO or device would block the read forever
        raise ConfigError("", f"{what} file {p} is not a regular file")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"{what} file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read {what} file {p}: {exc}") from None
    try:
        _check_expansion(yaml.compose(text, Loader=yaml.SafeLoader), p)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise ConfigError("", f"{p} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{p}: expected a YAML mapping at top level; received: {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Load a YAML config (optional) and apply dotted ``--set`` overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    data = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return TrainConfig.from_dict(data)


def as_config(config: TrainConfig | Mapping[str, Any] | str | Path | None) -> TrainConfig:
    """Accept a `TrainConfig`, a mapping, a YAML path, or None (all defaults)."""
    if isinstance(config, TrainConfig):
        return config
    if config is None:
        return TrainConfig()
    if isinstance(config, (str, Path)):
        return load_config(config)
    return TrainConfig.from_dict(config)


def parse_set_options(items: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML scalars/lists (``3``, ``true``, ``[a, b]``)."""
    result: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(key or item, f"--set expects key=value; received: {item!r}")
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise ConfigError(key, "--set keys are dotted names like encoder.depth")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
        result[key] = value
    return result


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` inside nested dicts, creating (or replacing shorthand) levels as needed."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and part == "dataset":
            child = {"name": child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), f"cannot set {key}: {'.'.join(parts[:i + 1])} is not a mapping "
                              f"(received: {child!r})")
        node[part] = child
        node = child
    node[parts[-1]] = value


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys (``{"encoder": {"depth": 2}}`` -> ``{"encoder.depth": 2}``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _received(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Walk the schema along `loc` to list the keys allowed at the parent level."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        current = fields[part].annotation
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else None


def config_error_from(exc: ValidationError, model: type[BaseModel] = TrainConfig, prefix: str = "") -> ConfigError:
    """Turn pydantic's report into one `ConfigError` naming the first bad field."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    field = ".".join(str(p) for p in loc if isinstance(p, str))  # list positions go in the message
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        # model validators already prefix their own field name
        m = re.match(r"^([\w.]+): (.*)$", msg, re.S)
        if m:
            named, msg = m.group(1), m.group(2)
            field = named if (not field or named == field or named.startswith(field + ".")) else f"{field}.{named}"
    elif first["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, tuple(p for p in loc if isinstance(p, str)))
        msg = f"unknown key{'; allowed keys: ' + ', '.join(allowed) if allowed else ''}"
    else:
        name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "value")
        name += "".join(f"[{p}]" for p in loc[loc.index(name) + 1:]) if name in loc else ""
        msg = f"{msg}; received: {name}={_received(first.get('input'))}"
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    more = len(errors) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(field, msg)
