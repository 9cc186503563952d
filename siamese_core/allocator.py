"""Keep TensorFlow's per-step buffers in the heap instead of handing them back to the kernel.

With glibc's defaults a CPU training step allocates buffers of a few MB, frees them, and glibc returns
the memory to the kernel (``munmap``/``madvise``/heap trim); the next step faults every page in again.
Measured on 2 cores (TF 2.21 CPU, default conv encoder, Fashion-MNIST, 20k pairs/epoch, 2 epochs, see
``benchmarks/allocator.py``): as shipped, as much CPU went to the kernel as to training (sys 63 s vs
user 68 s, 22.1 M minor page faults) and an epoch took 31.9 s; with the settings below, sys 4 s,
0.58 M faults, 15.0 s an epoch, bit-identical losses.

Why ``mallopt`` from Python rather than the alternatives (measured the same way; see BENCHMARKS.md):
* ``MALLOC_*_`` environment variables only work when set before the interpreter starts: a user's
  ``python train.py``, a notebook or ``mlflow models serve`` would not get them.
* tcmalloc/jemalloc need ``LD_PRELOAD`` (a re-exec) and a Debian package; they gave the same epoch
  time as the tuned glibc (15.5 s vs 15.0 s), so they buy nothing here.
``mallopt`` changes the running process's allocator for every later ``malloc``/``free`` — in every
thread and arena — so calling it when ``siamese_core`` is imported (before TensorFlow allocates) covers
``train``, ``doctor``, sweeps and their worker processes, ``promote``/``predict``, serving, the
benchmarks and the tests, without anyone exporting anything.

``SIAMESE_SWEEP_ALLOCATOR=system`` leaves glibc's defaults alone (to measure the difference); an
allocator preloaded by the user (tcmalloc, jemalloc, mimalloc) is detected and left alone too.
Pure Python (ctypes): importing this module never imports TensorFlow.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import resource

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

# Blocks below 32 MiB come from the heap, not from a fresh mmap each time (32 MiB is glibc's largest
# allowed value on 64-bit; TensorFlow's per-step buffers for the default encoder are far smaller).
MMAP_THRESHOLD = 32 * 1024 * 1024
# Never trim the heap's free top back to the kernel (the next step would fault it in again)...
TRIM_THRESHOLD = 16 * 1024 ** 3
# ...and grow it in large steps (address space only: pages cost memory when touched). TOP_PAD is also what
# keeps the gain when the trim threshold is overridden later: TensorFlow's `from_generator` op (the tfdata
# loader) prints "Memory patch applied: M_TRIM_THRESHOLD=128 kb" and resets it; measured here with the tfdata
# loader afterwards, page faults stayed at the tuned level (0.8 M vs 21.9 M for the system allocator).
TOP_PAD = 1024 ** 3

TUNED = "glibc-tuned"
SYSTEM = "system"
PRELOADED = "preloaded"
UNSUPPORTED = "unsupported"

ENV_ALLOCATOR = "SIAMESE_SWEEP_ALLOCATOR"
_PRELOADED_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
_state: str | None = None


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None  # musl and macOS have no mallopt with these knobs
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _apply(libc: ctypes.CDLL) -> bool:
    """Set the three thresholds; True if glibc accepted all of them."""
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))


def tune() -> str:
    """Apply the settings once per process; returns what is in effect (`TUNED`, `SYSTEM`, ...)."""
    global _state
    if _state is not None:
        return _state
    preload = os.environ.get("LD_PRELOAD", "")
    if os.environ.get(ENV_ALLOCATOR, "").strip().lower() == SYSTEM:
        _state = SYSTEM
    elif any(name in preload for name in _PRELOADED_ALLOCATORS):
        _state = PRELOADED
    else:
        libc = _libc()
        if libc is None:
            _state = UNSUPPORTED
        else:
            _state = TUNED if _apply(libc) else UNSUPPORTED
    return _state


_reasserted = 0


def reassert() -> bool:
    """Apply the tuned settings again where they are in effect; True if they were.

    Libraries reset them: TensorFlow's ``from_generator`` op (the tfdata loader) prints "Memory patch applied:
    M_TRIM_THRESHOLD=128 kb" when its pipeline starts, after `tune` ran at import. Called from inside that
    pipeline's generator, so every epoch trains with our thresholds again (mallopt costs microseconds).
    """
    global _reasserted
    if state() != TUNED:
        return False
    libc = _libc()
    ok = libc is not None and _apply(libc)
    _reasserted += int(ok)
    return ok


def reasserted() -> int:
    """How often `reassert` re-applied the settings in this process (the tfdata loader: once per epoch)."""
    return _reasserted


def state() -> str:
    """What `tune` put in effect in this process (tuning first if nobody has)."""
    return _state if _state is not None else tune()


def page_faults() -> int:
    """Minor page faults of this process so far (what the untuned allocator inflates)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


# Block sizes of one probe round: mixed sizes like a training step's buffers (1-12 MiB).
PROBE_SIZES = (1 << 20, 3 << 20, 6 << 20, 12 << 20, 2 << 20)


def probe(rounds: int = 20) -> float:
    """Share of the probe's pages faulted in again at every round, measured in this process.

    Each round mallocs, touches and frees blocks of `PROBE_SIZES` from the calling thread. With the tuned
    allocator the freed blocks stay in the heap and only the first round faults (measured 0.03 for 20
    rounds); with glibc's defaults the main thread's heap is trimmed and blocks are unmapped at every free,
    so every round faults its pages in again (measured 0.95). It reads the allocator as it is, in the
    process that calls it (e.g. inside a sweep worker); -1.0 where there is no glibc.
    """
    libc = _libc()
    if libc is None:
        return -1.0
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    pages = sum(PROBE_SIZES) // resource.getpagesize()
    before = page_faults()
    for _ in range(rounds):
        blocks = [libc.malloc(size) for size in PROBE_SIZES]
        for block, size in zip(blocks, PROBE_SIZES, strict=True):
            if block:
                ctypes.memset(block, 1, size)
        for block in blocks:
            libc.free(block)
    return (page_faults() - before) / (rounds * pages)
