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
    # W&B's default goal (minimize) on an AUC searched for the worst models: the metric's own direction is used
    assert ("metric.goal not given: maximize val_roc_auc (W&B's default is minimize; val_roc_auc is better higher)"
            in notes and spec["study"]["direction"] == "maximize")
    spec_from_dict(spec)
    tenths, notes = from_wandb({"parameters": {"loss.margin": {"distribution": "q_uniform", "min": 0.1, "max": 0.3,
                                                               "q": 0.1}}})
    assert tenths["search_space"]["loss.margin"] == {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}
    assert not any("q_uniform" in n for n in notes)  # 0.30000000000000004 and "range 0.1..0.3 (given 0.1..0.3)"
    for params, early, field in (({"encoder.depth": {"distribution": "int_uniform", "min": 1.5, "max": 3}}, None,
                                  "search_space.encoder.depth"),
                                 ({"encoder.depth": {"min": 1, "max": 3}}, {"type": "hyperband", "eta": 2.7,
                                                                            "min_iter": 1},
                                  "study.pruner.reduction_factor"),
                                 ({"encoder.depth": {"min": 1, "max": 3}}, {"type": "hyperband", "min_iter": 1.5},
                                  "study.pruner.min_resource")):
        data = {"parameters": params, **({"early_terminate": early} if early else {})}
        converted, _ = from_wandb(data)
        with pytest.raises(ConfigError) as refused:
            spec_from_dict(converted)
        assert refused.value.field.startswith(field), refused.value


def test_integer_q_on_a_log_scale_gives_whole_numbers_as_wandb_does() -> None:
    """W&B's own batch-size example (q_log_uniform, q 1, e^3.47..e^5.55) was refused: a float range for an integer
    key; an integer q makes W&B draw whole numbers."""
    from sweeps.spec import spec_from_dict

    spec, notes = from_wandb({"metric": {"name": "val_roc_auc", "goal": "maximize"}, "parameters": {
        "batch_size": {"distribution": "q_log_uniform", "q": 1, "min": math.log(32), "max": math.log(256)},
        "encoder.width": {"distribution": "q_log_uniform_values", "q": 16, "min": 16, "max": 256},
        "loss.margin": {"distribution": "q_log_uniform_values", "q": 0.1, "min": 0.5, "max": 2.0}}})
    space = spec["search_space"]
    assert space["batch_size"] == {"type": "int", "low": 32, "high": 256, "log": True}
    assert space["encoder.width"] == {"type": "int", "low": 16, "high": 256, "log": True}
    assert space["loss.margin"] == {"type": "float", "low": 0.5, "high": 2.0, "log": True}  # a float q: floats
    assert any(n.startswith("parameters.encoder.width.q dropped") for n in notes)
    assert not any(n.startswith("parameters.batch_size.q") for n in notes)  # q 1 drops nothing
    spec_from_dict(spec)


def test_q_uniform_bounds_are_multiples_wandb_draws() -> None:
    """min 4, q 8 rounded half-to-even to 0 (a width W&B never draws: X equals min with probability 0), refused
    as width 0; a lower bound halfway rounds up, an upper one down."""
    spec, _ = from_wandb({"parameters": {
        "encoder.width": {"distribution": "q_uniform", "min": 4, "max": 64, "q": 8},
        "learning_rate": {"distribution": "q_uniform", "min": 0.001, "max": 0.01, "q": 0.002},
        "loss.margin": {"distribution": "q_uniform", "min": 0.5, "max": 1.4, "q": 0.2}}})
    space = spec["search_space"]
    assert space["encoder.width"] == {"type": "int", "low": 8, "high": 64, "step": 8}
    assert space["learning_rate"] == {"type": "float", "low": 0.002, "high": 0.01, "step": 0.002}
    assert space["loss.margin"] == {"type": "float", "low": 0.6, "high": 1.4, "step": 0.2}


def test_a_grid_enumerates_what_wandbs_grid_does() -> None:
    """W&B's grid runs int_uniform as range(min, max + 1) (refused here: no step) and q_uniform as
    arange(min, max, q), max left out (5 points here where W&B has 4)."""
    from sweeps.space import check_space
    from sweeps.spec import spec_from_dict

    spec, _ = from_wandb({"method": "grid", "parameters": {
        "encoder.depth": {"distribution": "int_uniform", "min": 1, "max": 3},
        "encoder.width": {"min": 8, "max": 16},
        "loss.margin": {"distribution": "q_uniform", "min": 0.5, "max": 1.5, "q": 0.25}}})
    space = spec["search_space"]
    assert space["encoder.depth"] == {"type": "int", "low": 1, "high": 3, "step": 1}
    assert space["encoder.width"]["step"] == 1
    assert space["loss.margin"] == {"type": "categorical", "choices": [0.5, 0.75, 1.0, 1.25]}
    check_space(spec_from_dict(spec))


def test_collisions_shapes_and_likely_mistakes_are_said() -> None:
    with pytest.raises(ConfigError, match="encoder.depth is given twice") as twice:
        from_wandb({"parameters": {"encoder.depth": {"values": [1, 2]},
                                   "encoder": {"parameters": {"depth": {"values": [3, 4]}}}}})
    assert twice.value.field == "parameters.encoder"
    for extra in ({}, {"min": 0.1, "max": 0.9}):  # "expected value, values, or min and max" / "unknown ... 'beta'"
        with pytest.raises(ConfigError, match="W&B's 'beta' .* has no Optuna equivalent"):
            from_wandb({"parameters": {"loss.margin": {"distribution": "beta", "a": 2, "b": 5, **extra}}})
    _, notes = from_wandb({"parameters": {"learning_rate": {"distribution": "log_uniform", "min": 1e-4,
                                                             "max": 1e-2}}})
    assert any("takes natural-log exponents" in n and "use log_uniform_values" in n for n in notes)
    assert not any("not a W&B parameter key" in n for n in from_wandb(
        {"parameters": {"loss.margin": {"values": [1.0], "a": 1, "b": 2}}})[1])
    _, notes = from_wandb({"method": "bayes", "parameters": {"encoder.depth": {"values": [1, 2]}}})
    assert any(n.startswith("method bayes without metric") for n in notes)


ONE = {"loader": {"values": ["memory", "tfdata"]}}


def test_a_goal_against_the_metric_is_refused() -> None:
    with pytest.raises(ConfigError, match="val_roc_auc is better higher: goal minimize would search for the worst"):
        from_wandb({"metric": {"name": "val_roc_auc", "goal": "minimize"}, "parameters": ONE})
    spec, _ = from_wandb({"metric": {"name": "val_eer"}, "parameters": ONE})
    assert spec["study"]["direction"] == "minimize"


def test_convert_refuses_to_write_over_its_source(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from sweeps.cli import main

    source = tmp_path / "wandb.yaml"
    text = "# my sweep\nprogram: train.py\nparameters:\n  encoder.depth: {values: [1, 2]}\n"
    source.write_text(text)
    assert main(["convert", str(source), "-o", str(source)]) == 2
    assert "is the W&B file being converted" in capsys.readouterr().err
    assert source.read_text() == text


def test_a_zero_q_and_a_log_range_below_q_are_said() -> None:
    with pytest.raises(ConfigError, match="expected a positive number") as zero:  # a decimal.InvalidOperation
        from_wandb({"parameters": {"encoder.width": {"distribution": "q_uniform", "min": 8, "max": 64, "q": 0}}})
    assert zero.value.field == "parameters.encoder.width.q"
    spec, _ = from_wandb({"parameters": {"encoder.depth": {"distribution": "q_log_uniform_values", "q": 1,
                                                           "min": 0.1, "max": 10}}})
    assert spec["search_space"]["encoder.depth"] == {"type": "int", "low": 1, "high": 10, "log": True}  # not 0
    for dist in ("q_log_uniform_values", "q_log_uniform"):
        with pytest.raises(ConfigError, match="expected a positive number"):
            from_wandb({"parameters": {"encoder.width": {"distribution": dist, "min": 1, "max": 3, "q": 0}}})
    with pytest.raises(ConfigError, match="W&B would draw only 0"):  # "every whole number of 8..0"
        from_wandb({"parameters": {"encoder.width": {"distribution": "q_log_uniform_values", "q": 8, "min": 1,
                                                     "max": 3}}})


def test_keys_a_distribution_metric_or_early_terminate_does_not_read_are_said() -> None:
    """A step asked of a plain range, a typo in `metric` (`targt`: the stop target was lost) or in
    `early_terminate` (`min_itr`: Optuna's default minimum ran instead) were dropped without a word."""
    spec, notes = from_wandb({
        "metric": {"name": "val_roc_auc", "goal": "maximize", "targt": 0.9},
        "early_terminate": {"type": "hyperband", "min_itr": 3, "min_iter": 2, "eta": 3},
        "parameters": {"loss.margin": {"distribution": "uniform", "min": 0.5, "max": 1.5, "q": 0.25},
                       "encoder.width": {"distribution": "int_uniform", "min": 8, "max": 64, "q": 8},
                       "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2, "mu": 1},
                       "encoder.depth": {"distribution": "q_uniform", "min": 1, "max": 3, "q": 1}}})
    assert "metric.targt ignored: not a W&B metric key" in notes and "stop" not in spec["study"]
    assert "early_terminate.min_itr ignored: not a W&B early_terminate key" in notes
    with pytest.raises(ConfigError, match="hyperband needs min_iter, or max_iter with s") as alone:
        from_wandb({"early_terminate": {"type": "hyperband", "min_itr": 3}, "parameters": {"loader": {"value": "x"}}})
    assert alone.value.field == "early_terminate"  # the typo alone: pruned from epoch 1, a note only
    assert "parameters.loss.margin.q ignored: W&B's uniform does not use it (a step needs q_uniform)" in notes
    assert "parameters.encoder.width.q ignored: W&B's int_uniform does not use it (a step needs q_uniform)" in notes
    assert "parameters.learning_rate.mu ignored: W&B's log_uniform_values does not use it" in notes
    assert not any(n.startswith("parameters.encoder.depth") for n in notes)  # q_uniform reads its q
    assert spec["search_space"]["encoder.width"] == {"type": "int", "low": 8, "high": 64}


def test_hyperband_max_iter_and_s_give_wandbs_first_band() -> None:
    """max_iter and s were dropped with a note, so the study pruned from epoch 1 where W&B waits for its first band:
    ``int(max_iter / eta**i)`` for i = 1..s (27, s 2, eta 3: bands 9 and 3)."""
    from sweeps.spec import spec_from_dict

    params = {"loss.margin": {"min": 0.5, "max": 1.5}}
    for early, first in (({"max_iter": 363, "s": 2, "eta": 1.1}, 300),  # divided step by step: 299 by eta**2
                         ({"max_iter": 27, "s": 2, "eta": 3}, 3), ({"max_iter": 27, "s": 2}, 3),
                         ({"max_iter": 10, "s": 5, "eta": 2}, 1), ({"max_iter": 81, "s": 1, "eta": 3}, 27),
                         ({"max_iter": 27, "s": 2, "eta": 3, "min_iter": 1}, 3)):
        spec, notes = from_wandb({"parameters": params, "early_terminate": {"type": "hyperband", **early}})
        assert spec["study"]["pruner"]["min_resource"] == first, early
        assert any(n.startswith(f"early_terminate.max_iter and s: min_resource {first} ") for n in notes), notes
        assert ("early_terminate.min_iter ignored: W&B builds its bands from max_iter and s when both are given"
                in notes) == ("min_iter" in early)
    spec_from_dict({**spec, "base": {"epochs": 30}})
    # W&B takes max_iter without s through its min_iter branch (the review of this change: it was refused)
    spec, notes = from_wandb({"parameters": params, "early_terminate": {"type": "hyperband", "min_iter": 3,
                                                                        "max_iter": 27, "eta": 3}})
    assert spec["study"]["pruner"]["min_resource"] == 3
    assert "early_terminate.max_iter ignored: without s it makes no bands; min_iter's are used" in notes
    for early, field in (({"max_iter": 27}, "early_terminate.s"), ({"max_iter": 27, "s": 0}, "early_terminate.s"),
                         ({"max_iter": 2, "s": 1, "eta": 3}, "early_terminate.max_iter"),
                         ({"max_iter": 27, "s": 1, "eta": 1}, "early_terminate.eta")):
        with pytest.raises(ConfigError) as refused:
            from_wandb({"parameters": params, "early_terminate": {"type": "hyperband", **early}})
        assert refused.value.field == field, (early, refused.value)


def test_mapping_choices_are_refused_as_such() -> None:
    """A list of mappings as categorical choices was passed through and refused later as an unknown key
    ('optimizer'), which is a valid key."""
    with pytest.raises(ConfigError, match=r"parameters\.optimizer\.values: categorical choices must be single values"):
        from_wandb({"parameters": {"optimizer": {"values": [{"name": "sgd", "momentum": 0.9}, {"name": "adam"}]}}})


def test_a_converted_config_with_notes_warns_a_library_user_without_logging_set_up() -> None:
    """`sweep()`/`resolve_spec()` logged the notes at INFO, which a script without logging never shows; a
    warning reaches stderr through Python's last-resort handler."""
    import subprocess
    import sys

    code = ("from sweeps.api import resolve_spec; resolve_spec({'parameters': {'encoder.width': "
            "{'distribution': 'int_uniform', 'min': 8, 'max': 64, 'q': 8}}})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "parameters.encoder.width.q ignored" in done.stderr


def test_a_grid_runs_each_combination_once_as_wandb_does() -> None:
    """A W&B grid without run_cap ran the spec's default 10 trials: a grid of 4 repeated 6 combinations, one of 12
    left 2 unrun, without a word (the review of session 46)."""
    small = {"method": "grid", "parameters": {"encoder.depth": {"distribution": "int_uniform", "min": 1, "max": 2},
                                              "loader": {"values": ["memory", "tfdata"]}, "epochs": {"value": 1}}}
    spec, notes = from_wandb(small)
    assert spec["study"]["trials"] == 4
    assert "study.trials: 4, the grid's combinations (W&B runs each once; no run_cap given)" in notes
    large = {**small, "run_cap": 50, "parameters": {**small["parameters"], "loss.margin": {
        "distribution": "q_uniform", "min": 0.5, "max": 1.5, "q": 0.5}}}  # W&B's arange: 0.5, 1.0
    spec, notes = from_wandb(large)
    assert spec["study"]["trials"] == 8 and any("run_cap 50 is more than the grid's 8" in n for n in notes)
    spec, notes = from_wandb({**small, "run_cap": 3})
    assert spec["study"]["trials"] == 3 and not any("grid" in n for n in notes)
    assert "trials" not in from_wandb({**small, "method": "random"})[0]["study"]
    # a range W&B's grid cannot enumerate: the spec's check names it (counting it was a KeyError, exit 1)
    from sweeps.spec import spec_from_dict

    spec, _ = from_wandb({"method": "grid", "parameters": {"learning_rate": {"min": 0.001, "max": 0.01},
                                                           "loader": {"values": ["memory", "tfdata"]}}})
    with pytest.raises(ConfigError, match="the grid sampler needs categorical choices or a 'step'") as refused:
        spec_from_dict(spec)
    assert refused.value.field == "search_space.learning_rate"
    # a --set that makes the grid larger: its combinations, not the file's (6 of 12 never ran)
    from sweeps.spec import spec_from_wandb

    spec = spec_from_wandb(small, {"search_space.loader.choices": ["memory", "tfdata", "custom"]})
    assert spec.study.trials == 6
    assert spec_from_wandb({**small, "run_cap": 3}, {"search_space.loader.choices": ["memory"]}).study.trials == 3
    assert spec_from_wandb(small, {"study.trials": 2}).study.trials == 2  # asked for


@pytest.mark.parametrize("parameters, field, text", [
    ({}, "parameters", "empty: nothing to search"),
    ({"encoder": {"value": {"type": "mlp", "depth": 2}}}, "parameters.encoder.value",
     "a fixed value must not be a mapping; give each setting its own parameter"),
])
def test_files_wandb_refuses_are_refused_with_the_field(parameters: dict, field: str, text: str) -> None:
    """An empty `parameters` converted to an empty search; a constant given as a mapping was refused as an
    "unknown train-config key 'encoder'"."""
    with pytest.raises(ConfigError) as refused:
        from_wandb({"method": "random", "parameters": parameters})
    assert refused.value.field == field and text in str(refused.value), refused.value
    from sweeps.spec import spec_from_dict  # a list is a value: a tuple-typed key's (the diff review)

    spec, _ = from_wandb({"method": "random", "parameters": {"dataset.image_size": {"value": [16, 16]},
                                                             "loader": {"values": ["memory", "tfdata"]}}})
    assert spec_from_dict(spec).search_space["dataset.image_size"] == [16, 16]


def test_running_a_refused_wandb_file_is_one_line(tmp_path) -> None:
    """`run` logged "... is a W&B sweep file: converted it" before the spec's check refused the file: two lines."""
    import subprocess
    import sys

    (tmp_path / "w.yaml").write_text("method: random\nparameters:\n  lr: {values: [1, 2]}\n")
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "run", "w.yaml", "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: search_space.lr: unknown train-config key"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.yaml"]
