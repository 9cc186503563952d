"""Issue 11.4: a trial's recording (plots, model, final metrics, run end, Optuna's tell) runs in the background
while the next trial trains (plots and model in an idle-priority helper process: tests/sweeps/test_recorder.py),
and still "Optuna COMPLETE => MLflow run complete"; sweeps stay reproducible.

Real sweeps on digits with real SQLite stores; the heartbeat test uses a real RDB storage and Optuna's own
stale-trial check.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweeps import names
from sweeps.finisher import Deferred, Finisher, Heartbeat

from .conftest import make_spec_dict

S = optuna.trial.TrialState


def _sweep(tmp_path: Path, *, background: bool, trials: int = 4, **sections: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Run a sweep through `run_worker`; at each trial's tell, record what MLflow and Optuna say right then."""
    from mlflow import MlflowClient

    from sweeps.spec import spec_from_dict
    from sweeps.study import open_study
    from sweeps.tracking import Tracker
    from sweeps.worker import run_worker

    spec = spec_from_dict(make_spec_dict(study={"trials": trials, **sections.pop("study", {})},
                                         tracking={"finish_in_background": background}, **sections))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    opened = open_study(spec, storage_url=f"sqlite:///{tmp_path}/optuna.db", study_name="fin")
    client = MlflowClient(uri)
    seen: list[dict[str, Any]] = []

    def on_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        run = client.get_run(frozen.user_attrs[names.TRIAL_ATTR_RUN_ID])
        seen.append({"number": frozen.number, "state": frozen.state, "run_status": run.info.status,
                     "model_uri": frozen.user_attrs.get(names.TRIAL_ATTR_MODEL_URI),
                     "artifacts": {f.path for f in client.list_artifacts(run.info.run_id)},
                     "running": [t.number for t in study.get_trials(deepcopy=False, states=(S.RUNNING,))],
                     "idle_helpers": len(_idle_children())})

    run_worker(spec, opened, Tracker(uri), on_trial=on_trial, checkpoint_root=tmp_path / "ckpt")
    return opened.study, seen


def _idle_children() -> list[int]:
    """This process's children that run under SCHED_IDLE (the recording helper of `sweeps.recorder`). A thread
    or a child may end between the listing and the read (a thread's ``children`` file was gone once under
    pytest-xdist, failing a trial of the sweep under test): those are skipped."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    idle = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if os.sched_getscheduler(pid) == os.SCHED_IDLE:
                idle.append(pid)
    return idle


def test_a_complete_trial_is_told_after_its_run_is_finished_while_the_next_trial_trains(tmp_path: Path) -> None:
    study, seen = _sweep(tmp_path, background=True)
    assert [s["state"] for s in seen] == [S.COMPLETE] * 4
    for s in seen:  # at the moment Optuna says COMPLETE, the run is FINISHED with its model and plots
        assert s["run_status"] == "FINISHED", s
        assert s["model_uri"] and {"curves.png", "distance_histogram.png"} <= s["artifacts"], s
    # overlap: every trial but the last was recorded while the next one was already running in this worker
    assert [s["running"] for s in seen] == [[1], [2], [3], []]
    # the plots and the model were made by one helper process at idle priority, gone with the worker
    assert [s["idle_helpers"] for s in seen] == [1, 1, 1, 1] and _idle_children() == []


def test_in_line_recording_tells_each_trial_before_the_next_is_asked(tmp_path: Path) -> None:
    study, seen = _sweep(tmp_path, background=False, trials=3)
    assert [s["running"] for s in seen] == [[], [], []] and {s["idle_helpers"] for s in seen} == {0}
    assert all(s["run_status"] == "FINISHED" for s in seen)


def test_the_same_seed_gives_the_same_sweep_with_background_recording(tmp_path: Path) -> None:
    """The sampler and the pruner see the same trials whatever a recording takes: asked before the previous
    trial's recording starts, pruned only once it is told."""
    sections = {"study": {"pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                          "sampler": {"type": "tpe", "seed": 3, "n_startup_trials": 2}},
                "search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 3e-1, "log": True},
                                 "loss.margin": {"type": "float", "low": 0.5, "high": 1.5}}}
    runs = []
    for i, background in enumerate((True, True, False)):
        (tmp_path / str(i)).mkdir()
        study, _ = _sweep(tmp_path / str(i), background=background, trials=5, **sections)
        runs.append([(t.number, t.state, t.params, t.values) for t in study.trials])
    assert runs[0] == runs[1]
    # and the same as recording in line: the sampler of each trial saw the trial just trained as it will be told
    # (`sweeps.finisher.LookAhead`), so TPE left its random start-up and weighed that trial at the same trials
    assert runs[0] == runs[2]


def test_a_trial_held_by_the_heartbeat_is_not_failed_as_stale(tmp_path: Path) -> None:
    """Pins Optuna's private storage and trial-id access in `Heartbeat`: a held trial beats, a released one
    goes stale and Optuna's own ``fail_stale_trials`` fails it."""
    from sweeps.storage import make_storage

    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1,
                                                     grace_period=2), study_name="hb")
    with pytest.warns(UserWarning, match="Heartbeat"):
        held, dropped = study.ask(), study.ask()
    with Heartbeat(study) as heartbeat:
        heartbeat.hold(held)
        heartbeat.hold(dropped)
        heartbeat.release(dropped)
        time.sleep(4.5)
        optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.trials if t.number in (held.number, dropped.number)}
    assert states == {held.number: S.RUNNING, dropped.number: S.FAIL}


def test_the_finisher_runs_one_job_at_a_time_and_hands_its_error_to_the_worker() -> None:
    finisher, order, inside = Finisher(), [], threading.Event()

    def slow() -> None:
        inside.set()
        time.sleep(0.3)
        order.append("first")

    finisher.submit(slow)
    inside.wait(5)
    assert finisher.busy
    finisher.submit(lambda: order.append("second"))  # waits for the first
    finisher.wait()
    assert order == ["first", "second"] and not finisher.busy

    def broken() -> None:
        raise RuntimeError("storage refused the tell")

    finisher.submit(broken)
    with pytest.raises(RuntimeError, match="refused the tell"):
        finisher.wait()
    finisher.wait()  # raised once


def test_stop_rules_read_the_values_of_a_trial_not_yet_told() -> None:
    from sweeps.stopping import StudyStop

    study = optuna.create_study(direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    stop = StudyStop(target=0.9)
    assert stop.decision(study) is None
    pending = Deferred(finish=lambda: 0.95, values=0.95).as_complete(trial)
    decision = stop.decision(study, assume=[pending])
    assert decision is not None and str(decision).startswith(f"target: trial {trial.number} reached 0.95")


def test_the_look_ahead_shows_a_running_trial_told_to_the_workers_thread_only_and_only_while_it_runs() -> None:
    from sweeps.finisher import LookAhead

    study = optuna.create_study(direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.1)
    trial.report(0.3, step=0)

    def complete() -> list[tuple[int, float | None, dict[int, float]]]:
        return [(t.number, t.value, t.intermediate_values)
                for t in study.get_trials(deepcopy=False, states=(S.COMPLETE,))]

    elsewhere: list[Any] = []
    with LookAhead(study) as look_ahead:
        assert complete() == [(1, 0.1, {})]  # nothing assumed: the storage as it is
        with LookAhead(study):  # another loop on the same study object: ours again when it ends
            pass
        assert vars(study)["_get_trials"] == look_ahead._get_trials
        look_ahead.assume(Deferred(finish=lambda: 0.9, values=0.9).as_complete(trial))
        assert complete() == [(0, 0.9, {0: 0.3}), (1, 0.1, {})]  # its reports as stored, the value it will have
        assert [t.state for t in study._get_trials(deepcopy=True, use_cache=True)] == [S.COMPLETE, S.COMPLETE]
        thread = threading.Thread(target=lambda: elsewhere.append(complete()))
        thread.start()
        thread.join()
        assert elsewhere == [[(1, 0.1, {})]]  # the finisher's thread (its tell, callbacks) reads the storage
        study.tell(trial, state=S.FAIL)  # its finish failed: shown as stored once told
        assert complete() == [(1, 0.1, {})]
    assert "_get_trials" not in vars(study)  # the study's own method again
    assert [t.state for t in study.get_trials(deepcopy=False)] == [S.FAIL, S.COMPLETE]


def test_the_reconcile_of_a_round_that_hands_a_finish_to_the_background_runs_there_after_it() -> None:
    """The worker's reconcile (an MLflow search and a read of every trial, 0.044 s a trial) left the critical path:
    in a round with a finish to hand over, it runs in the finisher's thread once that trial is told."""
    from sweeps.storage import ThreadLock
    from sweeps.worker import take_trials

    study = optuna.create_study()
    calls: list[tuple[str, int]] = []

    def reconcile() -> None:
        done = len(study.get_trials(deepcopy=False, states=(S.COMPLETE,)))
        calls.append((threading.current_thread().name, done))

    def objective(trial: optuna.Trial) -> Deferred:
        x = trial.suggest_float("x", 0, 1)
        return Deferred(lambda: x, x)

    finisher = Finisher()
    report = take_trials(study, ThreadLock("bg"), objective, default_budget=3, max_failures=2, poll_s=0.05,
                         under_lock=reconcile, finisher=finisher)
    assert report.budget_met and report.states == {"COMPLETE": 3}, report
    background = [done for name, done in calls if name == finisher.name]
    assert background == [1, 2, 3], calls  # each after the finish it followed: that trial was told
    assert all(name == threading.main_thread().name for name, _ in calls if name != finisher.name), calls


def test_the_study_plots_are_drawn_while_the_last_trial_is_recorded_and_used_by_the_parent_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The end of a background sweep was serial (wait for the last recording, then draw the study PNGs): now the
    worker's thread draws them while the helper records, for the study as it will be."""
    from mlflow import MlflowClient

    from sweeps import artifacts, importances, study_plots
    from sweeps.options import options_from
    from sweeps.runner import run_sweep
    from sweeps.spec import spec_from_dict

    # the fit is remembered per set of complete trials, process-wide: an earlier test's sweep of the same spec in
    # this process (same seed, same trials) left this one nothing to fit (under pytest-xdist's order)
    monkeypatch.setattr(importances, "_LAST", {})
    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    made: dict[str, list[tuple[str, bool, list[str]]]] = {}  # what -> (thread, drawn ahead, the stored states)
    ahead: list[bool] = []

    def spy(what: str, real: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            stored = optuna.load_study(study_name="ahead", storage=storage)
            made.setdefault(what, []).append((threading.current_thread().name, bool(ahead),
                                              [t.state.name for t in stored.get_trials(deepcopy=False)]))
            return real(*a, **k)
        return wrapped

    def prepare(self: artifacts.StudyPlotsAhead, *a: Any) -> None:
        ahead.append(True)
        try:
            real_prepare(self, *a)
        finally:
            ahead.clear()

    real_prepare = artifacts.StudyPlotsAhead.prepare
    monkeypatch.setattr(artifacts.StudyPlotsAhead, "prepare", prepare)
    monkeypatch.setattr(artifacts, "write_study_plots", spy("png", artifacts.write_study_plots))
    monkeypatch.setattr(study_plots, "write_study_html", spy("html", study_plots.write_study_html))
    monkeypatch.setattr(optuna.importance.FanovaImportanceEvaluator, "evaluate",
                        spy("importances", optuna.importance.FanovaImportanceEvaluator.evaluate))
    spec = spec_from_dict(make_spec_dict(study={"trials": 3}, tracking={"finish_in_background": True}))
    result = run_sweep(spec, options_from(spec, storage=storage, study_name="ahead", tracking_uri=uri,
                                          progress=False))
    assert result.budget_met
    # each once, drawn ahead in the worker's thread (the PNGs first: before the last trial was told); the parent
    # run's finalization made none of them again
    worker = threading.main_thread().name
    assert made["png"] == [(worker, True, ["COMPLETE", "COMPLETE", "RUNNING"])], made
    assert [m[:2] for m in made["html"]] == [m[:2] for m in made["importances"]] == [(worker, True)], made
    client = MlflowClient(uri)
    logged = {f.path for f in client.list_artifacts(result.parent_run_id)}
    assert {"optimization_history.png", "param_importances.png", "parallel_coordinate.png",
            "intermediate_values.png", "trials.csv", "report.md"} <= logged, logged
    assert {f.path for f in client.list_artifacts(result.parent_run_id, "study")} == {
        "study/optimization_history.html", "study/parallel_coordinate.html", "study/intermediate_values.html",
        "study/param_importances.html"}
    report = Path(client.download_artifacts(result.parent_run_id, "report.md", str(tmp_path))).read_text()
    assert "## Parameter importances (fANOVA)" in report  # read from what was computed ahead


def test_plots_drawn_ahead_are_used_only_for_the_trials_they_show(tmp_path: Path,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    """A recording that fails (the trial told FAIL, not COMPLETE) or another trial that ends meanwhile: the
    plots drawn ahead show another study, and the parent run gets plots drawn again."""
    from sweeps import artifacts

    study = optuna.create_study(direction="maximize")
    for x in (0.2, 0.6, 0.4):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.report(x / 2, 0)
        study.tell(trial, x)
    trials = study.get_trials()
    ahead = artifacts.StudyPlotsAhead()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        capfd.readouterr()
        ahead.prepare(trials, list(study.directions))
        assert "A new study created" not in capfd.readouterr().err  # the user never sees the study drawn ahead
        optuna.logging.set_verbosity(verbosity)
        assert ahead.matches(study)
        out, fresh, table = tmp_path / "out", tmp_path / "fresh", tmp_path / "table"
        out.mkdir(), fresh.mkdir()
        assert sorted(p.name for p in ahead.copy_into(out)) == \
            sorted(p.name for p in artifacts.write_study_plots(study, fresh))
        other = optuna.create_study(direction="maximize")
        other.add_trials(trials[:2])
        other.add_trial(optuna.trial.create_trial(params={"x": 0.4}, distributions=trials[2].distributions,
                                                  state=S.FAIL))
        assert not ahead.matches(other)
        artifacts.write_study_artifacts(other, table, drawn=ahead)
        history = "optimization_history.png"
        assert (table / history).read_bytes() != (out / history).read_bytes()  # drawn again, for `other`
    finally:
        optuna.logging.set_verbosity(verbosity)
        ahead.close()


def test_a_trials_start_and_its_staging_leave_the_workers_thread_and_land_before_it_is_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The duplicate check, params, dataset input and trial links are sent from a side thread while the trial
    trains; the Keras save for the helper runs in the finisher's thread. A told trial's run has all of them."""
    from mlflow import MlflowClient

    from sweeps import objective
    from sweeps.tracking import Tracker, TrialRun

    threads: dict[str, set[str]] = {}

    def spy(name: str, fn: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            threads.setdefault(name, set()).add(threading.current_thread().name.split("_")[0])
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(objective, "stage", spy("stage", objective.stage))
    monkeypatch.setattr(TrialRun, "log_params", spy("log_params", TrialRun.log_params))
    monkeypatch.setattr(TrialRun, "log_dataset", spy("log_dataset", TrialRun.log_dataset))
    monkeypatch.setattr(Tracker, "_drop_duplicate_runs", spy("duplicates", Tracker._drop_duplicate_runs))
    study, seen = _sweep(tmp_path, background=True, trials=2)
    assert [s["state"] for s in seen] == [S.COMPLETE] * 2 and all(s["run_status"] == "FINISHED" for s in seen)
    assert threads == {"stage": {"siamese-sweep-finish"}, "log_params": {"siamese-sweep-run-side"},
                       "log_dataset": {"siamese-sweep-run-side"}, "duplicates": {"siamese-sweep-run-side"}}, threads
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for trial in study.trials:
        run = client.get_run(trial.user_attrs[names.TRIAL_ATTR_RUN_ID])
        assert {"learning_rate", "dataset.fingerprint"} <= set(run.data.params) and run.inputs.dataset_inputs
        assert run.data.metrics["trial_number"] == trial.number
        assert trial.user_attrs[names.TRIAL_ATTR_WORKER] == objective.worker_id()
        assert trial.user_attrs[names.TRIAL_ATTR_WORKER_PID_SPACE] == objective.pid_space() != ""


def test_a_trial_is_claimed_by_its_worker_before_it_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker attr is written before anything else the trial does, its sampling first (was: with its run, in
    the background, so a worker killed in its first moments left a trial no one could tell was dead)."""
    from sweeps import objective, space

    claimed: list[dict[str, Any]] = []
    real_sample = space.sample_overrides

    def sample_overrides(trial: optuna.Trial, spec: Any) -> dict[str, Any]:
        claimed.append(dict(trial.user_attrs))
        return real_sample(trial, spec)

    monkeypatch.setattr(space, "sample_overrides", sample_overrides)
    _sweep(tmp_path, background=False, trials=1)
    assert [c.get(names.TRIAL_ATTR_WORKER) for c in claimed] == [objective.worker_id()]
    assert claimed[0][names.TRIAL_ATTR_WORKER_PID_SPACE] == objective.pid_space()


def test_auto_records_in_the_background_only_where_a_core_is_left_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """``finish_in_background: auto`` (the default): the idle-priority helper only where the worker's TensorFlow
    pools span every core it may use, two or more; on one core or a share of them (``--workers N``) in line."""
    from siamese_core import runtime
    from sweeps.finisher import records_in_background

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    assert records_in_background(True) and not records_in_background(False)
    monkeypatch.setattr(runtime, "thread_counts", lambda: (0, 0))  # TensorFlow's default pools: a thread per core
    assert records_in_background("auto")
    monkeypatch.setattr(runtime, "thread_counts", lambda: (len(cores), len(cores)))
    assert records_in_background("auto")
    monkeypatch.setattr(runtime, "thread_counts", lambda: (1, 1))  # what `run --workers 2` gives each on 2 cores
    assert not records_in_background("auto") and records_in_background(True)
    monkeypatch.setattr(runtime, "thread_counts", lambda: (0, 0))
    os.sched_setaffinity(0, {cores[0]})  # one core (taskset, a 1-CPU Slurm task): nothing idle for the helper
    try:
        assert not records_in_background("auto")
    finally:
        os.sched_setaffinity(0, set(cores))
    assert records_in_background("auto")


def test_a_signal_during_the_wait_does_not_end_it_early() -> None:
    """A signal's exception raised inside `Thread.join` made CPython 3.11 mark the job's thread stopped: the next
    wait (the worker's clean-up) returned at once while the job still ran, and the interpreter exited under it
    (an abort, exit 134, the trial and its run left RUNNING)."""
    import signal

    class Stop(Exception):
        pass

    def raise_stop(signum: int, frame: object) -> None:
        raise Stop

    finished = threading.Event()

    def job() -> None:
        time.sleep(1.5)
        finished.set()

    finisher = Finisher()
    before = signal.signal(signal.SIGALRM, raise_stop)
    try:
        finisher.submit(job)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Stop):
            finisher.wait()
        assert finisher.busy and not finished.is_set()
        finisher.wait()  # the clean-up's wait: for the job itself
        assert finished.is_set() and not finisher.busy
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
