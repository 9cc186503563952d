"""Where an epoch's time goes, and how close the training steps come to the machine's matmul roofline.

One process, one run (so the ratios are measured on the same machine state):

1. **roofline** — float32 ``tf.matmul`` of two 2048 x 2048 matrices, repeated for about 5 s with the thread
   pools training uses: FLOP/s = 2 n^3 / time (the best the CPU does on dense math here);
2. **FLOPs per training step** — TensorFlow's own count (``tf.compat.v1.profiler``) of the compiled training
   step's graph (forward, gradients, optimizer) for one batch of the default encoder;
3. **an epoch, decomposed** — the issue's trial shape (Fashion-MNIST, default conv encoder — round 1's quickstart
   trial, not today's MLP one — 20,000 pairs and 2,000 validation pairs an epoch, batch 128, the ``tfdata`` loader)
   trained for ``--epochs`` epochs with a timing callback: training steps (first batch to last batch), pipeline start
   (epoch begin to first batch), validation (``eval_seconds``: metrics and retrieval), the other epoch-end callbacks,
   and the boundary to the next epoch; then achieved FLOP/s of the steps against the roofline.

    python benchmarks/epoch_profile.py [--epochs 3] [--loader tfdata] [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK_BASE, markdown_table  # noqa: E402

BASE: dict[str, Any] = {"dataset": "fashion_mnist", "batch_size": 128,
                        "pairs": {"pairs_per_epoch": 20000, "val_pairs": 2000, "test_pairs": 2000}}


def matmul_roofline(n: int = 2048, seconds: float = 5.0) -> float:
    """Sustained float32 FLOP/s of n x n matmuls (warm, with the process's thread pools)."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    b = tf.random.normal((n, n), dtype=tf.float32)
    mm = tf.function(lambda x, y: tf.matmul(x, y))
    mm(a, b).numpy()  # trace + warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        mm(a, b).numpy()
        reps += 1
    return 2.0 * n ** 3 * reps / (time.perf_counter() - t0)


def step_flops(config: Any) -> float:
    """TensorFlow's count of floating-point operations in one training step (one batch)."""
    import tensorflow as tf

    from siamese_core.data.loaders import gather, make_train_step
    from siamese_core.data.sources import load_dataset
    from siamese_core.run import build_run

    run = build_run(config, load_dataset(config))
    tuples = run.plan.sampler.epoch(0)
    b = config.batch_size
    x = [tf.convert_to_tensor(a[:b]) for a in gather(run.plan.sources(), tuples)]
    y = tf.convert_to_tensor(tuples.targets[:b])
    step: Any = make_train_step(run.models.training)  # a tf.function, typed as a plain callable
    graph = step.get_concrete_function(x, y).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return float(tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops)


def profile_epochs(config: Any) -> list[dict[str, float]]:
    """Train `config` with a timing callback; one dict of seconds per epoch."""
    import keras

    from siamese_core.training import train

    marks: list[tuple[str, int, float]] = []

    class Clock(keras.callbacks.Callback):  # runs after the evaluator and the watchers (user callbacks do)
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            marks.append(("begin", epoch, time.perf_counter()))

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            if batch == 0:
                marks.append(("first_batch", batch, time.perf_counter()))

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            marks.append(("batch_end", batch, time.perf_counter()))

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            marks.append(("epoch_end", epoch, time.perf_counter()))

        def on_train_end(self, logs: dict | None = None) -> None:
            marks.append(("train_end", -1, time.perf_counter()))

    t_start = time.perf_counter()
    result = train(config, callbacks=[Clock()])
    t_end = time.perf_counter()
    rows: list[dict[str, float]] = []
    train_end = next(t for k, _, t in marks if k == "train_end")
    for epoch, hist in enumerate(result.history):
        begin = next(t for k, e, t in marks if k == "begin" and e == epoch)
        end = next(t for k, e, t in marks if k == "epoch_end" and e == epoch)
        first = next(t for k, _, t in marks if k == "first_batch" and t >= begin)
        last = max(t for k, _, t in marks if k == "batch_end" and begin <= t <= end)
        nxt = next((t for k, e, t in marks if k == "begin" and e == epoch + 1), train_end)
        evaluation = float(hist["eval_seconds"])
        rows.append({"epoch": epoch, "pipeline_start": first - begin, "steps": last - first,
                     "validation": evaluation, "other_epoch_end": max(0.0, end - last - evaluation),
                     "boundary": nxt - end, "wall": nxt - begin})
    rows.append({"epoch": -1, "setup_and_test": (t_end - t_start) - sum(r["wall"] for r in rows)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--loader", default="tfdata", choices=("memory", "tfdata", "custom"))
    ap.add_argument("--quick", action="store_true", help="digits (a smoke run; numbers not meaningful)")
    args = ap.parse_args()

    from siamese_core import TrainConfig

    base = {**BASE, **(QUICK_BASE if args.quick else {}), "epochs": args.epochs, "loader": args.loader}
    config = TrainConfig.from_dict(base)
    roofline = matmul_roofline()
    flops = step_flops(config)
    rows = profile_epochs(config)
    epochs = [r for r in rows if r["epoch"] >= 0]
    # per pair, not per step: the last, partial batch computes its pairs only (20,000 pairs are 156.25 steps of
    # 128, not 157: counting whole steps overstated the throughput by 0.5 %, 2.4 % on digits)
    pairs_per_epoch = config.pairs.pairs_per_epoch
    assert pairs_per_epoch is not None
    table = []
    for r in epochs:
        achieved = flops / config.batch_size * pairs_per_epoch / r["steps"]
        outside = r["wall"] - r["steps"]
        table.append([int(r["epoch"]) + 1, r["wall"], r["steps"], r["pipeline_start"], r["validation"],
                      r["other_epoch_end"], r["boundary"], outside / r["wall"], achieved / 1e9, achieved / roofline])
    print(f"\n{config.dataset.name}, {config.pairs.pairs_per_epoch:,} pairs/epoch, "
          f"{config.pairs.val_pairs:,} validation pairs, batch {config.batch_size}, loader {config.loader}; "
          f"default encoder: {flops / 1e9:.3f} GFLOP per training step ({flops / config.batch_size / 1e6:.1f} MFLOP "
          f"per pair); matmul roofline {roofline / 1e9:.1f} GFLOP/s\n")
    print(markdown_table(["epoch", "wall s", "train steps s", "pipeline start s", "validation s",
                          "other epoch-end s", "boundary s", "share outside steps", "steps GFLOP/s",
                          "steps / roofline"], table))
    later = table[1:] or table
    share = sum(r[7] * r[1] for r in later) / sum(r[1] for r in later)
    ratio = sum(r[9] for r in later) / len(later)
    print("\nepoch 1's train steps include TensorFlow's tracing of the step function (its first call runs after "
          "the first batch begins), so the figures below are of the epochs after it.")
    print(f"\nepochs after the first: {share:.1%} of the wall time outside training steps; training steps at "
          f"{ratio:.2f} x the matmul roofline. Set-up before epoch 1 and the test evaluation after the last: "
          f"{rows[-1]['setup_and_test']:.1f} s.")
    print(json.dumps({"roofline_gflops": roofline / 1e9, "step_gflop": flops / 1e9, "share_outside_steps": share,
                      "steps_over_roofline": ratio}))


if __name__ == "__main__":
    main()
