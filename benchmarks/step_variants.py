"""The default encoder's training step as shipped (float32, TensorFlow graph) against the two usual levers for
a faster step: XLA compilation (``jit_compile=True``) and Keras' ``mixed_bfloat16`` policy (oneDNN's bf16
kernels; AMX on the Intel Xeons that have it). Each variant in its own process, interleaved and rotated
(A B C, B C A, C A B, ...), so that no variant always runs first.

    python benchmarks/step_variants.py [--repeats 3] [--quick]

A child builds the run of the issue-11 trial shape (Fashion-MNIST, default conv encoder, batch 128), takes 40
batches of its first epoch's pairs, traces the step (the first call: tracing, and XLA's compilation), warms it up,
then times three passes over the 40 batches. Printed per variant: the median step time, its ratio to float32
(of the medians, and the lowest and highest per-repeat ratio), the first call's seconds, and the loss after the
timed passes (a variant that trains something else shows it there).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK_BASE, markdown_table, median, rotated, run_child  # noqa: E402

VARIANTS = ("float32 (shipped)", "XLA (jit_compile=True)", "mixed_bfloat16")
BASE = {"dataset": "fashion_mnist", "batch_size": 128, "epochs": 1,
        "pairs": {"pairs_per_epoch": 20000, "val_pairs": 2000, "test_pairs": 2000}}
BATCHES, PASSES = 40, 3


def child(variant: str, quick: bool) -> None:
    """One variant's step times, as one JSON line."""
    import keras
    import tensorflow as tf

    if variant == "mixed_bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")  # before the model is built
    from siamese_core import TrainConfig
    from siamese_core.data.loaders import gather, make_train_step
    from siamese_core.data.sources import load_dataset
    from siamese_core.run import build_run
    from siamese_core.runtime import seed_everything

    config = TrainConfig.from_dict({**BASE, **(QUICK_BASE if quick else {})})
    seed_everything(config.seed)  # the same initial weights in every process, as `train` has
    run = build_run(config, load_dataset(config))
    tuples = run.plan.sampler.epoch(0)
    b = config.batch_size
    arrays = gather(run.plan.sources(), tuples)
    count = min(BATCHES, len(tuples.targets) // b)
    batches = [([tf.convert_to_tensor(a[i * b:(i + 1) * b]) for a in arrays],
                tf.convert_to_tensor(tuples.targets[i * b:(i + 1) * b])) for i in range(count)]
    step = make_train_step(run.models.training)  # the step the loaders run, not a copy of it
    if variant.startswith("XLA"):
        step = tf.function(step.python_function, reduce_retracing=True, jit_compile=True)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    float(step(*batches[0]))
    first = time.perf_counter() - t0
    for x, y in batches[1:5]:  # warm-up
        step(x, y)
    passes = []
    for _ in range(PASSES):
        t0 = time.perf_counter()
        for x, y in batches:
            loss = step(x, y)
        float(loss)  # waits for the last step
        passes.append((time.perf_counter() - t0) / len(batches))
    print(json.dumps({"variant": variant, "step_s": median(passes), "first_s": first,
                      "loss": float(loss)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="digits instead of Fashion-MNIST (smoke run)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.quick)
        return
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for i in range(args.repeats):
        for variant in rotated(VARIANTS, i):
            r = run_child([__file__, "--child", variant] + (["--quick"] if args.quick else []))
            runs[variant].append(r)
            print(f"repeat {i + 1} {variant}: step {r['step_s'] * 1000:.1f} ms, first call {r['first_s']:.2f} s, "
                  f"loss {r['loss']:.4f}", file=sys.stderr)
    ref = VARIANTS[0]
    med = {v: median([r["step_s"] for r in rs]) for v, rs in runs.items()}
    rows = []
    for v, rs in runs.items():
        paired = [r["step_s"] / q["step_s"] for r, q in zip(rs, runs[ref], strict=True)]  # repeat by repeat
        rows.append([v, med[v] * 1000, med[v] / med[ref], f"{min(paired):.2f}-{max(paired):.2f}",
                     median([r["first_s"] for r in rs]), median([r["loss"] for r in rs])])
    print(f"\n{'digits smoke run' if args.quick else 'Fashion-MNIST, default conv encoder, batch 128'}: "
          f"{BATCHES} batches x {PASSES} passes per process; medians of {args.repeats} interleaved, rotated "
          f"repeats\n")
    print(markdown_table(["variant", "step ms", "x float32", "per-repeat x float32", "first call s",
                          "loss after"], rows))


if __name__ == "__main__":
    main()
