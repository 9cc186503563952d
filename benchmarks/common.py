"""Shared helpers for the side-by-side benchmark scripts.

* `run_child` runs one measurement in a fresh Python process and reads back
  one JSON line; its peak RSS comes from ``os.wait4`` (that child only).
* `keras_io_encoder` is the embedding tower of the keras.io example
  "Image similarity estimation using a Siamese Network with a contrastive
  loss" (5,318 parameters), usable as a user encoder
  (``encoder.type: common:keras_io_encoder`` with ``benchmarks/`` on sys.path).
* `markdown_table` prints results the way the README shows them.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_child(args: Sequence[str], *, timeout: float = 3600) -> dict[str, Any]:
    """Run ``python <args>`` in a new process; return its last JSON stdout line plus ``peak_rss_mb``.

    Peak RSS is the child's own ``ru_maxrss`` from ``os.wait4`` (that process only, all its threads).
    """
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    measured = run_measured([sys.executable, *args], env=env, timeout=timeout)
    lines = [line for line in measured["stdout"].splitlines() if line.startswith("{")]
    if not lines:
        tail = "\n".join(measured["stderr"].strip().splitlines()[-15:])
        raise RuntimeError(f"child {' '.join(args)} printed no JSON line:\n{tail}")
    result = json.loads(lines[-1])
    result["peak_rss_mb"] = round(measured["peak_rss_mb"], 1)
    result["process_seconds"] = round(measured["wall"], 2)
    return result


def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 3600,
                 cwd: Path | None = None) -> dict[str, Any]:
    """Run `cmd` as a new process (in `cwd`, default this one's); its wall time and its own CPU accounting (what
    ``/usr/bin/time -v`` shows).

    Returns ``wall``, ``user``, ``sys`` (seconds), ``minor_faults``, ``peak_rss_mb``, ``stdout`` and ``stderr``;
    CPU time and faults come from ``os.wait4`` (that process and nothing else).
    """
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, text=True, env={**os.environ, **(env or {})},
                                cwd=cwd)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise TimeoutError(f"{' '.join(cmd)} timed out after {timeout} s")
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {code}):\n{tail}")
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime, "minor_faults": usage.ru_minflt,
            "peak_rss_mb": usage.ru_maxrss / 1024.0, "stdout": stdout, "stderr": stderr}


# --quick: a smoke run on scikit-learn digits (numbers not meaningful)
QUICK_BASE: dict[str, Any] = {"dataset": "digits", "batch_size": 64,
                              "pairs": {"pairs_per_epoch": 2000, "val_pairs": 500, "test_pairs": 500}}


def fresh_local_stores(prefix: str) -> tuple[Path, str]:
    """A new directory and a local MLflow SQLite URI whose schema exists already (created off the clock)."""
    import tempfile

    from mlflow import MlflowClient

    work = Path(tempfile.mkdtemp(prefix=prefix))
    tracking = f"sqlite:///{work}/mlflow.db"
    MlflowClient(tracking).search_experiments()  # ~9 s the first time: not part of what is measured
    return work, tracking


def cpu_seconds(*, children: bool = False) -> float:
    """User + system CPU seconds of this process (`children`: plus its waited-for child processes')."""
    import resource

    who = [resource.RUSAGE_SELF] + ([resource.RUSAGE_CHILDREN] if children else [])
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, who))


def timed(call: Callable[[], object]) -> tuple[float, float]:
    """CPU and wall seconds of one call in this process."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    call()
    return cpu_seconds() - c0, time.perf_counter() - t0


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


T = TypeVar("T")


def rotated(items: Sequence[T], turn: int) -> list[T]:
    """`items` started at position ``turn`` (mod its length): run repeat ``turn`` in this order, so that no
    setting always runs first (cold caches, a machine that speeds up or slows down during the run)."""
    k = turn % len(items)
    return [*items[k:], *items[:k]]


def mean_sd(values: Sequence[float | None], *, per_seed: bool = True) -> str:
    """``mean ± sd (v1 / v2 / ...)`` over seeds, 4 decimals; None values (a row without that metric) skipped."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    spread = f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else ""
    seeds = f" ({' / '.join(f'{v:.4f}' for v in vals)})" if per_seed else ""
    return f"{statistics.mean(vals):.4f}{spread}{seeds}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return f"{v:.3f}" if abs(v) < 10 else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def keras_io_encoder(input_shape: tuple[int, ...]) -> Any:
    """keras.io siamese_contrastive tower: BN, Conv(4,5,tanh), AvgPool, Conv(16,5,tanh), AvgPool, Flatten, BN,
    Dense(10, tanh)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape)
    x = layers.BatchNormalization()(inputs)
    x = layers.Conv2D(4, (5, 5), activation="tanh")(x)
    x = layers.AveragePooling2D(pool_size=(2, 2))(x)
    x = layers.Conv2D(16, (5, 5), activation="tanh")(x)
    x = layers.AveragePooling2D(pool_size=(2, 2))(x)
    x = layers.Flatten()(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(10, activation="tanh")(x)
    return keras.Model(inputs, x, name="keras_io_tower")


def keras_io_distance_siamese(input_shape: tuple[int, ...]) -> Any:
    """The keras.io example as published since 2026-01-28: tower -> euclidean distance as the output."""
    import keras
    from keras import layers, ops

    def euclidean_distance(vects: Any) -> Any:
        a, b = vects
        return ops.sqrt(ops.maximum(ops.sum(ops.square(a - b), axis=1, keepdims=True), keras.backend.epsilon()))

    tower = keras_io_encoder(input_shape)
    in1, in2 = layers.Input(input_shape), layers.Input(input_shape)
    return keras.Model([in1, in2], layers.Lambda(euclidean_distance)([tower(in1), tower(in2)]))


def keras_io_distance_loss(margin: float = 1.0) -> Any:
    """That example's contrastive loss on distances, with its label convention: 0 = same, 1 = different."""
    from keras import ops

    def contrastive_loss(y_true: Any, y_pred: Any) -> Any:
        return ops.mean((1 - y_true) * ops.square(y_pred) + y_true * ops.square(ops.maximum(margin - y_pred, 0)))
    return contrastive_loss


def keras_io_siamese(input_shape: tuple[int, ...]) -> Any:
    """The keras.io pair model: tower -> euclidean distance -> BN -> Dense(1, sigmoid) (a similarity)."""
    import keras
    from keras import layers, ops

    class EuclideanDistance(layers.Layer):  # the example's Lambda, as a layer
        def call(self, inputs: Any) -> Any:
            a, b = inputs
            return ops.sqrt(ops.maximum(ops.sum(ops.square(a - b), axis=1, keepdims=True), 1e-7))

    tower = keras_io_encoder(input_shape)
    in1, in2 = keras.Input(shape=input_shape), keras.Input(shape=input_shape)
    d = EuclideanDistance()([tower(in1), tower(in2)])
    out = layers.Dense(1, activation="sigmoid")(layers.BatchNormalization()(d))
    return keras.Model([in1, in2], out, name="keras_io_siamese"), tower


def keras_io_loss(margin: float = 1.0) -> Any:
    """The example's own convention: label 1 = same, the output is pushed to >= margin for same pairs."""
    from keras import ops

    def contrastive_loss(y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), y_pred.dtype)
        square_pred = ops.square(y_pred)
        margin_square = ops.square(ops.maximum(margin - y_pred, 0.0))
        return ops.mean((1 - y_true) * square_pred + y_true * margin_square)
    return contrastive_loss
