"""`diagnose(config)`: everything the doctor checks, in the order that makes each check meaningful.

1. data   — raw labels of a user's ``.npz`` (positives only, one class), then loading and split checks;
            a failure here ends the diagnosis (there is nothing to build a model on).
2. static — the model graph, one batch of activations, the loss contract and reduction, one gradient.
3. probes — loader parity, overfitting 64 tuples, a short run with the training watchers.

Probes use a stratified subset (`probes.probe_data`), so the default config (Fashion-MNIST, conv
encoder) finishes well inside two minutes on two cores.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .. import runtime
from ..config import TrainConfig, as_config
from ..data.loaders import Loader, TrainingPlan
from ..data.pairs import make_sampler
from ..data.sources import load_dataset
from ..diagnostics import codes as C
from ..diagnostics.data_checks import check_raw, check_splits, from_data_error
from ..diagnostics.loss_checks import check_gradients
from ..diagnostics.report import merge
from ..diagnostics.watchers import probe_tuples, safely, static_findings
from ..errors import ConfigError, DataError
from ..findings import Finding
from ..run import build_run
from .probes import loader_parity, overfit_probe, probe_data, short_run

log = logging.getLogger(__name__)


def diagnose(config: TrainConfig | Mapping[str, Any] | str | Path | None, *,
             loaders: Mapping[str, Loader] | None = None, probes: bool = True,
             timings: dict[str, float] | None = None) -> list[Finding]:
    """Name every known failure of `config` (a `TrainConfig`, mapping or YAML path).

    Returns the findings (one per code, most severe first). Raises `ConfigError` for an invalid
    config and `DataError` for data that cannot be read at all; data that can be read but cannot
    train (positives only, one class) is reported as a finding. `loaders` overrides the loader
    registry for the parity probe; `timings` (if given) receives seconds per stage.
    """
    t = timings if timings is not None else {}
    clock = time.perf_counter()
    config = as_config(config)
    findings = check_raw(config)
    try:
        data = load_dataset(config)
    except DataError as exc:
        mapped = from_data_error(exc)
        if mapped is None and not any(f.is_error for f in findings):
            raise
        return merge(findings + ([mapped] if mapped else []))
    findings += check_splits(config, data)
    t["data"] = _lap(clock)
    if any(f.is_error for f in findings):
        return merge(findings)

    try:
        make_sampler(config, data)
    except DataError as exc:
        mapped = from_data_error(exc)
        if mapped is None:
            raise
        return merge(findings + [mapped])
    pdata = probe_data(data, seed=config.seed)
    runtime.seed_everything(config.seed)
    clock = time.perf_counter()
    run = build_run(config, pdata)  # ConfigError (bad user encoder/loss import) propagates: exit 2
    models = run.models
    findings += static_findings(config, pdata, models, loss=run.loss)
    x, y = probe_tuples(config, pdata.train)
    findings += safely(check_gradients, models.training, run.loss, x, y, encoders=models.encoders)
    t["static"] = _lap(clock)
    if not probes:
        return merge(findings)

    clock = time.perf_counter()
    findings += _probe("loader parity", lambda: _loader_parity(run.plan, loaders, config.epochs))
    t["loader_parity"] = _lap(clock)
    clock = time.perf_counter()
    findings += _probe("overfit", lambda: overfit_probe(config, pdata)[0], crash_code=C.CANNOT_OVERFIT)
    t["overfit"] = _lap(clock)
    clock = time.perf_counter()
    findings += _probe("short run", lambda: short_run(config, pdata)[0], crash_code=C.CANNOT_OVERFIT)
    t["short_run"] = _lap(clock)
    log.info("doctor stages (s): %s", {k: round(v, 1) for k, v in t.items()})
    return merge(findings)


def _loader_parity(plan: TrainingPlan, loaders: Mapping[str, Loader] | None, epochs: int) -> list[Finding]:
    """Epoch 0, then epoch 1 if training has one: a loader that fed epoch 0's tuples again in every epoch (a
    cached pipeline) agreed at epoch 0 and passed. About 0.3 s more on digits."""
    for epoch in range(min(2, epochs)):
        found = loader_parity(plan, loaders, epoch=epoch)[0]
        if found:
            return found
    return []


def _lap(start: float) -> float:
    return time.perf_counter() - start


def _probe(name: str, fn: Callable[[], Iterable[Finding]], *, crash_code: str | None = None) -> list[Finding]:
    """Run one probe; a crash in user code becomes a finding rather than hiding the others."""
    try:
        return list(fn())
    except (DataError, ConfigError):  # bad data, or user code that raised (`loss.type`): exit 2, as `train`
        raise
    except Exception as exc:  # noqa: BLE001
        if crash_code is None:
            log.warning("%s probe skipped: %s: %s", name, type(exc).__name__, exc)
            return []
        return [C.finding(crash_code, f"the {name} probe could not train the model: {type(exc).__name__}: {exc}",
                          evidence={"probe": name, "exception": type(exc).__name__})]
