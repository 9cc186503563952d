"""Process-level set-up: seeds, determinism, CPU threads.

Thread counts must be set before TensorFlow runs its first op, so sweeps call
`configure_threads` at worker start — N workers on N cores then don't
oversubscribe the CPU (two TensorFlow processes with default thread pools on
2 cores slowed an epoch from about 38 s to over 60 s). TensorFlow's C++ log
level is set where TensorFlow is first imported: `siamese_core/__init__`. How many
cores a process may use is `siamese_core.cpus` (no TensorFlow import).
"""
from __future__ import annotations

import logging

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


_SAID_POOLS: set[tuple[tuple[int, int], tuple[int, int]]] = set()  # (asked, have) pools already warned about


def configure_threads(intra_op: int | None = None, inter_op: int | None = None) -> None:
    """Cap TensorFlow's thread pools (call before any TF op runs in this process)."""
    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError:  # TF already initialised: the existing pools stay; said when they differ from the ask
        asked = (int(intra_op or 0), int(inter_op or 0))
        have = thread_counts()
        # once per ask: `sweep()` sets the pools, then its run again for the command line's path (said twice)
        if any(a and a != h for a, h in zip(asked, have, strict=True)) and (asked, have) not in _SAID_POOLS:
            _SAID_POOLS.add((asked, have))
            log.warning("TensorFlow's thread pools in this process are already %d/%d (intra/inter-op, 0: one per "
                        "core) and cannot change; %d/%d applies in a new process (a notebook's second sweep with "
                        "other threads, say)", *have, *asked)


def thread_counts() -> tuple[int, int]:
    """(intra-op, inter-op) pool sizes TensorFlow uses in this process (0: its default, one per core)."""
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())


# whether `seed_everything` turned TensorFlow's op determinism on in this process (it stays on: TensorFlow has no
# public call to turn it off, nor one to ask)
_op_determinism = False


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and TF; optionally make TF ops bit-exact (slower)."""
    global _op_determinism
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
        _op_determinism = True


def parallel_calls(n: int) -> int | None:
    """`num_parallel_calls` for a tf.data map: None (a plain map) under op determinism. TensorFlow 2.21 makes a
    parallel map sequential there anyway, and its rewrite printed an ERROR line (`NodeDef mentions attribute
    use_unbounded_threadpool which is not in the op definition`) through `train --quiet`."""
    return None if _op_determinism else n
