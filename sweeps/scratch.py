"""One scratch folder per process for the temporary files of a command, so that a killed process leaves nothing.

A process killed with SIGKILL (the OOM killer, ``kill -9``, a node's time limit) runs no ``finally`` and no
``atexit``. Before, each ``tempfile`` folder it had open stayed in $TMPDIR for good: the spec file `run --workers N`
hands its workers, checkpoint snapshots, staged models, study plots. Now they are all made inside one folder per
process (`root`), removed at its exit (`remove_own`), and the folders of processes that are gone are removed by
the next ``siamese-sweep`` command or `sweeps.sweep` call on the machine (`remove_orphans`).

The folder is ``$TMPDIR/siamese-scratch-<boot id>-<pid namespace>-<time namespace>-<pid>-<start ticks>``: the pid
with its start time names one process, never a later one given the same pid; the boot id and the namespaces keep
machines that share a $TMPDIR (a cluster's shared scratch) and containers that share /tmp (a Kubernetes pod's
emptyDir) from removing each other's folders, since their pids and start times mean nothing to each other (a
time namespace shifts the start times /proc shows; 0 for a kernel without them). Where /proc cannot name this process
(no /proc; a new pid namespace without its own /proc mount) the folder gets a random name instead, which
`remove_orphans` never matches: it is removed at exit, and only a kill leaves it.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from pathlib import Path

from . import procfs

__all__ = ["PREFIX", "mkdtemp", "remove_orphans", "remove_own", "root", "temporary_directory"]

log = logging.getLogger(__name__)

PREFIX = "siamese-scratch-"
_NAME = re.compile(rf"{PREFIX}([0-9a-f]+-\d+-\d+)-(\d+)-(\d+)")  # where (boot, namespaces), pid, start ticks

_lock = threading.Lock()  # the background finisher's thread asks for folders too
_made: dict[int, Path] = {}  # pid -> its folder: a forked child makes its own and removes only that one


def _where() -> str | None:
    """``<boot id>-<pid namespace>-<time namespace>`` (hex, then digits), where this process's pids and start
    times mean what /proc says; None where /proc cannot say."""
    boot, namespace = procfs.boot_id().replace("-", ""), re.sub(r"\D", "", procfs.pid_namespace())
    if not (procfs.proc_is_ours() and re.fullmatch(r"[0-9a-f]+", boot) and namespace):
        return None
    times = re.sub(r"\D", "", procfs.time_namespace()) or "0"
    return f"{boot}-{namespace}-{times}"


def _ours(folder: Path) -> bool:
    """A real folder (not a link), this user's, closed to others: what `root` makes."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077 == 0


def root() -> Path:
    """This process's scratch folder (mode 0700), made on first use and removed when the process exits."""
    pid = os.getpid()
    with _lock:
        folder = _made.get(pid)
        if folder is not None and folder.is_dir():
            return folder
        where = _where()
        ticks = None if where is None else procfs.start_ticks(pid)
        named = None if ticks is None else Path(tempfile.gettempdir()) / f"{PREFIX}{where}-{pid}-{ticks}"
        if named is not None:
            try:
                named.mkdir(mode=0o700)
            except FileExistsError:
                if not _ours(named):  # the name is predictable: a link or another user's folder planted in /tmp
                    named = None
        # a random name otherwise, which `remove_orphans` never matches: removed at exit, left only by a kill
        folder = named or Path(tempfile.mkdtemp(prefix=PREFIX))
        _made[pid] = folder
        return folder


def mkdtemp(prefix: str) -> Path:
    """`tempfile.mkdtemp` inside this process's `root`: the caller removes it; a kill leaves it to `remove_orphans`."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root()))


def temporary_directory(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """`tempfile.TemporaryDirectory` inside this process's `root`."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=root())


@atexit.register
def remove_own() -> None:
    """Remove this process's folder (at its exit; a process that leaves through ``os._exit`` calls it first)."""
    with _lock:
        folder = _made.pop(os.getpid(), None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def remove_orphans() -> list[Path]:
    """Remove the scratch folders, in $TMPDIR, of this user's processes of this boot and namespaces that are gone.

    Never raises: a folder that cannot be listed or removed is left for the next command. Where /proc cannot
    name this process nothing is removed (whether a pid is still its process cannot be told).
    """
    where = _where()
    if where is None:
        return []
    removed: list[Path] = []
    try:
        with os.scandir(tempfile.gettempdir()) as entries:
            for entry in entries:
                found = _NAME.fullmatch(entry.name)
                if found is None or found.group(1) != where:
                    continue
                if procfs.start_ticks(int(found.group(2))) == int(found.group(3)):
                    continue  # its process is running
                folder = Path(entry.path)
                if _ours(folder):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
    except OSError as exc:
        log.debug("could not look for the scratch folders of killed processes: %s", exc)
    if removed:
        log.debug("removed the scratch folders of %d processes that are gone: %s", len(removed),
                  ", ".join(p.name for p in removed))
    return removed
