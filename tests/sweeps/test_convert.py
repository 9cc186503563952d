"""W&B sweep files become siamese-sweep specs: every documented mapping, and clear refusals."""
from __future__ import annotations

import math

import pytest

from siamese_core.errors import ConfigError
from sweeps.convert import from_wandb, looks_like_wandb

WANDB = {
    "program": "train.py",
    "method": "bayes",
    "name": "fashion-wandb",
    "metric": {"name": "val_roc_auc", "goal": "maximize", "target": 0.97},
    "run_cap": 20,
    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
    "parameters": {
        "learning_rate": {"min": 1e-4, "max": 1e-2, "distribution": "log_uniform_values"},
        "batch_size": {"values": [64, 128]},
        "epochs": {"value": 3},
        "encoder": {"parameters": {"depth": {"min": 1, "max": 3}, "width": {"min": 8, "max": 32,
                                                                          "distribution": "q_uniform", "q": 8}}},
        "loss": {"parameters": {"margin": {"min": 0.5, "max": 1.5}}},
        "optimizer": {"parameters": {"weight_decay": {"min": -9.2, "max": -4.6, "distribution": "log_uniform"}}},
    },
}


def test_every_documented_field_maps() -> None:
    spec, notes = from_wandb(WANDB)
    study, space = spec["study"], spec["search_space"]
    assert study["sampler"] == {"type": "tpe"} and study["name"] == "fashion-wandb"
    assert study["metric"] == "val_roc_auc" and study["direction"] == "maximize"
    assert study["stop"] == {"target": 0.97} and study["trials"] == 20
    assert study["pruner"] == {"type": "hyperband", "min_resource": 1, "reduction_factor": 3}
    assert space["learning_rate"] == {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    assert space["batch_size"] == {"type": "categorical", "choices": [64, 128]}
    assert space["epochs"] == 3
    assert space["encoder.depth"] == {"type": "int", "low": 1, "high": 3}
    assert space["encoder.width"] == {"type": "int", "low": 8, "high": 32, "step": 8}
    assert space["loss.margin"] == {"type": "float", "low": 0.5, "high": 1.5}
    wd = space["optimizer.weight_decay"]
    assert wd["log"] and math.isclose(wd["low"], math.exp(-9.2)) and math.isclose(wd["high"], math.exp(-4.6))
    assert any("program" in n for n in notes)
    assert looks_like_wandb(WANDB) and not looks_like_wandb({"search_space": {}, "parameters": {}})


def test_the_converted_space_is_a_valid_spec() -> None:
    from sweeps.spec import spec_from_dict

    spec, _ = from_wandb({k: v for k, v in WANDB.items() if k != "metric"} | {"metric": {"name": "val_roc_auc",
                                                                                         "goal": "maximize"}},
                         base={"dataset": "digits"})
    parsed = spec_from_dict(spec)
    assert set(parsed.distributions()) >= {"learning_rate", "encoder.depth", "loss.margin"}
    assert parsed.study.sampler.type == "tpe" and parsed.study.trials == 20


@pytest.mark.parametrize(("params", "field"), [
    ({"lr": {"mu": 0, "sigma": 1, "distribution": "normal"}}, "parameters.lr.distribution"),
    ({"lr": {"min": 0.1}}, "parameters.lr"),
    ({"lr": {"min": 0.1, "max": float("inf")}}, "parameters.lr.max"),
    ({"lr": {"values": []}}, "parameters.lr.values"),
    ({"lr": {"min": 1, "max": 2, "distribution": "beta"}}, "parameters.lr.distribution"),
])
def test_what_has_no_equivalent_is_refused_with_the_field_named(params: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_wandb({"method": "random", "parameters": params})
    assert err.value.field == field


def test_bad_method_and_goal_are_refused() -> None:
    with pytest.raises(ConfigError, match="method"):
        from_wandb({"method": "evolution", "parameters": {"a": {"value": 1}}})
    with pytest.raises(ConfigError, match="metric.goal"):
        from_wandb({"metric": {"name": "val_loss", "goal": "lowest"}, "parameters": {"a": {"value": 1}}})
