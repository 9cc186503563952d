"""`build_run(config, data) -> Run`: everything one run needs before its first step, built once.

Training and the doctor's probes build their runs here, so the plan (split, sampler, batch size), the
compiled models, the loss and the fixed validation/test pairs are the same objects whichever calls.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .config import TrainConfig
from .data.loaders import TrainingPlan
from .data.pairs import make_sampler
from .data.splits import eval_spec
from .data.types import DatasetSplits
from .evaluation import EvalSet, Evaluator
from .losses import PerSampleLoss, build_loss
from .models.siamese import SiameseModels, build_models, build_optimizer

__all__ = ["Run", "build_run"]


@dataclass(frozen=True)
class Run:
    """The pieces of one run; `models.training` is compiled with `loss` and the configured optimizer."""

    config: TrainConfig
    data: DatasetSplits  # with ``info.evaluation`` describing `val` and `test`
    plan: TrainingPlan
    models: SiameseModels
    loss: PerSampleLoss
    val: Evaluator      # fixed validation pairs: per-epoch metrics and the threshold
    test: Evaluator     # fixed test pairs: the final report


def build_run(config: TrainConfig, data: DatasetSplits) -> Run:
    """Sampler, plan, models (compiled), loss and the validation/test evaluators for `config` on `data`.

    `data` may have been loaded for another config of the same split (a sweep worker's cache): the run's
    ``data.info.evaluation`` is set to what this config's evaluation tuples are drawn from.
    """
    spec = eval_spec(config, data.splits())
    if data.info.evaluation != spec:
        data = replace(data, info=replace(data.info, evaluation=spec))
    plan = TrainingPlan(data.train, make_sampler(config, data), config.batch_size)
    models = build_models(config, data.info)
    loss = build_loss(config.loss, config.distance)
    # no XLA: it made the default encoder's step 1.72x slower on 2 CPU cores (benchmarks/step_variants.py)
    models.training.compile(optimizer=build_optimizer(config), loss=loss, jit_compile=False)
    triplets = config.loss.is_triplet
    return Run(config, data, plan, models, loss,
               val=Evaluator(EvalSet.of(data, "val", triplets=triplets), loss=loss, batch_size=config.batch_size),
               test=Evaluator(EvalSet.of(data, "test", triplets=triplets), loss=loss, batch_size=config.batch_size))
