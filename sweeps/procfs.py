"""What Linux's /proc says about a process: its state fields, when it started, its namespaces, the boot.

Kept apart from `sweeps.stack` (servers) and `sweeps.liveness` (trials, imports Optuna) because the CLI's start
reads it too (`sweeps.scratch`), before any heavy import.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["boot_id", "pid_namespace", "proc_is_ours", "start_ticks", "stat_fields", "time_namespace"]


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (state) on, or None if ``pid`` is gone or a zombie (already dead)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'
    fields = raw[raw.rfind(")") + 2 :].split()
    return None if fields[0] == "Z" else fields


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (``/proc/<pid>/stat`` field 22): with the pid, it names one
    process, not a later one given the same pid. None if it is gone (or a zombie)."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[19])


@functools.cache  # fixed for a process's life (a process cannot enter another pid namespace itself)
def pid_namespace() -> str:
    """``pid:[<inode>]``, the pid namespace this process's pids mean something in; "" where /proc does not say."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@functools.cache  # fixed for a process's life, as the pid namespace
def time_namespace() -> str:
    """``time:[<inode>]`` (Linux 5.6 on; "" before, or where /proc does not say). The start ticks /proc shows
    for a process are shifted by the reader's time namespace (its boot-time offset): two processes compare them
    only within one."""
    try:
        return os.readlink("/proc/self/ns/time")
    except OSError:
        return ""


@functools.cache  # new at every boot, fixed until the next
def boot_id() -> str:
    """This boot's id (a UUID): with the pid namespace, where a pid means one process; "" where /proc does not
    say. Two machines never share one, so it also tells their processes apart in a /tmp they share."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def proc_is_ours() -> bool:
    """Whether /proc numbers processes as this one's pid namespace does. Not so in a new pid namespace without
    its own /proc mount (``unshare --pid --fork`` alone): there ``/proc/<pid>`` is another process than ours."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False
