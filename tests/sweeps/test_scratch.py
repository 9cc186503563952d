"""`sweeps.scratch`: one temporary folder per process, removed at its exit, and by the next command after a kill.

Real processes: each case starts Python with its own $TMPDIR (a pytest folder), so what is left there is what
the process left.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from sweeps import procfs, scratch

_MAKE = """
import os, signal, sys
from sweeps import scratch
made = scratch.mkdtemp("siamese-x-")
(made / "spec.yaml").write_text("kept until exit")
kept = scratch.temporary_directory("siamese-y-")
print(scratch.root(), made, kept.name, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[1] == "wait":
    sys.stdin.read()
"""


def _python(tmp: Path, how: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _MAKE, how], env={**os.environ, "TMPDIR": str(tmp)},
                            stdout=subprocess.PIPE, text=True, **kwargs)  # type: ignore[call-overload]


def _where() -> str:
    """``<boot id>-<pid namespace>-<time namespace>`` of this process, as the folder names spell them."""
    return f"{procfs.boot_id().replace('-', '')}-{procfs.pid_namespace()[5:-1]}-{procfs.time_namespace()[6:-1] or 0}"


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$TMPDIR for the processes started here, and `tempfile`'s folder for `remove_orphans` in this one."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_process_keeps_its_temporary_folders_in_one_folder_removed_at_its_exit(tmp: Path) -> None:
    proc = _python(tmp, "wait", stdin=subprocess.PIPE)
    assert proc.stdout is not None
    root, made, kept = (Path(p) for p in proc.stdout.readline().split())
    assert root.parent == tmp and made.parent == root and kept.parent == root
    assert root.name == f"{scratch.PREFIX}{_where()}-{proc.pid}-{procfs.start_ticks(proc.pid)}"
    assert root.stat().st_mode & 0o777 == 0o700
    assert scratch.remove_orphans() == [] and (made / "spec.yaml").exists()  # its process is running: kept
    proc.communicate("")
    assert proc.returncode == 0
    assert list(tmp.iterdir()) == []


def test_the_folder_of_a_killed_process_is_removed_by_the_next_command(tmp: Path) -> None:
    """SIGKILL runs no clean-up: the folder stays (before, each `tempfile` folder stayed in $TMPDIR for good);
    the next `siamese-sweep` command, any of them, removes it."""
    proc = _python(tmp, "kill")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    root = Path(out.split()[0])
    assert list(root.glob("siamese-x-*/spec.yaml"))
    cli = subprocess.run([sys.executable, "-m", "sweeps.cli", "convert", str(tmp / "absent.yaml")],
                         env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2, cli.stderr  # bad input, as usual: one line, nothing else said
    assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    assert list(tmp.iterdir()) == []


def test_only_this_users_folders_of_gone_processes_of_this_boot_and_namespaces_are_removed(tmp: Path) -> None:
    """Another boot's folder may be another machine's, in a $TMPDIR that machines share; another pid namespace's,
    another container's: their pids mean nothing here, and in another time namespace start times differ, so
    their folders are left alone."""
    boot, namespace = procfs.boot_id().replace("-", ""), procfs.pid_namespace()[5:-1]
    where = _where()
    me, ticks = os.getpid(), procfs.start_ticks(os.getpid())
    assert len(boot) == 32 and namespace.isdigit() and ticks is not None and where.startswith(f"{boot}-{namespace}-")
    times = where.rpartition("-")[2]

    def folder(name: str, mode: int = 0o700) -> Path:
        path = tmp / name
        path.mkdir()
        path.chmod(mode)
        (path / "file").write_text("x")
        return path

    gone = folder(f"{scratch.PREFIX}{where}-{me}-{ticks + 1}")  # this pid, but a later process
    alive = folder(f"{scratch.PREFIX}{where}-{me}-{ticks}")
    container = folder(f"{scratch.PREFIX}{boot}-{int(namespace) + 1}-{times}-999999999-1")
    clock = folder(f"{scratch.PREFIX}{boot}-{namespace}-{int(times) + 1}-999999999-1")
    machine = folder(f"{scratch.PREFIX}{'0' * 32}-{namespace}-{times}-999999999-1")
    open_to_all = folder(f"{scratch.PREFIX}{where}-999999999-2", 0o755)  # not made by `root`
    kept = [alive, container, clock, machine, open_to_all]
    if os.geteuid() == 0:  # another user's (root can give it away)
        kept.append(folder(f"{scratch.PREFIX}{where}-999999999-4"))
        os.chown(kept[-1], 65534, 65534)
    other = folder("siamese-sweep-999999999")
    target = folder("target")
    link = tmp / f"{scratch.PREFIX}{where}-999999999-3"
    link.symlink_to(target)
    assert scratch.remove_orphans() == [gone]
    assert not gone.exists()
    for left in (*kept, other, target, link):
        assert (left / "file").exists(), left


def test_a_planted_folder_with_this_process_name_is_not_used(tmp: Path) -> None:
    """The name is predictable, so a link planted in a shared /tmp must not be followed: a random name instead."""
    target = tmp / "target"
    target.mkdir()
    code = ("import os, sys; from sweeps import procfs, scratch; pid = os.getpid(); "
            "name = f'{scratch.PREFIX}{scratch._where()}-{pid}-{procfs.start_ticks(pid)}'; "
            "os.symlink(sys.argv[1], os.path.join(os.environ['TMPDIR'], name)); "
            "print(scratch.root(), scratch.mkdtemp('siamese-x-'))")
    done = subprocess.run([sys.executable, "-c", code, str(target)], env={**os.environ, "TMPDIR": str(tmp)},
                          capture_output=True, text=True, timeout=60, check=True)
    root, made = (Path(p) for p in done.stdout.split())
    assert root.parent == tmp and not root.is_symlink() and made.parent == root
    assert list(target.iterdir()) == []
    assert not root.exists()  # removed at exit like the other


def test_where_proc_cannot_name_the_process_its_folder_has_a_random_name_and_nothing_is_removed(tmp: Path) -> None:
    """In a new pid namespace without its own /proc mount, /proc/<pid> is another process than ours: a name
    with our pid and its start time would be checked against that process (and removed when it ends). The
    folder gets a random name instead, and `remove_orphans` there removes nothing, not even a dead one's."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) (util-linux)")
    dead = tmp / f"{scratch.PREFIX}{_where()}-999999999-1"
    dead.mkdir(mode=0o700)
    code = ("import os; from sweeps import procfs, scratch; "
            "print(os.getpid(), procfs.proc_is_ours(), scratch.root().name, len(scratch.remove_orphans()))")
    inside = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", code],
                            env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=60)
    if inside.returncode != 0:
        pytest.skip(f"cannot make a pid namespace here: {inside.stderr.strip()}")
    pid, ours, name, removed = inside.stdout.split()
    assert (pid, ours, removed) == ("1", "False", "0")
    assert name.startswith(scratch.PREFIX) and scratch._NAME.fullmatch(name) is None
    assert [p.name for p in tmp.iterdir()] == [dead.name]  # its own removed at exit; the other left alone


def test_a_live_process_in_another_time_namespace_keeps_its_folder(tmp: Path) -> None:
    """/proc shows a process's start ticks shifted by the reader's time namespace: read from here, a process
    in another one seems to have started at another time, as a later process with its pid would. By the pid and
    the ticks alone its live folder was removed; the time namespace in the name keeps it apart."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) (util-linux)")
    code = "from sweeps import scratch; print(scratch.root(), flush=True); input()"
    proc = subprocess.Popen(["unshare", "--time", "--boottime", "100000", "--fork", sys.executable, "-c", code],
                            env={**os.environ, "TMPDIR": str(tmp)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            pytest.skip(f"cannot make a time namespace here: {proc.communicate(timeout=30)[1].strip()}")
        root = Path(line.strip())
        pid, ticks = (int(part) for part in root.name.rsplit("-", 2)[1:])
        assert procfs.start_ticks(pid) != ticks  # what this process reads for it: 100,000 s of ticks earlier
        assert scratch.remove_orphans() == [] and root.is_dir()
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0 and not root.exists()


def test_a_sweep_started_from_python_removes_them_too(tmp: Path, tmp_path: Path, spec_dict: Any) -> None:
    """A notebook's kernel killed by the OOM killer runs no clean-up either; the next `sweep()` removes what it
    left, as the next command does."""
    from sweeps import sweep

    proc = _python(tmp, "kill")
    out, _ = proc.communicate(timeout=60)
    killed = Path(out.split()[0])
    assert proc.returncode == -signal.SIGKILL and killed.is_dir()
    sweep(spec_dict(study={"trials": 1}), storage=f"sqlite:///{tmp_path}/optuna.db",
          tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", progress=False)
    assert not killed.exists()
