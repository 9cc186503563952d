"""A test run leaves nothing in the checkout: tests/conftest.py runs every test in a scratch directory.

Why it must: MLflow puts a SQLite store's artifacts in ``./mlruns`` of the working directory, so before that
fixture each run of the suite from the checkout left about 300 runs' plots and models in its ``mlruns/``.
"""
from __future__ import annotations

from pathlib import Path

from .conftest import make_spec_dict, run_small_sweep

ROOT = Path(__file__).resolve().parents[2]


def _files(directory: Path) -> set[Path]:
    return set(directory.rglob("*")) if directory.is_dir() else set()


def test_tests_run_outside_the_checkout() -> None:
    assert not Path.cwd().resolve().is_relative_to(ROOT), Path.cwd()


def test_a_sweeps_artifacts_land_in_the_working_directory_not_in_the_checkout(local_stores: dict[str, str]) -> None:
    in_checkout = _files(ROOT / "mlruns")
    result = run_small_sweep(make_spec_dict(study={"trials": 1}), storage=local_stores["storage"],
                             tracking_uri=local_stores["tracking_uri"])
    assert result.budget_met
    # MLflow's default artifact root for a SQLite store is ./mlruns of the working directory: the reason for the
    # fixture (if MLflow changes it, the fixture may go)
    assert any(p.name.endswith(".png") for p in _files(Path.cwd() / "mlruns")), sorted(_files(Path.cwd()))[:20]
    assert _files(ROOT / "mlruns") == in_checkout
