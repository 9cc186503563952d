"""What the local epoch checkpoint costs the training thread: ``numpy.savez`` (format 2) against Keras
``save_weights`` (format 1, what `siamese_core.checkpoint.save` did before), interleaved in one process.

Every epoch of every sweep trial writes one (`siamese_core.checkpoint.EpochCheckpoint`), inside ``train()`` and on
the critical path. For each encoder below: one epoch on digits (so the optimizer's moments exist), then
``--repeats`` rounds of one save each way, alternating which goes first; CPU seconds of this process (user + sys)
and wall seconds per save, medians, and the ratio of the medians. Both write the same variables and a
``state.json`` with the file's SHA-256; the old way is Keras's own HDF5 layout.

    python benchmarks/checkpoint_save.py [--repeats 30]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, timed  # noqa: E402

SMALL_PAIRS = {"pairs_per_epoch": 256, "val_pairs": 64, "test_pairs": 64}
CONFIGS = {
    "default encoder (conv depth 3, width 16)": {},
    "conv depth 4, width 128, embedding 256": {"encoder": {"depth": 4, "width": 128, "embedding_dim": 256}},
}


def keras_save_weights(directory: Path, model: Any, *, next_epoch: int, history: list[dict[str, float]],
                       fingerprint: str) -> None:
    """Format 1, as `siamese_core.checkpoint.save` wrote it before: Keras's HDF5, then the state."""
    from siamese_core.checkpoint import file_sha256

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-{os.getpid()}.weights.h5"
    model.save_weights(tmp)
    state = {"format": 1, "next_epoch": next_epoch, "history": history, "config": fingerprint,
             "weights_sha256": file_sha256(tmp)}
    (directory / "state.tmp").write_text(json.dumps(state))
    os.replace(tmp, directory / "weights.weights.h5")
    os.replace(directory / "state.tmp", directory / "state.json")


def measure(save: Callable[..., None], directory: Path, model: Any, history: list[dict[str, float]]) -> tuple[float,
                                                                                                            float]:
    return timed(lambda: save(directory, model, next_epoch=len(history), history=history, fingerprint="benchmark"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    from siamese_core import TrainConfig
    from siamese_core.checkpoint import save
    from siamese_core.training import train

    tmp = Path(tempfile.mkdtemp(prefix="ckpt-save-bench-"))
    ways = {"numpy.savez (now)": save, "Keras save_weights (before)": keras_save_weights}
    rows = []
    for i, (label, extra) in enumerate(CONFIGS.items()):
        config = TrainConfig.from_dict({"dataset": {"name": "digits"}, "epochs": 1, "pairs": SMALL_PAIRS, **extra})
        result = train(config)
        model, history = result.models.training, list(result.history)
        for name, way in ways.items():  # once each before the clock (first-use imports, h5py's file driver)
            way(tmp / f"warm-{i}-{name[:5]}", model, next_epoch=1, history=history, fingerprint="benchmark")
        seen: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for r in range(args.repeats):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for name in order:
                seen[name].append(measure(ways[name], tmp / f"{i}-{name[:5]}", model, history))
        size = {name: sum(f.stat().st_size for f in (tmp / f"{i}-{name[:5]}").iterdir()) for name in ways}
        medians = {name: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v))
                   for name, v in seen.items()}
        now, before = medians["numpy.savez (now)"], medians["Keras save_weights (before)"]
        for name in ways:
            rows.append([label, f"{model.count_params():,}", name, f"{size[name] / 1e6:.2f}",
                         f"{medians[name][0] * 1000:.1f}", f"{medians[name][1] * 1000:.1f}"])
        rows.append([label, "", "ratio now / before", "", f"{now[0] / before[0]:.2f}", f"{now[1] / before[1]:.2f}"])
    print(f"\nlocal epoch checkpoint, one save, medians of {args.repeats} interleaved repeats each\n")
    print(markdown_table(["encoder", "parameters", "way", "MB on disk", "CPU ms", "wall ms"], rows))


if __name__ == "__main__":
    main()
