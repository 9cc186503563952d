"""Issue 15.2: epoch checkpoints that travel through the MLflow tracking server.

* in process, on the real PostgreSQL-backed MLflow server with basic auth: each epoch's checkpoint is copied into
  the trial run (one copy: the epoch's weights, then the state.json that names them), a fresh directory gets it
  back and resumes from it, it is deleted on request, and a server that is down costs the upload, never the
  training (a kill halfway through an upload: test_checkpoint_half_upload.py);
* two `siamese-sweep worker` processes in two directories that share nothing but PostgreSQL (Optuna) and the
  MLflow server: the first is SIGKILLed mid-trial, the retry on the second resumes at the epoch the first
  uploaded and completes, and the copies are gone once it has.
"""
from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from sweeps import checkpoints
from sweeps.checkpoints import ARTIFACT_DIR, shared_through_mlflow

from .harness import (
    ROOMY_EPOCHS,
    Proc,
    S,
    check_sweep_invariants,
    clean_env,
    load_study,
    spec_dict,
    try_load_study,
    wait_for,
    write_spec,
)

pytestmark = [pytest.mark.postgres]

EPOCHS = 3
# The two worker tests stop a trial once epoch 2 is saved and need it unfinished then (ROOMY_EPOCHS says why 12)
STOPPED = ROOMY_EPOCHS
STOPPED_EPOCHS = STOPPED["epochs"]


def test_auto_shares_checkpoints_only_through_a_tracking_server() -> None:
    assert shared_through_mlflow("auto", "http://mlflow.lan:5000")
    assert shared_through_mlflow("auto", "https://mlflow.example.org/base")
    assert not shared_through_mlflow("auto", "sqlite:///mlflow.db")
    assert not shared_through_mlflow("auto", "/tmp/mlruns")
    assert shared_through_mlflow("mlflow", "sqlite:///mlflow.db")
    assert not shared_through_mlflow("local", "http://mlflow.lan:5000")


def test_a_bad_checkpoints_mode_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import subprocess

    from .harness import cli

    spec = write_spec(tmp_path / "spec.yaml", spec_dict(tmp_path, tracking={"checkpoints": "s3"}))
    proc = subprocess.run(cli() + ["run", str(spec), "--storage", f"sqlite:///{tmp_path}/optuna.db"],
                          cwd=tmp_path, env=clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "tracking.checkpoints" in proc.stderr
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.fixture
def tracker(mlflow_server_pg, mlflow_env):
    from sweeps.tracking import Tracker

    return Tracker(mlflow_server_pg.url)


def test_each_epoch_is_copied_to_the_run_then_fetched_resumed_and_deleted(
        tracker, make_tiny, digits_data, tmp_path: Path) -> None:
    from siamese_core import TrainConfig
    from siamese_core.training import train
    from sweeps.callbacks import CheckpointUploader
    from sweeps.tracking import TrialRun

    exp = tracker.experiment_id("ckpt-travel-unit")
    run = TrialRun(tracker, tracker.client.create_run(exp).info.run_id)
    config = TrainConfig.from_dict(make_tiny(epochs=EPOCHS, diagnostics={"enabled": False},
                                             pairs={"pairs_per_epoch": 384, "val_pairs": 120, "test_pairs": 120}))
    uploader = CheckpointUploader(run)
    first = train(config, data=digits_data, checkpoint_dir=tmp_path / "here", callbacks=[uploader])
    assert first.resumed_from_epoch == 0 and uploader.uploaded == [1, 2, 3]

    # one copy: state.json overwritten every epoch, naming that epoch's weights; earlier epochs' weights deleted
    listed = tracker.client.list_artifacts(run.run_id, ARTIFACT_DIR)
    assert sorted(Path(f.path).name for f in listed) == [checkpoints.weights_artifact(EPOCHS), "state.json"]
    state = json.loads(Path(tracker.client.download_artifacts(run.run_id, f"{ARTIFACT_DIR}/state.json",
                                                              str(tmp_path / "peek"))).read_text())
    assert state["next_epoch"] == EPOCHS and len(state["history"]) == EPOCHS

    # another machine: nothing local, so the copy comes down and the run resumes from it (checksum verified)
    elsewhere = tmp_path / "elsewhere"
    assert checkpoints.fetch(tracker, ["no-such-run", run.run_id], elsewhere) == EPOCHS
    resumed = train(config, data=digits_data, checkpoint_dir=elsewhere)
    assert resumed.resumed_from_epoch == EPOCHS
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in first.history]
    # a local checkpoint that is as far along is kept (nothing downloaded over it)
    before = (elsewhere / "state.json").stat().st_mtime_ns
    assert checkpoints.fetch(tracker, [run.run_id], elsewhere) == EPOCHS
    assert (elsewhere / "state.json").stat().st_mtime_ns == before
    # one that fails its checksum gives way to the copy of the same epoch (it was kept, then discarded by the
    # retry, which trained from epoch 0: the review of checkpoint resume)
    weights = elsewhere / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert checkpoints.fetch(tracker, [run.run_id], elsewhere) == EPOCHS
    assert train(config, data=digits_data, checkpoint_dir=elsewhere).resumed_from_epoch == EPOCHS

    # deleting through the artifact repository (no MlflowClient call exists) really removes the copy
    assert checkpoints.delete(tracker, [run.run_id]) == 1
    assert tracker.client.list_artifacts(run.run_id, ARTIFACT_DIR) == []
    assert checkpoints.delete(tracker, [run.run_id]) == 0
    assert checkpoints.fetch(tracker, [run.run_id], tmp_path / "empty") == 0


def test_the_copy_interval_keeps_short_epochs_local_until_a_stop_copies_the_newest(
        tracker, make_tiny, digits_data, tmp_path: Path) -> None:
    from siamese_core import TrainConfig
    from siamese_core.training import train
    from sweeps.callbacks import CheckpointUploader
    from sweeps.tracking import TrialRun

    exp = tracker.experiment_id("ckpt-travel-interval")
    config = TrainConfig.from_dict(make_tiny(epochs=EPOCHS, diagnostics={"enabled": False},
                                             pairs={"pairs_per_epoch": 256, "val_pairs": 120, "test_pairs": 120}))
    # a clock that advances 40 s per reading: with a 60 s interval every second epoch is copied, whichever loader
    # (the memory loader calls fit once an epoch: a reset in on_train_begin would never copy anything)
    for loader in ("memory", "tfdata", "custom"):
        ticks = iter(range(0, 10_000, 40))
        run = TrialRun(tracker, tracker.client.create_run(exp).info.run_id)
        paced = CheckpointUploader(run, every_s=60, clock=lambda ticks=ticks: float(next(ticks)))
        train(TrainConfig.from_dict({**config.to_dict(), "loader": loader}), data=digits_data,
              checkpoint_dir=tmp_path / f"paced-{loader}", callbacks=[paced])
        assert paced.uploaded == [2], loader

    # the default interval and epochs of a second: nothing leaves the machine while the trial trains...
    run = TrialRun(tracker, tracker.client.create_run(exp).info.run_id)
    uploader = CheckpointUploader(run, every_s=60)
    train(config, data=digits_data, checkpoint_dir=tmp_path / "here", callbacks=[uploader])
    assert uploader.uploaded == [] and tracker.client.list_artifacts(run.run_id, ARTIFACT_DIR) == []
    # ...and a stop copies the newest epoch, which another machine then resumes from
    uploader.copy_latest()
    assert uploader.uploaded == [EPOCHS]
    assert checkpoints.fetch(tracker, [run.run_id], tmp_path / "elsewhere") == EPOCHS
    uploader.copy_latest()  # nothing newer: no second copy
    assert uploader.uploaded == [EPOCHS]


def test_a_tracking_server_that_is_down_costs_the_upload_not_the_training(
        make_tiny, digits_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from siamese_core import TrainConfig
    from siamese_core.training import train
    from sweeps.callbacks import CheckpointUploader
    from sweeps.tracking import Tracker, TrialRun

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as held:  # bound, never listening: connections are refused while the test runs
        held.bind(("127.0.0.1", 0))
        down = Tracker(f"http://127.0.0.1:{held.getsockname()[1]}")
        uploader = CheckpointUploader(TrialRun(down, "0" * 32))
        config = TrainConfig.from_dict(make_tiny(epochs=2, diagnostics={"enabled": False},
                                                 pairs={"pairs_per_epoch": 256, "val_pairs": 120,
                                                        "test_pairs": 120}))
        start = time.monotonic()
        result = train(config, data=digits_data, checkpoint_dir=tmp_path / "ckpt", callbacks=[uploader])
    assert len(result.history) == 2 and uploader.uploaded == []
    assert (tmp_path / "ckpt" / "state.json").is_file()  # the local checkpoint is still written
    assert time.monotonic() - start < 2 * (checkpoints.UPLOAD_BUDGET_S + 10)


# ---------------------------------------------------------------- two workers, two directories, two servers
def _uploaded_epoch(client, study, tmp: Path) -> tuple[object, int] | None:
    """The RUNNING trial and the epoch its uploaded checkpoint resumes at, once that is >= 2."""
    for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if not run_id:
            continue
        try:
            if not client.list_artifacts(run_id, ARTIFACT_DIR):
                continue
            got = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/state.json", str(tmp / f"poll-{time.time()}"))
            epoch = int(json.loads(Path(got).read_text())["next_epoch"])
        except Exception:  # noqa: BLE001 - mid-upload
            continue
        if epoch >= 2:
            return t, epoch
    return None


@pytest.mark.slow
def test_a_trial_killed_on_one_machine_resumes_on_another_from_mlflow(
        postgres_server, mlflow_server_pg, mlflow_env, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    storage = postgres_server.create_database("optuna_ckpt_travel")
    name = "travel"
    epochs = STOPPED_EPOCHS
    env = clean_env(OPTUNA_STORAGE=storage, **mlflow_server_pg.env())
    machines = {}
    for m in ("a", "b"):
        home = tmp_path / m
        home.mkdir()
        # every epoch copied (the default copies at most once a minute: these epochs take under a second)
        data = spec_dict(home, name=name, trials=1, base=STOPPED, study={"heartbeat_interval": 1,
                                                                           "grace_period": 4},
                         tracking={"checkpoint_copy_seconds": 0})
        data["study"].pop("checkpoint_dir")  # the default, relative: .siamese-sweep/checkpoints in each directory
        machines[m] = (home, write_spec(home / "spec.yaml", data))  # tracking.checkpoints: auto (http server)
    client = MlflowClient(tracking_uri=mlflow_server_pg.url)
    args = ["worker", "spec.yaml", "--study", name, "--threads", "1"]
    first = Proc(args, machines["a"][0], env, name="a").start()
    second = None
    try:
        # one storage object for all polls (a new one per poll would use up PostgreSQL's connection slots)
        study = wait_for(lambda: try_load_study(storage, name), timeout=240, what="the study", procs=[first])
        wait_for(lambda: study.get_trials(deepcopy=False, states=(S.RUNNING,)), timeout=240,
                 what="the first worker's trial", procs=[first])
        second = Proc(args, machines["b"][0], env, name="b").start()  # joins; the budget is taken, so it waits
        victim, _ = wait_for(lambda: _uploaded_epoch(client, study, tmp_path), timeout=300,
                             what="a checkpoint of epoch 2 in the trial's run", procs=[first, second])
        first.signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
        # what the killed worker had uploaded when it died (it may have finished another epoch meanwhile)
        got = client.download_artifacts(victim.user_attrs["mlflow_run_id"], f"{ARTIFACT_DIR}/state.json",
                                        str(tmp_path / "at-kill"))
        uploaded = json.loads(Path(got).read_text())["next_epoch"]
        assert 2 <= uploaded < epochs
        assert second.wait(420) == 0, second.stderr[-3000:]
    finally:
        first.kill()
        if second is not None:
            second.kill()

    study = load_study(storage, name)
    seen = check_sweep_invariants(study, client, epochs=epochs, budget=1)
    trials = {t.number: t for t in study.trials}
    assert trials[victim.number].state == S.FAIL
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == S.COMPLETE and retry.params == victim.params
    assert retry.user_attrs["worker"].rsplit(":", 1)[1] == str(second.pid)
    # resumed on the second machine from the checkpoint the first one uploaded, not from scratch
    assert retry.user_attrs["resumed_from_epoch"] == uploaded
    retry_run = seen["runs"][retry.number]
    assert retry_run.data.tags["siamese_sweep.resumed_from_epoch"] == str(uploaded)
    assert retry_run.data.tags["siamese_sweep.retry_of"] == str(victim.number)
    assert list((machines["a"][0] / ".siamese-sweep").glob("**/state.json")), "the killed worker's local copy"
    # once the trial is COMPLETE, neither attempt's run keeps a checkpoint copy
    for n in (victim.number, retry.number):
        assert client.list_artifacts(seen["runs"][n].info.run_id, ARTIFACT_DIR) == []
    assert "could not copy the epoch checkpoint" not in second.stderr


def _local_epoch(home: Path) -> int:
    """The epoch the newest local checkpoint under `home` resumes at (0: none yet, or mid-write)."""
    from siamese_core.checkpoint import saved_epoch

    return max([0] + [saved_epoch(state.parent) for state in home.glob(".siamese-sweep/checkpoints/**/state.json")])


@pytest.mark.slow
def test_a_worker_stopped_by_sigterm_copies_its_newest_epoch_for_the_retry(
        postgres_server, mlflow_server_pg, mlflow_env, tmp_path: Path) -> None:
    """With the default copy interval (60 s) these few-second epochs stay local while the trial trains; the
    SIGTERM that stops the worker (a preemption) copies the newest one, so a retry elsewhere resumes there."""
    from mlflow import MlflowClient

    storage = postgres_server.create_database("optuna_ckpt_stop")
    name = "stopped"
    env = clean_env(OPTUNA_STORAGE=storage, **mlflow_server_pg.env())
    data = spec_dict(tmp_path, name=name, trials=1, base=STOPPED)
    data["study"].pop("checkpoint_dir")
    write_spec(tmp_path / "spec.yaml", data)
    client = MlflowClient(tracking_uri=mlflow_server_pg.url)
    worker = Proc(["worker", "spec.yaml", "--study", name, "--threads", "1"], tmp_path, env, name="w").start()
    try:
        study = wait_for(lambda: try_load_study(storage, name), timeout=240, what="the study", procs=[worker])
        wait_for(lambda: _local_epoch(tmp_path) >= 2, timeout=300, what="a local checkpoint of epoch 2",
                 procs=[worker])
        (trial,) = study.get_trials(deepcopy=False, states=(S.RUNNING,))
        run_id = trial.user_attrs["mlflow_run_id"]
        assert client.list_artifacts(run_id, ARTIFACT_DIR) == [], "copied before the interval was up"
        worker.signal(signal.SIGTERM)
        assert worker.wait(120) == 130, worker.stderr[-3000:]
    finally:
        worker.kill()
    stopped_at = _local_epoch(tmp_path)
    got = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/state.json", str(tmp_path / "copied"))
    assert json.loads(Path(got).read_text())["next_epoch"] == stopped_at >= 2
    (queued,) = [t for t in load_study(storage, name).trials if t.system_attrs.get("failed_trial") == trial.number]
    assert queued.state == S.WAITING
