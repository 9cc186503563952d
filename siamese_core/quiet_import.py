"""Keep TensorFlow's import-time C++ log lines off stderr, where a command's one-line error must stand alone.

On CPUs where TensorFlow turns oneDNN on by default (seen on a 2-core Xeon with AVX-512 and AMX, TF 2.21), importing
it prints ``oneDNN custom operations are on ...`` twice, each after absl's ``All log messages before
absl::InitializeLog() is called are written to STDERR``. They come from absl logging before it is initialised,
so ``TF_CPP_MIN_LOG_LEVEL`` (even 3) does not silence them, and nothing in TensorFlow's Python API does. So the
first ``import tensorflow`` runs with file descriptor 2 pointed at a temporary file; lines that are not this
known noise are written back to stderr afterwards, in order.

Installed by ``siamese_core/__init__`` as a meta-path finder, so it covers every way TensorFlow gets imported
(Keras, a submodule, a user's own import after ours). Pure Python: importing this module loads no TensorFlow.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import tempfile
from collections.abc import Sequence
from types import ModuleType
from typing import Any

# The exact lines dropped (substring match); anything else TensorFlow prints while importing is kept.
NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on.",
)


def drop_noise(text: str) -> str:
    """`text` without the lines of `NOISE`."""
    return "".join(line for line in text.splitlines(keepends=True) if not any(n in line for n in NOISE))


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._loader  # TensorFlow's own resource lookups see the real loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        with _stderr_filtered():
            self._loader.exec_module(module)


class QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the top-level ``tensorflow`` package; every other import passes through."""

    def __init__(self) -> None:
        self._busy = False

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow" or self._busy:
            return None
        self._busy = True
        try:  # the normal finders, minus this one
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _stderr_filtered:
    """Point fd 2 at a temporary file for the duration; then write back what is not `NOISE`."""

    def __enter__(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._tmp = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self._tmp.fileno(), 2)

    def __exit__(self, *exc: object) -> None:
        try:
            sys.stderr.flush()
        finally:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        self._tmp.seek(0)
        kept = drop_noise(self._tmp.read().decode("utf-8", "replace"))
        self._tmp.close()
        if kept:
            sys.stderr.write(kept)
            sys.stderr.flush()


def install() -> None:
    """Once per process, before anything imports TensorFlow (a no-op once it is imported)."""
    if "tensorflow" in sys.modules or any(isinstance(f, QuietTensorFlowFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, QuietTensorFlowFinder())
