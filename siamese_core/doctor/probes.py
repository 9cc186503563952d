"""Short probe runs of the doctor: overfit 64 tuples, compare loaders, train a few mini-epochs.

Probes work on a stratified subset of the data (`probe_data`) so the whole
doctor stays within two minutes on two cores for Fashion-MNIST. Each probe
returns findings and never raises for a failure of the model under test: a
crash while fitting 64 pairs *is* the finding. They train models, so they sit
above `siamese_core.training` (the short run calls `train`).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import keras
import numpy as np

from .. import runtime
from ..config import TrainConfig
from ..data.loaders import Loader, TrainingPlan, gather, get_loader, make_train_step
from ..data.splits import stratified_choice
from ..data.types import DatasetSplits, LabeledSplit, PairedSplit, Split, take
from ..diagnostics import codes as C
from ..diagnostics.scores import score_spread, separation
from ..diagnostics.watchers import FindingCollector
from ..errors import DataError, TrainingFailed
from ..findings import Finding
from ..registry import ENCODERS, LOADERS
from ..run import build_run
from ..training import train

PROBE_TRAIN, PROBE_VAL, PROBE_TEST = 4096, 1000, 400

# Overfit probe: 64 fixed tuples, batch 16, Adam 1e-3 (the probe asks "can this model+loss fit at all?",
# independent of the configured learning rate), up to 300 steps. Measured on healthy configs: the default
# conv, mlp, triplet (random and batch-hard), bce, cosine reach 10% of the initial loss in 20-80 steps
# with AUC 0.94-1.0 on the 64 tuples; the tiny test encoder (depth 1, width 8) stops at 42% but separates
# them (AUC 0.92). Broken models: softmax-over-one-unit 100% / AUC 0.5, frozen 100%, one conv + GAP on
# 8x8 digits 70% / AUC 0.52 even after 1500 steps. So: fitted = loss <= 10% or AUC >= 0.9;
# error = loss > 50% and AUC < 0.75; anything between is a warning.
OVERFIT_TUPLES, OVERFIT_BATCH, OVERFIT_MAX_STEPS, OVERFIT_LR = 64, 16, 300, 1e-3
OVERFIT_TARGET_RATIO, OVERFIT_FIT_AUC = 0.1, 0.9
OVERFIT_STUCK_RATIO, OVERFIT_STUCK_AUC = 0.5, 0.75
INVERTED_AUC = 0.3

# Short run: 3 mini-epochs of <= 4096 tuples with the configured optimizer, loader and watchers.
SHORT_EPOCHS, SHORT_TUPLES = 3, 4096

# Loader parity: ~1024 tuples from each loader. A different sampling seed moves the positive share by
# ~N(0, 0.016) at 1024 pairs; flag beyond max(0.05, 4 sigma). Input statistics of the same data agree to
# < 2%; a different normalisation changes them by 10-255x. Class-mix total variation between two samples
# of the same distribution is ~0.03-0.06 at 2048 samples over 10 classes; flag above 0.15.
PARITY_TUPLES = 1024
PARITY_MEAN_TOL = 0.25       # |mean_a - mean_b| in units of the reference std
PARITY_STD_RATIO = 1.25
PARITY_CLASS_TV = 0.15


# ------------------------------------------------------------------ data subset
def _subset(split: Split, n: int, rng: np.random.Generator) -> Split:
    if len(split) <= n:
        return split
    idx = stratified_choice(split.y, n, rng=rng)
    if isinstance(split, LabeledSplit):
        return LabeledSplit(take(split.x, idx), split.y[idx])
    return PairedSplit(take(split.x1, idx), take(split.x2, idx), split.y[idx])


def probe_data(data: DatasetSplits, *, seed: int) -> DatasetSplits:
    """A stratified subset of every split: enough to show a failure, small enough to be fast."""
    rng = np.random.default_rng([seed, 7])
    return replace(data, train=_subset(data.train, PROBE_TRAIN, rng), val=_subset(data.val, PROBE_VAL, rng),
                   test=_subset(data.test, PROBE_TEST, rng))


# ------------------------------------------------------------------ overfit probe
def overfit_probe(config: TrainConfig, data: DatasetSplits) -> tuple[list[Finding], dict[str, Any]]:
    """Fit 64 fixed tuples; a healthy model and loss get near zero loss in a few hundred steps."""
    overrides: dict[str, Any] = {"batch_size": OVERFIT_BATCH, "pairs.pairs_per_epoch": OVERFIT_TUPLES,
                                 "preprocessing.augmentation": []}
    if config.encoder.type in ENCODERS:
        overrides["encoder.dropout"] = 0.0
    cfg = config.with_overrides(overrides)
    runtime.seed_everything(config.seed)
    run = build_run(cfg, data)
    models, loss, plan = run.models, run.loss, run.plan
    model = models.training
    model.compile(optimizer=keras.optimizers.Adam(OVERFIT_LR), loss=loss, jit_compile=False)
    tuples = plan.sampler.epoch(0)
    x, y = list(gather(plan.sources(), tuples)), tuples.targets
    n = len(y) - len(y) % OVERFIT_BATCH
    batches = [([a[i:i + OVERFIT_BATCH] for a in x], y[i:i + OVERFIT_BATCH]) for i in range(0, n, OVERFIT_BATCH)]
    initial = float(np.mean([float(loss(yb, model(xb, training=True))) for xb, yb in batches]))
    spread0 = score_spread(models, np.asarray(model(x, training=False)))
    step_fn = make_train_step(model)
    steps, last, best, t0 = 0, initial, initial, time.perf_counter()
    info: dict[str, Any] = {"tuples": len(y), "batch_size": OVERFIT_BATCH, "optimizer": f"adam({OVERFIT_LR})",
                            "initial_loss": round(initial, 6)}
    findings: list[Finding] = []
    already = initial == 0.0  # every hinge satisfied before the first step: nothing to fit, no gradient to follow
    while steps < OVERFIT_MAX_STEPS and not already:
        values = []
        for xb, yb in batches:
            values.append(float(step_fn(xb, yb)))
            steps += 1
        last = float(np.mean(values))
        if not math.isfinite(last):
            findings.append(C.finding(C.NAN_LOSS, f"the loss became {last} after {steps} steps while fitting "
                                                  f"{len(y)} tuples with Adam(lr={OVERFIT_LR}) — with a safe "
                                                  f"learning rate, so the cause is in the model or loss",
                                      evidence={**info, "step": steps},
                                      fix="guard sqrt/log/division in the loss or distance with maximum(x, 1e-9)"))
            return findings, info
        best = min(best, last)
        if initial > 0 and last <= OVERFIT_TARGET_RATIO * initial:
            break
    pred_inf, pred_train = np.asarray(model(x, training=False)), np.asarray(model(x, training=True))
    sep = [separation(models, p, y) for p in (pred_inf, pred_train)]
    info.update({"steps": steps, "final_loss": round(last, 6),
                 "loss_ratio": round(last / initial, 4) if initial else None,
                 "separation_inference": round(sep[0], 4), "separation_training": round(sep[1], 4),
                 "score_spread_initial": round(spread0, 6),
                 "score_spread_final": round(score_spread(models, pred_inf), 6),
                 "seconds": round(time.perf_counter() - t0, 2)})
    fitted = already or (initial > 0 and last <= OVERFIT_TARGET_RATIO * initial) or max(sep) >= OVERFIT_FIT_AUC
    what = "AUC" if models.arity == 2 else "triplet accuracy"
    if max(sep) < INVERTED_AUC:
        findings.append(C.finding(C.LABEL_INVERTED, f"fitting {len(y)} training tuples drove their {what} to "
                                                    f"{max(sep):.2f} (< {INVERTED_AUC}): the model learns the "
                                                    f"opposite of the labels", evidence=info))
    elif not fitted:
        ratio = last / initial if initial else float("nan")
        stuck = not ratio <= OVERFIT_STUCK_RATIO and max(sep) < OVERFIT_STUCK_AUC
        findings.append(C.finding(
            C.CANNOT_OVERFIT, f"{'could not' if stuck else 'only partly'} fit {len(y)} training tuples: loss "
                              f"{initial:.4g} -> {last:.4g} ({ratio:.0%}) after {steps} steps of Adam({OVERFIT_LR}), "
                              f"{what} {max(sep):.2f} — a structural bug or far too little capacity",
            evidence=info, severity="error" if stuck else "warning"))
    if spread0 < 1e-6 and info["score_spread_final"] < 1e-6:
        findings.append(C.finding(C.CONSTANT_OUTPUT, "the model gives every pair the same score, before and after "
                                                     f"fitting {len(y)} tuples", evidence=info))
    return findings, info


# ------------------------------------------------------------------ loader parity
def _row_lookup(x: np.ndarray) -> dict[bytes, int]:
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    return {row.tobytes(): i for i, row in enumerate(flat)}


def _summary(batches: list[tuple[tuple[np.ndarray, ...], np.ndarray]], arity: int,
             lookup: dict[bytes, int] | None, labels: np.ndarray | None) -> dict[str, Any]:
    y = np.concatenate([b[1] for b in batches])
    xs = [np.concatenate([b[0][k] for b in batches]) for k in range(len(batches[0][0]))]
    allx = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in xs])
    out: dict[str, Any] = {"tuples": len(y), "dtype": str(xs[0].dtype), "input_mean": float(allx.mean()),
                           "input_std": float(allx.std()), "input_max": float(allx.max())}
    if arity == 2:
        out["positive_fraction"] = float(np.mean(y == 1))
    if lookup is not None and labels is not None:
        idx = np.asarray([lookup.get(np.ascontiguousarray(row).tobytes(), -1)
                          for a in xs for row in a.reshape(len(a), -1)])
        if np.mean(idx >= 0) >= 0.9:
            found = labels[idx[idx >= 0]]
            out["class_mix"] = np.bincount(found, minlength=int(labels.max()) + 1) / max(1, found.size)
    out["_y"], out["_x"] = y, xs
    return out


def _public(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return np.round(v, 4).tolist()
    return round(v, 5) if isinstance(v, float) else v


def loader_parity(plan: TrainingPlan, loaders: Mapping[str, Loader] | None = None, *,
                  epoch: int = 0) -> tuple[list[Finding], dict[str, Any]]:
    """Same plan, same epoch: every loader must feed the same tuples, or at least the same distribution."""
    loaders = dict(loaders) if loaders is not None else {name: get_loader(name) for name in LOADERS}
    if len(loaders) < 2:
        return [], {}
    n = max(1, min(plan.steps_per_epoch, math.ceil(PARITY_TUPLES / plan.batch_size)))
    lookup = labels = None
    if isinstance(plan.split, LabeledSplit) and isinstance(plan.split.x, np.ndarray):
        lookup, labels = _row_lookup(plan.split.x), np.unique(plan.split.y, return_inverse=True)[1]
    got: dict[str, dict[str, Any]] = {}
    findings: list[Finding] = []
    for name, loader in loaders.items():
        try:
            got[name] = _summary(loader.batches(plan, epoch, n), plan.arity, lookup, labels)
        except Exception as exc:  # noqa: BLE001 - a loader that cannot feed this plan is the finding
            findings.append(C.finding(C.LOADER_MISMATCH, f"loader '{name}' cannot produce batches for this data: "
                                                         f"{type(exc).__name__}: {exc}", evidence={"loader": name}))
    if len(got) < 2:
        return findings, {}
    ref_name = "memory" if "memory" in got else next(iter(got))
    ref = got[ref_name]
    public = {name: {k: _public(v) for k, v in s.items() if not k.startswith("_")} for name, s in got.items()}
    for name, s in got.items():
        if name == ref_name:
            continue
        same = (np.array_equal(s["_y"], ref["_y"]) and len(s["_x"]) == len(ref["_x"]) and
                all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(s["_x"], ref["_x"], strict=True)))
        public[name]["identical_to_" + ref_name] = bool(same)
        if same:
            continue
        problems = []
        if "positive_fraction" in s:
            p, m = ref["positive_fraction"], min(s["tuples"], ref["tuples"])
            tol = max(0.05, 4 * math.sqrt(max(p * (1 - p), 1e-3) / max(m, 1)))
            if abs(s["positive_fraction"] - p) > tol:
                problems.append(f"positive share {s['positive_fraction']:.2f} vs {p:.2f}")
        scale = max(ref["input_std"], 1e-6)
        ratio = s["input_std"] / scale
        shifted = abs(s["input_mean"] - ref["input_mean"]) > PARITY_MEAN_TOL * scale
        if shifted or not 1 / PARITY_STD_RATIO <= ratio <= PARITY_STD_RATIO:
            problems.append(f"input mean/std {s['input_mean']:.4g}/{s['input_std']:.4g} vs "
                            f"{ref['input_mean']:.4g}/{ref['input_std']:.4g} (different preprocessing)")
        if "class_mix" in s and "class_mix" in ref:
            tv = 0.5 * float(np.abs(s["class_mix"] - ref["class_mix"]).sum())
            public[name]["class_mix_tv_distance"] = round(tv, 4)
            if tv > PARITY_CLASS_TV:
                problems.append(f"class mix differs (total variation {tv:.2f})")
        elif lookup is not None and "class_mix" in ref:
            public[name]["class_mix"] = "unknown: inputs do not match the data's rows"
        evidence = {"reference": ref_name, "epoch": epoch, "loaders": {k: public[k] for k in (ref_name, name)}}
        if problems:
            findings.append(C.finding(C.LOADER_MISMATCH, f"loader '{name}' differs from '{ref_name}' on the same data, "
                                                         f"seed and epoch: {'; '.join(problems)}", evidence=evidence))
        else:
            findings.append(C.finding(C.LOADER_MISMATCH, f"loader '{name}' feeds different tuples than '{ref_name}' "
                                                         f"for the same seed and epoch (same distribution, different "
                                                         f"pairs or order): results are not comparable across loaders",
                                      evidence=evidence, severity="warning",
                                      fix="draw the epoch's tuples from the shared sampler (plan.sampler.epoch(epoch)) "
                                          "instead of re-sampling in the loader"))
    return findings, public


# ------------------------------------------------------------------ short run
def short_run(config: TrainConfig, data: DatasetSplits) -> tuple[list[Finding], dict[str, Any]]:
    """A few mini-epochs with the configured loader, optimizer and the training watchers."""
    n = config.pairs.pairs_per_epoch or (2 * len(data.train) if not data.info.paired else len(data.train))
    n = max(min(n, SHORT_TUPLES), config.batch_size)
    patience = min(config.diagnostics.no_learning_patience, SHORT_EPOCHS)
    cfg = config.with_overrides({
        "epochs": SHORT_EPOCHS, "pairs.pairs_per_epoch": n,
        "pairs.val_pairs": max(20, min(config.pairs.val_pairs, PROBE_VAL)),
        "pairs.test_pairs": max(20, min(config.pairs.test_pairs, 200)),
        "early_stopping.enabled": False,
        "diagnostics.enabled": True, "diagnostics.no_learning_patience": patience,
        "diagnostics.fail_on": [C.NAN_LOSS, C.COLLAPSE, C.CONSTANT_OUTPUT, C.LABEL_INVERTED]})
    collector = FindingCollector()
    info: dict[str, Any] = {"epochs": SHORT_EPOCHS, "tuples_per_epoch": n, "loader": config.loader}
    t0 = time.perf_counter()
    try:
        result = train(cfg, data=data, callbacks=[collector])
        info["history"] = [{k: round(v, 4) for k, v in row.items() if k in ("epoch", "loss", "val_roc_auc",
                                                                               "raw_embedding_norm_mean",
                                                                               "embedding_spread")}
                           for row in result.history]
    except TrainingFailed as exc:
        info["stopped"] = f"{exc.code} at epoch {exc.epoch}"
        if exc.finding is None and not any(f.code == exc.code for f in collector.findings):
            collector.findings.append(C.finding(exc.code, str(exc), epoch=exc.epoch)
                                      if exc.code in C.CATALOGUE else C.finding(C.NAN_LOSS, str(exc)))
    except DataError:
        raise
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return collector.findings, info
