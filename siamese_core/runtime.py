"""Process-level set-up: seeds, determinism, CPU threads.

Thread counts must be set before TensorFlow runs its first op, so sweeps call
`configure_threads` at worker start — N workers on N cores then don't
oversubscribe the CPU (two TensorFlow processes with default thread pools on
2 cores slowed an epoch from about 38 s to over 60 s). TensorFlow's C++ log
level is set where TensorFlow is first imported: `siamese_core/__init__`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import keras
import tensorflow as tf

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def usable_cores(*, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """CPUs this process can really use: its affinity mask (taskset, Slurm's cpuset), capped by a cgroup CPU
    quota (Kubernetes ``limits.cpu``, ``docker --cpus``). ``os.cpu_count()`` and TensorFlow's default pools
    see neither the quota nor, for cpu_count, the mask: a pod limited to 2 CPUs on a 64-core node would run
    64 threads per pool and be throttled."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root=cgroup_root, proc_cgroup=proc_cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))  # floor: 1.5 CPUs of quota run 1 thread unthrottled
    return max(1, cores)


def cgroup_cpu_quota(*, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup path, v2 ``cpu.max`` or v1 CFS; None: no quota."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found: list[float] = []
    files: tuple[str, ...]
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:  # cgroup v2: "0::/path", files cpu.max = "quota period"
            base, files = cgroup_root, ("cpu.max",)
        elif "cpu" in controllers.split(","):  # cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us
            base, files = cgroup_root / controllers, ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        directory = base / path.lstrip("/")
        while True:  # a parent's quota binds too; in a container the path is often just "/"
            quota = _read_quota(directory, files)
            if quota is not None:
                found.append(quota)
            if directory == base or base not in directory.parents:
                break
            directory = directory.parent
    return min(found) if found else None


def _read_quota(directory: Path, files: tuple[str, ...]) -> float | None:
    try:
        if len(files) == 1:
            quota, period = (directory / files[0]).read_text().split()[:2]
        else:
            quota, period = ((directory / name).read_text().strip() for name in files)
        if quota in ("max", "-1") or float(period) <= 0:
            return None
        return float(quota) / float(period)
    except (OSError, ValueError):
        return None


def configure_threads(intra_op: int | None = None, inter_op: int | None = None) -> None:
    """Cap TensorFlow's thread pools (call before any TF op runs in this process)."""
    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError:
        pass  # TF already initialised: the existing pools stay


def thread_counts() -> tuple[int, int]:
    """(intra-op, inter-op) pool sizes TensorFlow uses in this process (0: its default, one per core)."""
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and TF; optionally make TF ops bit-exact (slower)."""
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
