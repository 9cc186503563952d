"""`usable_cores`: the CPUs a worker may really use (affinity mask, cgroup v1/v2 quota), which sizes TensorFlow's
thread pools in sweep workers so a CPU-limited pod or a `taskset` never runs more threads than it has CPUs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from siamese_core.cpus import ENV_MATH_THREADS, cgroup_cpu_quota, usable_cores


def _tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "proc_cgroup").write_text(proc)
    return root, tmp_path / "proc_cgroup"


def test_cgroup_v2_quota_binds_and_a_parent_quota_binds_too(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/kubepods/pod1/ctr\n", {
        "kubepods/pod1/ctr/cpu.max": "max 100000\n",      # the container itself: no limit
        "kubepods/pod1/cpu.max": "250000 100000\n",       # the pod: 2.5 CPUs
        "kubepods/cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(cgroup_root=root, proc_cgroup=proc) == pytest.approx(2.5)
    assert usable_cores(cgroup_root=root, proc_cgroup=proc) == min(2, len(os.sched_getaffinity(0)))


def test_cgroup_v1_cfs_quota_and_no_quota(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "4:memory:/x\n3:cpu,cpuacct:/\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_quota(cgroup_root=root, proc_cgroup=proc) == pytest.approx(1.0)
    assert usable_cores(cgroup_root=root, proc_cgroup=proc) == 1
    root2, proc2 = _tree(tmp_path / "b", "3:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n",
                                                          "cpu/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_quota(cgroup_root=root2, proc_cgroup=proc2) is None
    assert usable_cores(cgroup_root=root2, proc_cgroup=proc2) == len(os.sched_getaffinity(0))


@pytest.mark.skipif(shutil.which("taskset") is None or os.cpu_count() == 1, reason="needs taskset and 2+ CPUs")
def test_a_worker_under_taskset_sizes_tensorflow_to_its_cpus() -> None:
    """What `siamese-sweep worker` / `run` do before the preflight: one CPU allowed -> one-thread pools."""
    code = ("from sweeps.launch import threads_per_worker; from sweeps.runner import set_worker_threads; "
            "import tensorflow as tf; "
            "n = set_worker_threads(None); print(n, tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads(), threads_per_worker(2))")
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)
    assert done.stdout.split() == ["1", "1", "1", "1"]


_POOLS = "from threadpoolctl import threadpool_info; print(sorted({i['num_threads'] for i in threadpool_info()}))"
_WORKER_SHARE = f"""
import subprocess, sys
import numpy  # its OpenBLAS loads here, before the worker sizes anything
from sweeps.runner import set_worker_threads
set_worker_threads(1)
import sklearn.decomposition  # scipy's OpenBLAS and libgomp load after it
{_POOLS}
print(subprocess.run([sys.executable, "-c", "import numpy, sklearn.decomposition; {_POOLS}"],
                     capture_output=True, text=True, check=True).stdout.strip())
"""


@pytest.mark.skipif(usable_cores() < 2, reason="needs 2+ usable CPUs: on one, every pool has one thread anyway")
def test_a_worker_given_one_thread_has_one_thread_blas_and_openmp_pools_and_so_do_its_children() -> None:
    """`run --workers 2` on 2 cores gives each worker one TensorFlow thread; its BLAS threads (the PCA of the
    embedding plot) spun on the other worker's core (benchmarks/trial_plots.py)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_MATH_THREADS}
    done = subprocess.run([sys.executable, "-c", _WORKER_SHARE], capture_output=True, text=True, timeout=300,
                          check=True, env=env)
    assert done.stdout.split("\n")[:2] == ["[1]", "[1]"], done.stdout


def test_blas_and_openmp_pools_the_user_sized_are_left_alone() -> None:
    code = ("import os; from siamese_core.cpus import cap_math_threads; print(cap_math_threads(1)); "
            "print(os.environ['OPENBLAS_NUM_THREADS'], os.environ.get('OMP_NUM_THREADS'))")
    env = {**{k: v for k, v in os.environ.items() if k not in ENV_MATH_THREADS}, "OPENBLAS_NUM_THREADS": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                          env=env)
    assert done.stdout.split() == ["False", "3", "None"]
