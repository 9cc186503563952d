"""Our default config vs the keras.io contrastive-loss example, on Fashion-MNIST, same pairs, same epochs.

    python benchmarks/reference_keras_io.py              # 5 epochs, default pairs_per_epoch (2 x train = 108k)
    python benchmarks/reference_keras_io.py --quick      # 1 epoch, 12,800 pairs (smoke run)

Rows (each in its own process):

* ``ours: default config`` — ``train(TrainConfig(dataset=fashion_mnist, epochs=E))``.
* ``keras.io example`` — the example's model exactly (BN -> Conv(4,5,tanh) -> AvgPool -> Conv(16,5,tanh)
  -> AvgPool -> Flatten -> BN -> Dense(10,tanh); euclidean distance -> BN -> Dense(1, sigmoid); its own
  contrastive loss convention; RMSprop), trained with plain ``fit`` on *the same pairs* our sampler gives
  each epoch, batch 128. Its accuracy is reported at its own threshold 0.5 (as the example does) and at a
  threshold calibrated on our validation pairs.
* ``keras.io tower in our pipeline`` — the same tower as a user encoder
  (``encoder.type: common:keras_io_encoder``) with our loss/distance/optimizer defaults.

All rows are scored on the identical test pairs (our `EvalSet`, seed 0).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Literal

from common import markdown_table, run_child


def _config(args: argparse.Namespace, **extra: Any) -> Any:
    from siamese_core.config import TrainConfig

    overrides = {"epochs": args.epochs, "seed": args.seed, **extra}
    if args.pairs:
        overrides["pairs.pairs_per_epoch"] = args.pairs
    for item in args.set or ():
        key, _, value = item.partition("=")
        import yaml
        overrides[key] = yaml.safe_load(value)
    return TrainConfig.from_dict({"dataset": "fashion_mnist"}).with_overrides(overrides)


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
    from common import keras_io_loss, keras_io_siamese

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
    x = materialize(data.train.x).astype("float32")
    model, _ = keras_io_siamese(x.shape[1:])
    model.compile(loss=keras_io_loss(1.0), optimizer=keras.optimizers.RMSprop())
    for epoch in range(config.epochs):
        t = sampler.epoch(epoch)
        model.fit([x[t.indices[:, 0]], x[t.indices[:, 1]]], t.targets, batch_size=config.batch_size,
                  epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0)

    def scores(which: Literal["val", "test"]) -> tuple[np.ndarray, np.ndarray]:
        es = EvalSet.of(data, which)  # the pairs our runs are scored on
        assert isinstance(es.split, LabeledSplit)
        xs = materialize(es.split.x).astype("float32")
        p = model.predict([xs[es.pairs.indices[:, 0]], xs[es.pairs.indices[:, 1]]], batch_size=512, verbose=0)
        return p.reshape(-1), es.pairs.targets

    s_val, y_val = scores("val")
    s_test, y_test = scores("test")
    calibrated = metrics.calibrate_threshold(s_val, y_val, higher_is_same=True)
    return {"name": "keras.io example (own head + loss, RMSprop)",
            "acc_own": metrics.pair_accuracy(s_test, y_test, 0.5, higher_is_same=True),
            "acc_calibrated": metrics.pair_accuracy(s_test, y_test, calibrated, higher_is_same=True),
            "roc_auc": metrics.roc_auc(s_test, y_test, higher_is_same=True),
            "eer": metrics.equal_error_rate(s_test, y_test, higher_is_same=True),
            "params": int(model.count_params()), "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--pairs", type=int, default=None, help="pairs per epoch (default: the config default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="1 epoch of 12,800 pairs")
    p.add_argument("--rows", default="ours,keras_io,tower", help="comma list of ours, keras_io, tower")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override our config (all our rows)")
    p.add_argument("--json", metavar="FILE", help="also write the raw results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.epochs, args.pairs = 1, args.pairs or 12_800

    if args.child:
        fn = {"ours": lambda: child_ours(args, tower=False), "tower": lambda: child_ours(args, tower=True),
              "keras_io": lambda: child_keras_io(args)}[args.child]
        print(json.dumps(fn()))
        return

    base = [__file__, "--epochs", str(args.epochs), "--seed", str(args.seed)]
    base += ["--pairs", str(args.pairs)] if args.pairs else []
    for item in args.set or ():
        base += ["--set", item]
    results = []
    for row in [r for r in args.rows.split(",") if r]:
        r = run_child([*base, "--child", row])
        results.append(r)
        print(f"  {r['name']}: acc {r['acc_own']:.4f} auc {r['roc_auc']:.4f} ({r['seconds']:.0f}s)",
              file=sys.stderr, flush=True)
    print(f"\n### Fashion-MNIST, {args.epochs} epochs, same training and test pairs (seed {args.seed})\n")
    print(markdown_table(
        ["model", "test pair acc (own threshold)", "test pair acc (val-calibrated)", "ROC AUC", "EER", "params",
         "seconds", "peak RSS MiB"],
        [[r["name"], r["acc_own"], r["acc_calibrated"], r["roc_auc"], r["eer"], r["params"], r["seconds"],
          r["peak_rss_mb"]] for r in results]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
