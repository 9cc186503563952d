"""`decide` and `best_eligible` on plain data: no MLflow, no Optuna, no models. And ``models:/`` URI parsing."""
from __future__ import annotations

import json
import math

import pytest

from siamese_core.errors import ConfigError
from sweeps.promotion import Candidate, Facts, Holder, Split, decide
from sweeps.promotion.decision import RollbackFacts, best_eligible, decide_rollback
from sweeps.reevaluation import Evaluation
from sweeps.registry import ModelRef, model_id_from_uri, parse_model_uri

VAL = Split(fingerprint="f" * 64, key="k1", n_pairs=200, which="val", eval_fingerprint="e" * 64)
TEST = Split(fingerprint="f" * 64, key="t1", n_pairs=300, which="test", eval_fingerprint="e" * 64)


def _eval(auc: float, eer: float = 0.1, uri: str = "models:/m-x") -> Evaluation:
    return Evaluation(uri, {"pair_accuracy": 0.9, "roc_auc": auc, "eer": eer}, threshold=0.5,
                      embeddings_reproduced=True)


def _facts(*, auc: float = 0.95, holder: Holder | None = None, version: str | None = None, metric: str = "roc_auc",
           force: bool = False, eer: float = 0.1, test_auc: float = 0.93) -> Facts:
    """The candidate scores `auc` on the validation pairs and `test_auc` on the test pairs."""
    candidate = Candidate(trial=7, run_id="r7", model_uri="models:/m-7", model_id="m-7", version=version,
                          val=_eval(auc, eer, "models:/m-7"), test=_eval(test_auc, eer, "models:/m-7"),
                          trial_test={"roc_auc": test_auc}, trial_val={"roc_auc": auc})
    return Facts(model_name="siamese-s", alias="champion", study="s", metric=metric, force=force, decided_on=VAL,
                 reported_on=TEST, candidate=candidate, holder=holder,
                 skipped=[{"trial": 9, "reason": "no logged model"}])


def _holder(auc: float | None = 0.90, *, version: str = "3", fingerprint: str | None = "f" * 64,
            eer: float = 0.1, test_auc: float = 0.91) -> Holder:
    return Holder(version=version, model_uri="models:/m-3", run_id="r3", study="s", trial="2",
                  dataset_fingerprint=fingerprint, val=None if auc is None else _eval(auc, eer, "models:/s/3"),
                  test=None if auc is None else _eval(test_auc, eer, "models:/s/3"))


def test_an_unset_alias_is_taken() -> None:
    d = decide(_facts())
    assert (d.action, d.applied, d.final_holder, d.previous) == ("promote", False, None, None)
    assert d.reason == "siamese-s@champion is not set yet"
    assert d.candidate["trial"] == 7 and d.candidate["val_metrics"]["roc_auc"] == 0.95 and d.holder is None
    assert d.candidate["test_metrics"]["roc_auc"] == 0.93  # reported alongside
    assert d.decided_on == {"split": "val", "dataset_fingerprint": "f" * 64, "eval_fingerprint": "e" * 64,
                            "eval_key": "k1", "pairs": 200}
    assert d.reported_on["split"] == "test" and d.reported_on["eval_key"] == "t1"
    assert d.skipped == [{"trial": 9, "reason": "no logged model"}]


def test_better_moves_worse_keeps() -> None:
    d = decide(_facts(auc=0.95, holder=_holder(0.90)))
    assert (d.action, d.final_holder, d.previous) == ("promote", "3", "3")
    assert d.reason == "val roc_auc 0.9500 > 0.9000 of v3" and d.higher_is_better
    d = decide(_facts(auc=0.85, holder=_holder(0.90)))
    assert (d.action, d.previous) == ("keep", None) and d.reason.startswith("not better")
    d = decide(_facts(auc=0.90, holder=_holder(0.90)))  # strictly better only
    assert d.action == "keep"


def test_validation_decides_and_test_never_does() -> None:
    """Test and validation disagree: the validation order wins both ways (the test numbers are only reported)."""
    # better on test (0.99 vs 0.91) but worse on validation (0.85 vs 0.90): kept
    d = decide(_facts(auc=0.85, test_auc=0.99, holder=_holder(0.90, test_auc=0.91)))
    assert d.action == "keep" and d.reason == "not better: val roc_auc 0.8500 vs 0.9000 of v3"
    assert (d.candidate["test_metrics"]["roc_auc"], d.holder["test_metrics"]["roc_auc"]) == (0.99, 0.91)
    # worse on test (0.80 vs 0.97) but better on validation (0.95 vs 0.90): promoted
    d = decide(_facts(auc=0.95, test_auc=0.80, holder=_holder(0.90, test_auc=0.97)))
    assert d.action == "promote" and d.reason.startswith("val roc_auc 0.9500 >")
    # EER too: lower validation EER wins whatever the test EER says
    facts = _facts(metric="eer", eer=0.05, holder=_holder(eer=0.08))
    facts = Facts(**{**facts.__dict__, "candidate": Candidate(**{**facts.candidate.__dict__,
                                                                 "test": _eval(0.9, 0.30)})})
    assert decide(facts).action == "promote"


def test_a_rollback_holds_until_lifted_or_forced() -> None:
    hold = {"version": "3", "from": "4", "at": "2026-01-01T00:00:00Z"}
    held = _facts(auc=0.99, holder=_holder(0.90))
    d = decide(Facts(**{**held.__dict__, "hold": hold}))  # better on validation, but the operator rolled back
    assert (d.action, d.final_holder, d.lifts_hold, d.hold) == ("keep", "3", False, hold)
    assert "held at v3 by a rollback from v4" in d.reason and "--lift-rollback" in d.reason
    d = decide(Facts(**{**held.__dict__, "hold": hold, "lift_hold": True}))  # a human lifts it: the usual rule
    assert (d.action, d.lifts_hold) == ("promote", True) and d.reason.startswith("val roc_auc")
    worse = _facts(auc=0.5, holder=_holder(0.90))
    d = decide(Facts(**{**worse.__dict__, "hold": hold, "lift_hold": True}))
    assert (d.action, d.lifts_hold) == ("keep", True) and d.reason.startswith("not better")
    d = decide(Facts(**{**worse.__dict__, "hold": hold, "force": True}))
    assert (d.action, d.lifts_hold, d.forced) == ("promote", True, True)
    assert decide(held).lifts_hold is False  # no hold, nothing to lift


def test_lower_is_better_for_eer() -> None:
    d = decide(_facts(metric="eer", eer=0.05, holder=_holder(eer=0.08)))
    assert d.action == "promote" and "<" in d.reason and not d.higher_is_better


def test_nan_never_wins_and_anything_beats_nan() -> None:
    assert decide(_facts(auc=math.nan, holder=_holder(0.5))).action == "keep"
    assert decide(_facts(auc=0.6, holder=_holder(math.nan))).action == "promote"


def test_the_holder_itself_is_kept() -> None:
    d = decide(_facts(version="3", holder=_holder(None)))
    assert d.action == "keep" and "already holds" in d.reason and d.previous is None


def test_force_promotes_a_worse_candidate() -> None:
    d = decide(_facts(auc=0.5, holder=_holder(0.9), force=True))
    assert (d.action, d.forced) == ("promote", True) and d.reason.startswith("forced")


def test_a_holder_trained_on_other_data_is_refused_unless_forced() -> None:
    other = _holder(None, fingerprint="0" * 64)
    with pytest.raises(ConfigError, match="cannot be compared") as err:
        decide(_facts(holder=other))
    assert err.value.field == "--alias"
    d = decide(_facts(holder=other, force=True))
    assert d.action == "promote" and "n/a" in d.reason


def _tags(eligible: str | None, metrics: dict | None, key: str = "k1") -> dict[str, str]:
    tags = {}
    if eligible is not None:
        tags["siamese_sweep.eligible.champion"] = eligible
    if metrics is not None:
        tags[f"siamese_sweep.eval.{key}"] = json.dumps(metrics)
    return tags


def test_best_eligible_is_the_rule_promoters_converge_on() -> None:
    versions = [("1", _tags("true", {"roc_auc": 0.9})), ("2", _tags("true", {"roc_auc": 0.95})),
                ("3", _tags("false", {"roc_auc": 0.99})), ("4", _tags("true", {"roc_auc": 0.99}, key="other")),
                ("5", _tags("true", None)), ("6", {"siamese_sweep.eligible.champion": "true",
                                                   "siamese_sweep.eval.k1": "not json"}),
                ("7", _tags("true", {"roc_auc": 0.95}))]
    assert best_eligible(versions, alias="champion", key="k1", metric="roc_auc") == "2"  # tie with v7: the older one
    assert best_eligible(versions, alias="champion", key="k1", metric="eer") is None  # no eer recorded
    assert best_eligible([("1", _tags("true", {"eer": 0.2})), ("2", _tags("true", {"eer": 0.1}))],
                         alias="champion", key="k1", metric="eer") == "2"
    assert best_eligible([], alias="champion", key="k1", metric="roc_auc") is None


def test_rollback_decisions() -> None:
    d = decide_rollback(RollbackFacts("m", "champion", None, current="2", previous="1", previous_exists=True))
    assert (d.action, d.final_holder, d.previous, d.holder) == ("rollback", "2", "1", {"version": "2"})
    with pytest.raises(ConfigError, match="not set"):
        decide_rollback(RollbackFacts("m", "champion", None, None, None, False))
    with pytest.raises(ConfigError, match="no previous holder"):
        decide_rollback(RollbackFacts("m", "champion", None, "2", None, False))
    with pytest.raises(ConfigError, match="no longer exists"):
        decide_rollback(RollbackFacts("m", "champion", None, "2", "1", False))


@pytest.mark.parametrize("uri, ref", [
    ("models:/m-abc", ModelRef(model_id="m-abc")),
    ("models:/m-abc/", ModelRef(model_id="m-abc")),
    ("models:/siamese-s/3", ModelRef(name="siamese-s", version="3")),
    ("models:/siamese-s@champion", ModelRef(name="siamese-s", alias="champion")),
    ("runs:/abc/model", None), ("/tmp/model", None), ("models:/", None),
])
def test_model_uris(uri: str, ref: ModelRef | None) -> None:
    assert parse_model_uri(uri) == ref
    assert model_id_from_uri(uri) == (ref.model_id if ref else None)
