"""A throwaway one-node Slurm cluster for tests: munged, slurmctld and slurmd as real processes.

Everything is private to one temporary directory: the MUNGE key and socket, ``slurm.conf``, the
controller's state, slurmd's spool, pid and log files; both daemons listen on free ports. Nothing
under /etc, /run or /var is read or written, so it runs beside a real Slurm or MUNGE install, and two
test sessions never share a cluster. Clients reach it through ``SLURM_CONF`` (`env()`).

Facts this relies on (Debian 12, ``slurm-wlm`` 22.05 and ``munge`` 0.5.15):

* ``munged`` runs as root with ``--socket/--key-file/--pid-file/--log-file/--seed-file`` pointing
  anywhere, but refuses a socket directory without ``o+x``: the cluster root is 0755, the key sits in
  a 0700 sub-directory. Slurm talks to it through ``AuthInfo=socket=...``.
* slurmd must run as root and its node name must be ``hostname -s``; slurmctld checks that
  ``SlurmctldHost`` is this host. ``NodeAddr``/``SlurmctldHost(addr)`` are 127.0.0.1 so nothing depends
  on the host name resolving.
* Without systemd or cgroups: ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``,
  ``JobAcctGatherType=jobacct_gather/none``. No slurmdbd, so no ``sacct``: finished jobs stay visible
  to ``scontrol show job`` for ``MinJobAge`` seconds.
* ``slurmstepd`` (one per running job step) calls setsid() and is re-parented to init, so it is not in
  any daemon's process tree; it keeps slurmd's log file open, which is how `stop()` recognises the
  stragglers of *this* cluster.
* Slurm's time-limit checks run every 30 s, so ``--signal=...@N`` and ``--time`` act with up to ~30 s of
  delay.

Readiness is polled (``munge -n``, ``scontrol ping``, ``sinfo``), never slept for.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.stack._process import ServerStartError, alive, free_port, tail, terminate_tree, wait_until

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "sbatch", "scontrol", "sinfo", "squeue", "scancel")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}


def find_binaries() -> dict[str, str]:
    """Paths of the Slurm and MUNGE programs; FileNotFoundError names what is missing and how to get it."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    found = {name: shutil.which(name, path=search) for name in DAEMONS + CLIENTS}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        raise FileNotFoundError(f"Slurm/MUNGE programs not found: {', '.join(missing)} "
                                f"(apt-get install slurm-wlm munge, or scripts/setup.sh --test)")
    return {k: str(v) for k, v in found.items()}


def short_hostname() -> str:
    """What ``hostname -s`` prints: the node name slurmd insists on."""
    return socket.gethostname().split(".")[0]


@dataclass
class Job:
    """One job (or array task) as ``scontrol show job -o`` reports it."""

    fields: dict[str, str]

    @property
    def job_id(self) -> str:
        return self.fields["JobId"]

    @property
    def task_id(self) -> int | None:
        value = self.fields.get("ArrayTaskId", "")
        return int(value) if value.isdigit() else None

    @property
    def state(self) -> str:
        return self.fields.get("JobState", "")

    @property
    def exit_code(self) -> int:
        """The batch script's exit status (``ExitCode=2:0`` -> 2)."""
        return int(self.fields.get("ExitCode", "0:0").split(":")[0])

    @property
    def exit_signal(self) -> int:
        return int(self.fields.get("ExitCode", "0:0").split(":")[1])

    @property
    def restarts(self) -> int:
        return int(self.fields.get("Restarts", "0"))

    @property
    def stdout(self) -> Path:
        return Path(self.fields["StdOut"])

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


def parse_jobs(text: str) -> list[Job]:
    """Parse ``scontrol -o show job`` (one job per line, ``Key=Value`` separated by spaces)."""
    jobs = []
    for line in text.splitlines():
        if "JobId=" not in line:
            continue
        # values never contain " Key=" but some contain spaces (Command, Reason): split on the keys
        parts = re.split(r" (?=[A-Za-z/:]+=)", line.strip())
        jobs.append(Job(dict(p.split("=", 1) for p in parts if "=" in p)))
    return jobs


@dataclass
class LocalSlurmCluster:
    """Start with ``with LocalSlurmCluster() as cluster:``; ``cluster.env()`` points clients at it."""

    cpus: int = 2
    kill_wait: int = 30
    min_job_age: int = 900
    ready_timeout: float = 60.0
    root: Path | None = None
    bins: dict[str, str] = field(default_factory=dict)
    node: str = field(default_factory=short_hostname)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _own_root: bool = False

    # ------------------------------------------------------------------ paths
    @property
    def conf(self) -> Path:
        assert self.root is not None
        return self.root / "slurm.conf"

    @property
    def socket(self) -> Path:
        assert self.root is not None
        return self.root / "run" / "munge.socket"

    def log(self, name: str) -> Path:
        assert self.root is not None
        return self.root / "log" / f"{name}.log"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for Slurm clients (sbatch, squeue, ...) of this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        for key in [k for k in env if k.startswith(("SBATCH_", "SLURM_")) and k != "SLURM_CONF"]:
            env.pop(key)  # a developer's own defaults (SBATCH_PARTITION, ...) must not leak in
        return env

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalSlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise PermissionError("slurmd must run as root: a local Slurm cluster needs root")
        self.bins = self.bins or find_binaries()
        if self.root is None:
            # short path (the MUNGE socket path must fit in sun_path) outside pytest's 0700 basetemp
            self.root = Path(tempfile.mkdtemp(prefix="slurm-"))
            self._own_root = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        assert self.root is not None
        root = self.root
        os.chmod(root, 0o755)  # munged: every directory above its socket needs o+x
        for sub, mode in (("munge", 0o700), ("run", 0o755), ("log", 0o755), ("state", 0o700), ("spool", 0o755)):
            (root / sub).mkdir(mode=mode, exist_ok=True)
        key = root / "munge" / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(1024))

        self._spawn("munged", [self.bins["munged"], "--foreground", f"--socket={self.socket}",
                               f"--key-file={key}", f"--pid-file={root / 'run' / 'munged.pid'}",
                               f"--log-file={self.log('munged')}", f"--seed-file={root / 'munge' / 'seed'}"])
        wait_until(lambda: self.socket.exists() and self._ok([self.bins["munge"], "-n", "-S", str(self.socket)]),
                   timeout=self.ready_timeout, proc=self._procs["munged"], what="munged",
                   log_path=self.log("munged"))

        self.conf.write_text(self.render_conf(free_port(), free_port()))
        self._spawn("slurmctld", [self.bins["slurmctld"], "-D", "-f", str(self.conf)])
        wait_until(lambda: "is UP" in self._out([self.bins["scontrol"], "ping"]), timeout=self.ready_timeout,
                   proc=self._procs["slurmctld"], what="slurmctld", log_path=self.log("slurmctld"))
        self._spawn("slurmd", [self.bins["slurmd"], "-D", "-f", str(self.conf), "-N", self.node])
        wait_until(lambda: self._out([self.bins["sinfo"], "-h", "-N", "-o", "%T"]).strip() == "idle",
                   timeout=self.ready_timeout, proc=self._procs["slurmd"], what="slurmd (node idle)",
                   log_path=self.log("slurmd"))

    def render_conf(self, ctld_port: int, slurmd_port: int) -> str:
        assert self.root is not None
        r = self.root
        lines = {
            "ClusterName": "siamtest",
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmctldPort": ctld_port,
            "SlurmdPort": slurmd_port,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "AuthInfo": f"socket={self.socket}",
            "CredType": "cred/munge",
            "StateSaveLocation": r / "state",
            "SlurmdSpoolDir": r / "spool",
            "SlurmctldPidFile": r / "run" / "slurmctld.pid",
            "SlurmdPidFile": r / "run" / "slurmd.pid",
            "SlurmctldLogFile": self.log("slurmctld"),
            "SlurmdLogFile": self.log("slurmd"),
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            # the node may declare fewer CPUs than the machine has: tests see exactly `cpus`
            "SlurmdParameters": "config_overrides",
            "MpiDefault": "none",
            "ReturnToService": 2,
            "MailProg": "/bin/true",
            "KillWait": self.kill_wait,
            "MinJobAge": self.min_job_age,
            "SchedulerParameters": "sched_interval=1",
        }
        text = "".join(f"{k}={v}\n" for k, v in lines.items())
        text += f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN\n"
        text += f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n"
        return text

    def _spawn(self, name: str, cmd: list[str]) -> None:
        assert self.root is not None
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURM_CONF": str(self.conf), "LANG": "C.UTF-8"}
        with open(self.root / "log" / f"{name}.out", "ab") as out:
            self._procs[name] = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True)

    def _run(self, cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)

    def _ok(self, cmd: list[str]) -> bool:
        try:
            return self._run(cmd, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _out(self, cmd: list[str]) -> str:
        try:
            res = self._run(cmd, timeout=10)
        except subprocess.TimeoutExpired:
            return ""
        return res.stdout if res.returncode == 0 else ""

    def stop(self) -> None:
        """Cancel every job, wait for it to end, stop the daemons; then remove the directory we made."""
        if "slurmd" in self._procs and self._procs["slurmd"].poll() is None:
            with contextlib.suppress(Exception):
                self._run([self.bins["scancel"], "--full", "--user", str(os.geteuid())])
                deadline = time.monotonic() + self.kill_wait + 15
                while self._out([self.bins["squeue"], "-h", "-o", "%i"]).strip() and time.monotonic() < deadline:
                    time.sleep(0.5)
        stragglers = self._job_processes()
        for name in reversed(DAEMONS):
            proc = self._procs.pop(name, None)
            if proc is not None:
                terminate_tree(proc, timeout=15)
        for pid in stragglers + self._job_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _job_processes(self) -> list[int]:
        """slurmstepd processes of this cluster (they hold our slurmd log open) and everything below them."""
        from sweeps.stack._process import descendants

        if self.root is None:
            return []
        ours = str(self.log("slurmd"))
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if not Path(f"/proc/{entry}/cmdline").read_bytes().startswith(b"slurmstepd"):
                    continue
                if any(os.readlink(f"/proc/{entry}/fd/{fd}") == ours for fd in os.listdir(f"/proc/{entry}/fd")):
                    pids.append(int(entry))
            except OSError:
                continue
        return [p for pid in pids for p in (pid, *descendants(pid)) if alive(p)]

    # ------------------------------------------------------------------ client helpers
    def jobs(self, job_id: str | int) -> list[Job]:
        """The job, or every task of an array job, by id (empty once slurmctld has purged it)."""
        return parse_jobs(self._out([self.bins["scontrol"], "-o", "show", "job", str(job_id)]))

    def wait_finished(self, job_id: str | int, *, timeout: float, count: int | None = None) -> list[Job]:
        """Poll until every task of `job_id` is in a final state (at least `count` tasks, if given)."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs(job_id)
            if jobs and all(j.finished for j in jobs) and (count is None or len(jobs) >= count):
                return jobs
            if time.monotonic() > deadline:
                states = [(j.job_id, j.task_id, j.state) for j in jobs]
                raise AssertionError(f"job {job_id} not finished after {timeout:.0f} s: {states}\n"
                                     f"slurmctld log:\n{tail(self.log('slurmctld'))}")
            time.sleep(0.5)

    def scancel(self, *args: str) -> None:
        res = self._run([self.bins["scancel"], *args])
        if res.returncode != 0:
            raise RuntimeError(f"scancel {' '.join(args)} failed: {res.stderr.strip()}")

    def scontrol(self, *args: str) -> str:
        res = self._run([self.bins["scontrol"], *args])
        if res.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout


__all__ = ["Job", "LocalSlurmCluster", "ServerStartError", "find_binaries", "parse_jobs", "short_hostname"]
