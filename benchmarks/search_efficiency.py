"""Search efficiency at an equal wall-clock budget, on the same data and search space.

Compared, each in its own process, for several seeds:

* ``optuna-tpe+prune`` — ``siamese-sweep``: TPE sampler + median pruner, MLflow tracking on (local store),
  fresh training pairs every epoch (the product as users run it);
* ``optuna-random`` — ``siamese-sweep`` with a random sampler and no pruner;
* ``kt-random`` / ``kt-hyperband`` — KerasTuner's own ``RandomSearch`` and ``Hyperband`` run natively
  (``tuner.search`` on one fixed set of training pairs, a dataset fed to ``fit``), building the same
  Siamese network from the same config.

All four optimise validation ROC AUC measured the same way (our metric, on the same 2,000 validation
pairs) after every epoch, and every epoch's value is recorded with its wall-clock time since the
method started. "Best AUC at t" = best epoch value recorded by t. The budget truncates every method at the
same t, so a trial still running at the deadline counts only its finished epochs.

    python benchmarks/search_efficiency.py [--budget 150] [--seeds 0 1 2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUICK_BASE, fresh_local_stores, markdown_table, median, run_child  # noqa: E402

METHODS = ("optuna-tpe+prune", "optuna-random", "kt-random", "kt-hyperband")

BASE: dict[str, Any] = {
    "dataset": "fashion_mnist",
    "loader": "tfdata",
    "epochs": 4,
    "batch_size": 128,
    "pairs": {"pairs_per_epoch": 10000, "val_pairs": 2000, "test_pairs": 2000},
    "diagnostics": {"enabled": True},
}
# loss.margin, encoder depth, learning rate, embedding size: the same ranges for every method
SPACE: dict[str, Any] = {
    "loss.margin": {"type": "float", "low": 0.25, "high": 2.0},
    "encoder.depth": {"type": "int", "low": 1, "high": 3},
    "learning_rate": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
    "encoder.embedding_dim": {"type": "categorical", "choices": [16, 64, 128]},
}


# ------------------------------------------------------------------ children
def child_optuna(method: str, seed: int, budget: float, base: dict[str, Any]) -> dict[str, Any]:
    """One siamese-sweep study; epoch times come from the MLflow metric history."""
    from mlflow import MlflowClient

    from sweeps import names
    from sweeps.runner import options_from, run_sweep
    from sweeps.spec import spec_from_dict

    work, tracking = fresh_local_stores("bench-search-")
    tpe = method == "optuna-tpe+prune"
    spec = spec_from_dict({
        "base": {**base, "seed": seed},
        "search_space": SPACE,
        "study": {"name": f"bench-{method.replace('+', '-')}-{seed}", "metric": "val_roc_auc", "direction": "maximize",
                  "trials": 10_000, "timeout": budget,
                  "sampler": {"type": "tpe", "seed": seed, "n_startup_trials": 4} if tpe
                  else {"type": "random", "seed": seed},
                  "pruner": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1} if tpe
                  else {"type": "none"}},
        "tracking": {"uri": tracking, "log_plots": True, "log_models": True},
    })
    opts = options_from(spec, storage=f"sqlite:///{work}/optuna.db", tracking_uri=tracking, progress=False)
    t0 = time.time()
    result = run_sweep(spec, opts)
    client = MlflowClient(tracking)
    epochs: list[dict[str, Any]] = []
    runs = client.search_runs([result.experiment_id],
                              filter_string=f"tags.`{names.MLFLOW_PARENT_RUN_ID}` = '{result.parent_run_id}'")
    states: dict[str, int] = {}
    epochs_run = 0
    for run in runs:
        hist = client.get_metric_history(run.info.run_id, "val_roc_auc")
        epochs_run += len(hist)
        state = run.data.tags.get(names.TAG_STATE, "?")
        states[state] = states.get(state, 0) + 1
        trial = int(run.data.tags.get(names.TAG_TRIAL_NUMBER, -1))
        epochs += [{"t": m.timestamp / 1000.0 - t0, "auc": m.value, "trial": trial, "epoch": m.step} for m in hist]
    return {"epochs": epochs, "trials": len(runs), "states": states, "epochs_run": epochs_run,
            "max_epochs": base["epochs"]}


def child_kerastuner(method: str, seed: int, budget: float, base: dict[str, Any]) -> dict[str, Any]:
    """KerasTuner's RandomSearch / Hyperband, natively; stopped hard at the budget."""
    import keras
    import keras_tuner as kt
    import numpy as np
    import tensorflow as tf

    from siamese_core import verification as metrics
    from siamese_core.config import TrainConfig
    from siamese_core.data.loaders import gather
    from siamese_core.data.pairs import STREAM_VAL, make_sampler
    from siamese_core.data.sources import load_dataset
    from siamese_core.data.types import LabeledSplit, materialize
    from siamese_core.evaluation import EvalSet
    from siamese_core.run import build_run

    t0 = time.time()
    base_cfg = TrainConfig.from_dict({**base, "seed": seed})
    data = load_dataset(base_cfg)
    assert isinstance(data.train, LabeledSplit) and isinstance(data.val, LabeledSplit)  # class-labelled images
    x_train = materialize(data.train.x)
    pairs = make_sampler(base_cfg, data).epoch(0)  # one fixed set of pairs, the way tuner.search is used
    (x1, x2), y = gather([x_train, x_train], pairs), pairs.targets
    train_ds = tf.data.Dataset.from_tensor_slices(((x1, x2), y)).batch(base_cfg.batch_size)
    options = tf.data.Options()
    # autotuning off: AUTOTUNE pipelines were seen to leave fit() idle 5-40 s at epoch ends on 2 cores; fair to
    # KerasTuner, whose trials run on the same pipeline
    options.autotune.enabled = False
    train_ds = train_ds.with_options(options)
    val_set = EvalSet.build(data.val, n_pairs=base_cfg.pairs.val_pairs, seed=seed, stream=STREAM_VAL,
                            triplets=False)
    x_val = materialize(data.val.x)
    v1, v2 = gather([x_val, x_val], val_set.pairs)
    vy = val_set.pairs.targets
    epochs: list[dict[str, Any]] = []
    trial_counter = {"n": -1}

    class ValAuc(keras.callbacks.Callback):
        """Our val ROC AUC on the same validation pairs, into `logs` for the tuner's objective."""

        def on_train_begin(self, logs: dict | None = None) -> None:
            trial_counter["n"] += 1

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            d = np.asarray(self.model.predict([v1, v2], batch_size=512, verbose=0)).reshape(-1)
            auc = metrics.roc_auc(d, vy, higher_is_same=False)
            if logs is not None:
                logs["val_roc_auc"] = auc
            epochs.append({"t": time.time() - t0, "auc": float(auc), "trial": trial_counter["n"], "epoch": epoch})

    def build(hp: kt.HyperParameters) -> keras.Model:
        overrides = {"loss": {"type": "contrastive", "margin": hp.Float("loss.margin", 0.25, 2.0)},
                     "learning_rate": hp.Float("learning_rate", 1e-4, 3e-2, sampling="log"),
                     "encoder": {**base_cfg.encoder.model_dump(), "depth": hp.Int("encoder.depth", 1, 3),
                                 "embedding_dim": hp.Choice("encoder.embedding_dim", [16, 64, 128])}}
        cfg = TrainConfig.from_dict({**base_cfg.to_dict(), **overrides})
        return build_run(cfg, data).models.training

    class NoTensorBoard:
        def _configure_tensorboard_dir(self, callbacks: Any, trial: Any, execution: int = 0) -> None:
            return  # KerasTuner imports tensorboard here; not installed offline (see notes)

    common = {"objective": kt.Objective("val_roc_auc", "max"), "seed": seed, "overwrite": True,
              "directory": tempfile.mkdtemp(prefix="bench-kt-"), "project_name": method}
    if method == "kt-random":
        class Tuner(NoTensorBoard, kt.RandomSearch):
            pass
        tuner = Tuner(build, max_trials=10_000, **common)
    else:
        class Tuner(NoTensorBoard, kt.Hyperband):  # type: ignore[no-redef]
            pass
        tuner = Tuner(build, max_epochs=base_cfg.epochs, factor=3, hyperband_iterations=100, **common)

    out_path = os.environ["BENCH_OUT"]

    def write() -> None:
        Path(out_path).write_text(json.dumps({"epochs": list(epochs), "trials": trial_counter["n"] + 1,
                                              "epochs_run": len(epochs), "max_epochs": base_cfg.epochs}))

    def stop_at_budget() -> None:  # a hard stop: KerasTuner has no wall-clock budget of its own
        time.sleep(max(0.0, budget - (time.time() - t0)))
        write()
        os._exit(0)

    threading.Thread(target=stop_at_budget, daemon=True).start()
    tuner.search(train_ds, epochs=base_cfg.epochs, callbacks=[ValAuc()], verbose=0)
    write()  # search space exhausted before the budget
    os._exit(0)


def child_main(args: argparse.Namespace) -> None:
    base = json.loads(args.base)
    if args.method.startswith("optuna"):
        out = child_optuna(args.method, args.seed, args.budget, base)
        print(json.dumps(out))
    else:
        os.environ["BENCH_OUT"] = args.out
        child_kerastuner(args.method, args.seed, args.budget, base)


# ------------------------------------------------------------------ parent
def best_by(epochs: list[dict[str, Any]], t: float) -> float:
    vals = [e["auc"] for e in epochs if e["t"] <= t]
    return max(vals) if vals else float("nan")


def run_method(method: str, seed: int, budget: float, base: dict[str, Any]) -> dict[str, Any]:
    argv = [__file__, "--child", method, "--seed", str(seed), "--budget", str(budget), "--base", json.dumps(base)]
    if method.startswith("optuna"):
        return run_child(argv, timeout=budget * 4 + 600)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    import subprocess

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, *argv, "--out", out], env=env, capture_output=True, text=True,
                          timeout=budget * 4 + 600)
    if proc.returncode != 0 or not Path(out).stat().st_size:
        raise RuntimeError(f"{method} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(Path(out).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=150.0, help="wall-clock seconds per method and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--quick", action="store_true", help="digits, 40 s budget, one seed (a smoke run)")
    ap.add_argument("--json", help="write all raw results here")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--base", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.method = args.child
        child_main(args)
        return

    base = dict(BASE)
    if args.quick:
        base.update(QUICK_BASE)
        args.budget, args.seeds = 40.0, args.seeds[:1]
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    for seed in args.seeds:  # interleaved: every method sees the same machine load pattern
        for method in args.methods:
            print(f"# seed {seed}: {method} ({args.budget:.0f} s)", file=sys.stderr, flush=True)
            r = run_method(method, seed, args.budget, base)
            r["seed"] = seed
            results[method].append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))

    checkpoints = [args.budget * f for f in (0.25, 0.5, 0.75, 1.0)]
    headers = ["method"] + [f"best val AUC @{t:.0f}s" for t in checkpoints] + [
        "per seed @budget", "trials started", "epochs run", "epoch-compute saved by pruning"]
    rows = []
    for method, runs in results.items():
        curves = [[best_by(r["epochs"], t) for t in checkpoints] for r in runs]
        finals = [c[-1] for c in curves]
        in_budget = [[e for e in r["epochs"] if e["t"] <= args.budget] for r in runs]
        trials = [len({e["trial"] for e in eps}) for eps in in_budget]
        n_epochs = [len(eps) for eps in in_budget]
        if method == "optuna-tpe+prune":
            full = [r["trials"] * r["max_epochs"] for r in runs]
            saved = median([1 - r["epochs_run"] / f for r, f in zip(runs, full, strict=True) if f])
        else:
            saved = float("nan")
        rows.append([method] + [median([c[i] for c in curves]) for i in range(len(checkpoints))]
                    + [" / ".join(f"{v:.3f}" for v in finals), median(trials), median(n_epochs), saved])
    print(f"\nEqual wall-clock budget {args.budget:.0f} s per method, seeds {args.seeds}, dataset "
          f"{base['dataset']}, {base['pairs']['pairs_per_epoch']} pairs/epoch, up to {base['epochs']} epochs/trial; "
          f"medians over seeds.\n")
    print(markdown_table(headers, rows))
    ours = median([best_by(r["epochs"], args.budget) for r in results.get("optuna-tpe+prune", [])])
    for other in ("kt-random", "kt-hyperband"):
        if other in results and "optuna-tpe+prune" in results:
            theirs = median([best_by(r["epochs"], args.budget) for r in results[other]])
            verdict = "met" if ours > theirs else "NOT met"
            print(f"\nTarget: optuna-tpe+prune ({ours:.4f}) > {other} ({theirs:.4f}) on the median: {verdict}")


if __name__ == "__main__":
    main()
