"""Spec validation, the search space, samplers/pruners, the KerasTuner adapter, multi-objective studies."""
from __future__ import annotations

from pathlib import Path

import keras_tuner as kt
import optuna
import pytest
from mlflow import MlflowClient

from siamese_core.errors import ConfigError
from sweeps import space
from sweeps.hypermodel import OptunaHyperParameters
from sweeps.spec import load_spec, spec_from_dict
from sweeps.specs import resolve_spec_path, shipped
from sweeps.storage import make_storage
from sweeps.study import optuna_pruner, optuna_sampler

from .conftest import make_spec_dict, run_small_sweep


@pytest.mark.parametrize("name", shipped())
def test_every_shipped_spec_is_valid(name: str) -> None:
    spec = load_spec(resolve_spec_path(name))
    space.check_space(spec)
    assert spec.study.trials >= 1


def test_quickstart_searches_margin_depth_learning_rate_and_loader() -> None:
    spec = load_spec(resolve_spec_path("quickstart"))
    dists = spec.distributions()
    assert {"loss.margin", "encoder.depth", "learning_rate", "loader"} <= set(dists)
    assert dists["learning_rate"].log and spec.base.dataset.name == "fashion_mnist"


def test_recording_in_the_background_is_decided_by_the_cores_by_default() -> None:
    """A spec that says nothing, the quickstart included, leaves it to `sweeps.finisher.records_in_background`;
    true, false and their YAML spellings are kept, anything else is one clear error."""
    assert spec_from_dict(make_spec_dict()).tracking.finish_in_background == "auto"
    assert load_spec(resolve_spec_path("quickstart")).tracking.finish_in_background == "auto"
    for given, kept in ((False, False), (True, True), ("off", False), ("yes", True), ("auto", "auto")):
        assert spec_from_dict(make_spec_dict(tracking={"finish_in_background": given})).tracking \
            .finish_in_background == kept
    for bad in ("often", 3):
        with pytest.raises(ConfigError, match=f"finish_in_background: expected true, false or auto; received: {bad!r}"):
            spec_from_dict(make_spec_dict(tracking={"finish_in_background": bad}))


@pytest.mark.parametrize("sampler, cls", [
    ("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
    ("cmaes", optuna.samplers.CmaEsSampler), ("nsga2", optuna.samplers.NSGAIISampler)])
def test_samplers_by_name(sampler: str, cls: type) -> None:
    assert isinstance(optuna_sampler(spec_from_dict(make_spec_dict(study={"sampler": sampler}))), cls)


def test_grid_sampler_enumerates_steps_and_choices() -> None:
    spec = spec_from_dict(make_spec_dict(search_space={
        "encoder.depth": {"type": "int", "low": 1, "high": 3, "step": 1},
        "loader": {"type": "categorical", "choices": ["memory", "tfdata"]}}, study={"sampler": "grid"}))
    assert space.grid_values(spec) == {"encoder.depth": [1, 2, 3], "loader": ["memory", "tfdata"]}
    assert isinstance(optuna_sampler(spec), optuna.samplers.GridSampler)


def test_gp_sampler_without_torch_is_a_clear_config_error() -> None:
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed here")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="study.sampler.type.*PyTorch"):
        optuna_sampler(spec_from_dict(make_spec_dict(study={"sampler": "gp"})))


@pytest.mark.parametrize("pruner, cls", [
    ("median", optuna.pruners.MedianPruner), ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
    ("hyperband", optuna.pruners.HyperbandPruner), ("none", optuna.pruners.NopPruner)])
def test_pruners_by_name(pruner: str, cls: type) -> None:
    assert isinstance(optuna_pruner(spec_from_dict(make_spec_dict(study={"pruner": pruner}))), cls)


def test_fixed_values_and_conditions_become_overrides() -> None:
    spec = spec_from_dict(make_spec_dict(search_space={
        "batch_size": 32,
        "loss.type": {"type": "categorical", "choices": ["contrastive", "bce"]},
        "loss.margin": {"type": "float", "low": 0.5, "high": 1.0, "when": {"loss.type": ["contrastive"]}}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        overrides = space.sample_overrides(trial, spec)
        assert overrides["batch_size"] == 32
        assert ("loss.margin" in overrides) == (overrides["loss.type"] == "contrastive")
        space.trial_config(spec, overrides)  # every sampled combination is a valid TrainConfig
        seen.add(overrides["loss.type"])
        study.tell(trial, 0.5)
    assert seen == {"contrastive", "bce"}


def test_space_choices_are_checked_against_the_train_config() -> None:
    spec = spec_from_dict(make_spec_dict(search_space={"encoder.depth": {"type": "int", "low": 0, "high": 2}}))
    with pytest.raises(ConfigError) as err:
        space.check_space(spec)
    assert err.value.field == "search_space.encoder.depth"


def test_set_overrides_reach_search_space_bounds() -> None:
    import yaml

    spec = load_spec(None, {"base.dataset": "digits", "search_space.learning_rate": {"type": "float", "low": 1e-4,
                                                                                      "high": 1e-2, "log": True},
                            "search_space.learning_rate.high": 5e-3})
    assert spec.distributions()["learning_rate"].high == 5e-3
    assert yaml.safe_dump(spec.to_dict())  # serialisable (workers receive the resolved spec as YAML)


def test_keras_tuner_hyperparameters_are_driven_by_optuna() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    kinds = set()
    for _ in range(8):
        trial = study.ask()
        hp = OptunaHyperParameters(trial)
        kind = hp.Choice("block", ["conv", "dense"])
        with hp.conditional_scope("block", ["dense"]):
            units = hp.Int("units", 16, 64, step=16) if kind == "dense" else None
        width = hp.Int("width", 8, 64, step=2, sampling="log")
        lr = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
        assert isinstance(hp, kt.HyperParameters)
        assert trial.params["block"] == kind and trial.params["learning_rate"] == lr
        assert width in (8, 16, 32, 64)
        assert ("units" in trial.params) == (kind == "dense") and (units is None or units % 16 == 0)
        kinds.add(kind)
        study.tell(trial, 0.0)
    assert kinds == {"conv", "dense"}


def test_one_hp_name_with_two_kinds_of_distribution_is_named() -> None:
    """KerasTuner allows `hp.Int("units")` in one conditional scope and `hp.Choice("units")` in another; Optuna
    keeps one distribution per name and raised "Cannot set different distribution kind ..." naming neither."""
    from sweeps.errors import InvalidTrialConfig

    study = optuna.create_study()
    first = OptunaHyperParameters(study.ask())
    first.Int("units", 8, 32)
    study.tell(first.trial, 0.0)
    with pytest.raises(InvalidTrialConfig, match=r"hp 'units' is declared here as Choice\(\['a', 'b'\]\) and "
                                                 r"elsewhere in the study with another kind of distribution"):
        OptunaHyperParameters(study.ask()).Choice("units", ["a", "b"])


def test_one_hp_name_with_other_choices_in_another_scope_is_named() -> None:
    """`hp.Choice("act", ["relu", "tanh"])` under one block and `["gelu", "elu"]` under another is valid KerasTuner;
    Optuna's "CategoricalDistribution does not support dynamic value space" failed the trial naming neither."""
    from sweeps.errors import InvalidTrialConfig

    study = optuna.create_study()
    first = OptunaHyperParameters(study.ask())
    first.Choice("act", ["relu", "tanh"])
    study.tell(first.trial, 0.0)
    with pytest.raises(InvalidTrialConfig, match=r"hp 'act' is declared here as Choice\(\['gelu', 'elu'\]\) and "
                                                 r"elsewhere in the study with another kind of distribution or "
                                                 r"other choices"):
        OptunaHyperParameters(study.ask()).Choice("act", ["gelu", "elu"])


def test_keras_tuner_declarations_are_answered_as_keras_tuner_would() -> None:
    """Session 44's review: reverse_log was drawn as log (median 11 of 1..100; KerasTuner's 90); a name declared
    again after hp.Fixed drew a new value over the fixed one (KerasTuner keeps the first); an enqueued value outside
    the declared range trained (999 units of an Int(8, 32)) and then crashed the sweep when it was recorded."""
    from sweeps.errors import InvalidTrialConfig

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    hp = OptunaHyperParameters(study.ask())
    with pytest.raises(InvalidTrialConfig, match="sampling='reverse_log' has no Optuna distribution"):
        hp.Float("b", 1.0, 100.0, sampling="reverse_log")
    with pytest.raises(InvalidTrialConfig, match="sampling='reverse_log'"):
        hp.Int("c", 1, 100, sampling="reverse_log")
    assert hp.Fixed("units", 7) == 7
    assert [hp.Int("units", 1, 100) for _ in range(5)] == [7] * 5 and hp.values["units"] == 7
    study.enqueue_trial({"width": 999, "act": "swish"})
    enqueued = OptunaHyperParameters(study.ask())
    with pytest.raises(InvalidTrialConfig, match=r"hp 'width' = 999 \(from study.enqueue\?\) is outside the "
                                                 r"hypermodel's Int\(8..32, step 8\)"):
        enqueued.Int("width", 8, 32, step=8)
    with pytest.raises(InvalidTrialConfig, match=r"hp 'act' = 'swish'.*Choice\(\['relu', 'tanh'\]\)"):
        enqueued.Choice("act", ["relu", "tanh"])
    study.enqueue_trial({"u": 999})  # a log range with a step is a grid (a categorical): not on it
    with pytest.raises(InvalidTrialConfig, match=r"hp 'u' = '999' \(from study.enqueue\?\) is outside"):
        OptunaHyperParameters(study.ask()).Int("u", 8, 64, step=2, sampling="log")
    # the top of a log grid may pass its bound by a rounding error: not "outside"
    from keras_tuner.engine import hyperparameters as hp_types

    from sweeps.hypermodel import _check_inside, _geometric

    top = hp_types.Float("x", 0.1, 53144.1, step=3, sampling="log")
    _check_inside(top, _geometric(top, float)[-1])


def test_a_hypermodel_that_cannot_be_made_or_returns_no_model_is_named(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A HyperModel class whose __init__ needs arguments was a TypeError, exit 1 (README: exit 2); build(hp)
    returning a string was blamed on sweeps.hypermodel:current_encoder; a compiled model's searched learning
    rate changed nothing, without a word."""
    from pathlib import Path

    from sweeps.errors import InvalidTrialConfig
    from sweeps.hypermodel import build_for_trial, load_hypermodel

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "fixtures"))
    with pytest.raises(ConfigError, match=r"user_code.hypermodels:NeedsArgs cannot be made without arguments") as info:
        load_hypermodel("user_code.hypermodels:NeedsArgs")
    assert info.value.field == "hypermodel"
    study = optuna.create_study()
    with pytest.raises(InvalidTrialConfig, match=r"user_code.hypermodels:returns_text returned str: build\(hp\) "
                                                 r"must return the encoder"):
        build_for_trial(study.ask(), "user_code.hypermodels:returns_text", {"learning_rate"})
    with caplog.at_level("WARNING", logger="sweeps.hypermodel"):
        model, overrides = build_for_trial(study.ask(), "user_code.hypermodels:compiled", {"learning_rate"})
    assert overrides == {} and model.optimizer is not None
    assert "returns a compiled model: its optimizer, loss and metrics are not used" in caplog.text
    assert "the others (lr, units)" in caplog.text
    # an enqueued name build(hp) never declares (a typo) was dropped without a word
    study.enqueue_trial({"units": 16, "unit_1": 8})
    caplog.clear()
    with caplog.at_level("WARNING", logger="sweeps.hypermodel"):
        build_for_trial(study.ask(), "user_code.hypermodels:dense", set())
    assert "study.enqueue gives unit_1, which build(hp) did not declare in this trial" in caplog.text
    assert "units," not in caplog.text


def test_a_name_in_both_the_search_space_and_the_hypermodel_is_named() -> None:
    """The search space draws first; the hypermodel's hp.Float("learning_rate", 1e-3, 1e-2) then got its 0.72
    without a word. Declared twice within the hypermodel stays one value."""
    from sweeps.errors import InvalidTrialConfig

    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_float("learning_rate", 0.5, 0.9)  # the spec's search_space
    hp = OptunaHyperParameters(trial)
    assert hp.Int("units", 8, 32) == hp.Int("units", 8, 32)
    with pytest.raises(InvalidTrialConfig, match="hp 'learning_rate' is declared by the hypermodel and in "
                                                 "search_space"):
        hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")


def test_a_build_hp_that_raises_fails_its_trial_with_a_run(local_stores: dict[str, str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """build(hp) ran before the trial's run existed: its exception left a FAIL trial without an MLflow run."""
    from pathlib import Path

    from sweeps.errors import SweepFatal

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "fixtures"))
    spec = make_spec_dict(search_space={}, hypermodel="user_code.hypermodels:raises",
                          study={"trials": 1, "max_failures": 1})
    with pytest.raises(SweepFatal, match="RuntimeError"):
        run_small_sweep(spec, storage=local_stores["storage"], tracking_uri=local_stores["tracking_uri"])
    (trial,) = optuna.load_study(study_name="t", storage=make_storage(local_stores["storage"])).trials
    assert trial.state == optuna.trial.TrialState.FAIL and "units" in trial.params
    run = MlflowClient(tracking_uri=local_stores["tracking_uri"]).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["siamese_sweep.sampled_params"] == "units"


def test_hypermodel_sweep_trains_the_keras_tuner_encoder(local_stores: dict[str, str]) -> None:
    spec = make_spec_dict(search_space={}, hypermodel="sweeps.examples.keras_tuner_space:build_encoder",
                          study={"trials": 2})
    result = run_small_sweep(spec, storage=local_stores["storage"], tracking_uri=local_stores["tracking_uri"])
    study = optuna.load_study(study_name="t", storage=make_storage(local_stores["storage"]))
    assert result.status["counts"]["COMPLETE"] + result.status["counts"]["PRUNED"] == 2
    for t in study.trials:
        assert {"block", "embedding_dim", "learning_rate", "loss.margin"} <= set(t.params)
        run = MlflowClient(tracking_uri=local_stores["tracking_uri"]).get_run(t.user_attrs["mlflow_run_id"])
        # hyperparameters named like train-config keys set the config; the rest are logged as hp.*
        assert float(run.data.params["learning_rate"]) == pytest.approx(t.params["learning_rate"])
        assert run.data.params["hp.block"] == t.params["block"]
        # the encoder fields build(hp)'s model does not read are not logged as if they had built it
        assert not {"encoder.depth", "encoder.width", "encoder.embedding_dim"} & set(run.data.params)
        assert run.data.params["encoder.l2_normalize"] == "True"


def test_multi_objective_study_keeps_a_pareto_front(local_stores: dict[str, str]) -> None:
    spec = make_spec_dict(study={"metrics": ["val_roc_auc", "params"], "directions": ["maximize", "minimize"],
                                 "sampler": {"type": "nsga2", "seed": 0}, "trials": 2})
    result = run_small_sweep(spec, storage=local_stores["storage"], tracking_uri=local_stores["tracking_uri"])
    study = optuna.load_study(study_name="t", storage=make_storage(local_stores["storage"]))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert all(len(t.values) == 2 and t.values[1] > 100 for t in study.trials)
    assert result.status["best_trials"]
    client = MlflowClient(tracking_uri=local_stores["tracking_uri"])
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["siamese_sweep.pareto_trials"]
    # its trials report no epochs: the intermediate-values plot was empty (and Optuna warned); axes were unnamed
    files = {Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "study")}
    assert "pareto_front.html" in files and not any(f.startswith("intermediate_values") for f in files), files
    html = Path(client.download_artifacts(parent.info.run_id, "study/pareto_front.html",
                                          local_stores["dir"])).read_text()
    assert '"val_roc_auc"' in html and '"params"' in html and "Objective 0" not in html


@pytest.mark.parametrize("bounds", [{"low": 1, "high": float("inf")}, {"low": float("-inf"), "high": 3},
                                    {"low": 1, "high": float("nan")}])
def test_non_finite_int_bounds_are_a_config_error(bounds) -> None:
    """``high: .inf`` in an int range overflowed int() (OverflowError, exit 1) instead of a ConfigError."""
    from siamese_core.errors import ConfigError
    from sweeps.spec import spec_from_dict

    with pytest.raises(ConfigError, match="search_space|high|low"):
        spec_from_dict({"search_space": {"encoder.depth": {"type": "int", **bounds}}})


def test_the_readmes_keras_tuner_example_is_the_file_it_names() -> None:
    import inspect

    from sweeps.examples.keras_tuner_space import build_encoder

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert inspect.getsource(build_encoder) in readme


@pytest.mark.parametrize("low, high, step, kind, values", [
    (0.5, 1.0, 0.3, "float", [0.5, 0.8]),  # numpy.arange gave 1.1: Optuna refused it mid-sweep, a trial left RUNNING
    (0.1, 0.3, 0.1, "float", [0.1, 0.2, 0.3]),  # not 0.30000000000000004
    (8, 16, 3, "int", [8, 11, 14]),
])
def test_the_grid_holds_only_values_of_the_stepped_range(low: float, high: float, step: float, kind: str,
                                                         values: list) -> None:
    key = "loss.margin" if kind == "float" else "encoder.width"
    spec = spec_from_dict(make_spec_dict(search_space={key: {"type": kind, "low": low, "high": high, "step": step}},
                                         study={"sampler": "grid"}))
    grid = space.grid_values(spec)[key]
    assert grid == values
    dist = (optuna.distributions.FloatDistribution(low, high, step=step) if kind == "float"
            else optuna.distributions.IntDistribution(low, high, step=step))
    assert all(dist._contains(dist.to_internal_repr(v)) for v in grid)  # what Optuna checks when it is told


def test_the_grid_sampler_refuses_conditional_parameters() -> None:
    """The grid is the product of every parameter's values: with `when`, the trials where the condition does not
    hold repeated each other (two identical `loss.type: bce` trials)."""
    search = {"loss.type": {"type": "categorical", "choices": ["contrastive", "bce"]},
              "loss.margin": {"type": "float", "low": 0.5, "high": 1.0, "step": 0.5,
                              "when": {"loss.type": "contrastive"}}}
    with pytest.raises(ConfigError, match=r"search_space.loss.margin.when: the grid sampler runs every combination"):
        spec_from_dict(make_spec_dict(search_space=search, study={"sampler": "grid"}))
    spec_from_dict(make_spec_dict(search_space=search, study={"sampler": "tpe"}))


@pytest.mark.parametrize("dist, text", [
    ({"type": "int", "low": 8, "high": 16, "step": 0.5}, "an int parameter needs a whole step; received: 0.5"),
    ({"type": "int", "low": 8, "high": 16, "step": 2.5}, "an int parameter needs a whole step; received: 2.5"),
    ({"type": "categorical", "choices": [8, 16], "log": True}, "log: only for float and int parameters"),
    ({"type": "categorical", "choices": [8, 16], "step": 3}, "step: only for float and int parameters"),
])
def test_options_a_parameter_type_cannot_honour_are_refused(dist: dict, text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        spec_from_dict(make_spec_dict(search_space={"encoder.width": dist}))


def test_a_condition_on_a_value_its_key_cannot_have_is_refused() -> None:
    """A typo in a `when:` value left the parameter unsampled in every trial, without a word."""
    search = {**make_spec_dict()["search_space"],
              "loss.type": {"type": "categorical", "choices": ["contrastive", "bce"]},
              "loss.margin": {"type": "float", "low": 0.5, "high": 1.5, "when": {"loss.type": ["tripplet"]}}}
    with pytest.raises(ConfigError, match=r"search_space.loss.margin.when: loss.type can never be 'tripplet'"):
        space.check_space(spec_from_dict(make_spec_dict(search_space=search)))
    # valid values this space does not draw are a narrowed space, not a typo: README's
    # `when: {loss.type: [contrastive, triplet]}`, or the shipped spec with one `--set` loss type
    for when in ({"loss.type": ["contrastive", "triplet"]}, {"loss.type": "triplet"}, {"encoder.depth": 7}):
        search["loss.margin"]["when"] = when
        space.check_space(spec_from_dict(make_spec_dict(search_space=search)))
    space.check_space(load_spec(resolve_spec_path("fashion-full"), {"search_space.loss.type": "contrastive"}))
    # a value valid only beside another value the space draws (batch_hard mining needs a triplet loss)
    search = {"loss.type": {"type": "categorical", "choices": ["contrastive", "triplet"]},
              "loss.mining": {"type": "categorical", "choices": ["random", "batch_hard"],
                              "when": {"loss.type": "triplet"}},
              "batch_size": {"type": "categorical", "choices": [64, 128], "when": {"loss.mining": "batch_hard"}}}
    space.check_space(spec_from_dict(make_spec_dict(search_space=search)))


def test_a_when_value_of_another_type_than_its_key_is_refused() -> None:
    """`when: {encoder.depth: "2"}` was accepted (the config converts "2"), and the parameter was never drawn: a
    trial holds 2, and 2 is not "2"."""
    margin = {"type": "float", "low": 0.5, "high": 1.5}
    for when, message in (({"encoder.depth": "2"}, r"encoder.depth would hold 2, never '2': write 2"),
                          ({"epochs": "2"}, r"epochs would hold 2, never '2'")):
        search = {"loss.margin": {**margin, "when": when}}
        with pytest.raises(ConfigError, match=r"search_space.loss.margin.when: " + message):
            space.check_space(spec_from_dict(make_spec_dict(search_space=search)))
    search = {"encoder.depth": {"type": "int", "low": 1, "high": 3},
              "loss.margin": {**margin, "when": {"encoder.depth": "2"}}}
    with pytest.raises(ConfigError, match=r"encoder.depth is drawn as a number, never '2'"):
        space.check_space(spec_from_dict(make_spec_dict(search_space=search)))
    for when in ({"encoder.depth": 2}, {"encoder.depth": 2.0}, {"epochs": [1, 2]}):
        search = {"loss.margin": {**margin, "when": when}}
        space.check_space(spec_from_dict(make_spec_dict(search_space=search)))
        search = {"encoder.depth": {"type": "int", "low": 1, "high": 3}, "loss.margin": {**margin, "when": when}}
        space.check_space(spec_from_dict(make_spec_dict(search_space=search)))


def test_hyperband_hears_up_to_the_epochs_the_search_space_sets() -> None:
    from sweeps.pruners import most_epochs

    assert most_epochs(spec_from_dict(make_spec_dict())) == 2  # the base config's
    assert most_epochs(spec_from_dict(make_spec_dict(search_space={"epochs": 1}))) == 1  # a converted W&B sweep
    spec = spec_from_dict(make_spec_dict(search_space={"epochs": {"type": "int", "low": 2, "high": 9}},
                                         study={"pruner": "hyperband"}))
    assert most_epochs(spec) == 9
    assert optuna_pruner(spec)._max_resource == 9  # Optuna keeps it private; this pins what it was given


def test_sampler_and_pruner_options_they_do_not_read_are_named() -> None:
    from sweeps.preflight import unused_options

    spec = spec_from_dict(make_spec_dict(study={"sampler": {"type": "random", "seed": 1, "n_startup_trials": 3,
                                                            "multivariate": False},
                                                "pruner": {"type": "median", "reduction_factor": 4}}))
    assert unused_options(spec) == [
        "study.sampler.n_startup_trials is not used by the 'random' sampler (it reads: seed)",
        "study.sampler.multivariate is not used by the 'random' sampler (it reads: seed)",
        "study.pruner.reduction_factor is not used by the 'median' pruner (it reads: n_startup_trials, "
        "n_warmup_steps)"]
    assert unused_options(spec_from_dict(make_spec_dict())) == []  # tpe with its options, no pruner
    # Optuna does not prune several objectives: a hyperband there ran as if on, without a word
    multi = spec_from_dict(make_spec_dict(study={"metrics": ["val_roc_auc", "params"], "sampler": "nsga2",
                                                 "pruner": "hyperband"}))
    assert unused_options(multi) == ["study.pruner ('hyperband') is not used: Optuna does not prune a study with "
                                     "several objectives, so every trial runs all its epochs"]
    assert unused_options(spec_from_dict(make_spec_dict(study={"metrics": ["val_roc_auc", "params"],
                                                               "sampler": "nsga2", "pruner": "none"}))) == []


@pytest.mark.parametrize(("study", "field", "text"), [
    ({"metric": "val_roc_auc", "direction": "minimize"}, "study.direction",
     "val_roc_auc is better higher; minimizing it would search for the worst models (use maximize)"),
    ({"metric": "val_eer", "direction": "maximize"}, "study.direction", "val_eer is better lower"),
    ({"metrics": ["val_roc_auc", "params"], "directions": ["minimize", "minimize"], "sampler": "nsga2"},
     "study.directions", "val_roc_auc is better higher"),
    ({"metrics": ["val_eer", "params"], "direction": "maximize", "sampler": "nsga2"}, "study.direction",
     "give study.directions (one per metric) with study.metrics"),
    ({"metric": "val_eer", "metrics": ["val_roc_auc", "params"], "sampler": "nsga2"}, "study.metric",
     "'val_eer' is not one of study.metrics"),
    ({"metric": "val_eer", "metrics": ["val_loss"]}, "study.metric", "'val_eer' is not one of study.metrics"),
    ({"pruner": {"type": "hyperband", "min_resource": 50}}, "study.pruner.min_resource",
     "50 epochs before a first verdict, but trials run at most 2: the hyperband pruner would never prune"),
    ({"pruner": {"type": "successive_halving", "min_resource": 3}}, "study.pruner.min_resource", "at most 2"),
])
def test_an_objective_or_pruner_that_contradicts_itself_is_refused(study: dict, field: str, text: str) -> None:
    """Each ran to exit 0: minimising an AUC made the worst model "best"; a direction next to metrics, or a metric
    outside them, was dropped; a Hyperband without a bracket never pruned."""
    with pytest.raises(ConfigError) as refused:
        spec_from_dict(make_spec_dict(study=study))
    assert refused.value.field.startswith(field) and text in str(refused.value), refused.value
    spec_from_dict(make_spec_dict(study={"metric": "val_eer", "direction": "minimize"}))  # agreeing: fine
    spec_from_dict(make_spec_dict(study={"pruner": {"type": "hyperband", "min_resource": 2}}))
    spec_from_dict(make_spec_dict(study={"metrics": ["val_eer"], "direction": "minimize"}))  # one metric: its direction
    # the spec a study was created with is not refused by a check added since: it could not be mended (--set
    # changes its identity), so the study could not be resumed at all
    spec_from_dict(make_spec_dict(study=study), stored=True)


def test_a_multi_objective_study_joined_by_name_hears_of_no_pruner_it_did_not_choose() -> None:
    """`worker --study NAME` rebuilds the stored spec, every field set: the default median pruner was named as
    unused on every worker of the shipped multi-objective spec."""
    from sweeps.preflight import unused_options

    spec = load_spec(resolve_spec_path("multi-objective"))
    assert spec.study.multi_objective and spec.study.pruner.type == "median"
    assert unused_options(spec) == [] and unused_options(spec_from_dict(spec.portable(), stored=True)) == []


def test_a_float_range_on_a_whole_number_key_is_refused() -> None:
    """`encoder.depth: {type: float, low: 1, high: 3}` passed (both bounds are whole numbers), and every trial
    failed on 2.5 (a W&B q_uniform of q 0.5 converts to it)."""
    search = {"encoder.depth": {"type": "float", "low": 1, "high": 3}}
    with pytest.raises(ConfigError, match=r"search_space.encoder.depth.type: encoder.depth is a whole number in "
                                          r"the train config, and a float range draws fractions: use type: int"):
        space.check_space(spec_from_dict(make_spec_dict(search_space=search)))
    space.check_space(spec_from_dict(make_spec_dict(search_space={"loss.margin": {"type": "float", "low": 1,
                                                                                  "high": 2}})))
    # whole-number steps from a whole-number low draw whole numbers (W&B's q_uniform of q 32 converts to this)
    for key in ("encoder.width", "batch_size"):
        whole = {key: {"type": "float", "low": 32.0, "high": 128.0, "step": 32.0}}
        space.check_space(spec_from_dict(make_spec_dict(search_space=whole)))
    with pytest.raises(ConfigError, match="use type: int"):
        space.check_space(spec_from_dict(make_spec_dict(search_space={"encoder.width": {
            "type": "float", "low": 32, "high": 128, "step": 0.5}})))


def test_a_studys_own_spec_reaches_its_workers_and_the_python_api_unrefused(tmp_path: Path) -> None:
    """`run --study OLD --workers 2` loaded the stored spec unchecked, then wrote it to a file for its workers,
    which re-read it as a user's spec: every worker exited 2. Overrides through the Python API re-checked a
    spec object the same way."""
    import argparse

    from sweeps.api import resolve_spec
    from sweeps.commands.sweep import _spec
    from sweeps.launch import write_resolved_spec

    old = spec_from_dict(make_spec_dict(study={"metric": "val_roc_auc", "direction": "minimize"}), stored=True)
    path = write_resolved_spec(old, tmp_path / "spec.yaml")
    args = argparse.Namespace(spec=str(path), study="t", overrides=[], storage=None)
    assert _spec(args, stored="required", checked=True).study.objective_directions == ("minimize",)
    with pytest.raises(ConfigError, match="val_roc_auc is better higher"):  # a user's own file: checked
        _spec(args, stored="required")
    assert resolve_spec(old, {"study.trials": 5}).study.trials == 5


def test_a_grid_budget_is_at_most_its_combinations(caplog: pytest.LogCaptureFixture) -> None:
    """The spec's default budget (10) over a grid of 4 re-ran 6 combinations (Optuna only warned "re-evaluating a
    configuration"); the budget stored is now the grid's combinations plus its enqueued trials, said once."""
    from sweeps.study import set_trial_budget, trial_budget

    search = {"encoder.depth": {"type": "int", "low": 1, "high": 2, "step": 1},
              "loader": {"type": "categorical", "choices": ["memory", "tfdata"]}}
    grid = spec_from_dict(make_spec_dict(search_space=search, study={"sampler": "grid", "trials": 10}))
    study = optuna.create_study(direction="maximize")
    with caplog.at_level("WARNING", logger="sweeps.study"):
        set_trial_budget(study, 10, grid)
        set_trial_budget(study, 12, grid)  # another worker's, or `run --trials 12` again: not said twice
    assert trial_budget(study, 0) == 4
    assert [r.getMessage() for r in caplog.records] == [
        "the grid has 4 combination(s), each run once: the study's budget is 4 trials, not 10"]
    set_trial_budget(study, 3, grid)
    assert trial_budget(study, 0) == 3  # fewer than the grid: as asked
    enqueued = spec_from_dict(make_spec_dict(search_space=search, study={  # one entry twice is queued once
        "sampler": "grid", "trials": 10, "enqueue": [{"encoder.depth": 2, "loader": "memory"}] * 2}))
    set_trial_budget(study, 10, enqueued)
    assert trial_budget(study, 0) == 5
    tpe = spec_from_dict(make_spec_dict(search_space=search, study={"sampler": "tpe", "trials": 10}))
    set_trial_budget(study, 10, tpe)
    assert trial_budget(study, 0) == 10


_GRID = {"encoder.depth": {"type": "int", "low": 1, "high": 2, "step": 1},
         "learning_rate": {"type": "categorical", "choices": [0.001, 0.01]}}
_LOSS = {"loss.type": {"type": "categorical", "choices": ["bce", "contrastive"]},
         "loss.margin": {"type": "float", "low": 0.5, "high": 1.5, "when": {"loss.type": "contrastive"}}}


@pytest.mark.parametrize("space_, study, field, text", [
    # Optuna's GridSampler failed the trial ("All parameters must be specified"); a retry ran a combination twice
    (_GRID, {"sampler": "grid", "enqueue": [{"encoder.depth": 2}]}, "study.enqueue[0]", "missing: learning_rate"),
    # the margin was dropped where the sampler drew bce: the entry never ran as listed
    (_LOSS, {"enqueue": [{"loss.margin": 1.0}]}, "study.enqueue[0].loss.margin", "give loss.type here too"),
    # a cycle created the study and the parent run, then failed every trial
    ({"loss.type": {"type": "categorical", "choices": ["bce", "contrastive"], "when": {"loader": "memory"}},
      "loader": {"type": "categorical", "choices": ["memory", "tfdata"], "when": {"loss.type": "bce"}}}, {},
     "search_space.loss.type.when", "circular conditions"),
    # an IndexError, exit 1
    ({"loss.margin": {"type": "float", "low": 0.5, "high": 2.0, "when": {"loss.type": []}}}, {},
     "search_space.loss.margin.when", "an empty list for loss.type"),
    # never drawn, without a word
    ({"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2},
      "encoder.depth": {"type": "int", "low": 1, "high": 3, "when": {"learning_rate": 0.005}}}, {},
     "search_space.encoder.depth.when", "continuous range"),
], ids=["grid-enqueue-partial", "enqueue-conditional-parent-sampled", "circular-when", "empty-when",
        "when-on-a-continuous-float"])
def test_specs_that_ran_other_trials_than_they_said_are_refused_by_field(space_: dict, study: dict, field: str,
                                                                         text: str) -> None:
    """Session 48's review of a spec author's specs: each of these ran to exit 0 or 1 doing something else than it
    said, or crashed; now one line names the field. The checks a study made before them could have passed are
    made for a new study only (`new_study_checks`): its spec file still reads, as `run`, `status` and
    `report` read it (the diff review: the first draft refused it when read, and locked such a study out)."""
    from sweeps.spec import new_study_checks

    data = make_spec_dict(search_space=space_, study={"pruner": "none", **study})
    with pytest.raises(ConfigError) as refused:
        new_study_checks(spec_from_dict(data))
    assert refused.value.field == field and text in refused.value.detail, refused.value
    if "circular" not in text and "empty list" not in text:  # those never ran a trial: refused when read
        assert spec_from_dict(data).distributions().keys() == spec_from_dict(data, stored=True).distributions().keys()


def test_the_nested_search_space_takes_set_overrides_and_a_searched_section_type() -> None:
    """The nested form refused `--set search_space.encoder.depth.low=2` ("unknown train-config key
    'encoder.depth.low'") and read `loss: {type: {...}, margin: {...}}` as one distribution."""
    from sweeps.spec import spec_from_data

    data = make_spec_dict(search_space={"encoder": {"depth": {"type": "int", "low": 1, "high": 3}},
                                        "loss": {"type": {"type": "categorical", "choices": ["contrastive", "triplet"]},
                                                 "margin": {"type": "float", "low": 0.5, "high": 1.5}}})
    spec = spec_from_data(data, {"search_space.encoder.depth.low": 2})
    searched = spec.distributions()
    assert sorted(searched) == ["encoder.depth", "loss.margin", "loss.type"]
    assert (searched["encoder.depth"].low, searched["encoder.depth"].high) == (2, 3)
    assert list(searched["loss.type"].choices or ()) == ["contrastive", "triplet"]


def test_the_order_conditional_parameters_are_drawn_in_is_kept() -> None:
    """The order decides which draws of a seeded sampler each parameter gets, so the same spec and seed give the
    same trials only while it stays: a parameter whose condition was met earlier in the same pass comes next
    (session 48 moved the ordering to `spec.conditional_order`, where it also refuses cycles when a spec is read;
    a first draft deferred such a parameter to the next pass)."""
    from sweeps.spec import conditional_order

    data = make_spec_dict(search_space={
        "loss.margin": {"type": "float", "low": 0.5, "high": 1.5, "when": {"loss.type": "contrastive"}},
        "loss.type": {"type": "categorical", "choices": ["contrastive", "triplet"]},
        "encoder.depth": {"type": "int", "low": 1, "high": 3, "when": {"loss.type": ["contrastive", "triplet"]}}})
    spec = spec_from_dict(data)
    assert conditional_order(spec.distributions()) == ["loss.type", "encoder.depth", "loss.margin"]


def test_a_grid_entry_on_a_branch_that_switches_a_parameter_off_and_other_nested_forms_are_read() -> None:
    """From the review of the refusals above: a grid entry need not give a conditional parameter its own values
    switch off (it was refused "missing: loss.margin", and giving it was refused "never sampled"); a fixed
    section type beside a searched key is a fixed value; `--set search_space.*` on a space that is not a mapping
    is the spec's one line (a TypeError, exit 1)."""
    from sweeps.spec import enqueued_params, spec_from_data

    grid = make_spec_dict(search_space={
        "loss.type": {"type": "categorical", "choices": ["contrastive", "bce"]},
        "loss.margin": {"type": "categorical", "choices": [1.0], "when": {"loss.type": "contrastive"}},
        "encoder.depth": {"type": "int", "low": 1, "high": 2, "step": 1}},
        study={"pruner": "none", "sampler": "grid", "trials": 4,
               "enqueue": [{"loss.type": "bce", "encoder.depth": 2}]})
    assert enqueued_params(spec_from_dict(grid)) == [{"loss.type": "bce", "encoder.depth": 2}]
    # a chain: margin is off on bce (its base value 0.5 is not 2.0), so depth, which waits on margin 2.0, is off
    chained = make_spec_dict(base={"loss": {"margin": 0.5}}, search_space={
        "loss.type": {"type": "categorical", "choices": ["contrastive", "bce"]},
        "loss.margin": {"type": "categorical", "choices": [2.0], "when": {"loss.type": "contrastive"}},
        "encoder.depth": {"type": "categorical", "choices": [2], "when": {"loss.margin": 2.0}}},
        study={"pruner": "none", "sampler": "grid", "trials": 2, "enqueue": [{"loss.type": "bce"}]})
    assert enqueued_params(spec_from_dict(chained)) == [{"loss.type": "bce"}]
    # a misspelt field of a top-level key's distribution is named (it read as a nested section: 'learning_rate.type')
    with pytest.raises(ConfigError) as typo:
        spec_from_dict(make_spec_dict(search_space={
            "learning_rate": {"type": "float", "low": 1e-4, "hihg": 1e-2, "log": True}}))
    assert typo.value.field == "search_space.learning_rate.hihg", typo.value
    nested = spec_from_dict(make_spec_dict(search_space={
        "loss": {"type": "contrastive", "margin": {"type": "float", "low": 0.5, "high": 1.5}}}))
    assert nested.fixed() == {"loss.type": "contrastive"} and list(nested.distributions()) == ["loss.margin"]
    with pytest.raises(ConfigError) as refused:
        spec_from_data(make_spec_dict(search_space=[1, 2]), {"search_space.encoder.depth": 2})
    assert refused.value.field == "search_space"


def test_an_entry_that_a_switched_off_parent_never_runs_is_refused_for_a_new_study_only() -> None:
    """Since session 48 a searched parameter that an entry switches off decides its dependents by its base value,
    as sampling does; that rule also refused the stored spec of a study made before it, which `run`, `status`
    and `report` read (a lock-out). A study about to be created is still refused the entry."""
    from sweeps.spec import enqueued_params, new_study_checks

    data = make_spec_dict(base={"loss": {"margin": 0.5}}, search_space={
        "loss.type": {"type": "categorical", "choices": ["contrastive", "bce"]},
        "loss.margin": {"type": "categorical", "choices": [2.0], "when": {"loss.type": "contrastive"}},
        "encoder.depth": {"type": "categorical", "choices": [2], "when": {"loss.margin": 2.0}}},
        study={"pruner": "none", "trials": 2, "enqueue": [{"loss.type": "bce", "encoder.depth": 2}]})
    stored = spec_from_dict(data)  # as a stored spec is read: accepted, as it was when its study was made
    assert enqueued_params(stored, strict=False) == [{"loss.type": "bce", "encoder.depth": 2}]
    with pytest.raises(ConfigError) as refused:
        new_study_checks(stored)
    assert refused.value.field == "study.enqueue[0].encoder.depth", refused.value
    assert "never sampled when loss.margin=0.5" in refused.value.detail


def test_an_entry_whose_condition_reads_a_key_nothing_sets_is_refused_for_a_new_study() -> None:
    """The review of e9667c8: `dataset` searched but switched off (only `dataset.name` is in the base) is None to
    sampling, so an entry's `encoder.width` under `when: {dataset: digits}` was never used; the new-study check
    skipped a key it did not know and accepted the entry."""
    import optuna

    from sweeps.space import sample_overrides
    from sweeps.spec import new_study_checks

    data = make_spec_dict(search_space={
        "dataset": {"type": "categorical", "choices": ["digits", "mnist"], "when": {"epochs": 3}},
        "encoder.width": {"type": "categorical", "choices": [16, 32], "when": {"dataset": "digits"}}},
        study={"pruner": "none", "trials": 2, "enqueue": [{"encoder.width": 16}]})
    spec = spec_from_dict(data)  # a stored spec reads as before
    study = optuna.create_study()
    study.enqueue_trial({"encoder.width": 16})
    assert "encoder.width" not in sample_overrides(study.ask(), spec)  # what the entry would have run
    with pytest.raises(ConfigError) as refused:
        new_study_checks(spec)
    assert refused.value.field == "study.enqueue[0].encoder.width", refused.value
    assert "never sampled when dataset is not set" in refused.value.detail
