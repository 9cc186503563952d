"""The CPUs this process may really use (affinity mask, cgroup CPU quota), without importing TensorFlow.

Apart from `siamese_core.runtime` (which imports TensorFlow) because the parent of ``run --workers N`` sizes its
workers' thread pools from it: importing TensorFlow there only to count cores took 4.8 s of the parent's time
before it started its workers (measured on the 2-vCPU Xeon, `python -c` timing `from siamese_core.runtime import
usable_cores` after the sweep's own imports), time in which no trial can start.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from threadpoolctl import threadpool_limits

# the thread pools of BLAS (numpy's and scipy's OpenBLAS, MKL) and OpenMP (scikit-learn's libgomp): each library
# reads its variable when it loads, so they also size the libraries a process loads later and its children
ENV_MATH_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
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


def cap_math_threads(threads: int) -> bool:
    """BLAS and OpenMP pools of at most `threads` in this process and the processes it starts, as TensorFlow's
    (`sweeps.runner.set_worker_threads`); False, and nothing changed, where the user has set any of
    `ENV_MATH_THREADS`.

    Why: a worker given one core of two (``run --workers 2``) sized TensorFlow's pools only. OpenBLAS started a
    thread per core at its first call (the PCA of a trial's embedding plot) and they spin for a while after each
    call: a trial's three plots took 310 ms of CPU with two BLAS threads against 211 ms with one, in 227 and 211 ms
    of wall time (`benchmarks/trial_plots.py`, without and with ``--threads 1``): 0.1 s per trial taken from the
    core the other worker trains on. Libraries already loaded (numpy's OpenBLAS) are resized through threadpoolctl,
    the others by the variables.
    """
    if any(os.environ.get(name) for name in ENV_MATH_THREADS):
        return False
    for name in ENV_MATH_THREADS:
        os.environ[name] = str(int(threads))
    threadpool_limits(limits=int(threads))  # not a `with`: the limit stays for the process's life
    return True
