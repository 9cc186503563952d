"""What `tracking.checkpoints: mlflow` costs per epoch: checkpoint size, upload and retry-download time.

    python benchmarks/checkpoint_upload.py

Starts a throwaway PostgreSQL + ``mlflow server`` (basic auth, proxied artifacts) as the test suite does,
trains one epoch of three encoder sizes on digits with a checkpoint, then uploads each checkpoint 10 times
(`sweeps.checkpoints.upload`, as after every epoch) and fetches it 5 times into a fresh directory
(`sweeps.checkpoints.fetch`, as a retry on another machine). Prints the medians; the figures quoted in
sweeps/checkpoints.py come from this script.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeps.stack import MlflowServer, PostgresServer  # noqa: E402

SMALL_PAIRS = {"pairs_per_epoch": 128, "val_pairs": 64, "test_pairs": 64}
CONFIGS = {
    "test encoder (depth 1, width 8)": {"encoder": {"depth": 1, "width": 8, "embedding_dim": 16}},
    "default encoder (conv depth 3, width 16)": {},
    "conv depth 4, width 128, embedding 256": {"encoder": {"depth": 4, "width": 128, "embedding_dim": 256}},
}


def main() -> None:
    # no options; parsed so that --help prints this text instead of starting servers and training
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    with PostgresServer(user="sweeps", database="sweeps", fsync=False) as pg, MlflowServer(
            pg.create_database("mlflow"), auth=True, auth_database_uri=pg.create_database("mlflow_auth"),
            artifacts_destination=tmp / "artifacts", workers=1) as server:
        os.environ.update(server.env())
        from siamese_core import TrainConfig
        from siamese_core.training import train
        from sweeps import checkpoints
        from sweeps.tracking import Tracker

        tracker = Tracker(server.url)
        experiment = tracker.experiment_id("checkpoint-upload-benchmark")
        for i, (label, extra) in enumerate(CONFIGS.items()):
            ckpt = tmp / f"ckpt-{i}"
            config = TrainConfig.from_dict({"dataset": {"name": "digits"}, "epochs": 1, "pairs": SMALL_PAIRS, **extra})
            result = train(config, checkpoint_dir=ckpt)
            size = sum(f.stat().st_size for f in ckpt.iterdir())
            run_id = tracker.client.create_run(experiment).info.run_id
            ups = [checkpoints.upload(tracker, run_id, ckpt) or float("nan") for _ in range(10)]
            downs = []
            for j in range(5):
                start = time.perf_counter()
                checkpoints.fetch(tracker, [run_id], tmp / f"fetched-{i}-{j}")
                downs.append(time.perf_counter() - start)
            print(f"{label}: {result.models.training.count_params()} parameters, checkpoint {size / 1e6:.2f} MB, "
                  f"upload median {statistics.median(ups):.3f} s (min {min(ups):.3f}, max {max(ups):.3f}, n=10), "
                  f"fetch median {statistics.median(downs):.3f} s (n=5)", flush=True)


if __name__ == "__main__":
    main()
