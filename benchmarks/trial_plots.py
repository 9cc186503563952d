"""What a trial's three plots cost the process that draws them: kept figures against a new figure per plot,
interleaved in one process.

Every tracked trial draws the curves, the test-distance histogram and the embedding projection
(`sweeps.artifacts.draw_trial_plots`), in line in the worker's thread or in the recording helper. The figures are
kept by the process and redrawn with each trial's data (`sweeps.artifacts._Kept`); the other way is what it did
before: a new figure for each plot (here: the kept figures dropped before each draw, so each draw makes new
ones). Each round draws one trial's plots both ways, alternating which goes first, every trial with other data
(seeded, at the shape of `benchmarks/tracking_overhead.py`'s trials: 4 epochs, 10,000 test distances, 2,000
64-d embeddings of 10 classes, their ranges varied per trial so that tick labels differ). After the imports,
``gc.freeze()`` as a sweep worker does. CPU seconds of this process (user + sys) and wall seconds per trial,
medians, the ratio of the medians, and whether both ways drew the same pixels.

``--threads N``: BLAS and OpenMP pools of N threads, as in a sweep worker given N threads
(`siamese_core.cpus.cap_math_threads`, which `sweeps.runner.set_worker_threads` calls); without it, the
libraries' defaults (a thread per core), as before that cap.

    python benchmarks/trial_plots.py [--repeats 20] [--threads 1]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, timed  # noqa: E402

from sweeps import artifacts  # noqa: E402
from sweeps.artifacts import PlotInputs  # noqa: E402


def trial_inputs(seed: int) -> PlotInputs:
    """Plot inputs shaped like a tracked trial's, with this trial's own ranges."""
    rng = np.random.default_rng(seed)
    scale = float(rng.uniform(0.3, 3.0))
    labels = rng.integers(0, 2, 10_000)
    distances = np.where(labels == 1, rng.gamma(2.0, 0.15, 10_000), rng.gamma(4.0, 0.25, 10_000)) * scale
    classes = rng.integers(0, 10, 2_000)
    centres = rng.normal(size=(10, 64)) * scale
    embeddings = (centres[classes] + rng.normal(scale=0.5 * scale, size=(2_000, 64))).astype("float32")
    loss0 = float(rng.uniform(0.2, 1.5))
    history = [{"epoch": e, "loss": loss0 / (e + 1), "val_loss": 1.1 * loss0 / (e + 1),
                "val_pair_accuracy": 0.7 + 0.05 * e * rng.random(), "val_roc_auc": 0.8 + 0.04 * e * rng.random()}
               for e in range(4)]
    return PlotInputs(history=history, arrays={"distances": distances, "labels": labels, "embeddings": embeddings,
                                               "embedding_labels": classes},
                      threshold=float(np.median(distances)), higher_is_same=False)


def pixels(directory: Path) -> list[bytes]:
    import matplotlib.image

    return [matplotlib.image.imread(p).tobytes() for p in sorted(directory.glob("*.png"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, help="BLAS/OpenMP threads, as a worker given this many")
    args = ap.parse_args()
    if args.threads:
        from siamese_core.cpus import cap_math_threads

        if not cap_math_threads(args.threads):
            raise SystemExit("--threads: unset OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS first")

    work = Path(tempfile.mkdtemp(prefix="bench-trial-plots-"))
    kept_dir, new_dir = work / "kept", work / "new"
    kept_dir.mkdir()
    new_dir.mkdir()
    artifacts.warm_up()
    artifacts.draw_trial_plots(trial_inputs(10_000), kept_dir)  # the kept figures exist, as after a first trial
    gc.collect()
    gc.freeze()

    def kept(inputs: PlotInputs) -> Callable[[], None]:
        def draw() -> None:
            artifacts.draw_trial_plots(inputs, kept_dir)
        return draw

    def new(inputs: PlotInputs) -> Callable[[], None]:
        def draw() -> None:
            artifacts._Kept.kept.clear()  # before: a new figure for every plot (the next round keeps these)
            artifacts.draw_trial_plots(inputs, new_dir)
        return draw

    times: dict[str, list[tuple[float, float]]] = {"kept figures (now)": [], "a new figure per plot (before)": []}
    same = 0
    for r in range(args.repeats):
        inputs = trial_inputs(r)
        ways = [("kept figures (now)", kept(inputs)), ("a new figure per plot (before)", new(inputs))]
        for name, draw in (ways if r % 2 == 0 else ways[::-1]):
            times[name].append(timed(draw))
        same += pixels(kept_dir) == pixels(new_dir)
    medians = {name: (statistics.median(c for c, _ in pairs) * 1000, statistics.median(w for _, w in pairs) * 1000)
               for name, pairs in times.items()}
    (now_cpu, now_wall), (before_cpu, before_wall) = medians.values()
    rows: list[list[object]] = [[name, cpu_ms, wall_ms] for name, (cpu_ms, wall_ms) in medians.items()]
    rows.append(["ratio now / before", now_cpu / before_cpu, now_wall / before_wall])
    from threadpoolctl import threadpool_info

    pools = sorted({f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info()})
    print(f"\nthree plots per trial, {args.repeats} trials, each drawn both ways (alternating which first); "
          f"thread pools: {', '.join(pools)}\n")
    print(markdown_table(["way", "CPU ms per trial", "wall ms per trial"], rows))
    print(f"\nthe same pixels both ways: {same} of {args.repeats} trials")


if __name__ == "__main__":
    main()
