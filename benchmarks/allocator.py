"""The memory allocator: one training command with glibc's defaults vs siamese_core's tuned glibc (and
tcmalloc, where Debian's libtcmalloc-minimal4 is installed), interleaved and rotated: A B C, B C A, C A B, ...
(no setting always runs first).

    python benchmarks/allocator.py [--repeats 3] [--quick]

Prints each repeat, then per setting the medians of wall, user and sys seconds, minor page faults, peak RSS and
the second epoch's ``epoch_seconds``, the range of the wall times over the repeats, the ratios to the tuned
setting (of the medians, and the lowest and highest of the per-repeat ratios), and whether the test metrics were
identical.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import markdown_table, median, rotated, run_measured

TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
# The issue's trial shape (Fashion-MNIST, default conv encoder; round 1's quickstart trial, not today's MLP one)
TRAIN = ["train", "--set", "epochs=2", "--set", "pairs.pairs_per_epoch=20000", "--set", "pairs.val_pairs=2000",
         "--set", "pairs.test_pairs=10000", "--json", "--quiet"]
QUICK = ["train", "--set", "dataset=digits", "--set", "epochs=2", "--json", "--quiet"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="digits instead of Fashion-MNIST (smoke run)")
    args = parser.parse_args()
    exe = shutil.which("siamese-sweep")
    cmd = [exe] if exe else [sys.executable, "-m", "sweeps.cli"]
    cmd += QUICK if args.quick else TRAIN
    settings = {"glibc defaults": {"SIAMESE_SWEEP_ALLOCATOR": "system"}, "tuned glibc (shipped)": {}}
    if TCMALLOC.exists():
        settings["tcmalloc preloaded"] = {"LD_PRELOAD": str(TCMALLOC)}
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    names = list(settings)
    for i in range(args.repeats):
        for name in rotated(names, i):
            env = settings[name]
            r = run_measured(cmd, env=env)
            out = json.loads(r.pop("stdout").strip().splitlines()[-1])
            r["epoch2"] = out["history"][-1]["epoch_seconds"]
            r["test"] = out["test"]
            runs[name].append(r)
            print(f"repeat {i + 1} {name}: wall {r['wall']:.1f} s, user {r['user']:.1f}, sys {r['sys']:.1f}, "
                  f"faults {r['minor_faults'] / 1e6:.2f} M, epoch 2 {r['epoch2']:.1f} s", file=sys.stderr)
    ref = "tuned glibc (shipped)"
    keys = ("wall", "user", "sys", "minor_faults", "peak_rss_mb", "epoch2")
    med = {name: {k: median([r[k] for r in rs]) for k in keys} for name, rs in runs.items()}
    same = {name: all(r["test"] == runs[ref][0]["test"] for r in rs) for name, rs in runs.items()}
    walls = {n: [r["wall"] for r in rs] for n, rs in runs.items()}
    paired = {n: [w / t for w, t in zip(walls[n], walls[ref], strict=True)] for n in settings}  # repeat by repeat
    rows = [[n, med[n]["wall"], f"{min(walls[n]):.1f}-{max(walls[n]):.1f}", med[n]["user"], med[n]["sys"],
             med[n]["minor_faults"] / 1e6, med[n]["peak_rss_mb"], med[n]["epoch2"], med[n]["wall"] / med[ref]["wall"],
             f"{min(paired[n]):.2f}-{max(paired[n]):.2f}", med[n]["sys"] / max(med[ref]["sys"], 1e-9),
             "yes" if same[n] else "NO"] for n in settings]
    print(f"\n{'digits smoke run' if args.quick else 'the issue 11 trial shape (conv)'}: {' '.join(cmd[1:])}; "
          f"medians of {args.repeats} interleaved, rotated repeats\n")
    print(markdown_table(["allocator", "wall s", "wall range s", "user s", "sys s", "minor faults (M)", "peak RSS MB",
                          "epoch 2 s", "wall / tuned", "per-repeat wall / tuned", "sys / tuned",
                          "same test metrics"], rows))


if __name__ == "__main__":
    main()
