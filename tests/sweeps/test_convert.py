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


def test_distributions_draw_what_wandb_draws_and_fractions_are_not_cut() -> None:
    """inv_log_uniform gave [e^min, e^max] (W&B: log(1/X) uniform, so [e^-max, e^-min]); q_uniform's range started
    at min (10, 18, 26, ... for q 8; W&B rounds to multiples of q); int() cut fractional int_uniform bounds and
    Hyperband options without a word."""
    from sweeps.spec import spec_from_dict

    spec, notes = from_wandb({"metric": {"name": "val_roc_auc"}, "parameters": {
        "learning_rate": {"distribution": "inv_log_uniform", "min": 4.6, "max": 9.2},
        "encoder.width": {"distribution": "q_uniform", "min": 10, "max": 40, "q": 8},
        "loss.margin": {"distribution": "q_log_uniform", "min": -1.0, "max": 0.4, "q": 0.1}}})
    space = spec["search_space"]
    lr = space["learning_rate"]
    assert math.isclose(lr["low"], math.exp(-9.2)) and math.isclose(lr["high"], math.exp(-4.6)) and lr["log"]
    assert space["encoder.width"] == {"type": "int", "low": 8, "high": 40, "step": 8}
    assert "parameters.encoder.width: W&B's q_uniform draws multiples of q=8: range 8..40 (given 10..40)" in notes
    assert "parameters.loss.margin.q dropped: Optuna cannot combine a log scale with a step" in notes
    assert "metric.goal not given: minimize val_roc_auc, W&B's default" in notes and spec["study"]["direction"] == \
        "minimize"
    spec_from_dict(spec)
    tenths, notes = from_wandb({"parameters": {"loss.margin": {"distribution": "q_uniform", "min": 0.1, "max": 0.3,
                                                               "q": 0.1}}})
    assert tenths["search_space"]["loss.margin"] == {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}
    assert not any("q_uniform" in n for n in notes)  # 0.30000000000000004 and "range 0.1..0.3 (given 0.1..0.3)"
    for params, early, field in (({"encoder.depth": {"distribution": "int_uniform", "min": 1.5, "max": 3}}, None,
                                  "search_space.encoder.depth"),
                                 ({"encoder.depth": {"min": 1, "max": 3}}, {"type": "hyperband", "eta": 2.7},
                                  "study.pruner.reduction_factor"),
                                 ({"encoder.depth": {"min": 1, "max": 3}}, {"type": "hyperband", "min_iter": 1.5},
                                  "study.pruner.min_resource")):
        data = {"parameters": params, **({"early_terminate": early} if early else {})}
        converted, _ = from_wandb(data)
        with pytest.raises(ConfigError) as refused:
            spec_from_dict(converted)
        assert refused.value.field.startswith(field), refused.value
