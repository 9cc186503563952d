"""Process helpers shared by the PostgreSQL and MLflow launchers.

Both servers fork helpers (postgres backends; uvicorn workers and huey
consumers for MLflow). Each server is started in its own session so the whole
tree can be signalled as a process group, and stragglers that escaped the
group are found through /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from siamese_core.errors import InfrastructureError
from sweeps.procfs import stat_fields

__all__ = [
    "ServerStartError",
    "descendants",
    "free_port",
    "group_members",
    "tail",
    "terminate_tree",
    "wait_until",
]


class ServerStartError(InfrastructureError, RuntimeError):
    """A server process exited or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port (racy by nature, but fine on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgrp) of ``pid`` from /proc, or None if it is gone."""
    fields = stat_fields(pid)
    return None if fields is None else (int(fields[1]), int(fields[2]))


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(pid: int) -> list[int]:
    """Living descendants of ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for p in _all_pids():
        st = _proc_stat(p)
        if st is not None:
            children.setdefault(st[0], []).append(p)
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def group_members(pgid: int) -> list[int]:
    """Living processes whose process group is ``pgid``."""
    return [p for p in _all_pids() if (st := _proc_stat(p)) is not None and st[1] == pgid]


def alive(pid: int) -> bool:
    return _proc_stat(pid) is not None


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def send_signal(pid: int, sig: int, *, signal_group: bool) -> None:
    """Send ``sig`` to ``pid``'s process group (``pid`` started in its own session) or to ``pid`` alone; one
    already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        if signal_group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def terminate_pid(
    pid: int,
    *,
    first_signal: int | None = signal.SIGTERM,
    signal_group: bool = True,
    timeout: float = 20.0,
    send_first: bool = True,
) -> list[int]:
    """Stop ``pid`` (a child of ours or not: a dead supervisor's server) and everything it spawned; SIGKILL
    whatever outlives ``timeout``. What is still alive after that.

    ``pid`` must have been started with ``start_new_session=True`` so it is also its process-group id.
    ``send_first=False`` skips the first signal (a child already reaped: its pid may be another process's);
    ``first_signal=None``: the caller has sent it (to several servers at once).
    """
    tree = set(descendants(pid))
    if send_first and first_signal is not None:
        send_signal(pid, first_signal, signal_group=signal_group)
    deadline = time.monotonic() + timeout

    def leftovers() -> list[int]:
        mine = tree | {pid} if send_first else tree
        return sorted({p for p in mine if alive(p)} | set(group_members(pid)))

    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    rest = leftovers()
    if rest:
        _signal(rest, signal.SIGKILL)
        end = time.monotonic() + 5.0
        while [p for p in rest if alive(p)] and time.monotonic() < end:
            time.sleep(0.05)
    return leftovers()


def terminate_tree(
    proc: subprocess.Popen[bytes],
    *,
    first_signal: int = signal.SIGTERM,
    signal_group: bool = True,
    timeout: float = 20.0,
) -> None:
    """Stop ``proc`` and everything it spawned, and reap it (`terminate_pid`)."""
    terminate_pid(proc.pid, first_signal=first_signal, signal_group=signal_group, timeout=timeout,
                  send_first=proc.poll() is None)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    what: str = "server",
    log_path: Path | None = None,
    interval: float = 0.2,
) -> float:
    """Poll ``ready()`` until true; fail fast if ``proc`` dies. Returns seconds waited."""
    start = time.monotonic()
    while True:
        if ready():
            return time.monotonic() - start
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(
                f"{what} exited with code {proc.returncode} before it was ready"
                + (f"; last log lines:\n{tail(log_path)}" if log_path else "")
            )
        if time.monotonic() - start > timeout:
            raise ServerStartError(
                f"{what} was not ready after {timeout:.0f} s"
                + (f"; last log lines:\n{tail(log_path)}" if log_path else "")
            )
        time.sleep(interval)


def tail(path: Path | None, lines: int = 20) -> str:
    """Last lines of a log file, secrets masked (they end up in exception messages)."""
    from sweeps.secrets import mask_secrets

    if path is None:
        return ""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return mask_secrets("\n".join(text.splitlines()[-lines:]))
