"""Item 11: a run interrupted at epoch k resumes from its checkpoint; a bad checkpoint means a clean start.

In-process and per loader (the memory loader calls ``fit`` once per epoch, ``tfdata`` calls it
once, ``custom`` never): the resumed run must continue exactly where the interrupted one stopped —
same weights, same optimizer step count, and the same loss at the resumed epoch as an
uninterrupted run. The process-level version (SIGTERM, SIGKILL, MLflow outage, then a retry keyed
by the original trial number) is in test_worker_faults.py, test_mlflow_outage.py and
tests/distributed.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from siamese_core import TrainConfig
from siamese_core.checkpoint import STATE, WEIGHTS, file_sha256
from siamese_core.training import train

EPOCHS = 3


class _StopAt(keras.callbacks.Callback):
    """Ctrl-C at the start of `epoch` (after epochs 0..epoch-1 were checkpointed)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"stopped at epoch {epoch}")


def _config(make_tiny, loader: str, **extra) -> TrainConfig:
    return TrainConfig.from_dict(make_tiny(epochs=EPOCHS, loader=loader, diagnostics={"enabled": False},
                                           pairs={"pairs_per_epoch": 384, "val_pairs": 120, "test_pairs": 120},
                                           **extra))


@pytest.fixture(scope="module")
def pristine(make_tiny, digits_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint left by a memory-loader run stopped at the start of epoch 2."""
    d = tmp_path_factory.mktemp("pristine") / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(_config(make_tiny, "memory"), data=digits_data, checkpoint_dir=d, callbacks=[_StopAt(2)])
    return d


@pytest.mark.parametrize("loader", ["memory", "tfdata", "custom"])
def test_interrupted_run_resumes_where_it_stopped(loader: str, make_tiny, digits_data, tmp_path: Path) -> None:
    config = _config(make_tiny, loader)
    reference = train(config, data=digits_data)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(config, data=digits_data, checkpoint_dir=ckpt, callbacks=[_StopAt(2)])
    state = json.loads((ckpt / STATE).read_text())
    assert state["next_epoch"] == 2 and [row["epoch"] for row in state["history"]] == [0, 1]

    resumed = train(config, data=digits_data, checkpoint_dir=ckpt)
    assert resumed.resumed_from_epoch == 2
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2]
    steps = -(-config.pairs.pairs_per_epoch // config.batch_size)
    assert int(resumed.models.training.optimizer.iterations) == EPOCHS * steps  # optimizer state came back
    # the resumed epoch trains from the same weights and optimizer moments as the uninterrupted run
    assert resumed.history[2]["loss"] == reference.history[2]["loss"]
    assert resumed.history[:2] == [{k: v for k, v in row.items()} for row in state["history"]]


def _counted(make_tiny, **extra) -> TrainConfig:
    return TrainConfig.from_dict(make_tiny(loader="memory", diagnostics={"enabled": False},
                                           pairs={"pairs_per_epoch": 384, "val_pairs": 120, "test_pairs": 120},
                                           **extra))


def test_a_resumed_run_keeps_its_early_stopping_patience(make_tiny, digits_data, tmp_path: Path) -> None:
    """The review of checkpoint resume: EarlyStopping was built afresh on resume, so a trial interrupted at
    epoch 4 trained all 8 epochs where the same trial uninterrupted stopped at 6 (another value, another test
    score). No epoch improves val_loss by 10: the run stops at epoch 1 (patience 1)."""
    config = _counted(make_tiny, epochs=6, early_stopping={"enabled": True, "monitor": "val_loss", "patience": 1,
                                                           "min_delta": 10.0})
    reference = train(config, data=digits_data)
    assert len(reference.history) == 2
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(config, data=digits_data, checkpoint_dir=ckpt, callbacks=[_StopAt(1)])
    resumed = train(config, data=digits_data, checkpoint_dir=ckpt)
    assert resumed.resumed_from_epoch == 1
    assert [row["epoch"] for row in resumed.history] == [0, 1]
    assert resumed.test["roc_auc"] == reference.test["roc_auc"]
    # killed after the checkpoint of the epoch it stopped at (before its test was scored): nothing more is trained
    again = train(config, data=digits_data, checkpoint_dir=ckpt)
    assert again.resumed_from_epoch == 2 and len(again.history) == 2
    assert again.test["roc_auc"] == reference.test["roc_auc"]


def test_a_resumed_run_keeps_its_learning_rate_schedule(make_tiny, digits_data, tmp_path: Path) -> None:
    """ReduceLROnPlateau built afresh on resume: the resumed trial kept its rate where the uninterrupted one
    halved it twice. The run is interrupted at the first epoch after which the uninterrupted run halved its rate
    (patience 0: any epoch that does not improve val_loss): a fresh callback has no best there and keeps it."""
    # at 1e-6 val_loss barely moves, and rises now and then (measured: 0.1175 -> 0.1170 -> 0.1173)
    config = _counted(make_tiny, epochs=6, learning_rate=1e-6, reduce_lr={
        "enabled": True, "monitor": "val_loss", "patience": 0, "factor": 0.5, "min_lr": 0.0})
    reference = train(config, data=digits_data)
    rates = [row["learning_rate"] for row in reference.history]
    halved = [k for k in range(1, len(rates) - 1) if rates[k + 1] < rates[k]]
    assert halved, rates  # the config is deterministic: it halves at least once here
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(config, data=digits_data, checkpoint_dir=ckpt, callbacks=[_StopAt(halved[0])])
    resumed = train(config, data=digits_data, checkpoint_dir=ckpt)
    assert resumed.resumed_from_epoch == halved[0]
    assert [row["learning_rate"] for row in resumed.history] == rates
    assert resumed.history[-1]["loss"] == reference.history[-1]["loss"]


def test_a_finished_checkpoint_resumes_without_training(make_tiny, digits_data, pristine, tmp_path: Path) -> None:
    config = _config(make_tiny, "memory")
    shutil.copytree(pristine, tmp_path / "ckpt")
    first = train(config, data=digits_data, checkpoint_dir=tmp_path / "ckpt")  # runs epoch 2, saves epoch 3
    again = train(config, data=digits_data, checkpoint_dir=tmp_path / "ckpt")
    assert first.resumed_from_epoch == 2
    assert again.resumed_from_epoch == EPOCHS and len(again.history) == EPOCHS
    assert again.test["roc_auc"] == pytest.approx(first.test["roc_auc"], abs=1e-6)
    assert again.threshold == pytest.approx(first.threshold, abs=1e-6)


@pytest.mark.parametrize("damage", ["garbage_weights", "truncated_weights", "bad_json", "other_config",
                                    "missing_weights", "format_1", "fewer_variables"])
def test_a_corrupt_checkpoint_is_ignored_with_a_warning_and_training_starts_clean(
        damage: str, make_tiny, digits_data, pristine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(make_tiny, "memory")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(pristine, ckpt)
    weights, state = ckpt / WEIGHTS, ckpt / STATE
    if damage == "garbage_weights":
        weights.write_bytes(b"\x89HDF\r\n not really" * 100)
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:500])
    elif damage == "bad_json":
        state.write_text('{"next_epoch": 2, "hist')
    elif damage == "missing_weights":
        weights.unlink()
    elif damage == "format_1":  # Keras `save_weights` HDF5 before 2026-12: refused like a foreign checkpoint
        state.write_text(json.dumps({**json.loads(state.read_text()), "format": 1}))
    elif damage == "fewer_variables":  # the right checksum over arrays that are not this model's
        with np.load(weights) as npz:
            arrays = {k: npz[k] for k in npz.files[:-1]}
        with open(weights, "wb") as f:
            np.savez(f, **arrays)
        state.write_text(json.dumps({**json.loads(state.read_text()), "weights_sha256": file_sha256(weights)}))
    else:  # a checkpoint written for another config (e.g. a reused trial number)
        config = _config(make_tiny, "memory", learning_rate=0.01)
    with caplog.at_level(logging.WARNING, logger="siamese_core.training"):
        result = train(config, data=digits_data, checkpoint_dir=ckpt)
    assert "ignoring checkpoint" in caplog.text
    assert result.resumed_from_epoch == 0 and [row["epoch"] for row in result.history] == [0, 1, 2]
    steps = -(-config.pairs.pairs_per_epoch // config.batch_size)
    assert int(result.models.training.optimizer.iterations) == EPOCHS * steps
    assert json.loads(state.read_text())["next_epoch"] == EPOCHS  # a fresh, valid checkpoint replaced it
