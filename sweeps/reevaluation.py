"""Re-evaluate logged models on a trial's validation and test pairs, rebuilt exactly as the trial built them.

The pairs come from the trial's resolved config (the ``config.yaml`` artifact, else the run params):
``load_dataset(config)`` and the fixed pairs of `EvalSet` (``EvalSet.of(data, "val" | "test")``). The
dataset's fingerprint must equal the one recorded at training time, otherwise the comparison would be on
other data and we refuse. Every model is scored through the same wrapper that serves it
(`sweeps.serving.SiameseServingModel`), at the threshold stored inside the model.

Which split decides: promotion selects and decides on the **validation** pairs (`SELECTION_SPLIT`) and
only reports the **test** pairs (`REPORT_SPLIT`). Choosing the better of two models by their test score
and then quoting that score biases it upward (the winner's test number includes the luck that made it
win); the test pairs stay an estimate only if nothing is chosen by them.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from siamese_core.errors import ConfigError, DataError

from . import scratch

log = logging.getLogger(__name__)

METRICS = ("pair_accuracy", "roc_auc", "eer")  # what a model is re-evaluated on; directions: sweeps.directions
SELECTION_SPLIT, REPORT_SPLIT = "val", "test"  # promotion decides on the first and only reports the second
_ALIASES = {
    "pair_accuracy": ("pair_accuracy", "val_pair_accuracy", "accuracy", "val_accuracy", "acc"),
    "roc_auc": ("roc_auc", "val_roc_auc", "auc", "val_auc"),
    "eer": ("eer", "val_eer"),
}
_BY_NAME = {alias: canon for canon, names in _ALIASES.items() for alias in names}
# test names a user may still type (older docs, habit): mapped to their validation counterpart, with a notice
_TEST_NAMES = {"test_" + alias: canon for alias, canon in _BY_NAME.items() if not alias.startswith("val_")}


def selection_metric(name: str | None, *, option: str = "--metric") -> tuple[str | None, str | None]:
    """(canonical metric, notice): ``val_auc`` -> ``roc_auc``; ``test_auc`` -> ``roc_auc`` plus a one-line notice
    that the validation counterpart is used (selection on test is what promotion must not do).

    None stays None; unknown names are a `ConfigError`.
    """
    if name is None:
        return None, None
    key = name.strip().lower()
    canon = _BY_NAME.get(key)
    if canon is not None:
        return canon, None
    canon = _TEST_NAMES.get(key)
    if canon is None:
        raise ConfigError(option, f"expected one of val_roc_auc (roc_auc, auc), val_pair_accuracy, val_eer; "
                                  f"received: {name!r}")
    return canon, (f"{option} {name}: promote selects and decides on validation pairs, so it uses val_{canon}; "
                   f"test metrics are only reported")


def canonical_metric(name: str | None, *, option: str = "--metric") -> str | None:
    """``val_auc`` (or ``test_auc``, see `selection_metric`) -> ``roc_auc``; None stays None."""
    return selection_metric(name, option=option)[0]


def has_counterpart(objective_metric: str | None) -> bool:
    """Whether a study objective is a re-evaluated metric (``params`` or ``latency_ms`` are not)."""
    return (objective_metric or "").lower() in _BY_NAME


def objective_counterpart(objective_metric: str | None) -> str:
    """The re-evaluated metric that stands for a study objective (val_roc_auc -> roc_auc); roc_auc otherwise."""
    return _BY_NAME.get((objective_metric or "").lower(), "roc_auc")


@dataclass
class EvalPairs:
    """The fixed validation or test pairs of one trial's config, with the arrays to feed a pair model."""

    fingerprint: str
    left: np.ndarray
    right: np.ndarray
    labels: np.ndarray
    key: str                                   # identifies (dataset, pairs): metrics with one key compare
    reference_inputs: np.ndarray | None = None  # test samples whose embeddings the trial recorded
    n_pairs: int = 0
    which: str = REPORT_SPLIT                  # "val" or "test"
    eval_fingerprint: str | None = None        # DataInfo.eval_fingerprint: the split and its val/test tuples


TestSplit = EvalPairs  # the name before validation pairs were rebuilt too


@dataclass(frozen=True)
class Evaluation:
    """One model scored on one split's pairs (validation or test), through its serving wrapper."""

    uri: str
    metrics: dict[str, float]
    threshold: float
    embeddings_reproduced: bool | None = None  # the trial's recorded embeddings, bit for bit

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "metrics": self.metrics, "threshold": self.threshold,
                "embeddings_reproduced": self.embeddings_reproduced}

    def metrics_json(self) -> str:
        """The metrics as a registry version stores them (``siamese_sweep.eval.<key>``)."""
        return json.dumps({k: round(float(v), 6) for k, v in self.metrics.items()}, sort_keys=True)


# ------------------------------------------------------------------ the split
def trial_config(client: Any, run_id: str) -> dict[str, Any]:
    """The resolved train config a trial ran with: its config.yaml artifact, else its run params."""
    import yaml

    from .mlflow_globals import quiet_artifacts

    missed: Exception | None = None
    try:
        with scratch.temporary_directory("siamese-cfg-") as tmp, quiet_artifacts():
            path = client.download_artifacts(run_id, "config.yaml", tmp)
            saved = yaml.safe_load(Path(path).read_text())
        if isinstance(saved, dict):
            return saved
    except Exception as exc:  # noqa: BLE001 - fall back to the params (older runs, no artifacts)
        missed = exc
    from siamese_core.config import set_dotted

    # read before saying so: with the server down, the fallback's error is the one to show, not a line about
    # config.yaml before it (`promote` printed "no config.yaml for run ..." and then could not reach the server)
    params = client.get_run(run_id).data.params
    if missed is not None:
        log.info("no config.yaml for run %s (%s); using its params", run_id, type(missed).__name__)
    data: dict[str, Any] = {}
    for key, value in params.items():
        if key.startswith(("hp.", "dataset.fingerprint", "dataset.source")) or key == "hypermodel":
            continue
        try:
            set_dotted(data, key, yaml.safe_load(value))
        except Exception as exc:  # noqa: BLE001 - a param that is not part of the config
            log.debug("ignoring run param %s: %s", key, exc)
    return data


def _split_config(raw: dict[str, Any]) -> Any:
    """Only what defines the data and the evaluation pairs (the encoder may not be importable here).

    Evaluation pairs depend on the split and `siamese_core.data.splits.eval_spec` only, never on a training
    setting such as ``pairs.positive_fraction``: two trials of one split are scored on the same test pairs.
    """
    from siamese_core.config import TrainConfig

    pairs = raw.get("pairs") or {}
    keep = {"dataset": raw.get("dataset") or "fashion_mnist", "seed": raw.get("seed", 0),
            "pairs": {k: pairs[k] for k in ("val_pairs", "test_pairs") if k in pairs}}
    return TrainConfig.from_dict(keep)


def build_eval_pairs(raw_config: dict[str, Any], *, expected_fingerprint: str | None, what: str,
                     which: tuple[str, ...] = (SELECTION_SPLIT, REPORT_SPLIT)) -> dict[str, EvalPairs]:
    """Rebuild the trial's validation and/or test pairs (one dataset load); `DataError` if the data is not what
    the trial trained on."""
    from siamese_core.data.sources import load_dataset
    from siamese_core.data.splits import eval_spec
    from siamese_core.data.types import LabeledSplit, PairedSplit, materialize
    from siamese_core.evaluation import EvalSet

    config = _split_config(raw_config)
    data = load_dataset(config)
    fp = data.info.fingerprint
    if expected_fingerprint and fp != expected_fingerprint:
        raise DataError(data.info.source, f"dataset fingerprint {fp[:12]}… differs from the one {what} was trained "
                                          f"and tested on ({expected_fingerprint[:12]}…): the data or its split "
                                          f"changed since training, so its validation and test pairs cannot be "
                                          f"rebuilt; restore the data or re-run the sweep")
    spec = eval_spec(config, data.splits())
    out = {}
    for name in which:
        split = data.splits()[name]
        es = EvalSet.of(data, name, spec=spec)  # type: ignore[arg-type]
        idx = es.pairs.indices
        if isinstance(split, PairedSplit):
            left, right = materialize(split.x1, idx[:, 0]), materialize(split.x2, idx[:, 1])
        else:
            left, right = materialize(split.x, idx[:, 0]), materialize(split.x, idx[:, 1])
        labels = np.asarray(es.pairs.targets).reshape(-1)
        # the key names (dataset, pairs) by content: registry versions scored under one key compare
        h = hashlib.sha256(fp.encode())
        h.update(np.ascontiguousarray(idx, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(labels, dtype=np.float32).tobytes())
        ref = None
        if name == REPORT_SPLIT and es.retrieval_idx is not None and isinstance(split, LabeledSplit):
            ref = materialize(split.x, es.retrieval_idx)  # the trial recorded embeddings of these test samples
        out[name] = EvalPairs(fp, left, right, labels, h.hexdigest()[:16], ref, len(labels), name,
                              spec.fingerprint(fp))
    return out


def build_test_split(raw_config: dict[str, Any], *, expected_fingerprint: str | None, what: str) -> EvalPairs:
    """Rebuild the trial's test pairs only (see `build_eval_pairs`)."""
    return build_eval_pairs(raw_config, expected_fingerprint=expected_fingerprint, what=what,
                            which=(REPORT_SPLIT,))[REPORT_SPLIT]


# ------------------------------------------------------------------ models
def load_wrapper(uri: str, *, tracking_uri: str, dst: str) -> Any:
    """Download `uri` and build its `SiameseServingModel` from data only (`serving.load_model_dir`: nothing in
    the artifact store is unpickled or executed on the promoting host)."""
    from .registry import download_model
    from .serving import load_model_dir

    return load_model_dir(download_model(uri, tracking_uri=tracking_uri, dst=dst))[0]


def evaluate(wrapper: Any, split: EvalPairs, *, uri: str) -> Evaluation:
    """Pair accuracy (the model's own same/different at its stored threshold), ROC AUC and EER."""
    from siamese_core import verification as m

    shapes = wrapper.inputs
    out = wrapper.score_batches(split.left.astype(shapes[0][1], copy=False),
                                split.right.astype(shapes[-1][1], copy=False))
    y = split.labels
    native = out["native"]
    result = {"pair_accuracy": float(np.mean(out["same"] == (y >= 0.5))),
              "roc_auc": float(m.roc_auc(native, y, higher_is_same=wrapper.higher_is_same)),
              "eer": float(m.equal_error_rate(native, y, higher_is_same=wrapper.higher_is_same))}
    reproduced = None
    recorded = wrapper.reference_embeddings()
    if split.reference_inputs is not None and recorded is not None:
        now = wrapper.embed_arrays(split.reference_inputs)[:len(recorded)]
        reproduced = bool(now.shape == recorded.shape and np.array_equal(now, recorded))
    return Evaluation(uri, result, wrapper.threshold, reproduced)
