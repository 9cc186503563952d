"""Epoch checkpoints that travel: a copy in the trial's MLflow run, so a retry on another machine resumes.

Workers on different machines share only the Optuna storage and the MLflow tracking server. With
``tracking.checkpoints: mlflow`` (or ``auto`` and an ``http(s)://`` tracking URI) every epoch's local
checkpoint (`siamese_core.checkpoint`) is also uploaded to the trial's run under
``siamese_sweep_checkpoint/`` — overwritten each epoch, so a run holds one checkpoint, never one per epoch.
A retry that finds no (or an older) local checkpoint downloads the newest one among its earlier attempts'
runs (Optuna's ``retry_history``) and resumes from it; `restore` still checks the config fingerprint and the
weights' SHA-256, so a half-uploaded pair (new weights, old ``state.json``) means a clean start, never a wrong
resume. When the trial ends for good (COMPLETE, PRUNED, its own failure) the copies of every attempt are
deleted; a trial whose retry never runs (``max_retries`` used up) keeps its one copy.

Cost: the upload runs in the training thread after each epoch. A checkpoint is about 12 bytes per parameter
(float32 weights plus Adam's two moments). Measured against a local ``mlflow server`` (PostgreSQL backend, basic
auth, proxied artifacts; medians of 10 uploads, two runs on a busy 2-core machine,
``python benchmarks/checkpoint_upload.py``): the default encoder (28 k parameters) is 0.40 MB and uploads in
0.03-0.06 s; a conv encoder of depth 4 and width 128 (6.5 M parameters) is 78 MB and uploads in 1.1-2.1 s. A
retry's download (list, then two files) took 0.7-1.3 s and 1.8-5.1 s for those two. Over a real network the
large case scales with bandwidth: set ``tracking.checkpoints: local`` when epochs are short and checkpoints large.

An upload that fails (server down, refused) is logged and skipped: the next epoch overwrites it anyway, and
the trial never fails for it.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from . import names
from .secrets import mask_secrets
from .tracking import Retry, Tracker

log = logging.getLogger(__name__)

MODES = ("auto", "local", "mlflow")
ARTIFACT_DIR = names.ARTIFACT_RESUME_CHECKPOINT
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


def upload(tracker: Tracker, run_id: str, directory: Path) -> float | None:
    """Copy the checkpoint in `directory` to the run (weights first, state last); returns the seconds it took,
    None when it failed (logged; never raised)."""
    from siamese_core.checkpoint import STATE, WEIGHTS  # Keras: only once a trial runs

    start = time.perf_counter()
    quick = Retry(budget_s=UPLOAD_BUDGET_S, sleep=tracker.retry.sleep)
    try:
        for name in (WEIGHTS, STATE):
            quick("upload checkpoint", partial(tracker.client.log_artifact, run_id, str(directory / name),
                                               ARTIFACT_DIR))
    except Exception as exc:  # noqa: BLE001 - a missed upload costs a retry elsewhere some epochs, not the trial
        log.warning("could not copy the epoch checkpoint to MLflow run %s (%s); a retry on another machine "
                    "would resume from an earlier epoch", run_id, mask_secrets(str(exc))[:200])
        return None
    return time.perf_counter() - start


def fetch(tracker: Tracker, run_ids: Iterable[str], directory: Path) -> int:
    """Put the newest checkpoint among `run_ids`' copies into `directory` if it is ahead of the one there.

    Returns the epoch the checkpoint now in `directory` resumes at (0: none). Errors are logged: the retry then
    uses what it has (its local checkpoint, or none).
    """
    from siamese_core.checkpoint import STATE, WEIGHTS, saved_epoch

    from .modelio import quiet_artifacts

    have = saved_epoch(directory)
    quick = Retry(budget_s=FETCH_BUDGET_S, sleep=tracker.retry.sleep)

    def download(run_id: str, name: str, tmp: str) -> Path:
        dst = os.path.join(tmp, run_id, name.split(".")[0])
        return Path(quick(f"download checkpoint {name}", lambda: tracker.client.download_artifacts(
            run_id, f"{ARTIFACT_DIR}/{name}", dst)))

    with tempfile.TemporaryDirectory(prefix="siamese-ckpt-") as tmp, quiet_artifacts():
        best: tuple[int, str, Path] | None = None
        for run_id in run_ids:
            try:
                listed = {Path(f.path).name for f in quick("list checkpoint", partial(
                    tracker.client.list_artifacts, run_id, ARTIFACT_DIR))}
                if not {WEIGHTS, STATE} <= listed:
                    continue
                state = download(run_id, STATE, tmp)
            except Exception as exc:  # noqa: BLE001 - one unreadable copy must not hide the others
                log.warning("could not read the checkpoint of MLflow run %s: %s", run_id, mask_secrets(str(exc))[:200])
                continue
            epoch = saved_epoch(state.parent)
            if epoch > have and (best is None or epoch > best[0]):
                best = (epoch, run_id, state)
        if best is None:
            return have
        epoch, run_id, state = best
        try:
            weights = download(run_id, WEIGHTS, tmp)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not download the checkpoint of MLflow run %s: %s", run_id,
                        mask_secrets(str(exc))[:200])
            return have
        directory.mkdir(parents=True, exist_ok=True)
        for name, src in ((WEIGHTS, weights), (STATE, state)):  # as `checkpoint.save`: renamed into place, state last
            part = directory / f".tmp-{os.getpid()}.{name}"
            shutil.copyfile(src, part)
            os.replace(part, directory / name)
    log.info("downloaded the epoch-%d checkpoint of MLflow run %s", epoch, run_id)
    return epoch


def delete(tracker: Tracker, run_ids: Iterable[str]) -> int:
    """Delete the checkpoint copies of `run_ids` (best-effort); returns how many runs had one.

    MlflowClient has no call that deletes artifacts; the run's artifact repository has one
    (``ArtifactRepository.delete_artifacts``, used by MLflow's own garbage collection). Through a tracking
    server with proxied artifacts it is an HTTP DELETE on the server's artifact endpoint.
    tests/reliability/test_remote_checkpoint.py pins that it removes the copy.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    quick = Retry(budget_s=5.0, sleep=tracker.retry.sleep)
    deleted = 0
    for run_id in run_ids:
        try:
            if not quick("list checkpoint", partial(tracker.client.list_artifacts, run_id, ARTIFACT_DIR)):
                continue
            uri = quick("get run", partial(tracker.client.get_run, run_id)).info.artifact_uri
            repo = get_artifact_repository(uri, tracking_uri=tracker.uri)
            quick("delete checkpoint", partial(repo.delete_artifacts, ARTIFACT_DIR))
            deleted += 1
        except Exception as exc:  # noqa: BLE001 - a leftover copy costs storage, not correctness
            log.warning("could not delete the checkpoint copy in MLflow run %s: %s", run_id,
                        mask_secrets(str(exc))[:200])
    return deleted
