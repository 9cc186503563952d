"""What Linux's /proc says about a process: its state fields, when it started, its pid namespace.

Kept apart from `sweeps.stack` (servers) and `sweeps.liveness` (trials, imports Optuna) because the CLI's start
reads it too (`sweeps.scratch`), before any heavy import.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["pid_namespace", "start_ticks", "stat_fields"]


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
