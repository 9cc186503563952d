"""Process-level set-up: seeds, determinism, CPU threads.

Thread counts must be set before TensorFlow runs its first op, so sweeps call
`configure_threads` at worker start — N workers on N cores then don't
oversubscribe the CPU (two TensorFlow processes with default thread pools on
2 cores slowed an epoch from about 38 s to over 60 s). TensorFlow's C++ log
level is set where TensorFlow is first imported: `siamese_core/__init__`. How many
cores a process may use is `siamese_core.cpus` (no TensorFlow import).
"""
from __future__ import annotations

import keras
import tensorflow as tf


def configure_threads(intra_op: int | None = None, inter_op: int | None = None) -> None:
    """Cap TensorFlow's thread pools (call before any TF op runs in this process)."""
    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError:
        pass  # TF already initialised: the existing pools stay


def thread_counts() -> tuple[int, int]:
    """(intra-op, inter-op) pool sizes TensorFlow uses in this process (0: its default, one per core)."""
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and TF; optionally make TF ops bit-exact (slower)."""
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
