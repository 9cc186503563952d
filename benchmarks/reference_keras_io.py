"""Our default config vs the keras.io contrastive example's recipe at an equal budget: same pairs, same epochs.

    python benchmarks/reference_keras_io.py --epochs 4 --pairs 20000 --seeds 0 1 2 [--dataset mnist]
    python benchmarks/reference_keras_io.py --quick      # 1 epoch, 12,800 pairs (smoke run)

(`keras_io_reproduction.py` first reproduces the example at its own published settings.)

Rows (each in its own process):

* ``ours: default config`` — ``train(TrainConfig(dataset=fashion_mnist, epochs=E))``.
* ``keras.io example`` — the example's recipe as published (2026-01-28): the tanh tower, euclidean distance as
  the output, its contrastive loss with label 0 = same, RMSprop at Keras' default rate, batch 16, trained with
  ``fit`` on *the same pairs* our sampler gives each epoch. Its accuracy is reported at its own threshold
  (distance > 0.5 is "different") and at a threshold calibrated on our validation pairs.
* ``keras.io tower in our pipeline`` — the same tower as a user encoder
  (``encoder.type: common:keras_io_encoder``) with our loss/distance/optimizer defaults.

All rows are scored on the identical test pairs (our `EvalSet`, seed 0).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Literal

from common import markdown_table, mean_sd, run_child


def _config(args: argparse.Namespace, **extra: Any) -> Any:
    from siamese_core.config import TrainConfig

    overrides = {"epochs": args.epochs, "seed": args.seed, **extra}
    if args.pairs:
        overrides["pairs.pairs_per_epoch"] = args.pairs
    for item in args.set or ():
        key, _, value = item.partition("=")
        import yaml
        overrides[key] = yaml.safe_load(value)
    return TrainConfig.from_dict({"dataset": args.dataset}).with_overrides(overrides)


def child_ours(args: argparse.Namespace, *, tower: bool) -> dict[str, Any]:
    from siamese_core.training import train

    extra = {"encoder.type": "common:keras_io_encoder"} if tower else {}
    t0 = time.perf_counter()
    r = train(_config(args, **extra))
    secs = time.perf_counter() - t0
    return {"name": "keras.io tower in our pipeline" if tower else "ours: default config",
            "acc_own": r.test["pair_accuracy"], "acc_calibrated": r.test["pair_accuracy"],
            "roc_auc": r.test["roc_auc"], "eer": r.test["eer"], "params": r.summary()["params"], "seconds": secs,
            "val_acc": [h["val_pair_accuracy"] for h in r.history], "config": r.config.to_dict()}


def child_keras_io(args: argparse.Namespace) -> dict[str, Any]:
    import keras
    import numpy as np
    from common import keras_io_distance_loss, keras_io_distance_siamese

    from siamese_core import verification as metrics
    from siamese_core.data.pairs import make_sampler
    from siamese_core.data.sources import load_dataset
    from siamese_core.data.types import LabeledSplit, materialize
    from siamese_core.evaluation import EvalSet

    t0 = time.perf_counter()
    config = _config(args)
    data = load_dataset(config)
    keras.utils.set_random_seed(config.seed)
    sampler = make_sampler(config, data)  # the very sampler our run trains on
    assert isinstance(data.train, LabeledSplit)  # keras.io's example: class-labelled images
    x = materialize(data.train.x).astype("float32")  # the example's float32 0..255 images

    model = keras_io_distance_siamese(x.shape[1:])
    # 50 batch-16 steps per call: the same updates in the same order, without per-step Python dispatch
    model.compile(loss=keras_io_distance_loss(1.0), optimizer=keras.optimizers.RMSprop(), steps_per_execution=50)
    for epoch in range(config.epochs):
        t = sampler.epoch(epoch)
        model.fit([x[t.indices[:, 0]], x[t.indices[:, 1]]], 1.0 - t.targets, batch_size=16,  # its 0 = same
                  epochs=epoch + 1, initial_epoch=epoch, shuffle=True, verbose=0)

    def distances(which: Literal["val", "test"]) -> tuple[np.ndarray, np.ndarray]:
        es = EvalSet.of(data, which)  # the pairs our runs are scored on (targets: 1 = same)
        assert isinstance(es.split, LabeledSplit)
        xs = materialize(es.split.x).astype("float32")
        d = model.predict([xs[es.pairs.indices[:, 0]], xs[es.pairs.indices[:, 1]]], batch_size=1024, verbose=0)
        return d.reshape(-1), es.pairs.targets

    d_val, y_val = distances("val")
    d_test, y_test = distances("test")
    calibrated = metrics.calibrate_threshold(d_val, y_val, higher_is_same=False)
    return {"name": "keras.io example (its recipe: batch 16, RMSprop, distance output)",
            "acc_own": metrics.pair_accuracy(d_test, y_test, 0.5, higher_is_same=False),
            "acc_calibrated": metrics.pair_accuracy(d_test, y_test, calibrated, higher_is_same=False),
            "roc_auc": metrics.roc_auc(d_test, y_test, higher_is_same=False),
            "eer": metrics.equal_error_rate(d_test, y_test, higher_is_same=False),
            "params": int(model.count_params()), "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--pairs", type=int, default=20_000, help="pairs per epoch")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a child's seed
    p.add_argument("--quick", action="store_true", help="1 epoch of 12,800 pairs")
    p.add_argument("--rows", default="ours,keras_io", help="comma list of ours, keras_io, tower")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override our config (all our rows)")
    p.add_argument("--json", metavar="FILE", help="also write the raw results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.epochs, args.pairs = 1, 12_800

    if args.child:
        fn = {"ours": lambda: child_ours(args, tower=False), "tower": lambda: child_ours(args, tower=True),
              "keras_io": lambda: child_keras_io(args)}[args.child]
        print(json.dumps(fn()))
        return

    results: list[dict[str, Any]] = []
    for seed in args.seeds:  # rows interleaved within each seed
        base = [__file__, "--dataset", args.dataset, "--epochs", str(args.epochs), "--pairs", str(args.pairs),
                "--seed", str(seed)]
        for item in args.set or ():
            base += ["--set", item]
        for row in [r for r in args.rows.split(",") if r]:
            r = run_child([*base, "--child", row])
            r["seed"] = seed
            results.append(r)
            print(f"  seed {seed} {r['name']}: acc {r['acc_calibrated']:.4f} auc {r['roc_auc']:.4f} "
                  f"({r['seconds']:.0f}s)", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\n### {args.dataset}, {args.epochs} epochs x {args.pairs:,} pairs (the same pairs for every row), "
          f"our test pairs; seeds {' '.join(map(str, args.seeds))}: mean ± sd (per seed)\n")
    rows = []
    for name in dict.fromkeys(r["name"] for r in results):
        rs = [r for r in results if r["name"] == name]
        rows.append([name, mean_sd([r["acc_own"] for r in rs]), mean_sd([r["acc_calibrated"] for r in rs]),
                     mean_sd([r["roc_auc"] for r in rs]), mean_sd([r["eer"] for r in rs]), rs[0]["params"],
                     round(statistics.median(r["seconds"] for r in rs))])
    print(markdown_table(["model", "test pair acc (own threshold)", "test pair acc (threshold from validation)",
                          "ROC AUC", "EER", "params", "median s"], rows))

if __name__ == "__main__":
    main()
