"""Issue 11.4: what a worker does around its trials costs little — pinned by behaviour, not by timings
(the times are in benchmarks/tracking_overhead.py and BENCHMARKS.md §2)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import make_spec_dict

# Runs in a fresh process, as a `worker` does: the parent pytest process may have frozen its own objects.
_WORKER = """
import gc, json, sys
import siamese_core.training  # TensorFlow and Keras, as a worker has them when its first trial starts
gc.collect()
imported = len(gc.get_objects())
from sweeps.spec import spec_from_dict
from sweeps.study import open_study
from sweeps.tracking import Tracker
from sweeps.worker import run_worker
tmp = sys.argv[1]
spec = spec_from_dict(json.loads(sys.argv[2]))
opened = open_study(spec, storage_url=f"sqlite:///{tmp}/optuna.db", study_name="frozen")
seen = []
run_worker(spec, opened, Tracker(f"sqlite:///{tmp}/mlflow.db"), checkpoint_root=None,
           on_trial=lambda study, frozen: seen.append((frozen.state.name, gc.get_freeze_count())))
print(json.dumps({"imported": imported, "seen": seen}))
"""


def test_a_worker_freezes_its_long_lived_objects_before_the_first_trial(tmp_path: Path) -> None:
    """Without the freeze each trial's closing gc.collect walks every TensorFlow object (0.20 s a trial)."""
    spec = make_spec_dict(study={"trials": 2}, tracking={"log_models": False})
    out = subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path), json.dumps(spec)], capture_output=True,
                         text=True, timeout=600, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert [state for state, _ in report["seen"]] == ["COMPLETE", "COMPLETE"]
    # the permanent generation holds at least what importing TensorFlow and Keras made (~500,000 objects)
    assert all(frozen >= 0.9 * report["imported"] for _, frozen in report["seen"]), report


def test_the_allocator_is_probed_once_per_worker_process_not_at_every_trial(monkeypatch: Any) -> None:
    """The probe (20 rounds of 24 MiB) took 24 ms of every trial's start (cProfile) for the same answer each time."""
    from siamese_core import allocator
    from sweeps import names
    from sweeps.objective import allocator_tags

    calls: list[int] = []
    monkeypatch.setattr(allocator, "probe", lambda: calls.append(1) or 0.5)
    allocator_tags.cache_clear()
    try:
        first, second = allocator_tags(), allocator_tags()
    finally:
        allocator_tags.cache_clear()  # the next caller measures this process's allocator for itself
    assert len(calls) == 1
    assert first == second and first[names.TAG_ALLOCATOR_REFAULTS] == "0.500"


def test_the_freeze_collects_only_the_young_generations_first(monkeypatch: Any) -> None:
    """A full collection before the freeze took 0.33 s of every sweep's start to find 23 unreachable objects."""
    from sweeps import worker

    calls: list[tuple[int, ...]] = []
    monkeypatch.setattr(worker, "_FROZEN", False)
    monkeypatch.setattr(worker.gc, "collect", lambda *args: calls.append(args) or 0)
    monkeypatch.setattr(worker.gc, "freeze", lambda: calls.append(("freeze",)))  # type: ignore[arg-type]
    worker.freeze_long_lived()
    worker.freeze_long_lived()  # once per process
    assert calls == [(1,), ("freeze",)]
