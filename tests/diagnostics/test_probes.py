"""Probes: loader parity (with realistically divergent pipelines), overfitting 64 tuples."""
from __future__ import annotations

import numpy as np
import pytest

from siamese_core import TrainConfig, diagnose, registry
from siamese_core.data import loaders as L
from siamese_core.data.pairs import PairSampler, Tuples, rng_for
from siamese_core.doctor.probes import loader_parity, overfit_probe, probe_data
from siamese_core.run import build_run

from .conftest import codes


class NaiveZipLoader(L.MemoryLoader):
    """The classic hand-rolled pipeline: zip two shuffled copies of the data; label = same class.

    With 10 classes only ~10% of its pairs are positives (the sampler makes 50%).
    """

    name = "naive_zip"

    def epoch_arrays(self, plan, epoch):
        labels = plan.split.y
        rng = rng_for(plan.sampler.seed, 0, epoch)
        n = plan.sampler.pairs_per_epoch
        i, j = rng.integers(0, len(labels), n), rng.integers(0, len(labels), n)
        t = Tuples(np.stack([i, j], axis=1), (labels[i] == labels[j]).astype(np.float32))
        return L.gather(self._sources(plan), t), t.targets


class PipelineRescalingLoader(L.MemoryLoader):
    """Normalises in the input pipeline (x / 255) although the model already normalises."""

    name = "pipeline_rescale"

    def epoch_arrays(self, plan, epoch):
        x, y = super().epoch_arrays(plan, epoch)
        return tuple(a.astype(np.float32) / 255.0 for a in x), y


class ReseededLoader(L.MemoryLoader):
    """Builds its own sampler with another seed: same distribution, different pairs."""

    name = "reseeded"

    def epoch_arrays(self, plan, epoch):
        s = plan.sampler
        other = PairSampler(s.labels, seed=s.seed + 1, pairs_per_epoch=s.pairs_per_epoch,
                            positive_fraction=s.positive_fraction)
        t = other.epoch(epoch)
        return L.gather(self._sources(plan), t), t.targets


class StaleLoader(L.MemoryLoader):
    """A cached pipeline: epoch 0's tuples again in every epoch (the sampler draws fresh ones each epoch)."""

    name = "stale"

    def epoch_arrays(self, plan, epoch):
        return super().epoch_arrays(plan, 0)


@pytest.fixture(scope="module")
def digits_plan():
    cfg = TrainConfig.from_dict({"dataset": "digits", "batch_size": 64})
    from siamese_core.data.sources import load_dataset

    return build_run(cfg, load_dataset(cfg)).plan


def test_builtin_loaders_feed_identical_batches(digits_plan):
    findings, evidence = loader_parity(digits_plan)
    assert findings == []
    assert evidence["tfdata"]["identical_to_memory"] and evidence["custom"]["identical_to_memory"]


def test_naive_zip_pipeline_builds_a_different_pair_distribution(digits_plan):
    findings, _ = loader_parity(digits_plan, {"memory": L.MemoryLoader(), "naive_zip": NaiveZipLoader()})
    assert codes(findings) == {"loader_mismatch": "error"}
    assert "positive share" in findings[0].message
    assert findings[0].evidence["loaders"]["naive_zip"]["positive_fraction"] < 0.2


def test_normalising_in_the_pipeline_is_different_preprocessing(digits_plan):
    findings, _ = loader_parity(digits_plan, {"memory": L.MemoryLoader(), "tfdata": PipelineRescalingLoader()})
    assert codes(findings) == {"loader_mismatch": "error"}
    assert "different preprocessing" in findings[0].message


def test_another_seed_is_a_warning_not_an_error(digits_plan):
    findings, evidence = loader_parity(digits_plan, {"memory": L.MemoryLoader(), "reseeded": ReseededLoader()})
    assert codes(findings) == {"loader_mismatch": "warning"}
    assert evidence["reseeded"]["class_mix_tv_distance"] < 0.15


def test_doctor_finds_a_loader_that_feeds_the_same_tuples_every_epoch():
    # parity was checked at epoch 0 only, where a stale loader agrees: the doctor said nothing
    findings = diagnose({"dataset": "digits", "seed": 1}, loaders={"memory": L.MemoryLoader(), "stale": StaleLoader()})
    found = [f for f in findings if f.code == "loader_mismatch"]
    assert len(found) == 1 and found[0].severity == "warning" and "'stale'" in found[0].message
    assert found[0].evidence["epoch"] == 1


def test_doctor_finds_a_divergent_registered_loader(monkeypatch):
    monkeypatch.setitem(registry.LOADERS, "custom", NaiveZipLoader)
    findings = diagnose({"dataset": "digits"})
    assert codes(findings).get("loader_mismatch") == "error"
    assert "'custom'" in next(f for f in findings if f.code == "loader_mismatch").message


@pytest.fixture(scope="module")
def digits_data():
    from siamese_core.data.sources import load_dataset

    return probe_data(load_dataset(TrainConfig.from_dict({"dataset": "digits"})), seed=0)


def test_overfit_probe_fits_a_healthy_model(digits_data):
    findings, info = overfit_probe(TrainConfig.from_dict({"dataset": "digits"}), digits_data)
    assert findings == []
    assert info["loss_ratio"] <= 0.1 and info["separation_inference"] >= 0.9


def test_overfit_probe_on_a_constant_model(digits_data):
    cfg = TrainConfig.from_dict({"dataset": "digits", "encoder": {"type": "buggy.encoders:softmax_embedding"}})
    findings, info = overfit_probe(cfg, digits_data)
    assert codes(findings) == {"cannot_overfit": "error", "constant_output": "error"}
    assert info["loss_ratio"] == pytest.approx(1.0, abs=1e-3) and info["score_spread_final"] == 0


def test_overfit_probe_learns_the_opposite_with_an_inverted_loss(digits_data):
    cfg = TrainConfig.from_dict({"dataset": "digits",
                                 "loss": {"type": "buggy.losses:keras_io_contrastive", "kind": "pair"}})
    findings, info = overfit_probe(cfg, digits_data)
    assert codes(findings) == {"label_inverted": "error"}
    assert info["separation_inference"] < 0.3
