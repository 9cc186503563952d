"""Which process runs a trial, and whether it is still alive: what the dead-worker check, `status` and the
core-sharing warning ask of a trial's ``worker`` attr (``host:pid``, `worker_id`) and ``worker_pid_space``."""
from __future__ import annotations

import functools
import os
import socket

import optuna

from . import names
from .procfs import boot_id, pid_namespace
from .signals import pid_alive


def worker_id() -> str:
    """``host:pid`` of this worker process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@functools.cache  # fixed for a process's life (a process cannot enter another pid namespace itself)
def pid_space() -> str:
    """``<boot id>/<pid namespace>`` of this process: where its pid means this process. Two containers on one
    kernel may share a host name and still number their processes apart; "" where Linux's /proc does not say.
    `local_worker_pid` asks for every RUNNING trial in every round of the dead-worker check: read once."""
    boot, namespace = boot_id(), pid_namespace()
    return f"{boot}/{namespace}" if boot and namespace else ""


def local_worker_pid(trial: optuna.trial.FrozenTrial) -> int | None:
    """The pid of the trial's worker (its ``worker`` attr, as `worker_id` wrote it) if that worker ran on this
    machine and in this process space; None for another machine's or container's, or a trial whose attr is not
    written yet.

    Same host name, same boot, another pid namespace: another container on this kernel, whose pids say nothing
    here (left alone). Another boot id is taken as this machine rebooted (its workers are all gone), not as
    another machine with the same host name: the pid is checked as before.
    """
    host, _, pid = str(trial.user_attrs.get(names.TRIAL_ATTR_WORKER, "")).rpartition(":")
    if host != worker_id().rpartition(":")[0] or not pid.isdigit():
        return None
    boot, _, namespace = str(trial.user_attrs.get(names.TRIAL_ATTR_WORKER_PID_SPACE, "")).partition("/")
    here_boot, _, here_namespace = pid_space().partition("/")
    if namespace and here_namespace and boot == here_boot and namespace != here_namespace:
        return None
    return int(pid)


def gone_from_here(trial: optuna.trial.FrozenTrial) -> bool:
    """The trial's worker ran on this machine, in this process space, and is no longer alive (killed: its trial
    stays RUNNING until a worker's dead-worker or heartbeat check fails it). False where that cannot be known."""
    pid = local_worker_pid(trial)
    return pid is not None and not pid_alive(pid)
