"""Issue 11.4: with ``finish_in_background`` a trial's plots, files and model are recorded by a helper process
at idle priority that never imports TensorFlow, and what it logs is what the worker would have logged in line.

A real trained model (digits), a real SQLite MLflow store, the real helper process.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from sweeps import modelio, names, recorder
from sweeps.errors import TrackingUnavailable
from sweeps.recorder import Recorder
from sweeps.serving import load_model_dir
from sweeps.tracking import Tracker

TRIAL_FILES = {"config.yaml", "diagnostics.json", "curves.png", "distance_histogram.png", "embeddings_pca.png"}


@pytest.fixture(scope="module")
def trained(make_tiny: Any, digits_data: Any) -> Any:
    from siamese_core import TrainConfig
    from siamese_core.training import train

    return train(TrainConfig.from_dict(make_tiny(epochs=2)), data=digits_data)


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    return uri, client, client.create_experiment("recorder", artifact_location=str(tmp_path / "artifacts"))


def _stage(trained: Any, client: MlflowClient, exp: str, number: int) -> recorder.Job:
    run_id = client.create_run(exp).info.run_id
    return recorder.stage(trained, number, run_id=run_id, experiment_id=exp, plots=True,
                          model_name=names.logged_model_name(number), step=len(trained.history))


def _model_dir(tracking_uri: str, model_uri: str, dst: Path) -> Path:
    from sweeps.registry import download_model

    return Path(download_model(model_uri, tracking_uri=tracking_uri, dst=str(dst)))


def test_the_helper_runs_at_idle_priority_without_tensorflow_and_logs_what_in_line_logs(
        trained: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, client, exp = store
    job = _stage(trained, client, exp, 0)
    helper_tmp = tmp_path / "helper-tmp"  # the helper's $TMPDIR
    helper_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(helper_tmp))
    rec = Recorder(Tracker(uri))
    try:
        rec.submit(job)
        helper_uri = rec.result(job)
        pid = rec.pid
        assert pid is not None and rec.priority == "idle"
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.getsid(pid) == pid  # its own session: a Ctrl-C for the worker does not cut a job short
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "/matplotlib/" in maps and "tensorflow" not in maps  # it drew, and never loaded TensorFlow
        assert uri.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()  # the URI came through stdin
    finally:
        rec.close()
    assert rec.pid is None and not job.folder.exists()
    assert list(helper_tmp.glob("siamese-*")) == []  # it leaves through os._exit: its scratch folder is removed first
    assert helper_uri is not None and helper_uri.startswith("models:/")
    assert {f.path for f in client.list_artifacts(job.run_id)} == TRIAL_FILES

    # the same trained model logged in line, in the worker's process
    inline_run = client.create_run(exp).info.run_id
    inline_uri = modelio.log_trial_model(client, run_id=inline_run, experiment_id=exp, result=trained,
                                         step=len(trained.history), name="inline")
    dirs = [_model_dir(uri, u, tmp_path / name) for u, name in ((helper_uri, "helper"), (inline_uri, "inline"))]
    mlmodels = [yaml.safe_load((d / "MLmodel").read_text()) for d in dirs]
    for m in mlmodels:  # where MLflow copied each artifact from: a temporary folder, another one each time
        for artifact in m["flavors"]["python_function"]["artifacts"].values():
            artifact.pop("uri")
    for key in ("flavors", "signature", "metadata", "saved_input_example_info"):
        assert mlmodels[0][key] == mlmodels[1][key], key
    assert sorted(p.relative_to(dirs[0]).as_posix() for p in dirs[0].rglob("*")) == \
        sorted(p.relative_to(dirs[1]).as_posix() for p in dirs[1].rglob("*"))
    pairs = _pairs(trained)
    out = [load_model_dir(d)[0].predict(None, pairs)["distance"].to_numpy() for d in dirs]
    np.testing.assert_array_equal(out[0], out[1])
    logged = client.get_logged_model(helper_uri.split("/")[-1])
    assert logged.source_run_id == job.run_id and logged.name == names.logged_model_name(0)


def _pairs(trained: Any) -> Any:
    import pandas as pd

    shape = tuple(int(d) for d in trained.model.inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 17, shape).tolist() for _ in range(4)]  # digits' raw pixels (floats in 0-1 are refused)
    return pd.DataFrame({"left": rows, "right": rows[::-1]})


def test_a_job_whose_helper_died_is_recorded_in_the_worker_and_the_next_job_gets_a_new_helper(
        trained: Any, store: Any, caplog: pytest.LogCaptureFixture) -> None:
    """kill -9 of the helper loses nothing: the staged job is recorded in the worker's process instead (before,
    the trained trial failed as `RecordingFailed`), and a model the dead helper left PENDING is marked FAILED."""
    from mlflow.entities import LoggedModelStatus

    uri, client, exp = store
    rec = Recorder(Tracker(uri))
    try:
        rec.start()
        assert rec.priority == ""  # start() did not wait for the helper's hello: it is read with the first answer
        first = rec.pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)  # hold it, so the job is in flight when it dies
        job = _stage(trained, client, exp, 1)
        rec.submit(job)
        # what a helper killed half-way through logging the model leaves behind: a LoggedModel never finalized
        stray = client.create_logged_model(exp, name=job.model_name, source_run_id=job.run_id)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while rec.pid == first and time.monotonic() < deadline:  # dead, as `submit` will see it
            time.sleep(0.05)
        again = _stage(trained, client, exp, 2)
        rec.submit(again)  # before the lost job's answer was asked for: a new helper takes it
        assert rec.pid not in (None, first)
        outcome: list[Any] = []

        def ask() -> None:
            try:
                outcome.append(rec.result(job))
            except BaseException as exc:  # noqa: BLE001 - checked below
                outcome.append(exc)
        asking = threading.Thread(target=ask, daemon=True)
        with caplog.at_level("WARNING", logger="sweeps.recorder"):
            asking.start()
            asking.join(timeout=120)  # the new helper never had job 1: its answer must not be waited for
        assert not asking.is_alive(), "the wait for a dead helper's answer hung"
        assert isinstance(outcome[0], str) and outcome[0].startswith("models:/"), outcome
        assert "before trial 1 was recorded; recording it in the worker's process" in caplog.text
        model = client.get_logged_model(outcome[0].split("/")[-1])
        assert model.status == LoggedModelStatus.READY and model.source_run_id == job.run_id
        assert client.get_logged_model(stray.model_id).status == LoggedModelStatus.FAILED
        assert {f.path for f in client.list_artifacts(job.run_id)} == TRIAL_FILES
        assert not job.folder.exists()
        assert rec.result(again) is not None
    finally:
        rec.close()


def test_a_helper_whose_worker_died_logs_no_model_of_its_trial(trained: Any, store: Any) -> None:
    """A worker killed while its helper recorded a trial: the trial failed (its heartbeat stopped) and was
    retried, its run ended KILLED, yet the helper went on and left a READY model of it beside the retry's own
    (session 47's review). The worker here is a child process that sends the job and dies at once."""
    import json
    import subprocess
    import sys

    uri, client, exp = store
    first, job = _stage(trained, client, exp, 6), _stage(trained, client, exp, 7)
    worker = ("import json, os, sys\nfrom sweeps.recorder import Job, Recorder\nfrom sweeps.tracking import Tracker\n"
              "rec = Recorder(Tracker(sys.argv[1]))\njobs = [Job.from_message(json.loads(a)) for a in sys.argv[2:]]\n"
              "rec.submit(jobs[0])\nprint(rec.result(jobs[0]), flush=True)\n"  # the helper is at work
              "rec.submit(jobs[1])\nprint(rec.pid, flush=True)\nos._exit(0)\n")  # killed while it records
    done = subprocess.run([sys.executable, "-c", worker, uri, json.dumps(first.message()), json.dumps(job.message())],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    recorded, helper = done.stdout.split()[-2], int(done.stdout.split()[-1])
    deadline = time.monotonic() + 120
    while _alive(helper) and time.monotonic() < deadline:  # it works on, then sees its stdin's end
        time.sleep(0.1)
    assert not _alive(helper)
    assert [m.model_id for m in client.search_logged_models([exp])] == [recorded.split("/")[-1]]


def _alive(pid: int) -> bool:
    """Running, not a zombie no reaper has collected yet (a container's pid 1 may not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_helper_that_hangs_is_killed_and_its_trial_recorded_in_the_worker(
        trained: Any, store: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped helper (SIGSTOP standing in for a deadlock or a mount that never answers) held the sweep for
    good, with no message: the worker's Heartbeat kept both trials alive, so no worker could fail them."""
    monkeypatch.setattr(recorder, "HUNG_AFTER_S", 3.0)
    monkeypatch.setattr(recorder, "POLL_S", 0.2)
    uri, client, exp = store
    rec = Recorder(Tracker(uri))
    try:
        rec.start()
        hung = rec.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        job = _stage(trained, client, exp, 1)
        rec.submit(job)
        start = time.monotonic()
        with caplog.at_level("WARNING", logger="sweeps.recorder"):
            uri_of_model = rec.result(job)
        assert 3.0 <= time.monotonic() - start < 90
        assert uri_of_model is not None and uri_of_model.startswith("models:/")
        assert f"the recording helper (pid {hung}) has neither answered nor used CPU for" in caplog.text
        assert {f.path for f in client.list_artifacts(job.run_id)} == TRIAL_FILES
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)  # killed and reaped
        again = _stage(trained, client, exp, 2)
        rec.submit(again)  # a new helper
        assert rec.pid not in (None, hung) and rec.result(again) is not None
    finally:
        rec.close()


def test_a_helper_that_is_slow_but_working_is_waited_for(trained: Any, store: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound is on a helper that uses no CPU: one that is busy (at idle priority, beside training) is waited
    for however long it takes."""
    monkeypatch.setattr(recorder, "HUNG_AFTER_S", 0.5)
    monkeypatch.setattr(recorder, "POLL_S", 0.1)
    ticks = iter(range(10**6))
    monkeypatch.setattr(recorder, "_cpu_ticks", lambda pid: next(ticks))  # always using CPU
    uri, client, exp = store
    rec = Recorder(Tracker(uri))
    try:
        job = _stage(trained, client, exp, 1)
        rec.submit(job)  # the helper's imports and the recording take seconds: many 0.5 s bounds
        first = rec.pid
        assert rec.result(job) is not None and rec.pid == first  # answered by the helper, not killed
    finally:
        rec.close()


def test_a_helper_that_died_after_logging_the_model_but_before_answering_leaves_one_model(
        trained: Any, store: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The window between finalizing the model READY and writing the answer: the worker takes that model
    (before, it recorded the job again and the run had two READY models, the trial pointing at the second)."""
    uri, client, exp = store
    rec = Recorder(Tracker(uri))
    try:
        rec.start()
        helper = rec.pid
        assert helper is not None
        os.kill(helper, signal.SIGSTOP)
        job = _stage(trained, client, exp, 4)
        rec.submit(job)
        done = recorder.record(job, Tracker(uri))  # what the helper did before it was killed
        os.kill(helper, signal.SIGKILL)
        with caplog.at_level("WARNING", logger="sweeps.recorder"):
            assert rec.result(job) == done
        assert "had logged trial 4's model before it exited" in caplog.text
        models = client.search_logged_models([exp], filter_string=f"source_run_id = '{job.run_id}'")
        assert [m.model_id for m in models] == [done.split("/")[-1]]
        outputs = client.get_run(job.run_id).outputs
        assert outputs is not None and [o.model_id for o in outputs.model_outputs] == [models[0].model_id]
        assert {f.path for f in client.list_artifacts(job.run_id)} == TRIAL_FILES
    finally:
        rec.close()


def test_an_error_in_the_helper_is_raised_in_the_worker_as_the_in_line_error_would_be(
        trained: Any, store: Any) -> None:
    uri, client, exp = store
    job = _stage(trained, client, exp, 3)
    lost = recorder.Job(job.number, job.folder, "0" * 32, exp, True, None, job.step)  # a run that never existed
    rec = Recorder(Tracker(uri))
    try:
        rec.submit(lost)
        with pytest.raises(TrackingUnavailable, match="recording trial 3: .*log artifacts"):
            rec.result(lost)
    finally:
        rec.close()
    assert not job.folder.exists()
