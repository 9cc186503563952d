"""One registry per extension kind: encoders, losses, distances, datasets, loaders, preprocessing, optimizers.

Each built-in is registered once here, by name (``LOSSES.get("contrastive")``, like ``keras.losses.get``).
Config validation, error messages, CLI help and docs read the names from these registries; builders resolve
them. Built-in targets are lazy ``"package.module:attr"`` strings, so this module (and `siamese_core.config`,
which validates names against it) imports no TensorFlow: a typo costs microseconds, and the module that
implements a built-in loads only when a model is built. User code plugs in the same way, by naming
``package.module:attr`` where the config allows it (``encoder.type``, ``loss.type``), through
`import_object`.

`Registry.get` / `import_object` are the one sanctioned non-static import in ``siamese_core``: every other
dependency is a module-level import, checked by ``tests/core/test_import_graph.py``, which ignores these.

Each entry may carry metadata (`Registry.info`) that callers need *without* loading the target, e.g. whether
a loss is a pair or a triplet loss, or whether a dataset needs ``dataset.path``.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = [
    "IMPORT_PATH", "Registry", "import_object",
    "ENCODERS", "LOSSES", "DISTANCES", "DATASETS", "LOADERS", "AUGMENTATIONS", "NORMALIZATIONS", "OPTIMIZERS",
]

#: ``package.module:attribute`` — how user code (and lazy built-ins) are named.
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

T = TypeVar("T")
_MISSING: Any = object()


def import_object(path: str, *, field: str) -> Any:
    """Resolve ``package.module:attribute``; errors are `ConfigError`s naming the config `field`."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error inside the user's module
        raise ConfigError(field, f"cannot import module {module_name!r} from {path!r}: "
                                 f"{type(exc).__name__}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(field, f"module {module_name!r} has no attribute {attr!r}") from None


@dataclass
class _Entry:
    target: Any                                   # the object, or a lazy "package.module:attr"
    info: Mapping[str, Any] = field(default_factory=dict)
    lazy: bool = False


class Registry(MutableMapping[str, T]):
    """The built-ins of one kind by name, in registration order.

    A mapping from name to the resolved target: ``name in REG`` and ``REG.names()`` never import anything,
    ``REG.get(name)`` / ``REG[name]`` load a lazy target on first use. ``REG[name] = obj`` replaces a target
    (keeping its `info`), so tests can swap one in with ``monkeypatch.setitem``.
    """

    def __init__(self, kind: str, *, field: str) -> None:
        self.kind = kind
        self.field = field
        self._entries: dict[str, _Entry] = {}

    def register(self, name: str, target: T | str, *, replace: bool = False, **info: Any) -> None:
        """Add `name`. `target` is the object or a lazy ``"package.module:attr"``; `info` is metadata."""
        if name in self._entries and not replace:
            raise ValueError(f"Expected a new {self.kind} name, received: {name!r} (already registered; pass "
                             f"replace=True to override it)")
        lazy = isinstance(target, str) and bool(IMPORT_PATH.match(target))
        self._entries[name] = _Entry(target, MappingProxyType(dict(info)), lazy)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def info(self, name: str) -> Mapping[str, Any]:
        """The metadata `name` was registered with (read without loading the target)."""
        return self._entry(name).info

    def get(self, name: str, default: Any = _MISSING) -> T:
        """The target registered as `name`; a `ConfigError` listing the names if there is none."""
        if name not in self._entries and default is not _MISSING:
            return default
        entry = self._entry(name)
        if entry.lazy:
            entry.target, entry.lazy = import_object(entry.target, field=self.field), False
        return entry.target

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(self.field, f"Expected a {self.kind} in {list(self.names())}, "
                                          f"received: {name!r}") from None

    # -- MutableMapping
    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, target: T) -> None:
        old = self._entries.get(name)
        self.register(name, target, replace=True, **(dict(old.info) if old else {}))

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={list(self._entries)})"


# ---------------------------------------------------------------------------------------------- built-ins
# encoder bodies: body(x, config.encoder, data_info) -> features; the embedding layer is added after
ENCODERS: Registry[Any] = Registry("encoder", field="encoder.type")
ENCODERS.register("conv", "siamese_core.models.encoders:conv_body")
ENCODERS.register("mlp", "siamese_core.models.encoders:mlp_body")
ENCODERS.register("sequence", "siamese_core.models.encoders:sequence_body")

# per-sample loss classes with from_loss_config(config.loss, distance); kind: what the model feeds them;
# similarity: trains a same-probability (higher = same) instead of a distance; margin: uses loss.margin
LOSSES: Registry[Any] = Registry("loss", field="loss.type")
LOSSES.register("contrastive", "siamese_core.losses:Contrastive", kind="pair", similarity=False, margin=True)
LOSSES.register("triplet", "siamese_core.losses:Triplet", kind="triplet", similarity=False, margin=True)
LOSSES.register("bce", "siamese_core.losses:BinaryCrossentropy", kind="pair", similarity=True, margin=False)

# `Distance` objects (row-wise and pairwise forms); upper_bound: the largest distance between any embeddings
# (None: unbounded), unit_bound: the largest between unit-length (encoder.l2_normalize) embeddings
DISTANCES: Registry[Any] = Registry("distance", field="distance")
DISTANCES.register("euclidean", "siamese_core.models.distances:EUCLIDEAN", upper_bound=None, unit_bound=2.0)
DISTANCES.register("sqeuclidean", "siamese_core.models.distances:SQEUCLIDEAN", upper_bound=None, unit_bound=4.0)
DISTANCES.register("cosine", "siamese_core.models.distances:COSINE", upper_bound=2.0, unit_bound=2.0)

# dataset sources: source(config.dataset) -> RawLabeled | RawPaired; needs_path: dataset.path is required;
# paired: pre-built pairs (no class ids); image_options: takes index/image_size/color_mode
DATASETS: Registry[Any] = Registry("dataset", field="dataset.name")
DATASETS.register("fashion_mnist", "siamese_core.data.sources:load_fashion_mnist")
DATASETS.register("mnist", "siamese_core.data.sources:load_mnist")
DATASETS.register("digits", "siamese_core.data.sources:load_digits")
DATASETS.register("npz", "siamese_core.data.sources:load_npz", needs_path=True)
DATASETS.register("pairs_npz", "siamese_core.data.sources:load_pairs_npz", needs_path=True, paired=True)
DATASETS.register("image_folder", "siamese_core.data.image_folder:load_image_folder", needs_path=True,
                  image_options=True)

# `Loader` classes: how one sampler's tuples become batches
LOADERS: Registry[Any] = Registry("loader", field="loader")
LOADERS.register("memory", "siamese_core.data.loaders:MemoryLoader")
LOADERS.register("tfdata", "siamese_core.data.loaders:TfDataLoader")
LOADERS.register("custom", "siamese_core.data.loaders:CustomLoopLoader")

# image augmentations (training only): factory(seed) -> keras layer
AUGMENTATIONS: Registry[Any] = Registry("augmentation", field="preprocessing.augmentation")
AUGMENTATIONS.register("flip", "siamese_core.models.preprocessing:random_flip")
AUGMENTATIONS.register("rotate", "siamese_core.models.preprocessing:random_rotate")
AUGMENTATIONS.register("translate", "siamese_core.models.preprocessing:random_translate")
AUGMENTATIONS.register("zoom", "siamese_core.models.preprocessing:random_zoom")
AUGMENTATIONS.register("contrast", "siamese_core.models.preprocessing:random_contrast")
AUGMENTATIONS.register("noise", "siamese_core.models.preprocessing:gaussian_noise")

# in-model normalisation: factory(data_info) -> keras layer
NORMALIZATIONS: Registry[Any] = Registry("normalization", field="preprocessing.normalize")
NORMALIZATIONS.register("rescale", "siamese_core.models.preprocessing:rescale")
NORMALIZATIONS.register("standardize", "siamese_core.models.preprocessing:standardize")
NORMALIZATIONS.register("none", "siamese_core.models.preprocessing:cast_to_float")

# optimizer classes; momentum: takes optimizer.momentum
OPTIMIZERS: Registry[Any] = Registry("optimizer", field="optimizer.name")
OPTIMIZERS.register("adam", "keras.optimizers:Adam", momentum=False)
OPTIMIZERS.register("rmsprop", "keras.optimizers:RMSprop", momentum=True)
OPTIMIZERS.register("sgd", "keras.optimizers:SGD", momentum=True)
