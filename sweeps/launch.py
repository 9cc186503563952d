"""The worker processes of ``run --workers N``: started first, released once the study exists.

A worker needs about 6 s (2-vCPU Xeon) to import TensorFlow, Keras, MLflow and Optuna before its first trial.
Started after the parent's own imports, preflight, study and parent run, that time was added to every sweep's
start-up (11.5-12.4 s to the first trial against 6.7-7.3 s for one worker in-process, BENCHMARKS.md §4). So the
parent starts them before its own imports and checks. Each imports what a trial needs and then waits for one line
on its stdin: ``go`` once the parent's checks passed and the study and parent run exist (the workers join them);
end of file, because the parent's checks failed or it was interrupted or killed, and the worker exits having
created nothing. Bad input still gives one line, exit 2 and nothing created.

No Optuna, MLflow or TensorFlow import here: the parent imports this module before its own.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

import yaml

from . import names, scratch
from .options import SweepOptions
from .spec import SweepSpec

GO = "go"
WAIT_FLAG = "--wait-for-go"
_STOP_WAIT_S = 60.0    # a released worker ends its trial as interrupted, which includes MLflow calls
_CANCEL_WAIT_S = 30.0  # a waiting worker has nothing to clean up; SIGTERM ends it during its imports


def threads_per_worker(workers: int) -> int:
    """Each of `workers` processes gets an equal share of the usable CPUs, at least one thread (two TensorFlow
    processes with default pools on 2 cores slowed an epoch from about 38 s to over 60 s)."""
    from siamese_core.cpus import usable_cores  # not siamese_core.runtime: the parent must not import TensorFlow

    return max(1, usable_cores() // max(1, workers))


def write_resolved_spec(spec: SweepSpec, path: Path) -> Path:
    path.write_text(yaml.safe_dump(spec.resolved_dict(), sort_keys=False))
    return path


class WorkerProcesses:
    """N ``siamese-sweep worker --wait-for-go`` processes of one study; `release` them once the study exists.

    Use as a context manager (or call `close`): workers never released are ended, and the spec file is removed.
    """

    def __init__(self, spec: SweepSpec, options: SweepOptions) -> None:
        from .devices import device_plan  # one CUDA_VISIBLE_DEVICES per worker; nothing without GPUs

        threads = options.threads or threads_per_worker(options.workers)
        devices = device_plan(options.workers)  # before the spec folder exists: if it raises, nothing is left
        self._tmp = scratch.temporary_directory("siamese-sweep-")
        self.released = False
        self.procs: list[subprocess.Popen] = []
        spec_path = write_resolved_spec(spec, Path(self._tmp.name) / "spec.yaml")
        # URLs go through the environment, not argv: `ps` must not show passwords
        env = {k: v for k, v in os.environ.items() if k != names.ENV_MLFLOW_RUN_ID}
        env.update({names.ENV_OPTUNA_STORAGE: options.storage, names.ENV_MLFLOW_TRACKING_URI: options.tracking_uri})
        try:
            for i in range(options.workers):
                cmd = [sys.executable, "-m", "sweeps.cli", "worker", str(spec_path), "--study", options.study_name,
                       "--threads", str(threads), "--worker-index", str(i + 1), "--no-finalize", "--quiet",
                       WAIT_FLAG]
                if options.timeout is not None:
                    cmd += ["--timeout", str(options.timeout)]
                self.procs.append(subprocess.Popen(cmd, env={**env, **devices.env_for(i)}, stdin=subprocess.PIPE))
        except BaseException:
            self.close()
            raise

    def release(self) -> None:
        """Let the workers join the study (it and its parent run must exist now)."""
        self.released = True
        for p in self.procs:
            try:
                assert p.stdin is not None
                p.stdin.write(f"{GO}\n".encode())
                p.stdin.close()
            except OSError:
                pass  # it exited already; its exit code says why

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        """Forward a stop to every released worker (each ends its trial as interrupted) and wait for them."""
        self._end(_STOP_WAIT_S)

    def close(self) -> None:
        """End workers that were never released (they have created nothing) and remove the spec file."""
        if not self.released:
            for p in self.procs:
                if p.stdin is not None and not p.stdin.closed:
                    try:
                        p.stdin.close()  # end of file: a worker already waiting exits at once
                    except OSError:
                        pass
            self._end(_CANCEL_WAIT_S)
        self._tmp.cleanup()

    def _end(self, wait_s: float) -> None:
        """SIGTERM (a worker ends its trial as interrupted), then SIGKILL whatever is still there after `wait_s`."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> WorkerProcesses:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def wait_for_go(spec: SweepSpec) -> bool:
    """In a worker started with ``--wait-for-go``: import what a trial needs, then wait for the parent's word.
    True: go on and join the study; False: the parent gave up before creating it, so exit and create nothing."""
    import siamese_core.training  # noqa: F401 - TensorFlow and Keras, the bulk of a worker's start-up

    from . import artifacts, worker  # noqa: F401 - Optuna and MLflow

    if spec.tracking.log_plots:
        artifacts.warm_up()
    try:
        line = sys.stdin.readline()
    except KeyboardInterrupt:
        return False
    return line.strip() == GO
