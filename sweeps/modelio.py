"""Log a trained Siamese model as ONE MLflow 3 LoggedModel with two flavors.

* ``keras``: ``mlflow.keras.load_model(uri)`` gives the exported Keras model (safe mode; import
  ``siamese_core.models.layers`` first so the custom layers are registered).
* ``python_function``: `sweeps.serving.SiameseServingModel`, for ``mlflow.pyfunc.load_model`` and
  ``mlflow models serve`` (pairs -> distance/score/same; ``mode="embed"`` -> embeddings). Logged as code
  (``sweeps/serving_code.py``, MLflow's models-from-code): no ``python_model.pkl``, nothing is unpickled on load.

Both flavors read the same file, ``artifacts/model.keras`` (the keras flavor's ``data`` points at
``artifacts/model``, its loader appends ``.keras``): one copy of the weights. The model directory also
holds ``artifacts/reference_embeddings.npz``: embeddings of the first test samples computed by the
in-memory trial model, so anyone can check that a reloaded model reproduces them exactly.

Everything goes through the explicit `MlflowClient` (no fluent run, no global tracking URI), the
signature is given (no inference by calling the model) and pip requirements are pinned (inferring
them re-loads the model in a subprocess: 8-25 s a trial). The serving input example is not
validated at log time (that would load the model again).
"""
from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import names, scratch
from .mlflow_globals import quiet_artifacts
from .registry import logged_model_uri

log = logging.getLogger(__name__)

MODEL_NAME = "model"
FLAVOR_NAME = names.FLAVOR_KERAS_PYFUNC
REFERENCE_ROWS = 256
# The models-from-code file (a path, not an object: MLflow copies the file instead of cloudpickling a wrapper).
CODE_FILE = Path(__file__).with_name("serving_code.py")
# models serve with --env-manager local uses this environment; the project itself (siamese-sweep, which
# provides siamese_core and sweeps.serving) must be installed wherever the model is loaded.
_PINNED = (("tensorflow-cpu", "tensorflow"), ("keras", None), ("mlflow", None), ("numpy", None), ("pandas", None))


def pip_requirements() -> list[str]:
    reqs = []
    for dist, fallback in _PINNED:
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
        names.TAG_THRESHOLD: float(result.threshold),
        names.TAG_HIGHER_IS_SAME: bool(result.models.higher_is_same),
        names.TAG_DISTANCE: result.config.distance,
        names.TAG_DATASET_FINGERPRINT: result.data_info.fingerprint,
        names.TAG_EVAL_FINGERPRINT: result.data_info.eval_fingerprint,
        names.TAG_INPUT_SHAPES: [list(s) for s in result.data_info.input_shapes],
        names.TAG_INPUT_KIND: result.data_info.kind,
        names.TAG_VALUE_RANGE: [float(v) for v in result.data_info.value_range],
    }


class DualFlavor:
    """The ``flavor`` handed to MLflow's model writer: the native keras flavor + our pyfunc, one file.

    The Keras version and backend are given, not imported: the recording helper (`sweeps.recorder`) writes
    model directories without importing Keras or TensorFlow."""

    __name__ = FLAVOR_NAME

    @staticmethod
    def save_model(path: str, mlflow_model: Any, *, keras_version: str, keras_backend: str, **kwargs: Any) -> None:
        import mlflow.pyfunc

        kwargs.pop("validate_serving_input", None)
        mlflow_model.add_flavor("keras", data="artifacts/model", keras_version=keras_version,
                                keras_backend=keras_backend, save_exported_model=False)
        mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **kwargs)


def reference_embeddings(result: Any) -> np.ndarray | None:
    """Embeddings of the first test retrieval samples, as the trial's in-memory model computed them."""
    emb = (result.test_arrays or {}).get("embeddings")
    if emb is None:
        return None
    return np.asarray(emb)[:REFERENCE_ROWS]


_KERAS_FILE = "model.keras"  # the basename must stay model.keras (the keras flavor's data path)
_REFERENCE_FILE = "reference_embeddings.npz"
_STAGED_JSON = "staged.json"
_SAID_USER_MODULES: list[bool] = []  # the user-code warning said (`stage_model`)


def stage_model(result: Any, directory: Path) -> Path:
    """What only the trial's process can write, because it holds the Keras model: the Keras archive, the
    reference embeddings, and in ``staged.json`` the metadata, input spec and Keras version. `write_model_dir`
    makes the MLflow model directory from it, here or in the recording helper."""
    import keras

    from . import serving

    directory.mkdir(parents=True, exist_ok=True)
    result.model.save(directory / _KERAS_FILE)
    ref = reference_embeddings(result)
    if ref is not None:
        np.savez(directory / _REFERENCE_FILE, embeddings=ref, rows=np.arange(len(ref)))
    classes = serving.user_classes(directory / _KERAS_FILE)
    user_modules = sorted({module for module, _, _ in classes} - {"__main__"})
    if classes and not _SAID_USER_MODULES:  # once per process, not once per trial
        _SAID_USER_MODULES.append(True)
        why = serving.unloadable(classes)
        if why:
            log.warning("the logged models cannot be loaded by another process: they hold %s", why)
        else:
            log.warning("the logged models hold Keras classes of %s: loading one needs that code importable "
                        "(predict and promote: --import MODULE; mlflow models serve and mlflow.pyfunc.load_model "
                        "import it themselves when its package is on PYTHONPATH)", ", ".join(user_modules))
    staged = {"metadata": model_metadata(result),
              "input_spec": [[list(shape), dtype] for shape, dtype in serving.input_spec(result.model)],
              "keras_version": keras.__version__, "keras_backend": keras.backend.backend(),
              "user_modules": user_modules}
    (directory / _STAGED_JSON).write_text(json.dumps(staged))
    return directory


def staged_metadata(staged: Path) -> dict[str, Any]:
    return dict(json.loads((staged / _STAGED_JSON).read_text())["metadata"])


def write_model_dir(staged: Path, path: Path, *, model_id: str | None = None, run_id: str | None = None,
                    artifact_path: str | None = None) -> Path:
    """Write the dual-flavor MLflow model directory at `path` (must not exist) from a `stage_model` folder."""
    from mlflow.models import Model

    from . import serving

    info = json.loads((staged / _STAGED_JSON).read_text())
    spec = [(tuple(shape), str(dtype)) for shape, dtype in info["input_spec"]]
    artifacts = {serving.KERAS_ARTIFACT: str(staged / _KERAS_FILE)}
    if (staged / _REFERENCE_FILE).exists():
        artifacts[serving.REFERENCE_ARTIFACT] = str(staged / _REFERENCE_FILE)
    mlflow_model = Model(artifact_path=artifact_path, run_id=run_id, model_id=model_id, model_uuid=model_id,
                         metadata=info["metadata"])
    with _quiet_pyfunc():
        DualFlavor.save_model(str(path), mlflow_model, keras_version=info["keras_version"],
                              keras_backend=info["keras_backend"], python_model=str(CODE_FILE),
                              artifacts=artifacts, signature=serving.signature_for(spec),
                              model_config={serving.MODEL_CONFIG_RANGE: info["metadata"].get(names.TAG_VALUE_RANGE),
                                            serving.MODEL_CONFIG_USER_MODULES: info.get("user_modules", [])},
                              input_example=serving.example_frame(spec), pip_requirements=pip_requirements())
    return path


@contextlib.contextmanager
def _quiet_pyfunc() -> Iterator[None]:
    """No per-trial INFO/WARNING lines from MLflow's pyfunc writer (nor artifact progress bars)."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with quiet_artifacts():
            yield
    finally:
        logger.setLevel(level)


def log_trial_model(client: Any, *, run_id: str, experiment_id: str, result: Any, step: int = 0,
                    name: str = MODEL_NAME) -> str:
    """Log ``result.model`` as a keras+pyfunc LoggedModel `name` of `run_id`; returns ``models:/<model_id>``
    (sweeps name it after the trial; the URI, not the name, is what promotion and serving use)."""
    with scratch.temporary_directory("siamese-model-") as tmp:
        staged = stage_model(result, Path(tmp))
        return log_staged_model(client, run_id=run_id, experiment_id=experiment_id, staged=staged, step=step,
                                name=name)


def log_staged_model(client: Any, *, run_id: str, experiment_id: str, staged: Path, step: int = 0,
                     name: str = MODEL_NAME) -> str:
    """`log_trial_model` from a `stage_model` folder (the recording helper's half)."""
    meta = staged_metadata(staged)

    def write(path: Path, logged: Any) -> None:
        write_model_dir(staged, path, model_id=logged.model_id, run_id=run_id, artifact_path=logged.artifact_location)
    return log_model_dir(client, run_id=run_id, experiment_id=experiment_id, name=name, step=step, write=write,
                         params={k: str(v) for k, v in meta.items()}, tags={names.TAG_FLAVOR: FLAVOR_NAME})


def log_model_dir(client: Any, *, run_id: str, experiment_id: str, name: str, step: int,
                  write: Callable[[Path, Any], None], params: dict[str, str], tags: dict[str, str],
                  model_type: str | None = None) -> str:
    """Create a LoggedModel of `run_id`, let `write(path, logged_model)` fill its directory, upload it and
    mark it READY (FAILED if anything fails); returns ``models:/<model_id>``. `log_trial_model` writes a
    trained model; `sweeps.move` writes a copy of another server's model."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, params=params, tags=tags,
                                        model_type=model_type)
    try:
        with scratch.temporary_directory("siamese-mlmodel-") as tmp:
            local = Path(tmp) / "model"
            write(local, logged)
            with quiet_artifacts():
                client.log_model_artifacts(logged.model_id, str(local))
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        try:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        except Exception:  # noqa: BLE001 - keep the original error
            log.warning("could not mark logged model %s FAILED", logged.model_id)
        raise
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step)])
    return logged_model_uri(logged.model_id)
