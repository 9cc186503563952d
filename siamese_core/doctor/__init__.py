"""The doctor: `diagnose(config)` names every known failure of a config before a sweep spends hours on it.

What ``siamese-sweep doctor`` runs: data checks, model-graph and loss checks (`siamese_core.diagnostics`),
then short probe trainings (`probes`: loader parity, overfitting 64 tuples, a few mini-epochs with the
training watchers). It sits above `siamese_core.training`, which its short run calls.
"""
from __future__ import annotations

from ._diagnose import diagnose

__all__ = ["diagnose"]
