"""Process-level set-up: seeds, determinism, CPU threads, TensorFlow log noise.

Thread counts must be set before TensorFlow runs its first op, so sweeps call
`configure_threads` at worker start — N workers on N cores then don't
oversubscribe the CPU.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configure_threads(intra_op: int | None = None, inter_op: int | None = None) -> None:
    """Cap TensorFlow's thread pools (call before any TF op runs in this process)."""
    import tensorflow as tf

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError:
        pass  # TF already initialised: the existing pools stay


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and TF; optionally make TF ops bit-exact (slower)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
