"""Log a trained Siamese model to MLflow as an MLflow 3 LoggedModel linked to its trial run.

Pip requirements are pinned explicitly: letting MLflow infer them loads the
model in a subprocess and costs ~25 s per trial on these machines.
"""
from __future__ import annotations

import importlib.metadata as md
from typing import Any

import mlflow
from mlflow.entities import LoggedModelOutput

MODEL_NAME = "model"


def pip_requirements() -> list[str]:
    reqs = []
    for dist, fallback in (("tensorflow-cpu", "tensorflow"), ("keras", None), ("mlflow", None), ("numpy", None)):
        for name in filter(None, (dist, fallback)):
            try:
                reqs.append(f"{name}=={md.version(name)}")
                break
            except md.PackageNotFoundError:
                continue
    return reqs


def model_metadata(result: Any) -> dict[str, Any]:
    """What a user of the model needs besides the weights."""
    return {
        "siamese.threshold": float(result.threshold),
        "siamese.higher_is_same": bool(result.models.higher_is_same),
        "siamese.distance": result.config.distance,
        "siamese.dataset_fingerprint": result.data_info.fingerprint,
        "siamese.input_shapes": [list(s) for s in result.data_info.input_shapes],
    }


def log_trial_model(client: Any, *, run_id: str, experiment_id: str, result: Any, step: int = 0) -> str:
    """Log ``result.model`` (Keras flavor) as a LoggedModel of `run_id`; returns ``models:/<model_id>``."""
    meta = model_metadata(result)
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                        params={k: str(v) for k, v in meta.items()})
    info = mlflow.keras.log_model(result.model, name=MODEL_NAME, model_id=logged.model_id,
                                  pip_requirements=pip_requirements(), metadata=meta)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step)])
    return info.model_uri
