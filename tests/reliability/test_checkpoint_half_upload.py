"""A worker killed halfway through copying an epoch checkpoint to MLflow leaves a copy a retry resumes from.

The flake this pins (test_remote_checkpoint.py's two-worker test, about 1 run in 3 in CI): the upload wrote the
weights and then ``state.json`` over the same two artifact paths each epoch, so a SIGKILL between the two left
MLflow holding epoch N+1's weights beside epoch N's state; the checksum check in `restore` rejected the pair and
the retry trained from epoch 0. Here the kill is a BaseException raised by the client as the state of the last
epoch is about to go up (after its weights went up), against a real MLflow store (sqlite and a local artifact
folder), so it is deterministic and needs no server.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from siamese_core.checkpoint import STATE, WEIGHTS

EPOCHS = 3


class Killed(BaseException):
    """SIGKILL, as far as the uploader can tell: nothing after it runs (it is not an Exception)."""


@pytest.fixture
def tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from sweeps.tracking import Tracker

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _new_run(tracker, tmp_path: Path) -> str:
    exp = tracker.client.create_experiment("half-upload", artifact_location=(tmp_path / "artifacts").as_uri())
    return tracker.client.create_run(exp).info.run_id


def _kill_at_state_upload(tracker, monkeypatch: pytest.MonkeyPatch, *, nth: int) -> None:
    """The `nth` upload of a state.json dies before it is sent; every other call goes through."""
    real = tracker.client.log_artifact
    seen = []

    def log_artifact(run_id, local_path, artifact_path=None):
        if Path(local_path).name == "state.json":
            seen.append(local_path)
            if len(seen) == nth:
                raise Killed(f"killed before uploading state.json #{nth}")
        return real(run_id, local_path, artifact_path)

    monkeypatch.setattr(tracker.client, "log_artifact", log_artifact)


def test_a_kill_between_the_weights_and_the_state_upload_resumes_from_the_previous_epoch(
        tracker, make_tiny, digits_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from siamese_core import TrainConfig
    from siamese_core.training import train
    from sweeps import checkpoints
    from sweeps.callbacks import CheckpointUploader
    from sweeps.tracking import TrialRun

    run_id = _new_run(tracker, tmp_path)
    config = TrainConfig.from_dict(make_tiny(epochs=EPOCHS, diagnostics={"enabled": False},
                                             pairs={"pairs_per_epoch": 256, "val_pairs": 120, "test_pairs": 120}))
    _kill_at_state_upload(tracker, monkeypatch, nth=EPOCHS)
    uploader = CheckpointUploader(TrialRun(tracker, run_id))
    with pytest.raises(Killed):
        train(config, data=digits_data, checkpoint_dir=tmp_path / "a", callbacks=[uploader])
    assert uploader.uploaded == [1, 2]
    # the epoch-3 weights did reach the run: this is the half-upload, not a missed one
    listed = {Path(f.path).name for f in tracker.client.list_artifacts(run_id, checkpoints.ARTIFACT_DIR)}
    weights_names = [n for n in listed if n != STATE]  # epoch 2's (committed) and epoch 3's (the state never came)
    assert sorted(weights_names) == sorted([checkpoints.weights_artifact(2), checkpoints.weights_artifact(3)])
    local = (tmp_path / "a" / WEIGHTS).read_bytes()  # epoch 3, saved locally before the upload
    weights_in_run = [Path(tracker.client.download_artifacts(run_id, f"{checkpoints.ARTIFACT_DIR}/{n}",
                                                             str(tmp_path / "peek" / n)))
                      for n in weights_names]
    assert hashlib.sha256(local).hexdigest() in {hashlib.sha256(p.read_bytes()).hexdigest() for p in weights_in_run}

    # the retry on another machine resumes from epoch 2 (the last committed state), not from scratch
    elsewhere = tmp_path / "b"
    assert checkpoints.fetch(tracker, [run_id], elsewhere) == EPOCHS - 1
    resumed = train(config, data=digits_data, checkpoint_dir=elsewhere)
    assert resumed.resumed_from_epoch == EPOCHS - 1
    assert len(resumed.history) == EPOCHS


def test_each_epoch_commits_its_own_weights_and_drops_the_previous_ones(
        tracker, make_tiny, digits_data, tmp_path: Path) -> None:
    from siamese_core import TrainConfig
    from siamese_core.training import train
    from sweeps import checkpoints
    from sweeps.callbacks import CheckpointUploader
    from sweeps.tracking import TrialRun

    run_id = _new_run(tracker, tmp_path)
    config = TrainConfig.from_dict(make_tiny(epochs=2, diagnostics={"enabled": False},
                                             pairs={"pairs_per_epoch": 256, "val_pairs": 120, "test_pairs": 120}))
    uploader = CheckpointUploader(TrialRun(tracker, run_id))
    train(config, data=digits_data, checkpoint_dir=tmp_path / "a", callbacks=[uploader])
    assert uploader.uploaded == [1, 2]
    listed = sorted(Path(f.path).name for f in tracker.client.list_artifacts(run_id, checkpoints.ARTIFACT_DIR))
    assert listed == [checkpoints.weights_artifact(2), "state.json"]
    state = json.loads(Path(tracker.client.download_artifacts(
        run_id, f"{checkpoints.ARTIFACT_DIR}/state.json", str(tmp_path / "peek"))).read_text())
    assert state["next_epoch"] == 2 and state[checkpoints.WEIGHTS_KEY] == checkpoints.weights_artifact(2)
    assert checkpoints.delete(tracker, [run_id]) == 1
    assert tracker.client.list_artifacts(run_id, checkpoints.ARTIFACT_DIR) == []


def test_a_copy_whose_weights_fail_the_checksum_gives_way_to_an_older_attempts_copy(
        tracker, tmp_path: Path) -> None:
    """A run holding a pair in the old layout (one overwritten weights file) with the next epoch's weights:
    fetch skips it for an earlier attempt's consistent copy, and never leaves the bad pair on disk."""
    from sweeps import checkpoints

    def pair(where: Path, epoch: int, weights: bytes, recorded: bytes) -> Path:
        where.mkdir(parents=True)
        (where / WEIGHTS).write_bytes(weights)
        (where / "state.json").write_text(json.dumps({
            "format": 1, "next_epoch": epoch, "history": [{}] * epoch, "config": "x",
            "weights_sha256": hashlib.sha256(recorded).hexdigest()}))
        return where

    older = _new_run(tracker, tmp_path)  # the first attempt: a consistent epoch-1 copy
    newer = tracker.client.create_run(tracker.client.get_run(older).info.experiment_id).info.run_id
    good = pair(tmp_path / "o", 1, b"w1", b"w1")
    half = pair(tmp_path / "n", 2, b"w3", b"w2")  # weights one epoch ahead of the state that went up with them
    for run_id, where in ((older, good), (newer, half)):
        for name in (WEIGHTS, STATE):
            tracker.client.log_artifact(run_id, str(where / name), checkpoints.ARTIFACT_DIR)

    target = tmp_path / "retry"
    assert checkpoints.fetch(tracker, [newer, older], target) == 1
    assert (target / WEIGHTS).read_bytes() == b"w1"
    assert json.loads((target / "state.json").read_text())["next_epoch"] == 1
    assert checkpoints.fetch(tracker, [newer], tmp_path / "only-bad") == 0
    assert not (tmp_path / "only-bad" / "state.json").exists()
