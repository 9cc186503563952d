"""A trial's plots, files and model recorded by a helper process at idle priority (``finish_in_background``).

Why a process, and why idle priority: what a trial records is CPU work in Python — matplotlib draws three
figures, MLflow writes and uploads the model directory (0.5-1 CPU s per trial). In a thread of the worker it
holds the GIL the training loop needs between steps, and on 2 cores it takes CPU TensorFlow would use: the
background thread saved nothing (BENCHMARKS.md §2). A process under ``SCHED_IDLE`` runs only on CPU the
training leaves idle: measured with benchmarks/idle_neighbour.py, the three plots drawn every 5 s at idle
priority got 3.5 CPU s beside a trial that took 0.996x its time alone.

The order that keeps "Optuna COMPLETE => MLflow run complete": the worker's thread stages what needs the
trained Keras model (`stage`: the ``.keras`` archive, the reference embeddings, the plot inputs as arrays) in
a job folder and sends the folder to the helper (in line, the worker's thread runs the same `record` on it
itself); the background finisher (`sweeps.finisher`) waits for the helper's answer, then logs the final
metrics against the logged model, ends the run and tells Optuna. A job that fails in the helper fails the
trial, as the same failure in line would. A job whose helper died is recorded in the worker's process
instead (`Recorder.result`; if the helper had finalized the model before it died, that model is the trial's),
and a new helper is started for the next trial.

The helper imports MLflow, matplotlib and `sweeps.serving` (MLflow runs the models-from-code file while it
saves), never TensorFlow. It reads its tracking URI from its stdin (no secret in process arguments) and
answers on a copy of its stdout (MLflow's own prints go to stderr). It runs in its own session, so a Ctrl-C
meant for the worker does not kill a job half-way; it exits when the worker closes its stdin or dies, and logs no
model for a worker that died meanwhile (its trial is failed and retried: the retry logs its own).
"""
from __future__ import annotations

import json
import logging
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import names, scratch
from .errors import RecordingFailed, TrackingUnavailable

if TYPE_CHECKING:
    from .tracking import Tracker

log = logging.getLogger(__name__)

FILES, MODEL, PLOTS = "files", "model", "plots"  # the parts of a job folder
CLOSE_WAIT_S = 30.0  # a job in flight when the worker ends: its upload usually takes well under a second
# A helper that neither answers nor uses CPU for this long while the worker waits for it is taken for hung (a
# stopped process, a deadlock, a mount that never answers): killed, and its trial recorded in the worker, as for
# a helper that died. A recording takes about 1 CPU s (BENCHMARKS.md §2); the bound is above the 120 s that one
# MLflow call may spend retrying an outage (`SIAMESE_SWEEP_MLFLOW_RETRY_SECONDS`), several times over.
HUNG_AFTER_S = 600.0
POLL_S = 5.0  # how often a waiting worker looks at the helper's CPU time
# one BLAS/OpenMP thread: the PCA of the embedding plot must not start a thread per core beside the training
_HELPER_ENV = dict.fromkeys(names.ENV_MATH_THREADS, "1")


@dataclass(frozen=True)
class Job:
    """One trial's recording, staged in `folder` by the worker's thread."""

    number: int
    folder: Path
    run_id: str
    experiment_id: str
    plots: bool
    model_name: str | None  # None: no model (``tracking.log_models: false``)
    step: int

    def message(self) -> dict[str, Any]:
        """What goes to the helper: one JSON object (`from_message` reads it back)."""
        return {**asdict(self), "folder": str(self.folder)}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Job:
        return cls(**{**message, "folder": Path(message["folder"])})


def stage(result: Any, number: int, *, run_id: str, experiment_id: str, plots: bool, model_name: str | None,
          step: int) -> Job:
    """Write what `record` needs of a trained trial into a new job folder (in the trial's process: it needs
    the Keras model). The folder is the job's: `Recorder.result` deletes it, or the caller of an in-line `record`."""
    from . import artifacts, modelio

    folder = scratch.mkdtemp(f"siamese-record-{number}-")
    try:
        artifacts.write_trial_files(result, folder / FILES)
        if plots:
            artifacts.PlotInputs.of(result).save(folder / PLOTS)
        if model_name is not None:
            modelio.stage_model(result, folder / MODEL)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Job(number, folder, run_id, experiment_id, plots, model_name, step)


class Recorder:
    """The worker's side: one helper process, started at once (its imports run at idle priority while the
    first trial trains) and again after it died; jobs are done one after another, in the order sent."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker  # the worker's `sweeps.tracking.Tracker`: its URI for the helper, and its client
        # when a job whose helper died is recorded here
        self._proc: subprocess.Popen[bytes] | None = None
        self._answers: dict[int, dict[str, Any]] = {}  # read while waiting for another job's answer
        self._sent_to: dict[int, subprocess.Popen[bytes]] = {}  # job number -> the helper that has it
        self._send = threading.Lock()  # the worker's thread sends (and starts the helper)
        self._read_lock = threading.Lock()  # the background finisher reads the answers
        self.priority = ""  # what the helper reported: "idle", "nice 19" or "normal"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the helper and return at once: its start-up (Python, then MLflow and matplotlib at idle
        priority) overlaps the first trial; its hello line is read with the first answer."""
        with self._send:
            self._ensure_started()

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        root = str(Path(__file__).resolve().parent.parent)  # where this `sweeps` package is imported from
        env = {**os.environ, **_HELPER_ENV,
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        # unbuffered: `_readline` waits on the pipe with select(), which cannot see lines a buffer already holds
        proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=env, start_new_session=True, bufsize=0)
        assert proc.stdin is not None
        proc.stdin.write((json.dumps({"uri": self._tracker.uri}) + "\n").encode())
        proc.stdin.flush()
        self._proc = proc  # not waiting for its hello: 0.33 s per sweep (benchmarks/tracking_profile.py)
        return proc

    def submit(self, job: Job) -> None:
        """Send `job` to the helper (returns at once)."""
        with self._send:
            proc = self._ensure_started()
            assert proc.stdin is not None
            try:
                proc.stdin.write((json.dumps(job.message()) + "\n").encode())
                proc.stdin.flush()
            except OSError as exc:
                raise RecordingFailed(f"the recording helper is gone: {exc}") from None
            self._sent_to[job.number] = proc

    def result(self, job: Job) -> str | None:
        """Wait until `job` is recorded; its logged model's URI (None without a model). Raises what the trial
        would have raised in line: `TrackingUnavailable` when MLflow could not be reached, `RecordingFailed`
        for any other error in the helper. If the helper died with the job, the job is recorded here, in this
        process, from the same staged folder: a killed helper costs time, never a trained trial."""
        try:
            answer = self._answer_for(job)
            if answer is None:
                return self._record_here(job)
        finally:
            shutil.rmtree(job.folder, ignore_errors=True)
        if "error" in answer:
            kind = TrackingUnavailable if answer.get("kind") == TrackingUnavailable.__name__ else RecordingFailed
            raise kind(str(answer["error"]))
        uri = answer.get("model_uri")
        return str(uri) if uri else None

    def _answer_for(self, job: Job) -> dict[str, Any] | None:
        """The helper's answer for `job`; None if the helper it was sent to exited first."""
        with self._read_lock:
            answer = self._answers.pop(job.number, None)
            proc = self._sent_to.pop(job.number, None)  # a helper started after a death never had it
            while answer is None:
                got = self._read(proc) if proc is not None else None
                if got is None:
                    code = proc.wait() if proc is not None else None
                    log.warning("the recording helper exited (code %s) before trial %d was recorded; recording "
                                "it in the worker's process", code, job.number)
                    return None
                if int(got.get("number", -1)) == job.number:
                    answer = got
                else:
                    self._answers[int(got.get("number", -1))] = got
        return answer

    def _record_here(self, job: Job) -> str | None:
        if job.model_name is not None:
            done = settle_models_left(self._tracker, job)
            if done is not None:  # it died after its last step, before its answer: nothing is missing
                log.warning("the recording helper had logged trial %d's model before it exited: %s", job.number,
                            done)
                return done
        return record(job, self._tracker)

    def _read(self, proc: subprocess.Popen[bytes] | None) -> dict[str, Any] | None:
        """The helper's next answer (None: it exited); its hello line, first of all, sets `priority`."""
        if proc is None or proc.stdout is None:
            return None
        while True:
            line = self._readline(proc)
            message = json.loads(line) if line.strip() else None
            if message is None or "number" in message:
                return message
            self.priority = str(message.get("priority", ""))

    def _readline(self, proc: subprocess.Popen[bytes]) -> bytes:
        """The helper's next line; b"" once it exited, or once it is taken for hung (`HUNG_AFTER_S`) and killed."""
        assert proc.stdout is not None
        since, cpu = time.monotonic(), _cpu_ticks(proc.pid)
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], POLL_S)
            if ready:
                return proc.stdout.readline()
            now, used = time.monotonic(), _cpu_ticks(proc.pid)
            if used != cpu:
                since, cpu = now, used
            elif now - since >= HUNG_AFTER_S:
                log.warning("the recording helper (pid %d) has neither answered nor used CPU for %.0f s; killing it "
                            "and recording in the worker's process", proc.pid, now - since)
                proc.kill()
                proc.wait()
                return b""

    def close(self) -> None:
        """Close the helper's stdin (it finishes the job in flight, then exits); kill it if it does not."""
        with self._send:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("the recording helper (pid %d) did not exit; killing it", proc.pid)
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _cpu_ticks(pid: int) -> int | None:
    """User + system CPU ticks of process `pid` (Linux /proc); None where it cannot be read (then only the
    clock decides)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------------------- the helper process
def lower_priority() -> str:
    """Run on idle CPU only: ``SCHED_IDLE`` (Linux), else the lowest nice value; returns which one took."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):
        pass
    try:
        os.nice(19)
        return "nice 19"
    except OSError:
        return "normal"


def record(job: Job, tracker: Any, *, wanted: Callable[[], bool] | None = None) -> str | None:
    """Draw, upload and log one staged trial; returns the logged model's URI (None: no model). In the helper,
    or in the worker's thread when the trial is recorded in line. `wanted` (the helper's): whether the worker
    that sent the job is still there to tell its trial, asked before the model is logged."""
    from . import artifacts, modelio
    from .mlflow_globals import quiet_artifacts
    from .tracking import TrialRun

    files = job.folder / FILES
    if job.plots:
        artifacts.draw_trial_plots(artifacts.PlotInputs.load(job.folder / PLOTS), files)
    with quiet_artifacts():
        TrialRun(tracker, job.run_id).log_artifacts(str(files))
    if job.model_name is None:
        return None
    if wanted is not None and not wanted():
        # a worker killed while its trial was recorded: the trial is failed (its heartbeat stops) and retried, and
        # its run ended KILLED, yet the helper went on and left a READY model of it beside the retry's own
        raise RecordingFailed(f"trial {job.number}'s worker is gone: its model is not logged")
    name = job.model_name
    return str(tracker.retry("log model", lambda: modelio.log_staged_model(
        tracker.client, run_id=job.run_id, experiment_id=job.experiment_id, staged=job.folder / MODEL,
        step=job.step, name=name)))


def settle_models_left(tracker: Any, job: Job) -> str | None:
    """What a dead helper left of `job`'s model: a READY one is the trial's model (`record` logs the files
    before the model and finalizes it last, so the job was done; its URI is returned, and recording again would
    log a second copy); PENDING ones (created, never finalized) are marked FAILED. Best-effort: on an error
    the job is recorded again, and a PENDING model only clutters the Models tab."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    from .registry import logged_model_uri

    client = tracker.client
    try:
        found = client.search_logged_models(
            [job.experiment_id], filter_string=f"source_run_id = '{job.run_id}' AND name = '{job.model_name}'")
        for model in found:
            if model.status == LoggedModelStatus.PENDING:
                client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        ready = [m for m in found if m.status == LoggedModelStatus.READY]
        if ready:  # `log_model_dir` links the model to the run's outputs after finalizing it: the helper may not have
            outputs = client.get_run(job.run_id).outputs
            linked = {o.model_id for o in outputs.model_outputs} if outputs is not None else set()
            if ready[0].model_id not in linked:
                client.log_outputs(job.run_id, [LoggedModelOutput(ready[0].model_id, job.step)])
    except Exception as exc:  # noqa: BLE001 - the trial's own model is logged anyway
        from .secrets import mask_secrets

        log.warning("could not look up the models trial %d's helper left: %s", job.number,
                    mask_secrets(str(exc))[:200])
        return None
    return str(logged_model_uri(ready[0].model_id)) if ready else None


def _answer(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def main() -> int:
    """The helper: one JSON line in (the tracking URI), then one job per line, one answer per job."""
    out = os.fdopen(os.dup(1), "w")  # the answers; fd 1 becomes stderr so library prints cannot corrupt them
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s recorder: %(message)s")
    priority = lower_priority()
    worker = os.getppid()  # a worker that dies leaves this process to another parent

    def wanted() -> bool:
        return os.getppid() == worker

    first = sys.stdin.readline()
    if not first.strip():
        return 0
    _answer(out, {"priority": priority, "pid": os.getpid()})  # before the imports: the worker goes on training
    from .secrets import mask_secrets
    from .tracking import Tracker

    tracker = Tracker(json.loads(first)["uri"])
    for line in sys.stdin:
        if not line.strip():
            continue
        job = Job.from_message(json.loads(line))
        if not wanted():
            return 0  # its worker is gone: nobody reads the answer, and its trial is failed and retried
        try:
            uri = record(job, tracker, wanted=wanted)
        except Exception as exc:  # noqa: BLE001 - handed to the worker, which fails the trial with it
            _answer(out, {"number": job.number, "kind": type(exc).__name__,
                          "error": mask_secrets(f"recording trial {job.number}: {type(exc).__name__}: {exc}")})
        else:
            _answer(out, {"number": job.number, "model_uri": uri})
    return 0


if __name__ == "__main__":
    code = main()
    # Every answer is written and every upload done (MLflow's calls return when they are): skip the
    # interpreter's teardown, which took ~1 s with MLflow and matplotlib loaded, all of it spent while the
    # worker's `close` waited at the end of the sweep (1.07 s -> 0.07 s, benchmarks/tracking_profile.py).
    sys.stdout.flush()
    sys.stderr.flush()
    scratch.remove_own()  # what atexit would have done (the models it staged were uploaded or failed)
    os._exit(code)
