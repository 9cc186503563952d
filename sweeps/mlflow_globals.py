"""MLflow's process-wide settings that siamese-sweep changes for the span of one call, then puts back.

MLflow reads some choices from the process, not from the client it is handed: the default tracking URI (for
``models:/`` and ``runs:/`` URIs it resolves itself, and for fluent calls such as ``mlflow.log_metric`` inside
user code) and the artifacts progress bar. Tracking, the registry and model logging all need these, so they
live below all three.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from . import names


@contextlib.contextmanager
def mlflow_internals_use(tracking_uri: str) -> Iterator[None]:
    """Make `tracking_uri` what MLflow's default client resolves to, then put back what was there.

    Public API only: `mlflow.set_tracking_uri` also writes ``$MLFLOW_TRACKING_URI``, and
    ``set_tracking_uri(None)`` deletes it, so the variable is restored by hand. A global URI that only
    mirrored the variable comes back as the variable alone (MLflow resolves both the same way).
    """
    import mlflow

    old_env = os.environ.get(names.ENV_MLFLOW_TRACKING_URI)
    explicit = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    old_global = explicit if explicit != old_env else None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        # None clears it: MLflow's code handles it, its type hint omits it
        mlflow.set_tracking_uri(old_global)  # type: ignore[arg-type]
        if old_env is None:
            os.environ.pop(names.ENV_MLFLOW_TRACKING_URI, None)
        else:
            os.environ[names.ENV_MLFLOW_TRACKING_URI] = old_env


@contextlib.contextmanager
def quiet_artifacts() -> Iterator[None]:
    """No tqdm progress bars while MLflow copies a handful of small files."""
    old = os.environ.get(names.ENV_MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR)
    os.environ[names.ENV_MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(names.ENV_MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR, None)
        else:
            os.environ[names.ENV_MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR] = old
