"""Is there idle CPU beside a trial? One training command alone, then beside a CPU-bound process at idle
priority (``SCHED_IDLE``: it runs only when a core has nothing else to run), then beside one at normal
priority, interleaved A B C A B C ...

    python benchmarks/idle_neighbour.py [--repeats 2] [--quick]

The question behind it (issue 11.4, BENCHMARKS.md §2): could a trial's recording — plots, the model file,
uploads — run in a helper process at idle priority, on CPU that training leaves unused, without slowing the
training? If TensorFlow left a core idle between its operations, the idle-priority neighbour would get that CPU
and the trial would not slow down. Prints per condition the medians of the trial's wall seconds and second-epoch
``epoch_seconds``, their ratios to "alone", and the CPU seconds the neighbour got while the trial ran.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from common import markdown_table, median, run_measured

# The issue's trial shape (Fashion-MNIST, default conv encoder; round 1's quickstart trial, not today's MLP one),
# as benchmarks/allocator.py
TRAIN = ["train", "--set", "epochs=2", "--set", "pairs.pairs_per_epoch=20000", "--set", "pairs.val_pairs=2000",
         "--set", "pairs.test_pairs=10000", "--json", "--quiet"]
QUICK = ["train", "--set", "dataset=digits", "--set", "epochs=2", "--json", "--quiet"]
BURN = "while True:\n    pass\n"
IDLE = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n" + BURN
# A recording helper's work, bounded: a trial's three plots (sweeps.artifacts, at the benchmark's test shape:
# 10,000 test-pair distances, 2,000 64-d embeddings) drawn every 5 s at idle priority.
PLOTS = """import os, tempfile, time
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
from pathlib import Path
import numpy as np
from sweeps import artifacts
rng = np.random.default_rng(0)
distances, labels = rng.random(10_000), rng.integers(0, 2, 10_000)
embeddings, classes = rng.normal(size=(2_000, 64)), rng.integers(0, 10, 2_000)
history = [{"epoch": e, "loss": 1 / (e + 1), "val_loss": 1 / (e + 2), "val_roc_auc": 0.9} for e in range(4)]
out = Path(tempfile.mkdtemp(prefix="idle-neighbour-"))
while True:
    artifacts.plot_curves(history, out / "curves.png")
    artifacts.plot_distance_histogram(distances, labels, out / "hist.png", threshold=0.5)
    artifacts.plot_embeddings(embeddings, classes, out / "pca.png")
    time.sleep(5)
"""
CONDITIONS = {"alone": None, "beside an idle-priority (SCHED_IDLE) CPU burner": IDLE,
              "beside an idle-priority plot renderer (a trial's three plots every 5 s)": PLOTS,
              "beside a normal-priority CPU burner": BURN}


def neighbour(code: str | None) -> subprocess.Popen[bytes] | None:
    return None if code is None else subprocess.Popen([sys.executable, "-c", code])


def stop(proc: subprocess.Popen[bytes] | None) -> float:
    """Kill the neighbour; the CPU seconds it got."""
    if proc is None:
        return 0.0
    proc.kill()
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="digits instead of Fashion-MNIST (smoke run)")
    args = parser.parse_args()
    exe = shutil.which("siamese-sweep")
    cmd = ([exe] if exe else [sys.executable, "-m", "sweeps.cli"]) + (QUICK if args.quick else TRAIN)
    runs: dict[str, list[dict]] = {name: [] for name in CONDITIONS}
    for i in range(args.repeats):
        for name, code in CONDITIONS.items():
            proc = neighbour(code)
            try:
                r = run_measured(cmd)
            finally:
                r_cpu = stop(proc)
            out = json.loads(r.pop("stdout").strip().splitlines()[-1])
            r.update(epoch2=out["history"][-1]["epoch_seconds"], neighbour_cpu=r_cpu)
            runs[name].append(r)
            print(f"repeat {i + 1} {name}: wall {r['wall']:.1f} s, epoch 2 {r['epoch2']:.2f} s, "
                  f"neighbour CPU {r_cpu:.1f} s", file=sys.stderr)
    ref = {k: median([r[k] for r in runs["alone"]]) for k in ("wall", "epoch2")}
    rows = []
    for name, rs in runs.items():
        wall, epoch2 = median([r["wall"] for r in rs]), median([r["epoch2"] for r in rs])
        rows.append([name, wall, wall / ref["wall"], epoch2, epoch2 / ref["epoch2"],
                     " / ".join(f"{r['epoch2']:.2f}" for r in rs), median([r["neighbour_cpu"] for r in rs]),
                     median([r["user"] + r["sys"] for r in rs])])
    print(f"\n{'digits smoke run' if args.quick else 'the issue 11 trial shape (conv)'}: {' '.join(cmd[1:])}; "
          f"medians of {args.repeats} interleaved repeats, {os.cpu_count()} CPUs\n")
    print(markdown_table(["condition", "trial wall s", "x alone", "epoch 2 s", "epoch 2 x alone",
                          "repeats epoch 2 s", "neighbour CPU s", "trial CPU s"], rows))


if __name__ == "__main__":
    main()
