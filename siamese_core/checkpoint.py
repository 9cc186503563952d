"""Per-epoch checkpoints, so an interrupted run resumes where it stopped.

A checkpoint directory holds two files:

* ``weights.npz`` — every variable of the training model (weights, batch-norm
  statistics, seed-generator states) and of its optimizer (step count, moments),
  in `_variables` order (format 2);
* ``state.json`` — the next epoch to run, the history so far, a fingerprint of
  the config and the SHA-256 of the weights file.

Why not ``Model.save_weights`` (format 1, an HDF5 file): Keras walks the model's
object tree in Python for each save: 38 ms of CPU for the default encoder
against 6 ms for the same arrays with ``numpy.savez`` (medians of 30, AMD EPYC,
`python benchmarks/checkpoint_save.py`, BENCHMARKS.md §2), and every epoch of
every sweep trial pays it.
A format-1 checkpoint is refused like any foreign one: the run starts clean.

Both are written under temporary names and renamed, state last, so a process
killed mid-save leaves either the previous checkpoint or a state/weights
mismatch — which `restore` reports as `CheckpointError` (and `train` then
starts clean), never a half-loaded model.

Why not ``keras.callbacks.BackupAndRestore``: it restores through ``fit``'s
``on_train_begin`` and deletes its backup in ``on_train_end``; the memory loader
calls ``fit`` once per epoch and the custom loop never calls ``fit``. A plain
callback plus an explicit restore before training works for all three loaders,
and it keeps the history, so a resumed run still reports every epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from .config import TrainConfig
from .errors import InfrastructureError

WEIGHTS = "weights.npz"
STATE = "state.json"
FORMAT = 2


class CheckpointError(InfrastructureError):
    """A checkpoint exists but cannot be used (corrupt, partial, or from another config)."""


@dataclass
class Restored:
    """What `restore` loaded besides the weights."""

    epoch: int                                   # the next epoch to run
    history: list[dict[str, float]] = field(default_factory=list)


def config_fingerprint(config: TrainConfig) -> str:
    """sha256 of the resolved config: a checkpoint resumes only the run it was written for."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """The checksum ``state.json`` records for its weights (also checked on a copy fetched from MLflow)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(directory: str | Path, model: keras.Model, *, next_epoch: int, history: list[dict[str, float]],
         fingerprint: str) -> None:
    """Write weights then state, each under a temporary name and renamed (see the module docstring)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp_weights = d / f".tmp-{os.getpid()}.{WEIGHTS}"
    variables = _variables(model)
    arrays = {f"v{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(variables)}
    with open(tmp_weights, "wb") as f:  # a file object: `np.savez` would add ".npz" to a name not ending in it
        np.savez(f, **arrays)
    state = {"format": FORMAT, "next_epoch": int(next_epoch), "history": history, "config": fingerprint,
             "weights_sha256": file_sha256(tmp_weights)}
    tmp_state = d / f".tmp-{os.getpid()}.state.json"
    tmp_state.write_text(json.dumps(state))
    os.replace(tmp_weights, d / WEIGHTS)
    os.replace(tmp_state, d / STATE)


def _variables(model: keras.Model) -> list[Any]:
    """What a checkpoint holds: the model's variables, then its optimizer's once it is built (the
    optimizer builds its slots on the first step; `restore` builds them before loading)."""
    optimizer = model.optimizer
    built = optimizer is not None and optimizer.built
    return [*model.variables, *(optimizer.variables if built else [])]


def _load_variables(path: Path, model: keras.Model) -> None:
    """Assign the arrays `save` wrote to `model`'s variables, by position: the config fingerprint already matched,
    so the model was built the same way (its variables' names may not be the same: Keras numbers unnamed layers
    per process). A count or shape that differs raises before any variable is assigned."""
    variables = _variables(model)
    with np.load(path, allow_pickle=False) as npz:
        arrays = [npz[f"v{i}"] for i in range(len(npz.files))]
    if len(arrays) != len(variables):
        raise ValueError(f"the file holds {len(arrays)} variables, the model has {len(variables)}")
    for variable, array in zip(variables, arrays, strict=True):
        if tuple(array.shape) != tuple(variable.shape):
            raise ValueError(f"{variable.path}: shape {array.shape} in the file, {variable.shape} in the model")
    for variable, array in zip(variables, arrays, strict=True):
        variable.assign(array)


def exists(directory: str | Path) -> bool:
    return (Path(directory) / STATE).is_file() or (Path(directory) / WEIGHTS).is_file()


def restore(directory: str | Path, model: keras.Model, *, fingerprint: str, epochs: int) -> Restored | None:
    """Load the checkpoint into `model` (optimizer built first); None if there is none."""
    d = Path(directory)
    if not exists(d):
        return None
    try:
        state = json.loads((d / STATE).read_text())
        next_epoch, history = int(state["next_epoch"]), list(state["history"])
        expected = state["weights_sha256"]
        fmt, config = state.get("format"), state.get("config")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"unreadable {STATE}: {type(exc).__name__}: {exc}") from None
    if fmt != FORMAT:
        raise CheckpointError(f"checkpoint format {fmt!r}, expected {FORMAT}")
    if config != fingerprint:
        raise CheckpointError("checkpoint was written for a different config")
    if not 0 < next_epoch <= epochs or len(history) != next_epoch:
        raise CheckpointError(f"checkpoint says next epoch {next_epoch} with {len(history)} history rows "
                              f"(run has {epochs} epochs)")
    try:
        actual = file_sha256(d / WEIGHTS)
    except OSError as exc:
        raise CheckpointError(f"weights missing: {exc}") from None
    if actual != expected:
        raise CheckpointError("weights file does not match its recorded checksum (partial or corrupt write)")
    try:
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        _load_variables(d / WEIGHTS, model)
    except Exception as exc:  # noqa: BLE001 - numpy/zipfile/Keras raise many types for bad files
        raise CheckpointError(f"weights do not load: {type(exc).__name__}: {exc}") from None
    return Restored(next_epoch, history)


def saved_epoch(directory: str | Path) -> int:
    """The next epoch the checkpoint in `directory` would resume at; 0 when there is none or it is unreadable.

    Only compares checkpoints (say, a local one and a downloaded one); `restore` does the real checks.
    """
    try:
        return int(json.loads((Path(directory) / STATE).read_text())["next_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def intact_epoch(directory: str | Path) -> int:
    """`saved_epoch` of a checkpoint whose weights match the checksum its state records, else 0: a local copy
    that fails it gives way to a good copy elsewhere (it won over a good MLflow copy of the same epoch, and the
    retry, which then discarded it, trained from epoch 0)."""
    d = Path(directory)
    try:
        state = json.loads((d / STATE).read_text())
        return int(state["next_epoch"]) if file_sha256(d / WEIGHTS) == state["weights_sha256"] else 0
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def clear(directory: str | Path) -> None:
    """Delete the checkpoint directory (a finished or abandoned run)."""
    shutil.rmtree(directory, ignore_errors=True)


class EpochCheckpoint(keras.callbacks.Callback):
    """Save a checkpoint at the end of every epoch (runs after the history recorder).

    `listeners` are told ``on_checkpoint(directory, next_epoch)`` once each checkpoint is complete on disk
    (a sweep copies it to where workers on other machines can reach it).
    """

    def __init__(self, directory: str | Path, history: list[dict[str, float]], *, fingerprint: str,
                 listeners: Sequence[Any] = ()) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.history = history  # the recorder's list: already holds this epoch's row
        self.fingerprint = fingerprint
        self.listeners = list(listeners)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        save(self.directory, self.model, next_epoch=epoch + 1, history=list(self.history),
             fingerprint=self.fingerprint)
        for listener in self.listeners:
            listener.on_checkpoint(self.directory, epoch + 1)
