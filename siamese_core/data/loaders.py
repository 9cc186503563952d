"""Three ways to feed the same tuples to the same model.

* ``memory``  — gathers each epoch's tuples into NumPy arrays and hands them to
  ``model.fit`` (the classic keras.io way; memory grows with pairs per epoch).
* ``tfdata``  — a ``tf.data`` pipeline over tuple *indices*: a vectorised
  batch gather from the in-memory tensor (or parallel decoding of image
  files), prefetching; memory stays flat in pairs per epoch.
* ``custom``  — the ``tfdata`` pipeline driven by a ``tf.function``
  ``GradientTape`` loop.

All three take their tuples from the one sampler, in the same order, call the
same Keras callbacks, and log the same per-epoch keys. They are registered by
name in `siamese_core.registry.LOADERS` (``loader`` in the config).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .. import allocator, runtime
from ..registry import LOADERS
from .pairs import Tuples, TupleSampler
from .types import Inputs, PairedSplit, Split, materialize

# With AUTOTUNE, fit() was seen to sit idle (CPU idle) for 5-40 s after the last on_epoch_end in 9 of 30
# one-epoch runs on 2 cores; a pipeline with autotuning off and fixed parallelism had gaps <= 0.014 s.
PARALLEL_CALLS = 2
PREFETCH_BATCHES = 2


@dataclass
class TrainingPlan:
    """What every loader needs: the split, its sampler and the batch size."""

    split: Split
    sampler: TupleSampler
    batch_size: int
    # the memory loader's decoded inputs, built once per plan (image folders are decoded there)
    dense_sources: list[np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def arity(self) -> int:
        return self.sampler.arity

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.sampler.pairs_per_epoch / self.batch_size)

    def sources(self) -> list[Inputs]:
        """The input array each tuple position indexes into."""
        if isinstance(self.split, PairedSplit):
            return [self.split.x1, self.split.x2]
        return [self.split.x] * self.arity


def gather(sources: Sequence[Inputs], tuples: Tuples) -> tuple[np.ndarray, ...]:
    """The model inputs of `tuples`: position ``k`` taken from ``sources[k]`` (lazy inputs are decoded)."""
    return tuple(materialize(src, tuples.indices[:, k]) for k, src in enumerate(sources))


class RunCallbacks(keras.callbacks.CallbackList):
    """A callback list that spans the whole run.

    The memory loader calls ``fit`` once per epoch (each epoch has new arrays);
    this list forwards ``on_train_begin``/``on_train_end`` only once, so
    EarlyStopping, ReduceLROnPlateau and pruning callbacks keep their state.
    """

    def __init__(self, callbacks: list[keras.callbacks.Callback], *, model: keras.Model, epochs: int,
                 steps: int) -> None:
        super().__init__(callbacks, add_history=True, add_progbar=False, model=model,
                         epochs=epochs, steps=steps, verbose=0)
        self._began = False
        self._scoped = False

    def scoped(self) -> RunCallbacks:
        self._scoped = True
        return self

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not self._began:
            self._began = True
            super().on_train_begin(logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        if not self._scoped:
            super().on_train_end(logs)

    def end_run(self, logs: dict | None = None) -> None:
        super().on_train_end(logs)


class Loader(ABC):
    """Feeds a `TrainingPlan` to a compiled model for ``epochs`` epochs."""

    name: str

    @abstractmethod
    def run(self, model: keras.Model, plan: TrainingPlan, callbacks: list[keras.callbacks.Callback], *,
            epochs: int, initial_epoch: int = 0) -> None: ...

    @abstractmethod
    def batches(self, plan: TrainingPlan, epoch: int, n: int) -> list[tuple[tuple[np.ndarray, ...], np.ndarray]]:
        """The first `n` batches of `epoch` exactly as this loader feeds them (for parity checks)."""


class MemoryLoader(Loader):
    """Each epoch's tuples gathered into NumPy arrays and handed to ``fit`` (one ``fit`` per epoch)."""

    name = "memory"

    def _sources(self, plan: TrainingPlan) -> list[np.ndarray]:
        if plan.dense_sources is None:
            plan.dense_sources = [materialize(s) for s in plan.sources()]
        return plan.dense_sources

    def epoch_arrays(self, plan: TrainingPlan, epoch: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        tuples = plan.sampler.epoch(epoch)
        return gather(self._sources(plan), tuples), tuples.targets

    def run(self, model: keras.Model, plan: TrainingPlan, callbacks: list[keras.callbacks.Callback], *,
            epochs: int, initial_epoch: int = 0) -> None:
        cbs = RunCallbacks(callbacks, model=model, epochs=epochs, steps=plan.steps_per_epoch).scoped()
        logs: dict = {}
        try:
            for epoch in range(initial_epoch, epochs):
                x, y = self.epoch_arrays(plan, epoch)
                history = model.fit(list(x), y, batch_size=plan.batch_size, epochs=epoch + 1, initial_epoch=epoch,
                                    shuffle=False, verbose=0, callbacks=cbs)
                logs = {k: v[-1] for k, v in (history.history or {}).items() if v}
                if model.stop_training:
                    break
        finally:
            cbs.end_run(logs)

    def batches(self, plan: TrainingPlan, epoch: int, n: int) -> list[tuple[tuple[np.ndarray, ...], np.ndarray]]:
        x, y = self.epoch_arrays(plan, epoch)
        b = plan.batch_size
        return [(tuple(a[i * b:(i + 1) * b] for a in x), y[i * b:(i + 1) * b])
                for i in range(min(n, plan.steps_per_epoch))]


class _SourceTensor:
    """One tuple position's inputs as tf ops: a vectorised gather or a per-item decode."""

    def __init__(self, source: Inputs) -> None:
        self.dense = isinstance(source, np.ndarray)
        if isinstance(source, np.ndarray):
            self.tensor = tf.constant(source)
        else:
            self.lazy = source
            self.paths = source.tf_source()

    def gather_batch(self, idx: tf.Tensor) -> tf.Tensor:
        if self.dense:
            return tf.gather(self.tensor, idx)
        items = tf.gather(self.paths, idx)
        return tf.map_fn(self.lazy.tf_decode, items, fn_output_signature=tf.as_dtype(self.lazy.dtype))


def build_dataset(plan: TrainingPlan, *, initial_epoch: int, epochs: int) -> tf.data.Dataset:
    """All batches of epochs ``initial_epoch .. epochs-1`` in sampler order.

    Each epoch's index array comes from the sampler (one small Python call an
    epoch); slicing into batches and gathering inputs happen in TensorFlow.
    """
    sources = [_SourceTensor(s) for s in plan.sources()]
    arity, b, steps = plan.arity, plan.batch_size, plan.steps_per_epoch
    target_shape = (None,) if arity == 2 else (None, 2)

    def epoch_indices() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for epoch in range(initial_epoch, epochs):
            allocator.reassert()  # the op running this generator has just reset glibc's trim threshold
            t = plan.sampler.epoch(epoch)
            yield t.indices.astype(np.int32), t.targets

    per_epoch = tf.data.Dataset.from_generator(
        epoch_indices, output_signature=(tf.TensorSpec((None, arity), tf.int32),
                                         tf.TensorSpec(target_shape, tf.float32)))

    def slice_batches(idx: tf.Tensor, y: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.range(steps).map(
            lambda s: (idx[s * b:(s + 1) * b], y[s * b:(s + 1) * b]))

    def gather(idx: tf.Tensor, y: tf.Tensor) -> tuple[tuple[tf.Tensor, ...], tf.Tensor]:
        return tuple(src.gather_batch(idx[:, k]) for k, src in enumerate(sources)), y

    calls = runtime.parallel_calls(PARALLEL_CALLS)
    batches = per_epoch.flat_map(slice_batches)
    ds = batches.map(gather) if calls is None else batches.map(gather, num_parallel_calls=calls, deterministic=True)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)


class TfDataLoader(Loader):
    """One ``fit`` over a `build_dataset` pipeline for all epochs."""

    name = "tfdata"

    def run(self, model: keras.Model, plan: TrainingPlan, callbacks: list[keras.callbacks.Callback], *,
            epochs: int, initial_epoch: int = 0) -> None:
        ds = build_dataset(plan, initial_epoch=initial_epoch, epochs=epochs)
        cbs = RunCallbacks(callbacks, model=model, epochs=epochs, steps=plan.steps_per_epoch)
        model.fit(ds, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=plan.steps_per_epoch,
                  shuffle=False, verbose=0, callbacks=cbs)

    def batches(self, plan: TrainingPlan, epoch: int, n: int) -> list[tuple[tuple[np.ndarray, ...], np.ndarray]]:
        ds = build_dataset(plan, initial_epoch=epoch, epochs=epoch + 1).take(n)
        return [(tuple(np.asarray(a) for a in x), np.asarray(y)) for x, y in ds]


class CustomLoopLoader(TfDataLoader):
    """A ``tf.function`` GradientTape loop; calls the Keras callbacks itself."""

    name = "custom"

    def run(self, model: keras.Model, plan: TrainingPlan, callbacks: list[keras.callbacks.Callback], *,
            epochs: int, initial_epoch: int = 0) -> None:
        ds = build_dataset(plan, initial_epoch=initial_epoch, epochs=epochs)
        train_step = make_iterator_train_step(model)
        cbs = RunCallbacks(callbacks, model=model, epochs=epochs, steps=plan.steps_per_epoch)
        model.stop_training = False
        iterator = iter(ds)
        cbs.on_train_begin()
        epoch_logs: dict[str, float] = {}
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            total, count = 0.0, 0
            for step in range(plan.steps_per_epoch):
                cbs.on_train_batch_begin(step)
                loss_t, n_t = train_step(iterator)
                loss, n = float(loss_t), int(n_t)
                total, count = total + loss * n, count + n
                cbs.on_train_batch_end(step, {"loss": total / count})
                if model.stop_training:
                    break
            epoch_logs = {"loss": total / max(count, 1)}
            cbs.on_epoch_end(epoch, epoch_logs)
            if model.stop_training:
                break
        cbs.on_train_end(epoch_logs)


def _step_fn(model: keras.Model) -> Callable[[Any, Any], tf.Tensor]:
    loss_fn = model.loss
    optimizer = model.optimizer
    variables = model.trainable_variables

    def step(x: Any, y: Any) -> tf.Tensor:
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = loss_fn(y, pred)
            total = loss + tf.add_n(model.losses) if model.losses else loss
        grads = tape.gradient(total, variables)
        optimizer.apply(grads, variables)
        return total

    if not optimizer.built:
        optimizer.build(variables)
    return step


def make_train_step(model: keras.Model) -> Callable[[Any, Any], tf.Tensor]:
    """One optimisation step ``step(x, y) -> loss`` with the model's compiled loss and optimizer."""
    return tf.function(_step_fn(model), reduce_retracing=True)


def make_iterator_train_step(model: keras.Model) -> Callable[[Any], tuple[tf.Tensor, tf.Tensor]]:
    """``step(iterator) -> (loss, batch size)``: the batch is taken from the tf.data iterator *inside* the
    graph, as Keras' ``fit`` does. Pulling it in Python first (``next(iterator)`` then ``step(x, y)``)
    materialises eager tensors and re-flattens the inputs every step (~1.5x slower per step, same process)."""
    step = _step_fn(model)

    @tf.function(reduce_retracing=True)
    def run(iterator: Any) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = next(iterator)
        return step(x, y), tf.shape(y)[0]

    return run


def get_loader(name: str) -> Loader:
    """A fresh loader registered as `name` (``memory``, ``tfdata``, ``custom``)."""
    loader: Loader = LOADERS.get(name)()
    return loader
