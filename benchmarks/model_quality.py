"""Model quality: the sweep's best model vs the keras.io reference, same epochs, same pairs, Fashion-MNIST.

    python benchmarks/model_quality.py                       # runs the quickstart sweep first (~10 min)
    python benchmarks/model_quality.py --storage sqlite:///optuna.db --study quickstart   # reuse a finished one

Rows, all scored on the identical 10,000 test pairs (our `EvalSet`, seed of the spec):

* ``sweep best`` — the study's best trial; its test metrics were measured by the trial itself on the test
  split (which the sweep never optimises on).
* ``ours: default config`` — no search, our defaults, trained the same epochs on the same pairs per epoch.
* ``keras.io example`` — the keras.io contrastive example's model, loss and optimizer, trained with plain
  ``fit`` on the same pairs per epoch (``reference_keras_io.py``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, run_child  # noqa: E402

HERE = Path(__file__).resolve().parent


def run_quickstart(work: Path) -> tuple[str, str]:
    import subprocess

    storage, tracking = f"sqlite:///{work}/optuna.db", f"sqlite:///{work}/mlflow.db"
    subprocess.run(["siamese-sweep", "run", "quickstart", "--storage", storage, "--tracking-uri", tracking],
                   check=True)
    return storage, "quickstart"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", help="Optuna storage of a finished sweep (default: run the quickstart)")
    ap.add_argument("--study", "--study-name", dest="study", default="quickstart")
    ap.add_argument("--spec", default="quickstart", help="the spec that study ran (for epochs and pairs)")
    args = ap.parse_args()
    import optuna

    from sweeps import names
    from sweeps.spec import load_spec
    from sweeps.specs import resolve_spec_path

    storage, study_name = (args.storage, args.study) if args.storage else run_quickstart(
        Path(tempfile.mkdtemp(prefix="bench-quality-")))
    spec = load_spec(resolve_spec_path(args.spec))
    study = optuna.load_study(study_name=study_name, storage=storage)
    best = study.best_trial
    base = spec.base
    epochs, pairs, seed = base.epochs, base.pairs.pairs_per_epoch, base.seed
    if base.pairs.test_pairs != 10000:
        raise SystemExit("the reference rows use 10,000 test pairs; run with a spec that does too")
    rows: list[list[Any]] = [[f"sweep best (trial {best.number}: "
                              + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in best.params.items()) + ")",
                              *(best.user_attrs[names.TRIAL_ATTR_TEST_PREFIX + m]
                                for m in ("pair_accuracy", "roc_auc", "eer"))]]
    ref = [str(HERE / "reference_keras_io.py"), "--epochs", str(epochs), "--pairs", str(pairs), "--seed", str(seed)]
    for child in ("ours", "keras_io"):
        r = run_child([*ref, "--child", child])
        rows.append([r["name"], r["acc_calibrated"], r["roc_auc"], r["eer"]])
    print(f"\nFashion-MNIST, {epochs} epochs x {pairs:,} pairs, 10,000 test pairs (seed {seed}); "
          f"study '{study_name}' with {len(study.trials)} trials.\n")
    print(markdown_table(["model", "test pair accuracy", "test ROC AUC", "test EER"], rows))


if __name__ == "__main__":
    main()
