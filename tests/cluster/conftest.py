"""The `slurm_cluster` fixture: one private one-node Slurm cluster per test session.

Without the Slurm/MUNGE programs (or without root, which slurmd needs) the tests skip locally but
fail under CI=true, so a CI that forgot ``apt-get install slurm-wlm munge`` cannot go green.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .slurm_cluster import LocalSlurmCluster, find_binaries


def _require_slurm() -> None:
    try:
        find_binaries()
        if os.geteuid() != 0:
            raise PermissionError("the local Slurm cluster needs root (slurmd runs as root)")
    except (FileNotFoundError, PermissionError) as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurmCluster]:
    """A running cluster; ``slurm_cluster.env()`` is an environment whose ``SLURM_CONF`` points at it."""
    _require_slurm()
    with LocalSlurmCluster(cpus=2, kill_wait=30) as cluster:
        yield cluster
