"""The MLflow ``python_function`` wrapper every trial's model carries (next to the native keras flavor).

``mlflow.pyfunc.load_model(uri).predict(df, params=...)``:

* ``mode="pair"`` (default): ``df`` has columns ``left`` and ``right``, one pair per row, each cell an
  image/sequence/vector as nested lists or an array with the input's shape (MLflow checks the nesting against
  the signature; only this class called directly, e.g. `score_arrays`, reshapes a flattened cell), with the
  values the model was trained on (an integer-input model refuses fractions: raw pixels, not scaled ones).
  Returns a DataFrame with ``distance`` (float), ``score`` (similarity, float; a same-probability for
  ``bce`` models) and ``same`` (bool, at the threshold stored inside the model, or ``params["threshold"]``).
* ``mode="embed"``: one sample per row in column ``input`` (or ``left``; ``right`` with ``side="right"``).
  Returns a DataFrame with one ``embedding`` column (a list of floats per row).

Only pandas, numpy and siamese_core's pure-Python errors here at import time: Keras is imported in
`load_context`, after ``siamese_core.models.layers`` has registered the custom layers (safe mode stays on).
"""
from __future__ import annotations

import importlib
import json
import sys
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from siamese_core.errors import InputError, SiameseError

from .names import TAG_VALUE_RANGE

try:  # the module must import without MLflow's pyfunc too (e.g. for `arrays_from_frame` in tools)
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[assignment,misc]

KERAS_ARTIFACT = "keras_model"
REFERENCE_ARTIFACT = "reference_embeddings"
PAIR_COLUMNS = ("left", "right")
EMBED_COLUMN = "input"
MODES = ("pair", "embed")
BATCH = 512  # the batch size the trial embedded its test samples with: same batches -> identical floats
# One request is scored in one process; 10,000 pairs of 28x28 images is ~60 MB of floats and ~20 s on 2 cores.
# Larger batches belong to `score_arrays` in a job, not to an HTTP request. Behind `mlflow models serve` this
# check runs only after MLflow has parsed the whole body (no body limit there): the bound on the request size
# is deploy/serving/scoring.conf.template (nginx) in front of it.
MAX_ROWS = 10_000
# a served model's signature drops the columns it does not declare before `predict` sees them: "received
# columns []" for a request with columns a and b; said so, as the names the user sent are gone by then
_DROPPED = "; a served model drops columns of other names before it sees them: check the spelling"
MODEL_CONFIG_RANGE = "value_range"  # the key in the pyfunc model_config `load_context` reads
# the modules of the user code whose Keras classes the model holds (a user encoder's custom layer), in the
# pyfunc model_config: `load_context` imports them, as Keras finds a registered class only once it is imported
MODEL_CONFIG_USER_MODULES = "user_modules"
# the top-level packages whose classes a model holds without any user code
_OWN_PACKAGES = ("keras", "siamese_core")
# No model input is meaningfully this large (pixels are <= 255, standardised features a few units): such values
# (1e300, an unscaled ID) would give a confident but meaningless answer.
MAX_ABS_INPUT = 1e6
# An integer-input model (raw pixels) takes whole numbers. A float32 round trip (x * 0.1 * 10, a mean/std
# undone) leaves up to ~1.5e-5 on values near 255; scaled pixels have fractions of at least 1/255 (0.0039).
WHOLE_TOLERANCE = 1e-3
# Inputs beyond the training data's value range by more than its own width are data on another scale: digits
# pixels (0-16) sent as 0-255 scored 600 pairs at 0.495 accuracy (0.95 on the right scale) without a word. A
# range observed on training data (standardised features) is exceeded a little by new samples: a whole width of
# slack leaves those alone and still refuses 0-255 for 0-16 or 0-1.
RANGE_SLACK_WIDTHS = 1.0


class PredictError(SiameseError, ValueError):
    """A request the model cannot answer (missing column, wrong shape, unknown mode)."""


class MissingUserCode(InputError, PredictError):
    """The model holds a Keras class of user code that is not imported here (exit 2: the caller can import it)."""


def user_classes(keras_path: str | Path) -> list[tuple[str, str, str]]:
    """(module, class name, registered name) of every object in a Keras archive's ``config.json`` that neither
    Keras nor siamese-sweep defines: a user encoder's own layers (``keras.saving.register_keras_serializable``).
    Keras looks them up by their registered name and does not import their module (safe mode or not), so the
    archive alone cannot be loaded. Keras writes ``"module": null`` for a class defined in ``__main__`` (a script
    or notebook): named ``__main__`` here."""
    try:
        with zipfile.ZipFile(keras_path) as archive:
            stack: list[Any] = [json.loads(archive.read("config.json"))]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found: set[tuple[str, str, str]] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            module, name, registered = item.get("module", ""), item.get("class_name"), item.get("registered_name")
            module = "__main__" if module is None and isinstance(registered, str) else module
            if isinstance(module, str) and module and isinstance(name, str) and \
                    module.split(".")[0] not in _OWN_PACKAGES:
                found.add((module, name, registered if isinstance(registered, str) else name))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return sorted(found)


def unloadable(classes: Sequence[tuple[str, str, str]]) -> str | None:
    """Why no other process can load a model holding `classes` (from `user_classes`), or None: a class defined in
    ``__main__``, or one Keras has not registered (it finds classes by registered name only)."""
    import keras

    main = [name for module, name, _ in classes if module == "__main__"]
    if main:
        return (f"{', '.join(main)}: defined in a script or notebook (__main__), which no other process can import; "
                f"define it in a module, register it (@keras.saving.register_keras_serializable()) and train again")
    unregistered = [f"{name} (module {module})" for module, name, registered in classes
                    if module in sys.modules and keras.saving.get_registered_object(registered) is None]
    if unregistered:
        return (f"{', '.join(unregistered)}: not registered with Keras, which finds classes by registered name "
                f"only; register it (@keras.saving.register_keras_serializable()) and train again (from Python, "
                f"keras.saving.load_model(..., custom_objects=...) loads this one)")
    return None


def import_user_modules(modules: Iterable[str], *, field: str) -> None:
    """Import each module (user code whose Keras classes a model holds); one line naming it if it cannot be."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - ImportError, or user code that raises at import
            fix = ("put its package on PYTHONPATH" if isinstance(exc, ModuleNotFoundError)
                   else "its own code raised while it was imported")
            raise MissingUserCode(f"{field}: cannot import {module} (user code the model holds Keras classes of): "
                                  f"{type(exc).__name__}: {exc}; {fix}") from None


def _missing_user_code(keras_path: str | Path) -> str | None:
    """The line for a model whose user classes are not imported (or not loadable) here, or None (another
    failure)."""
    classes = user_classes(keras_path)
    why = unloadable([c for c in classes if c[0] == "__main__"])
    if why:
        return f"the model holds {why}"
    missing = [(module, name) for module, name, _ in classes if module not in sys.modules]
    if not missing:
        why = unloadable(classes)  # imported (--import) but not registered: `--import` was not the fix
        return f"the model holds {why}" if why else None
    held = ", ".join(f"{name} (module {module})" for module, name in missing)
    modules = sorted({module for module, _ in missing})
    return (f"the model holds {held}, user code Keras finds only once it is imported: import it first (its "
            f"package on PYTHONPATH): `--import {' --import '.join(modules)}` for predict and promote, "
            f"`import {', '.join(modules)}` in Python")


def load_keras(path: str) -> Any:
    """Load the exported ``model.keras`` in safe mode, with the custom layers registered first. A model with a
    user encoder's own layer that is not imported here raised Keras's TypeError (a 3 kB config dump, exit 1)."""
    import keras

    import siamese_core.models.layers  # noqa: F401  (registers PairDistance, ThresholdDecision, ...)

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (TypeError, ValueError):
        said = _missing_user_code(path)
        if said is None:
            raise
        raise MissingUserCode(said) from None


def decision_layer(model: Any) -> Any:
    from siamese_core.models.layers import ThresholdDecision

    for layer in model.layers:
        if isinstance(layer, ThresholdDecision):
            return layer
    raise PredictError("the model has no ThresholdDecision layer; is it a siamese-sweep export?")


def exported_encoder(model: Any, side: int) -> Any:
    """The tower that embeds input `side` (0 = left, 1 = right) of an exported pair model."""
    import keras

    names = ("encoder_left", "encoder_right")
    for name in (names[side], "encoder"):
        try:
            return model.get_layer(name)
        except ValueError:
            continue
    towers = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not towers:
        raise PredictError("the model has no encoder sub-model")
    return towers[min(side, len(towers) - 1)]


def _dense(cell: Any) -> np.ndarray:
    """A cell (nested lists, an array, or an object array of arrays) -> one dense numeric array."""
    a = np.asarray(cell)
    if a.dtype == object:
        if a.ndim == 0:
            item = a.item()
            if not isinstance(item, (list, tuple, np.ndarray)):  # None (a JSON null) recursed without end
                raise TypeError(f"received {type(item).__name__}")
            return _dense(item)
        return np.stack([_dense(c) for c in a])
    return a


def value_range_of(value: Any) -> tuple[float, float] | None:
    """The ``[low, high]`` a model records (`names.TAG_VALUE_RANGE`), or None when absent or of no width."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (lo, hi) if np.isfinite([lo, hi]).all() and hi > lo else None


def _check_range(wide: np.ndarray, value_range: tuple[float, float], what: str) -> None:
    """``wide``: the batch as float64 (`to_batch` has it already)."""
    lo, hi = value_range
    slack = RANGE_SLACK_WIDTHS * (hi - lo)
    outside = (wide < lo - slack) | (wide > hi + slack)
    if outside.any():
        row = int(np.argwhere(outside)[0][0])
        raise PredictError(f"column {what!r}, row {row}: values from {wide[row].min():g} to {wide[row].max():g}, "
                           f"but the model was trained on {lo:g}..{hi:g}; send the data on that scale (as in "
                           f"training)")


def to_batch(column: Any, shape: tuple[int, ...], dtype: str, *, what: str,
             value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Stack a column of samples into ``[n, *shape]`` of the model's input dtype; with `value_range` (the
    training data's), values far outside it are refused (`RANGE_SLACK_WIDTHS`)."""
    rows = []
    size = int(np.prod(shape))
    for i, cell in enumerate(column):
        try:
            a = _dense(cell)
        except (ValueError, TypeError) as exc:
            raise PredictError(f"column {what!r}, row {i}: expected a numeric array of shape {shape}; {exc}") from None
        if a.size != size:
            raise PredictError(f"column {what!r}, row {i}: expected {size} values (shape {list(shape)}); "
                               f"received shape {list(a.shape)}")
        rows.append(a.reshape(shape))
    if not rows:
        return np.zeros((0, *shape), dtype=dtype)
    x = np.stack(rows)
    if x.dtype.kind == "f" or x.dtype.kind in "iu":
        finite = np.isfinite(x) if x.dtype.kind == "f" else np.ones(x.shape, bool)
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            raise PredictError(f"column {what!r}, row {row}: NaN or infinite values; inputs must be finite")
        wide = x.astype(np.float64, copy=False)
        big = np.abs(wide) > MAX_ABS_INPUT
        if big.any():
            row = int(np.argwhere(big)[0][0])
            raise PredictError(f"column {what!r}, row {row}: values beyond ±{MAX_ABS_INPUT:g}; no model input is "
                               f"that large (unscaled data?)")
    else:
        raise PredictError(f"column {what!r}: expected numbers; received dtype {x.dtype}")
    target = np.dtype(dtype)
    if np.issubdtype(target, np.integer):
        # rounding and clipping in silence answered floats in 0-1 sent to a uint8 (raw pixel) model as images
        # of 0s and 1s: every pair "same" (600 digits pairs: 100 % same, 10 % accuracy); astype wrapped 300 to 44
        info = np.iinfo(target)
        fraction = np.abs(wide - np.rint(wide)) > WHOLE_TOLERANCE
        if fraction.any():
            row = int(np.argwhere(fraction)[0][0])
            raise PredictError(f"column {what!r}, row {row}: values that are not whole numbers, but the model takes "
                               f"{target.name} (raw values, as in training, not scaled to 0-1); send the raw values")
        rounded = np.rint(wide)  # 255.000015 (a float32 round trip) is 255
        outside = (rounded < info.min) | (rounded > info.max)
        if outside.any():
            row = int(np.argwhere(outside)[0][0])
            raise PredictError(f"column {what!r}, row {row}: values outside {info.min}..{info.max}, the range of "
                               f"the model's input type {target.name}")
        x = rounded if x.dtype.kind == "f" else x
        wide = rounded
    if value_range is not None:  # after the input type's own checks, whose lines say more (scaled to 0-1, 300)
        _check_range(wide, value_range, what)
    return x.astype(target, copy=False)


def input_spec(model: Any) -> list[tuple[tuple[int, ...], str]]:
    """(shape without batch, dtype) of each model input."""
    return [(tuple(int(d) for d in inp.shape[1:]), str(inp.dtype).replace("tf.", "")) for inp in model.inputs]


def load_model_dir(model_dir: str | Path) -> tuple[SiameseServingModel, dict[str, Any]]:
    """(wrapper, model metadata) from a downloaded MLflow model directory, without unpickling anything.

    ``mlflow.pyfunc.load_model`` runs the model's code file (``serving_code.py``; models logged by earlier
    versions: unpickles ``python_model.pkl``): whoever can write the artifact store could run code on the host
    that loads it (a tampered model ran ``id`` during predict). Here the wrapper comes from this installed
    package and only data is read from the directory: the ``MLmodel`` YAML (safe_load), the Keras archive in
    safe mode and the reference embeddings without pickle. `predict` and `promote` load models this way, old
    and new formats alike.
    """
    import yaml

    root = Path(model_dir).resolve()
    try:
        conf = yaml.safe_load((root / "MLmodel").read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PredictError(f"{model_dir}: not an MLflow model directory ({type(exc).__name__}: {exc})") from None
    artifacts = ((conf.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}

    def artifact(name: str) -> str | None:
        entry = artifacts.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            return None
        path = (root / entry["path"]).resolve()
        if not path.is_relative_to(root):
            raise PredictError(f"{model_dir}: artifact {name!r} points outside the model directory ({path})")
        return str(path)

    keras_path = artifact(KERAS_ARTIFACT)
    if keras_path is None:
        raise PredictError(f"{model_dir}: no {KERAS_ARTIFACT!r} artifact; is it a siamese-sweep model?")
    wrapper = SiameseServingModel().load(keras_path)
    wrapper.reference_path = artifact(REFERENCE_ARTIFACT)
    metadata = conf.get("metadata")
    metadata = dict(metadata) if isinstance(metadata, dict) else {}
    wrapper.value_range = value_range_of(metadata.get(TAG_VALUE_RANGE))  # models logged before model_config had it
    return wrapper, metadata


class SiameseServingModel(PythonModel):
    """Pair scoring and embedding for an exported Siamese model (see the module docstring)."""

    value_range: tuple[float, float] | None = None  # the training data's raw range: inputs far outside it refused

    def __getstate__(self) -> dict[str, Any]:  # logged as code now; should anyone pickle it, never the model
        return {k: v for k, v in self.__dict__.items() if k not in ("model", "_encoders", "_predict")}

    def load_context(self, context: Any) -> None:
        # MLflow runs this model's code file to load it (see `load_model_dir`), so the user code the model was
        # trained with is imported here too, as `mlflow models serve` gives no other place to import it
        config = getattr(context, "model_config", None) or {}
        import_user_modules(config.get(MODEL_CONFIG_USER_MODULES) or (), field="model_config.user_modules")
        self.load(context.artifacts[KERAS_ARTIFACT])
        self.reference_path = context.artifacts.get(REFERENCE_ARTIFACT)
        # the model's `model_config` (`modelio.write_model_dir`); none in models logged before it was written
        self.value_range = value_range_of(config.get(MODEL_CONFIG_RANGE))

    def reference_embeddings(self) -> np.ndarray | None:
        """Embeddings of the first test samples as the trial's in-memory model computed them (if recorded)."""
        path = getattr(self, "reference_path", None)
        if not path:
            return None
        with np.load(path, allow_pickle=False) as z:
            return z["embeddings"]

    def load(self, keras_path: str) -> SiameseServingModel:
        self.model = load_keras(keras_path)
        decision = decision_layer(self.model)
        self.threshold = float(decision.threshold)
        self.higher_is_same = bool(decision.higher_is_same)
        self.inputs = input_spec(self.model)
        self._encoders: dict[int, Any] = {}
        return self

    @classmethod
    def from_keras(cls, model: Any) -> SiameseServingModel:
        """Wrap an in-memory export (tests, `siamese-sweep predict` on a .keras file)."""
        self = cls()
        self.model = model
        decision = decision_layer(model)
        self.threshold, self.higher_is_same = float(decision.threshold), bool(decision.higher_is_same)
        self.inputs = input_spec(model)
        self._encoders = {}
        return self

    # ------------------------------------------------------------------ arrays
    def score_arrays(self, left: np.ndarray, right: np.ndarray, *,
                     threshold: float | None = None) -> dict[str, np.ndarray]:
        """distance, score, same (bool) and the native score the threshold applies to, for raw input arrays.

        The arrays are checked as a served request's are (`to_batch`: shape, finite values, the input dtype):
        NaN gave finite scores, and left and right of different lengths TensorFlow's error."""
        left = to_batch(list(np.asarray(left)), *self.inputs[0], what="left", value_range=self.value_range)
        right = to_batch(list(np.asarray(right)), *self.inputs[-1], what="right", value_range=self.value_range)
        return self.score_batches(left, right, threshold=threshold)

    def score_batches(self, left: np.ndarray, right: np.ndarray, *,
                      threshold: float | None = None) -> dict[str, np.ndarray]:
        """`score_arrays` for batches already checked (`to_batch`) or built here (promote's test splits): the
        per-row check is a Python loop over every sample, run once per input, not again."""
        if len(left) != len(right):
            raise PredictError(f"left has {len(left)} samples and right {len(right)}: expected one right per left")
        outs: dict[str, list[np.ndarray]] = {"distance": [], "score": [], "same": []}
        for i in range(0, len(left), BATCH):
            res = self.model.predict_on_batch([left[i:i + BATCH], right[i:i + BATCH]])
            for k, acc in outs.items():
                acc.append(np.asarray(res[k]).reshape(-1))
        out = {k: (np.concatenate(v) if v else np.zeros((0,), np.float32)) for k, v in outs.items()}
        native = out["score"] if self.higher_is_same else out["distance"]
        if threshold is None or float(threshold) == self.threshold:
            same = out["same"] >= 0.5  # the model's own ThresholdDecision at the stored threshold
        else:
            from siamese_core.metrics import same_at_threshold

            same = same_at_threshold(native, threshold, higher_is_same=self.higher_is_same)
        return {"distance": out["distance"], "score": out["score"], "same": np.asarray(same, bool), "native": native}

    def embed_arrays(self, x: np.ndarray, *, side: int = 0) -> np.ndarray:
        if side not in self._encoders:
            self._encoders[side] = exported_encoder(self.model, side)
        enc = self._encoders[side]
        out = [np.asarray(enc.predict_on_batch(x[i:i + BATCH])) for i in range(0, len(x), BATCH)]
        return np.concatenate(out) if out else np.zeros((0, int(enc.output.shape[-1])), np.float32)

    # ------------------------------------------------------------------ pyfunc
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Score pairs or embed samples; a bad request is an MLflow ``INVALID_PARAMETER_VALUE`` (HTTP 400 from
        ``mlflow models serve``) with one message and no stack trace."""
        try:
            return self._predict(model_input, params)
        except PredictError as exc:
            try:
                from mlflow.exceptions import MlflowException
                from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
            except ImportError:  # pragma: no cover - MLflow is a dependency; keep the plain error without it
                raise exc from None
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None

    def _predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None) -> pd.DataFrame:
        params = dict(params or {})
        mode = params.get("mode") or "pair"
        if mode not in MODES:
            raise PredictError(f"params.mode: expected one of {list(MODES)}; received: {mode!r}")
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if len(frame) > MAX_ROWS:
            raise PredictError(f"{len(frame)} rows in one request; at most {MAX_ROWS:,} (split the request)")
        if mode == "embed":
            named = params.get("side") or "left"
            if named not in PAIR_COLUMNS:  # "rihgt" embedded with the left tower, which a two-tower model answers
                raise PredictError(f"params.side: expected one of {list(PAIR_COLUMNS)}; received: {named!r}")
            side = PAIR_COLUMNS.index(named)
            column = EMBED_COLUMN if EMBED_COLUMN in frame else PAIR_COLUMNS[side]
            if column not in frame:
                raise PredictError(f"mode 'embed' needs a column {EMBED_COLUMN!r} (or {PAIR_COLUMNS[side]!r}); "
                                   f"received columns {list(frame.columns)}{_DROPPED}")
            shape, dtype = self.inputs[min(side, len(self.inputs) - 1)]
            emb = self.embed_arrays(to_batch(frame[column], shape, dtype, what=column, value_range=self.value_range),
                                    side=side)
            return pd.DataFrame({"embedding": [row.astype(float).tolist() for row in emb]})
        missing = [c for c in PAIR_COLUMNS if c not in frame]
        if missing:
            raise PredictError(f"mode 'pair' needs columns {list(PAIR_COLUMNS)}; missing {missing} "
                               f"(received columns {list(frame.columns)}{_DROPPED})")
        left = to_batch(frame["left"], *self.inputs[0], what="left", value_range=self.value_range)
        right = to_batch(frame["right"], *self.inputs[-1], what="right", value_range=self.value_range)
        threshold = params.get("threshold")
        if threshold is not None:
            try:
                threshold = float(threshold)
            except (TypeError, ValueError):
                raise PredictError(f"params.threshold: expected a number; received: {threshold!r}") from None
            if not np.isfinite(threshold):
                raise PredictError(f"params.threshold: expected a finite number; received: {threshold}")
        out = self.score_batches(left, right, threshold=threshold)
        return pd.DataFrame({"distance": out["distance"].astype(float), "score": out["score"].astype(float),
                             "same": out["same"]})


def signature_for(spec: list[tuple[tuple[int, ...], str]]) -> Any:
    """Explicit signature: optional columns left/right/input nested as deep as the input shape; params
    mode/threshold/side. `spec` is `input_spec` of the model (the recording helper has no Keras model).

    The innermost type is ``Any``: MLflow refuses to convert integer cells to a ``double`` column
    ("Can not safely convert int64 to float64") and floats to a ``long`` one, and clients send both
    (raw uint8 pixels, or floats). `to_batch` converts to the model's input dtype and checks the size.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import (
        AnyType,
        Array,
        ColSpec,
        ParamSchema,
        ParamSpec,
        Schema,
        TensorSpec,
    )

    def array_type(shape: tuple[int, ...]) -> Any:
        t: Any = AnyType()
        for _ in shape:
            t = Array(t)
        return t

    cols: list[ColSpec | TensorSpec] = [ColSpec(array_type(spec[0][0]), "left", required=False),
                                        ColSpec(array_type(spec[-1][0]), "right", required=False),
                                        ColSpec(array_type(spec[0][0]), EMBED_COLUMN, required=False)]
    outputs = Schema([ColSpec(DataType.double, "distance"), ColSpec(DataType.double, "score"),
                      ColSpec(DataType.boolean, "same")])
    params = ParamSchema([ParamSpec("mode", DataType.string, "pair"), ParamSpec("threshold", DataType.double, None),
                          ParamSpec("side", DataType.string, "left")])
    return ModelSignature(inputs=Schema(cols), outputs=outputs, params=params)


def example_frame(spec: list[tuple[tuple[int, ...], str]], n: int = 1) -> pd.DataFrame:
    """A small valid request (zeros of the right shape), saved as the model's input example."""
    zeros = [np.zeros(shape, dtype=int if np.issubdtype(np.dtype(dtype), np.integer) else float).tolist()
             for shape, dtype in (spec[0], spec[-1])]
    return pd.DataFrame({"left": [zeros[0]] * n, "right": [zeros[1]] * n})
