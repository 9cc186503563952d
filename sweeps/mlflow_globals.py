"""MLflow's process-wide settings that siamese-sweep changes for the span of one call, then puts back.

MLflow reads some choices from the process, not from the client it is handed: the default tracking URI (for
``models:/`` and ``runs:/`` URIs it resolves itself, and for fluent calls such as ``mlflow.log_metric`` inside
user code) and the artifacts progress bar. Tracking, the registry and model logging all need these, so they
live below all three.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

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


# MLflow's SQLAlchemy stores, each with a class-level engine per database URI (`_engine_map`)
_SQL_STORES = ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store")
# the registries that cache one store per URI (an `lru_cache` on `_get_store_with_resolved_uri`)
_STORE_REGISTRIES = (("mlflow.tracking._tracking_service.registry", "TrackingStoreRegistry"),
                     ("mlflow.tracking._model_registry.registry", "ModelRegistryStoreRegistry"))


def forget_deleted_sqlite_stores() -> None:
    """Drop MLflow's cached stores when a SQLite file one of them opened has been deleted since.

    MLflow keeps a store per tracking and registry URI, and an engine per database URI, for the life of the
    process. A notebook that deleted ``mlflow.db`` and called `sweep` again wrote through the pooled connection to
    the deleted file ("attempt to write a readonly database": the sweep failed). MLflow has no public call to drop
    them; this reads its private caches (pinned by tests/sweeps/test_python_api.py) and does nothing while every
    cached SQLite file exists, or before MLflow has opened one (its modules not imported).
    """
    gone = False
    for module_name in _SQL_STORES:
        module = sys.modules.get(module_name)
        engines = getattr(getattr(module, "SqlAlchemyStore", None), "_engine_map", None)
        if not isinstance(engines, dict):
            continue
        for uri, engine in list(engines.items()):
            database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
            if database and database != ":memory:" and not Path(database).exists():
                engines.pop(uri, None)
                engine.dispose()
                gone = True
    if gone:
        for module_name, cls in _STORE_REGISTRIES:
            cached = getattr(getattr(sys.modules.get(module_name), cls, None), "_get_store_with_resolved_uri", None)
            clear = getattr(cached, "cache_clear", None)
            if clear is not None:
                clear()


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
