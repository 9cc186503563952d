"""Loader benchmark: pairs/second, epoch-boundary gaps and peak memory, side by side in one run.

    python benchmarks/loaders.py            # Fashion-MNIST, 60k pairs x 3 epochs, median of 3 interleaved repeats
    python benchmarks/loaders.py --quick    # smoke run (~2 min)

Each measurement runs in its own process (clean TensorFlow state, clean peak
RSS from ``os.wait4``). Rows:

* ``memory`` / ``tfdata`` / ``custom`` — our loaders (`siamese_core.data.loaders`) on the same pairs;
* ``plain`` — the outside reference: a hand-written keras.io-style script, pair arrays -> ``model.fit``.

Throughput is measured over epochs 2..N (epoch 1 includes tracing) *including*
the time between epochs, so per-epoch gathering and idle stalls count.
``fit_return_gap`` is the time from the last ``on_epoch_end`` to the loader
returning (``fit()`` was seen to idle 5-40 s there, CPU idle, in 9 of 30 one-epoch
runs on 2 cores). A second table
shows peak RSS as ``pairs_per_epoch`` grows x10 (50 training steps each):
tfdata/custom hold only per-epoch index arrays, so they must stay flat.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from common import markdown_table, median, peak_rss_mb, rotated, run_child

LOADERS = ("memory", "tfdata", "custom")


# ----------------------------------------------------------------------------- child side
def _timer(max_steps: int | None) -> Any:
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.begin: list[float] = []
            self.end: list[float] = []
            self.steps = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.begin.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            self.end.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if max_steps and self.steps >= max_steps:
                self.model.stop_training = True

    return Timer()


def _summarise(name: str, timer: Any, t_start: float, t_return: float, pairs: int, batch: int,
               extra: dict[str, Any]) -> dict[str, Any]:
    durations = [e - b for b, e in zip(timer.begin, timer.end, strict=False)]
    gaps = [timer.begin[k + 1] - timer.end[k] for k in range(len(timer.end) - 1)]
    n = len(timer.end)
    steady = (pairs * (n - 1) / (timer.end[-1] - timer.end[0])) if n > 1 else pairs / durations[0]
    return {
        "loader": name, "pairs_per_epoch": pairs, "batch_size": batch, "epochs": n, "steps": timer.steps,
        "pairs_per_s": steady,
        "in_epoch_pairs_per_s": pairs / median(durations[1:] or durations),
        "first_epoch_s": durations[0], "epoch_s": durations,
        "setup_s": timer.begin[0] - t_start, "boundary_gap_max_s": max(gaps, default=0.0), "boundary_gaps_s": gaps,
        "fit_return_gap_s": t_return - timer.end[-1], "self_peak_rss_mb": peak_rss_mb(), **extra,
    }


def child_ours(args: argparse.Namespace) -> dict[str, Any]:
    from siamese_core.config import TrainConfig
    from siamese_core.data.loaders import get_loader
    from siamese_core.data.sources import load_dataset
    from siamese_core.run import build_run
    from siamese_core.runtime import seed_everything

    overrides = {"loader": args.child, "pairs.pairs_per_epoch": args.pairs, "batch_size": args.batch,
                 "epochs": args.epochs, "seed": args.seed, "pairs.val_pairs": 20, "pairs.test_pairs": 20}
    if args.model == "keras_io":
        overrides.update({"encoder.type": "common:keras_io_encoder", "preprocessing.normalize": "none"})
    config = TrainConfig().with_overrides(overrides)
    data = load_dataset(config)
    seed_everything(config.seed)
    run = build_run(config, data)
    timer = _timer(args.max_steps)
    model = run.models.training
    t_start = time.perf_counter()
    get_loader(args.child).run(model, run.plan, [timer], epochs=args.epochs)
    t_return = time.perf_counter()
    return _summarise(args.child, timer, t_start, t_return, args.pairs, args.batch,
                      {"params": int(model.count_params())})


def child_plain(args: argparse.Namespace) -> dict[str, Any]:
    """keras.io style: build the pair arrays once, hand them to fit (same pairs as our epoch 0)."""
    import keras
    import numpy as np
    from common import keras_io_loss, keras_io_siamese

    from siamese_core.config import TrainConfig
    from siamese_core.data.pairs import PairSampler
    from siamese_core.data.sources import load_dataset
    from siamese_core.data.types import LabeledSplit, materialize

    config = TrainConfig().with_overrides({"seed": args.seed})
    data = load_dataset(config)
    keras.utils.set_random_seed(args.seed)
    t = PairSampler(data.train.y, seed=args.seed, pairs_per_epoch=args.pairs).epoch(0)
    assert isinstance(data.train, LabeledSplit)  # Fashion-MNIST: class-labelled images
    x = materialize(data.train.x).astype("float32")  # keras.io: float pixels 0..255, BatchNormalization first
    x1, x2 = x[t.indices[:, 0]], x[t.indices[:, 1]]
    model, _ = keras_io_siamese(x.shape[1:])
    model.compile(loss=keras_io_loss(1.0), optimizer="rmsprop")
    timer = _timer(args.max_steps)
    t_start = time.perf_counter()
    model.fit([x1, x2], t.targets, batch_size=args.batch, epochs=args.epochs, verbose=0, callbacks=[timer])
    t_return = time.perf_counter()
    del x1, x2, np
    return _summarise("plain", timer, t_start, t_return, args.pairs, args.batch,
                      {"params": int(model.count_params())})


# ----------------------------------------------------------------------------- parent side
def child_args(name: str, args: argparse.Namespace, *, pairs: int, epochs: int,
               max_steps: int | None = None) -> list[str]:
    out = [__file__, "--child", name, "--pairs", str(pairs), "--epochs", str(epochs), "--batch", str(args.batch),
           "--seed", str(args.seed), "--model", args.model]
    return out + (["--max-steps", str(max_steps)] if max_steps else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (small pairs, 1 repeat)")
    p.add_argument("--pairs", type=int, default=60_000, help="pairs per epoch for throughput")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rss-pairs", type=int, default=108_000, help="base pairs_per_epoch of the RSS scaling table")
    p.add_argument("--model", choices=("keras_io", "default"), default="keras_io",
                   help="keras_io: the 5k-param tanh tower (loader overhead shows); default: our default encoder")
    p.add_argument("--loaders", default="plain,memory,tfdata,custom")
    p.add_argument("--no-rss", action="store_true", help="skip the RSS scaling table")
    p.add_argument("--json", metavar="FILE", help="also write all raw results here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        result = child_plain(args) if args.child == "plain" else child_ours(args)
        print(json.dumps(result))
        return

    if args.quick:
        args.pairs, args.epochs, args.repeats, args.rss_pairs = 6_400, 2, 1, 10_000
    names = [n for n in args.loaders.split(",") if n]
    if args.model != "keras_io" and "plain" in names:
        names.remove("plain")  # the plain script is the keras.io model only
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    print(f"# loaders on Fashion-MNIST: {args.pairs:,} pairs/epoch x {args.epochs} epochs, batch {args.batch}, "
          f"model {args.model}, median of {args.repeats} interleaved repeats", file=sys.stderr)
    for rep in range(args.repeats):
        for name in rotated(names, rep):
            r = run_child(child_args(name, args, pairs=args.pairs, epochs=args.epochs))
            results[name].append(r)
            print(f"  repeat {rep + 1} {name:7s} {r['pairs_per_s']:8.0f} pairs/s  first epoch {r['first_epoch_s']:.1f}s"
                  f"  gaps {max(r['boundary_gaps_s'], default=0):.2f}s  return {r['fit_return_gap_s']:.2f}s"
                  f"  rss {r['peak_rss_mb']:.0f} MiB", file=sys.stderr, flush=True)

    ref = median([r["pairs_per_s"] for r in results["memory"]]) if "memory" in results else float("nan")
    rows = []
    for name in names:
        rs = results[name]
        pps = median([r["pairs_per_s"] for r in rs])
        rows.append([name, pps, pps / ref, median([r["in_epoch_pairs_per_s"] for r in rs]),
                     median([r["first_epoch_s"] for r in rs]),
                     max(r["boundary_gap_max_s"] for r in rs), max(r["fit_return_gap_s"] for r in rs),
                     median([r["peak_rss_mb"] for r in rs]), rs[0]["params"]])
    print(f"\n### Throughput ({args.pairs:,} pairs/epoch, {args.epochs} epochs, batch {args.batch}, "
          f"median of {args.repeats})\n")
    print(markdown_table(["loader", "pairs/s (epochs 2+)", "x memory", "in-epoch pairs/s", "epoch 1 s",
                          "max epoch gap s", "max fit-return gap s", "peak RSS MiB", "params"], rows))

    if not args.no_rss:
        rss_rows = []
        scaling: dict[str, list[dict[str, Any]]] = {}
        for name in [n for n in LOADERS if n in names]:
            for mult in (1, 10):
                r = run_child(child_args(name, args, pairs=args.rss_pairs * mult, epochs=1, max_steps=50))
                scaling.setdefault(name, []).append(r)
                print(f"  rss {name:7s} x{mult:<3d} {r['peak_rss_mb']:.0f} MiB", file=sys.stderr, flush=True)
            a, b = scaling[name]
            rss_rows.append([name, a["peak_rss_mb"], b["peak_rss_mb"], b["peak_rss_mb"] / a["peak_rss_mb"]])
        print("\n### Peak RSS as pairs_per_epoch grows x10 (50 steps each)\n")
        print(markdown_table(["loader", f"{args.rss_pairs:,} pairs MiB", f"{args.rss_pairs * 10:,} pairs MiB",
                              "ratio"], rss_rows))
        results["rss_scaling"] = [r for rs in scaling.values() for r in rs]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
