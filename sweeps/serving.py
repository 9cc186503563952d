"""The MLflow ``python_function`` wrapper every trial's model carries (next to the native keras flavor).

``mlflow.pyfunc.load_model(uri).predict(df, params=...)``:

* ``mode="pair"`` (default): ``df`` has columns ``left`` and ``right``, one pair per row, each cell an
  image/sequence/vector as nested lists or an array (a flattened cell is reshaped to the input shape).
  Returns a DataFrame with ``distance`` (float), ``score`` (similarity, float; a same-probability for
  ``bce`` models) and ``same`` (bool, at the threshold stored inside the model, or ``params["threshold"]``).
* ``mode="embed"``: one sample per row in column ``input`` (or ``left``; ``right`` with ``side="right"``).
  Returns a DataFrame with one ``embedding`` column (a list of floats per row).

Only pandas, numpy and siamese_core's pure-Python errors here at import time: Keras is imported in
`load_context`, after ``siamese_core.models.layers`` has registered the custom layers (safe mode stays on).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from siamese_core.errors import SiameseError

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


class PredictError(SiameseError, ValueError):
    """A request the model cannot answer (missing column, wrong shape, unknown mode)."""


def load_keras(path: str) -> Any:
    """Load the exported ``model.keras`` in safe mode, with the custom layers registered first."""
    import keras

    import siamese_core.models.layers  # noqa: F401  (registers PairDistance, ThresholdDecision, ...)

    return keras.saving.load_model(path, compile=False, safe_mode=True)


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
            return _dense(a.item())
        return np.stack([_dense(c) for c in a])
    return a


def to_batch(column: Any, shape: tuple[int, ...], dtype: str, *, what: str) -> np.ndarray:
    """Stack a column of samples into ``[n, *shape]`` of the model's input dtype."""
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
    target = np.dtype(dtype)
    if np.issubdtype(target, np.integer) and not np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(target)
        x = np.clip(np.rint(x), info.min, info.max)
    return x.astype(target, copy=False)


def input_spec(model: Any) -> list[tuple[tuple[int, ...], str]]:
    """(shape without batch, dtype) of each model input."""
    return [(tuple(int(d) for d in inp.shape[1:]), str(inp.dtype).replace("tf.", "")) for inp in model.inputs]


class SiameseServingModel(PythonModel):
    """Pair scoring and embedding for an exported Siamese model (see the module docstring)."""

    def __getstate__(self) -> dict[str, Any]:  # never pickle the Keras model into python_model.pkl
        return {k: v for k, v in self.__dict__.items() if k not in ("model", "_encoders", "_predict")}

    def load_context(self, context: Any) -> None:
        self.load(context.artifacts[KERAS_ARTIFACT])
        self.reference_path = context.artifacts.get(REFERENCE_ARTIFACT)

    def reference_embeddings(self) -> np.ndarray | None:
        """Embeddings of the first test samples as the trial's in-memory model computed them (if recorded)."""
        path = getattr(self, "reference_path", None)
        return np.load(path)["embeddings"] if path else None

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
        """distance, score, same (bool) and the native score the threshold applies to, for raw input arrays."""
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
        params = dict(params or {})
        mode = params.get("mode") or "pair"
        if mode not in MODES:
            raise PredictError(f"params.mode: expected one of {list(MODES)}; received: {mode!r}")
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if mode == "embed":
            side = 1 if str(params.get("side") or "left") == "right" else 0
            column = EMBED_COLUMN if EMBED_COLUMN in frame else PAIR_COLUMNS[side]
            if column not in frame:
                raise PredictError(f"mode 'embed' needs a column {EMBED_COLUMN!r} (or {PAIR_COLUMNS[side]!r}); "
                                   f"received columns {list(frame.columns)}")
            shape, dtype = self.inputs[min(side, len(self.inputs) - 1)]
            emb = self.embed_arrays(to_batch(frame[column], shape, dtype, what=column), side=side)
            return pd.DataFrame({"embedding": [row.astype(float).tolist() for row in emb]})
        missing = [c for c in PAIR_COLUMNS if c not in frame]
        if missing:
            raise PredictError(f"mode 'pair' needs columns {list(PAIR_COLUMNS)}; missing {missing} "
                               f"(received columns {list(frame.columns)})")
        left = to_batch(frame["left"], *self.inputs[0], what="left")
        right = to_batch(frame["right"], *self.inputs[-1], what="right")
        threshold = params.get("threshold")
        out = self.score_arrays(left, right, threshold=None if threshold is None else float(threshold))
        return pd.DataFrame({"distance": out["distance"].astype(float), "score": out["score"].astype(float),
                             "same": out["same"]})


def signature_for(model: Any) -> Any:
    """Explicit signature: optional columns left/right/input nested as deep as the input shape; params
    mode/threshold/side.

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

    spec = input_spec(model)
    cols: list[ColSpec | TensorSpec] = [ColSpec(array_type(spec[0][0]), "left", required=False),
                                        ColSpec(array_type(spec[-1][0]), "right", required=False),
                                        ColSpec(array_type(spec[0][0]), EMBED_COLUMN, required=False)]
    outputs = Schema([ColSpec(DataType.double, "distance"), ColSpec(DataType.double, "score"),
                      ColSpec(DataType.boolean, "same")])
    params = ParamSchema([ParamSpec("mode", DataType.string, "pair"), ParamSpec("threshold", DataType.double, None),
                          ParamSpec("side", DataType.string, "left")])
    return ModelSignature(inputs=Schema(cols), outputs=outputs, params=params)


def example_frame(model: Any, n: int = 1) -> pd.DataFrame:
    """A small valid request (zeros of the right shape), saved as the model's input example."""
    spec = input_spec(model)
    zeros = [np.zeros(shape, dtype=int if np.issubdtype(np.dtype(dtype), np.integer) else float).tolist()
             for shape, dtype in (spec[0], spec[-1])]
    return pd.DataFrame({"left": [zeros[0]] * n, "right": [zeros[1]] * n})
