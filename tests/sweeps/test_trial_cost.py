"""Issue 11.4: what a worker does around its trials costs little — pinned by behaviour, not by timings
(the times are in benchmarks/tracking_overhead.py and BENCHMARKS.md §2)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
