"""Fixtures for the diagnostics tests: real data written the way users write it, and a doctor runner.

Buggy user code lives in ``tests/fixtures/buggy`` (importable as ``buggy.*`` — ``tests/conftest.py`` puts
``tests/fixtures`` on ``sys.path``; subprocesses get it through ``PYTHONPATH``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def digits_255() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as 0-255 uint8 pixels (what a user's image .npz looks like)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.clip(d.images * 16, 0, 255).astype(np.uint8), d.target.astype(np.int64)


def make_pairs(x: np.ndarray, y: np.ndarray, n: int, *, positive_fraction: float = 0.5, seed: int = 0,
               zero_is_same: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs as forum code builds them; ``zero_is_same`` is keras.io's make_pairs convention."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(y), n)
    same = rng.random(n) < positive_fraction
    b = np.array([rng.choice(np.flatnonzero((y == y[i]) if s else (y != y[i]))) for i, s in zip(a, same, strict=True)])
    labels = same.astype(np.float32)
    return x[a], x[b], (1.0 - labels) if zero_is_same else labels


@pytest.fixture(scope="session")
def digits255_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = digits_255()
    path = tmp_path_factory.mktemp("data") / "digits255.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def write_npz(tmp_path: Path):
    def write(name: str, **arrays: Any) -> Path:
        path = tmp_path / name
        np.savez(path, **arrays)
        return path
    return write


def codes(findings: list[Any]) -> dict[str, str]:
    """code -> severity."""
    return {f.code: f.severity for f in findings}


def errors(findings: list[Any]) -> list[str]:
    return [f"{f.code}: {f.message}" for f in findings if f.is_error]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=str(FIXTURES.parents[1]), check=False)
