"""Epoch checkpoints that travel: a copy in the trial's MLflow run, so a retry on another machine resumes.

Workers on different machines share only the Optuna storage and the MLflow tracking server. With
``tracking.checkpoints: mlflow`` (or ``auto`` and an ``http(s)://`` tracking URI) the local epoch checkpoint
(`siamese_core.checkpoint`) is also uploaded to the trial's run under ``siamese_sweep_checkpoint/`` (at most once
per ``tracking.checkpoint_copy_seconds`` of training, and the newest when the trial is stopped:
`sweeps.callbacks.CheckpointUploader`), crash-consistently: the weights go up under a name of their own,
``epoch-<N>.weights.npz`` (N: the epochs done), then ``state.json``, overwritten each epoch, which names them
(``weights_artifact``) and is the commit point, then the weights no state names any more are deleted. So a run
normally holds one checkpoint (two files), never one per epoch; a worker killed mid-upload leaves a third, orphaned
weights file beside the previous epoch's consistent pair, and a retry resumes from that epoch instead of starting
clean. (Overwriting one weights file instead, as before, let a kill between the two uploads pair epoch N+1's weights
with epoch N's state, which `restore`'s checksum check rejected: the retry started from epoch 0.) A retry that finds
no (or an older) local checkpoint reads the ``state.json`` of each of its earlier attempts' runs (Optuna's
``retry_history``), downloads the weights the newest one names and checks them against the SHA-256 in that state
before it puts them in place (a copy that fails is skipped for the next newest); `restore` then checks the config
fingerprint and the checksum again. When the trial ends for good (COMPLETE, PRUNED, its own failure) the copies of
every attempt are deleted; a trial whose retry never runs (``max_retries`` used up) keeps its one copy.

Cost: the upload runs in a background thread while the next epoch trains (`sweeps.callbacks.CheckpointUploader`,
from a hard-linked snapshot of the two files), one at a time. A checkpoint is about 12 bytes per parameter
(float32 weights plus Adam's two moments). Measured against a local ``mlflow server`` (PostgreSQL backend, basic
auth, proxied artifacts; medians of 10 uploads and 5 fetches, AMD EPYC 2-vCPU machine, format 2 checkpoints,
``python benchmarks/checkpoint_upload.py``): the default encoder (28 k parameters) is 0.34 MB and an upload (two
files and the listing; the benchmark re-uploads one epoch, so there is no earlier epoch to delete) takes 0.06 s,
a retry's download (list, state, weights) 0.16 s; a conv encoder of depth 4 and width 128 (6.5 M parameters) is
78 MB, 0.35 s and 0.75 s. Over a real network the large case scales with bandwidth: set
``tracking.checkpoints: local`` when epochs are short and checkpoints large.

An upload that fails (server down, refused) is logged and skipped: the next epoch's commits over it (and deletes
any weights it left), and the trial never fails for it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import names, scratch
from .secrets import mask_secrets
from .tracking import Retry, Tracker

log = logging.getLogger(__name__)

MODES = ("auto", "local", "mlflow")
ARTIFACT_DIR = names.ARTIFACT_RESUME_CHECKPOINT
WEIGHTS_KEY = "weights_artifact"  # in the uploaded state.json: the weights file of ARTIFACT_DIR it was written with
UPLOAD_BUDGET_S = 5.0    # per epoch, as buffered metrics: longer would stall training while MLflow is down
FETCH_BUDGET_S = 30.0    # per call when a retry looks for its earlier attempts' checkpoints


def shared_through_mlflow(mode: str, tracking_uri: str) -> bool:
    """Whether checkpoints are copied to MLflow: ``auto`` means yes for an http(s) tracking server, which every
    worker reaches, and no for local stores (``sqlite:``, file paths) that only one machine sees anyway."""
    if mode not in MODES:
        raise ValueError(f"tracking.checkpoints must be one of {', '.join(MODES)}; received: {mode!r}")
    if mode == "auto":
        return urlsplit(tracking_uri).scheme in ("http", "https")
    return mode == "mlflow"


def weights_artifact(next_epoch: int) -> str:
    """The artifact name of the weights a checkpoint that resumes at `next_epoch` uploads."""
    from siamese_core.checkpoint import WEIGHTS  # Keras: only once a trial runs

    return f"epoch-{int(next_epoch)}.{WEIGHTS}"


def upload(tracker: Tracker, run_id: str, directory: Path) -> float | None:
    """Copy the checkpoint in `directory` to the run: its weights under this epoch's name, then ``state.json``
    (naming them) as the commit point, then delete the weights no committed state names any more. Returns the
    seconds it took, None when the checkpoint did not get committed (logged; never raised)."""
    from siamese_core.checkpoint import STATE, WEIGHTS  # Keras: only once a trial runs

    start = time.perf_counter()
    quick = tracker.retry.within(UPLOAD_BUDGET_S)
    try:
        state = json.loads((directory / STATE).read_text())
        name = weights_artifact(state["next_epoch"])
        with scratch.temporary_directory("siamese-ckpt-up-") as tmp:
            weights = Path(tmp) / name
            try:
                weights.symlink_to((directory / WEIGHTS).resolve())  # uploaded under this epoch's name, not copied
            except OSError:
                shutil.copyfile(directory / WEIGHTS, weights)
            (Path(tmp) / STATE).write_text(json.dumps({**state, WEIGHTS_KEY: name}))
            for path in (weights, Path(tmp) / STATE):  # state last: until it lands, the old state names old weights
                quick("upload checkpoint", partial(tracker.client.log_artifact, run_id, str(path), ARTIFACT_DIR))
    except Exception as exc:  # noqa: BLE001 - a missed upload costs a retry elsewhere some epochs, not the trial
        log.warning("could not copy the epoch checkpoint to MLflow run %s (%s); a retry on another machine "
                    "would resume from an earlier epoch", run_id, mask_secrets(str(exc))[:200])
        return None
    _delete_stale_weights(tracker, run_id, keep=name, quick=quick)
    return time.perf_counter() - start


def _delete_stale_weights(tracker: Tracker, run_id: str, *, keep: str, quick: Retry) -> None:
    """Delete the weights files in the run other than `keep` (earlier epochs', or a killed upload's)."""
    from siamese_core.checkpoint import STATE

    try:
        stale = [f.path for f in quick("list checkpoint", partial(tracker.client.list_artifacts, run_id, ARTIFACT_DIR))
                 if Path(f.path).name not in (keep, STATE)]
        if not stale:
            return
        repo = _artifact_repository(tracker, run_id, quick)
        for path in stale:
            quick("delete old checkpoint weights", partial(repo.delete_artifacts, path))
    except Exception as exc:  # noqa: BLE001 - a leftover file costs storage until the next epoch or `delete`
        log.warning("could not delete earlier checkpoint weights in MLflow run %s: %s", run_id,
                    mask_secrets(str(exc))[:200])


def _artifact_repository(tracker: Tracker, run_id: str, quick: Retry) -> Any:
    """The run's artifact repository: it can delete artifacts, which MlflowClient cannot."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    uri = quick("get run", partial(tracker.client.get_run, run_id)).info.artifact_uri
    return get_artifact_repository(uri, tracking_uri=tracker.uri)


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else None
    except (OSError, ValueError):
        return None


def fetch(tracker: Tracker, run_ids: Iterable[str], directory: Path) -> int:
    """Put the newest checkpoint among `run_ids`' copies into `directory` if it is ahead of the one there.

    Each run's ``state.json`` is read first; it names the weights file it was committed with, which is downloaded
    and checked against the SHA-256 in that state (a copy that fails the check is skipped for the next newest).
    Returns the epoch the checkpoint now in `directory` resumes at (0: none). Errors are logged: the retry then
    uses what it has (its local checkpoint, or none).
    """
    from siamese_core.checkpoint import STATE, WEIGHTS, file_sha256, intact_epoch, saved_epoch

    from .mlflow_globals import quiet_artifacts

    have = intact_epoch(directory)
    quick = tracker.retry.within(FETCH_BUDGET_S)

    def download(run_id: str, name: str, tmp: str) -> Path:
        dst = os.path.join(tmp, run_id, "state" if name == STATE else "weights")
        return Path(quick(f"download checkpoint {name}", lambda: tracker.client.download_artifacts(
            run_id, f"{ARTIFACT_DIR}/{name}", dst)))

    with scratch.temporary_directory("siamese-ckpt-") as tmp, quiet_artifacts():
        found: list[tuple[int, str, str, Path]] = []  # (epoch, run id, weights artifact, state file)
        for run_id in run_ids:
            try:
                listed = {Path(f.path).name for f in quick("list checkpoint", partial(
                    tracker.client.list_artifacts, run_id, ARTIFACT_DIR))}
                if STATE not in listed:
                    continue
                state = download(run_id, STATE, tmp)
            except Exception as exc:  # noqa: BLE001 - one unreadable copy must not hide the others
                log.warning("could not read the checkpoint of MLflow run %s: %s", run_id, mask_secrets(str(exc))[:200])
                continue
            name = str((_read_state(state) or {}).get(WEIGHTS_KEY, WEIGHTS))  # WEIGHTS: a copy from before the key
            epoch = saved_epoch(state.parent)
            if epoch > have and name in listed:
                found.append((epoch, run_id, name, state))
        for epoch, run_id, name, state in sorted(found, key=lambda c: c[0], reverse=True):
            try:
                weights = download(run_id, name, tmp)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not download the checkpoint of MLflow run %s: %s", run_id,
                            mask_secrets(str(exc))[:200])
                continue
            if file_sha256(weights) != (_read_state(state) or {}).get("weights_sha256"):
                log.warning("the epoch-%d checkpoint of MLflow run %s does not match its recorded checksum "
                            "(a copy uploaded before its weights were named in state.json); skipped", epoch, run_id)
                continue
            directory.mkdir(parents=True, exist_ok=True)
            for local, src in ((WEIGHTS, weights), (STATE, state)):  # as `checkpoint.save`: renamed in, state last
                part = directory / f".tmp-{os.getpid()}.{local}"
                shutil.copyfile(src, part)
                os.replace(part, directory / local)
            log.info("downloaded the epoch-%d checkpoint of MLflow run %s", epoch, run_id)
            return epoch
    return have


def delete(tracker: Tracker, run_ids: Iterable[str]) -> int:
    """Delete the checkpoint copies of `run_ids` (best-effort); returns how many runs had one.

    MlflowClient has no call that deletes artifacts; the run's artifact repository has one
    (``ArtifactRepository.delete_artifacts``, used by MLflow's own garbage collection). Through a tracking
    server with proxied artifacts it is an HTTP DELETE on the server's artifact endpoint.
    tests/reliability/test_remote_checkpoint.py pins that it removes the copy.
    """
    quick = tracker.retry.within(5.0)
    deleted = 0
    for run_id in run_ids:
        try:
            if not quick("list checkpoint", partial(tracker.client.list_artifacts, run_id, ARTIFACT_DIR)):
                continue
            repo = _artifact_repository(tracker, run_id, quick)
            quick("delete checkpoint", partial(repo.delete_artifacts, ARTIFACT_DIR))
            deleted += 1
        except Exception as exc:  # noqa: BLE001 - a leftover copy costs storage, not correctness
            log.warning("could not delete the checkpoint copy in MLflow run %s: %s", run_id,
                        mask_secrets(str(exc))[:200])
    return deleted
