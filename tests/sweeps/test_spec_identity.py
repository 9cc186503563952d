"""A study carries its own spec: a worker joins with ``--study`` only, and a different spec is refused (exit 2)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from sweeps.spec import load_spec, spec_differences, spec_from_data, spec_from_dict
from sweeps.specs import resolve_spec_path, shipped
from sweeps.storage import make_storage

from .conftest import make_spec_dict

CLI = [sys.executable, "-m", "sweeps.cli"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("name", shipped())
def test_portable_spec_round_trips_to_the_same_identity(name: str) -> None:
    spec = load_spec(resolve_spec_path(name))
    again = spec_from_data(spec.portable())
    assert again.identity() == spec.identity()
    assert spec_differences(spec.portable(), again.portable()) == []


def test_portable_spec_keeps_no_urls_and_identity_ignores_runtime_knobs() -> None:
    data = make_spec_dict(study={"storage": "postgresql://u:secret@db/optuna", "name": "a"},
                          tracking={"uri": "http://u:secret@mlflow:5000"})
    spec = spec_from_dict(data)
    assert "secret" not in yaml.safe_dump(spec.portable())
    other = spec_from_dict(make_spec_dict(study={"name": "b", "trials": 50, "timeout": 60, "max_failures": 9},
                                          tracking={"uri": "sqlite:///elsewhere.db", "checkpoints": "local",
                                                    "finish_in_background": False}))
    assert other.identity() == spec.identity()
    changed = spec_from_dict(make_spec_dict(base={**data["base"], "epochs": 5}))
    assert changed.identity() != spec.identity()
    assert spec_differences(spec.portable(), changed.portable()) == ["base.epochs"]
    space = dict(data["search_space"], learning_rate={"type": "float", "low": 1e-4, "high": 1e-2, "log": True})
    widened = spec_from_dict(make_spec_dict(search_space=space))
    assert spec_differences(spec.portable(), widened.portable()) == ["search_space.learning_rate"]


def test_worker_joins_with_the_study_alone_and_a_different_spec_is_refused(tmp_path: Path) -> None:
    first, other = tmp_path / "laptop", tmp_path / "elsewhere"
    first.mkdir()
    other.mkdir()
    spec = first / "spec.yaml"
    spec.write_text(yaml.safe_dump(make_spec_dict()))
    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    stores = ["--storage", storage, "--tracking-uri", uri]
    done = _cli(["run", str(spec), "--trials", "1", "--quiet", *stores], cwd=first)
    assert done.returncode == 0, done.stderr[-2000:]

    # another directory, no spec file: the stored spec (digits, not the built-in Fashion-MNIST quickstart)
    joined = _cli(["run", "--study", "t", "--trials", "2", "--quiet", *stores], cwd=other)
    assert joined.returncode == 0, joined.stderr[-2000:]
    study = optuna.load_study(study_name="t", storage=make_storage(storage))
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 2
    assert len({t.user_attrs["dataset_fingerprint"] for t in finished}) == 1
    assert len({t.user_attrs["eval_fingerprint"] for t in finished}) == 1

    # a changed search space, or a --set that changes the trials' meaning: one line, exit 2, no new trial
    changed = other / "changed.yaml"
    data = make_spec_dict()
    data["search_space"]["learning_rate"] = {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    changed.write_text(yaml.safe_dump(data))
    for args in (["worker", str(changed), "--study", "t"], ["worker", "--study", "t", "--set", "base.epochs=5"]):
        refused = _cli([*args, *stores], cwd=other)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "was created with another spec" in refused.stderr
        # the way out for both callers: the CLI's and the Python API's
        assert "'siamese-sweep worker --study t'" in refused.stderr and "sweep(study_name='t')" in refused.stderr
        assert ("search_space.learning_rate" in refused.stderr) or ("base.epochs" in refused.stderr)
        assert "Traceback" not in refused.stderr
    assert len(optuna.load_study(study_name="t", storage=make_storage(storage)).trials) == len(study.trials)

    # a worker's budget is the study's, as run's is: `worker --set study.trials=3` ran nothing and said nothing
    for args, budget in ((["--set", "study.trials=3"], 3), (["--trials", "4"], 4)):
        grown = _cli(["worker", "--study", "t", "--quiet", *args, *stores], cwd=other)
        assert grown.returncode == 0, grown.stderr[-2000:]
        study = optuna.load_study(study_name="t", storage=make_storage(storage))
        assert study.user_attrs["trial_budget"] == budget
        assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == budget

    # an unknown study on a storage that does not exist: exit 2 and no database file created
    missing = _cli(["worker", "--study", "nope", "--storage", f"sqlite:///{other}/none.db"], cwd=other)
    assert missing.returncode == 2 and "no study named 'nope'" in missing.stderr
    assert not (other / "none.db").exists()


def test_two_studies_of_one_name_on_one_tracking_store_stay_apart(tmp_path: Path) -> None:
    """Two people with their own optuna.db and one MLflow store: neither study reuses or deletes the other's runs."""
    from mlflow import MlflowClient

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(make_spec_dict()))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for who in ("alice", "bob"):
        (tmp_path / who).mkdir()
        done = _cli(["run", str(spec), "--trials", "1", "--quiet", "--storage", f"sqlite:///{tmp_path}/{who}.db",
                     "--tracking-uri", uri], cwd=tmp_path / who)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "deleting duplicate" not in done.stderr
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("siamese-sweep/t")
    runs = client.search_runs([exp.experiment_id], run_view_type=3, max_results=100)  # ALL: deleted ones too
    parents = [r for r in runs if r.data.tags.get("siamese_sweep.role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("siamese_sweep.role") == "trial"]
    assert len(parents) == 2 and len({p.data.tags["siamese_sweep.study_uid"] for p in parents}) == 2
    assert len(trials) == 2 and all(r.info.lifecycle_stage == "active" for r in trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {p.info.run_id for p in parents}


def test_a_field_newer_than_the_study_at_its_default_does_not_lock_workers_out() -> None:
    """A study stored by an older siamese-sweep lacks fields added since; at their defaults they change nothing.
    The same missing field with a non-default value is a real difference and is refused."""
    import hashlib
    import json

    from siamese_core.errors import ConfigError
    from sweeps import names
    from sweeps.spec import _identity_dict
    from sweeps.study import check_same_spec

    spec = spec_from_dict(make_spec_dict())
    old = spec.portable()
    del old["tracking"]["plots_every"]  # as written before `tracking.plots_every` existed
    del old["base"]["encoder"]["pooling"]
    study = optuna.create_study(study_name="old")
    study.set_user_attr(names.STUDY_ATTR_SPEC, old)
    study.set_user_attr(names.STUDY_ATTR_SPEC_HASH, hashlib.sha256(
        json.dumps(_identity_dict(old), sort_keys=True).encode()).hexdigest())
    assert study.user_attrs[names.STUDY_ATTR_SPEC_HASH] != spec.identity()
    check_same_spec(study, spec)  # joins
    check_same_spec(study, spec_from_data(old))  # `worker --study old`: the stored spec read by this version
    data = make_spec_dict()
    data["tracking"] = {**data.get("tracking", {}), "plots_every": 3}
    with pytest.raises(ConfigError, match="tracking.plots_every"):
        check_same_spec(study, spec_from_dict(data))


def test_an_int_range_with_step_1_is_the_same_as_one_without_step() -> None:
    """`step: 1` is Optuna's default for an int range: the same distribution, so the same study. It was refused
    against the stored spec written without it (the raw dicts differ). Another step is a difference."""
    import hashlib
    import json

    from siamese_core.errors import ConfigError
    from sweeps import names
    from sweeps.spec import _identity_dict
    from sweeps.study import check_same_spec

    def with_depth(**extra: object) -> dict:
        data = make_spec_dict()
        data["search_space"] = {**data["search_space"],
                                "encoder.depth": {"type": "int", "low": 1, "high": 3, **extra}}
        return data

    plain, stepped = spec_from_dict(with_depth()), spec_from_dict(with_depth(step=1))
    assert plain.identity() == stepped.identity()
    assert spec_differences(plain.portable(), stepped.portable()) == []
    for stored in (plain, stepped):
        study = optuna.create_study(study_name="s")
        study.set_user_attr(names.STUDY_ATTR_SPEC, stored.portable())
        study.set_user_attr(names.STUDY_ATTR_SPEC_HASH, stored.identity())
        check_same_spec(study, plain)
        check_same_spec(study, stepped)
        with pytest.raises(ConfigError, match="search_space.encoder.depth"):
            check_same_spec(study, spec_from_dict(with_depth(step=2)))
    # a study stored before: its hash was of the raw dict with `step: 1`; the current spec without it joins
    old = stepped.portable()
    study = optuna.create_study(study_name="old")
    study.set_user_attr(names.STUDY_ATTR_SPEC, old)
    study.set_user_attr(names.STUDY_ATTR_SPEC_HASH, hashlib.sha256(json.dumps(old, sort_keys=True).encode()
                                                                    ).hexdigest())
    assert _identity_dict(old)["search_space"]["encoder.depth"] == {"type": "int", "low": 1.0, "high": 3.0,
                                                                    "log": False}
    check_same_spec(study, plain)


def test_a_joiner_waits_for_the_spec_of_a_study_just_created(tmp_path: Path) -> None:
    """Two processes starting one new study with different specs: the creator writes its spec right after the
    study; a joiner that came in that gap found no spec and adopted its own (1 of 6 simultaneous starts), so the
    study mixed trials of two specs. It now waits for the creator's spec and is refused."""
    import threading

    from siamese_core.errors import ConfigError
    from sweeps import names
    from sweeps.study import check_same_spec

    creator = spec_from_dict(make_spec_dict(base={"epochs": 2}))
    joiner = spec_from_dict(make_spec_dict(base={"epochs": 1}))
    study = optuna.create_study(study_name="s", storage=make_storage(f"sqlite:///{tmp_path}/o.db"))

    def write_the_spec() -> None:
        study.set_user_attr(names.STUDY_ATTR_SPEC, creator.portable())
        study.set_user_attr(names.STUDY_ATTR_SPEC_HASH, creator.identity())

    late = threading.Timer(0.5, write_the_spec)
    late.start()
    try:
        with pytest.raises(ConfigError, match="created with another spec"):
            check_same_spec(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db"), joiner)
    finally:
        late.join()
    assert study.user_attrs[names.STUDY_ATTR_SPEC_HASH] == creator.identity()


def test_a_study_with_trials_and_no_spec_is_adopted_at_once(tmp_path: Path) -> None:
    """Not a study being created (it has trials): one made before specs were stored takes the joiner's spec."""
    import time

    from sweeps import names
    from sweeps.study import check_same_spec

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db")
    study.tell(study.ask(), 1.0)
    spec = spec_from_dict(make_spec_dict())
    started = time.monotonic()
    check_same_spec(study, spec, wait_s=30.0)
    # at once, not after wait_s (the bound leaves room for a second test process on the same cores)
    assert time.monotonic() - started < 15 and study.user_attrs[names.STUDY_ATTR_SPEC_HASH] == spec.identity()


def test_a_changed_budget_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`run --study NAME` without --trials takes the stored spec's `study.trials`: a budget of 10 given earlier
    with --trials became 4 without a word."""
    import logging

    from sweeps.study import set_trial_budget

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db")
    with caplog.at_level(logging.WARNING, logger="sweeps.study"):
        set_trial_budget(study, 10)
        set_trial_budget(study, 10)
        assert caplog.text == ""
        set_trial_budget(study, 4)
    assert "study s: trial budget 10 -> 4" in caplog.text


def test_a_joiner_without_a_spec_waits_for_the_creators_and_an_old_stored_spec_still_loads(tmp_path: Path) -> None:
    """`run --study X` without a spec, started as another `run` created X and before it wrote its spec, was refused
    as "empty ... killed as it created it" (session 47's review of its own change): it waits, as a joiner with a
    spec does. And a study whose spec searches a key its built-in encoder does not read (refused for new studies
    since) still resumes, by its stored spec or its spec file: the first draft refused the file, which `status`,
    `report` and `promote` read too, and removing the key made it "another spec" (session 47's final review)."""
    import threading

    from siamese_core.errors import ConfigError
    from sweeps import names
    from sweeps.preflight import refuse_for_a_new_study
    from sweeps.study import stored_spec

    data = make_spec_dict()
    data["search_space"]["encoder.rnn"] = {"type": "categorical", "choices": ["lstm", "gru"]}
    old = spec_from_dict(data)  # a spec file that reads the study: loaded as before
    url = f"sqlite:///{tmp_path}/optuna.db"
    with pytest.raises(ConfigError, match="the built-in conv encoder does not read encoder.rnn"):
        refuse_for_a_new_study(old, storage=url, study_name="race")  # a new study: refused
    assert not (tmp_path / "optuna.db").exists()
    study = optuna.create_study(study_name="race", storage=make_storage(url))

    def write_the_spec() -> None:
        study.set_user_attr(names.STUDY_ATTR_SPEC, old.portable())
        study.set_user_attr(names.STUDY_ATTR_SPEC_HASH, old.identity())

    late = threading.Timer(1.0, write_the_spec)
    late.start()
    try:
        got = stored_spec(url, "race", missing_ok=True)
    finally:
        late.join()
    assert got is not None and got.identity() == old.identity() and "encoder.rnn" in got.distributions()
    refuse_for_a_new_study(old, storage=url, study_name="race")  # it exists: it resumes as it was made


def test_a_user_encoders_study_resumes_with_a_search_its_function_no_longer_reads(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """A search over an ``encoder.*`` key a user encoder does not read is refused for a new study, as for a
    built-in one, and a study that exists resumes with it: the user encoder's refusal sat in the preflight of
    every run, so a study whose function stopped reading ``encoder.depth`` was locked out by its own spec, where a
    built-in's resumed (the rule differed by encoder; session 47's read of its diff)."""
    from siamese_core.errors import ConfigError
    from sweeps import names
    from sweeps.preflight import preflight, refuse_for_a_new_study

    (tmp_path / "s48_encoders.py").write_text("def reads_embedding_dim(input_shape, embedding_dim=8):\n"
                                              "    raise AssertionError('the checks never call it')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = make_spec_dict()
    data["base"]["encoder"] = {"type": "s48_encoders:reads_embedding_dim", "embedding_dim": 16}
    spec = spec_from_dict(data)  # make_spec_dict searches encoder.depth, which this function does not read
    url = f"sqlite:///{tmp_path}/optuna.db"
    preflight(spec, warn=False)  # imports and checks the user code; whether the search is dead: the study decides
    with pytest.raises(ConfigError, match="the encoder s48_encoders:reads_embedding_dim does not read encoder.depth"):
        refuse_for_a_new_study(spec, storage=url, study_name="mine")
    assert not (tmp_path / "optuna.db").exists()
    study = optuna.create_study(study_name="mine", storage=make_storage(url))  # made when the function read depth
    study.set_user_attr(names.STUDY_ATTR_SPEC, spec.portable())
    study.set_user_attr(names.STUDY_ATTR_SPEC_HASH, spec.identity())
    refuse_for_a_new_study(spec, storage=url, study_name="mine")  # it exists: it resumes as made
