"""SIGTERM and Ctrl-C: one scheme for a worker in this process and for ``run --workers N``.

SIGTERM behaves like Ctrl-C: the handler records the stop in `StopRequest` and raises `Interrupted`
(a KeyboardInterrupt). Raising alone is not enough: Python runs a handler at the next bytecode, which
may be inside a ``__del__`` or a weakref callback (SQLAlchemy has plenty), where the exception is
printed and *ignored* — a forwarded SIGTERM once left a worker training. So every loop also calls
`StopRequest.check` (training after each batch, the worker loop, the parent of N workers).

While the interrupted work is being cleaned up (`begin_cleanup`: the trial's run is being ended, or the
parent is forwarding the signal to its workers), further signals (``docker stop`` repeats, an impatient
Ctrl-C) are logged and ignored, so they cannot cut the clean-up short and leave a run RUNNING.

A stop that arrives while this thread starts a thread is not raised there either, only recorded: a thread pool
(ours for `sweeps.tracking.TrialRun.in_background`, MLflow's for artifacts) starts its thread, then registers it
for the interpreter's exit. Raised in between (a soak's SIGTERM, in 1 of 8 short soaks), it left a running thread
that exit joins and nothing wakes: the worker ended its trial, then hung until SIGKILL. `StopRequest.check` (the
next batch, the worker loop) carries the stop out instead.

Nor is it raised inside TensorFlow, Keras or the import machinery. Their C code calls back into Python (TensorFlow's
`nest` imports while it flattens a structure); an exception raised by the handler in that call can come back
as ``SystemError: <built-in function __import__> returned a result with an exception set``, printed with its
traceback to the worker's log (the short soak's SIGTERM victim, in 1 of 7 runs here and on a CI run). There too
the next check carries it out: the next training batch, after `train` returns, or the worker loop.

Each call to a SQLite store (MLflow's or Optuna's) or to an Optuna journal file runs in `deferred_stop`: the
signal is recorded and raised when the call is done. Cut in the middle, SQLAlchemy can leave the call's
transaction open, and the file then stays locked for every later write of the process: a CI run's worker,
stopped by Slurm's time-limit warning, spent its clean-up waiting out MLflow's 20 s lock timeout until the limit
killed it. `tests/reliability/test_fault_units.py` finds the file locked within 30 interrupted bursts of writes
without it, and a journal's lock file left behind when the signal lands in the lock's release.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from .errors import Interrupted

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0 checks without sending anything; another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopRequest:
    """The stop asked for by a signal in this process (class attributes: there is one per process)."""

    requested: bool = False
    cleaning: bool = False
    signum: int = 0
    deferring: int = 0  # nesting depth of `deferred_stop` in the main thread
    held: bool = False  # the handler would have raised, inside `deferred_stop`: raise when it ends

    @classmethod
    def check(cls) -> None:
        """Raise `Interrupted` if a stop was requested (and its clean-up has not begun)."""
        if cls.requested and not cls.cleaning:
            raise Interrupted(f"received signal {cls.signum}")

    @classmethod
    def reset(cls) -> None:
        cls.requested = cls.cleaning = cls.held = False
        cls.signum = 0


def begin_cleanup() -> None:
    """From now on a stop signal is logged and ignored (the interrupted work is being ended)."""
    StopRequest.cleaning = True


# Where a raise would leave a started thread unregistered. ``_adjust_thread_count`` is private; the pool has no
# public hook around its thread start. tests/reliability/test_fault_units.py pins that a stop landing there
# neither raises there nor keeps the process from exiting.
_STARTING_A_THREAD = (threading.Thread.start.__code__, ThreadPoolExecutor._adjust_thread_count.__code__)


def _starting_a_thread(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code in _STARTING_A_THREAD:
            return True
        frame = frame.f_back
    return False


# The packages whose frames a stop is not raised in (the module docstring says why).
_RECORDED_ONLY_IN = frozenset({"tensorflow", "keras", "importlib"})


def _in_a_library_that_calls_back(frame: FrameType | None) -> bool:
    """Whether the interrupted frame is TensorFlow's, Keras's or the import machinery's."""
    if frame is None:
        return False
    module = frame.f_globals.get("__name__") or ""
    return module.partition(".")[0] in _RECORDED_ONLY_IN


def _handler(signum: int, frame: Any, *, raise_at_once: bool = True) -> None:
    if StopRequest.cleaning:
        log.warning("signal %d again: still ending the interrupted work", signum)
        return
    StopRequest.requested, StopRequest.signum = True, signum
    if raise_at_once and StopRequest.deferring:
        StopRequest.held = True
    elif raise_at_once and not _starting_a_thread(frame) and not _in_a_library_that_calls_back(frame):
        # in those two: `StopRequest.check` raises it soon
        raise Interrupted(f"received signal {signum}")  # may be swallowed: hence StopRequest.check


@contextlib.contextmanager
def stop_on_signals(*, raise_at_once: bool = True, cleaning: bool = False) -> Iterator[None]:
    """Install the handler for SIGTERM and SIGINT (main thread only); restore the previous ones after.

    ``raise_at_once=False``: only record the stop, for a loop that calls `StopRequest.check` every few
    hundred milliseconds anyway and whose storage session must stay usable (the parent of N workers
    still finalises the study's run after the stop). ``cleaning=True``: the block is a clean-up already
    (a stopped sweep ending its parent run): a signal is logged and ignored from the handler's first moment.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    StopRequest.reset()
    StopRequest.cleaning = cleaning  # before the handler is in: no moment where a repeat would raise
    handler = _handler if raise_at_once else functools.partial(_handler, raise_at_once=False)
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_swallowed_stop, previous_hook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for sig, old in previous.items():
            signal.signal(sig, old)
        StopRequest.reset()


@contextlib.contextmanager
def deferred_stop(when: bool = True) -> Iterator[None]:
    """Hold the `Interrupted` of a stop signal that arrives in this block until the block is done, then raise it.

    For work that must not be cut in the middle (a database write); `when` False: do nothing (a store that needs
    no holding). Only the main thread hears signals, so elsewhere this does nothing either.
    """
    if not when or threading.current_thread() is not threading.main_thread():
        yield
        return
    StopRequest.deferring += 1
    try:
        yield
    finally:
        StopRequest.deferring -= 1
    if StopRequest.held and not StopRequest.deferring:
        StopRequest.held = False
        if not StopRequest.cleaning:
            raise Interrupted(f"received signal {StopRequest.signum}")


def _swallowed_stop(previous: Any, unraisable: Any) -> None:
    """`sys.unraisablehook`: the handler's `Interrupted`, raised inside a ``__del__`` or weakref callback, is
    swallowed there and Python would print its traceback to stderr, for a stop that `StopRequest.check` carries
    out anyway. One log line instead (a soak's SIGTERM landed in SQLAlchemy's ``_collection_gced``; its worker
    stopped and its trial was retried, but the log showed a traceback). Any other unraisable error goes to the
    previous hook."""
    if isinstance(unraisable.exc_value, Interrupted) and StopRequest.requested:
        log.warning("signal %d arrived inside a clean-up callback (%s); stopping at the next check",
                    StopRequest.signum, getattr(unraisable.object, "__qualname__", type(unraisable.object).__name__))
        return
    previous(unraisable)


def stop_check_callback() -> Any:
    """A Keras callback that turns a pending stop request into `Interrupted` at a batch boundary."""
    import keras

    class StopCheck(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            StopRequest.check()

    return StopCheck()
