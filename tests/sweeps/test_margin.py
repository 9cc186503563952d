"""The report says whether the best trial's lead over the runner-up is more than the validation score's noise."""
from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest

from sweeps import names
from sweeps.margin import (
    BOOTSTRAP_DRAWS,
    CLEAR_IN_ERRORS,
    MAX_PER_PAIR,
    best_margin,
    bootstrap_weights,
    decode_per_pair,
    delong,
    encode_per_pair,
    equal_error_rates,
    sampling_error,
)
from sweeps.report import build_report, render_markdown

X = optuna.distributions.FloatDistribution(0.0, 1.0)


@pytest.mark.parametrize("shift", [1.0, 2.6])
def test_the_roc_auc_error_is_within_a_quarter_of_monte_carlo(shift: float) -> None:
    """Hanley & McNeil against 400 fresh draws of 1,000 + 1,000 binormal scores (AUC 0.76 and 0.97)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(1000), np.zeros(1000)]
    aucs = [roc_auc_score(labels, np.r_[rng.normal(shift, 1, 1000), rng.normal(0, 1, 1000)]) for _ in range(400)]
    ratio = sampling_error("val_roc_auc", float(np.mean(aucs)), 1000, 1000) / float(np.std(aucs))
    assert 0.9 < ratio < 1.3, ratio  # measured: 1.01 at AUC 0.76, 1.25 at 0.97 (it overstates, never understates)


def test_the_accuracy_error_is_binomial_and_other_metrics_have_none() -> None:
    rng = np.random.default_rng(1)
    accuracies = rng.binomial(2000, 0.9, size=4000) / 2000
    assert sampling_error("val_pair_accuracy", 0.9, 1000, 1000) == pytest.approx(float(np.std(accuracies)), rel=0.05)
    assert sampling_error("val_loss", 0.3, 1000, 1000) is None
    assert sampling_error("val_roc_auc", 0.9, 0, 2000) is None


def _study(values: list[float], *, metric: str = "val_roc_auc", val_pairs: int = 2000) -> optuna.Study:
    study = optuna.create_study(direction="minimize" if metric.endswith(("eer", "loss")) else "maximize")
    study.set_user_attr(names.STUDY_ATTR_METRICS, [metric])
    study.set_user_attr(names.STUDY_ATTR_SPEC, {"base": {"pairs": {"val_pairs": val_pairs, "positive_fraction": 0.5}},
                                                "study": {"sampler": {"type": "tpe", "n_startup_trials": 2}}})
    for i, v in enumerate(values):
        study.add_trial(optuna.trial.create_trial(params={"x": i / 10}, distributions={"x": X}, value=v,
                                                  user_attrs=measured(i)))
    return study


def measured(i: int) -> dict:
    """What a worker records with a trial it measured (`sweeps.best.measured`): its run and its threshold."""
    return {names.TRIAL_ATTR_RUN_ID: f"run-{i}", names.TRIAL_ATTR_THRESHOLD: 0.5}


def test_a_lead_inside_the_noise_is_not_shown_and_names_the_trials_inside_it() -> None:
    """The quickstart's seed-0 case: a lead of 0.000002 of validation AUC on 2,000 pairs."""
    study = _study([0.967000, 0.967002, 0.95, 0.962])
    report = build_report(study)
    m = report.margin
    assert m is not None and (m["best"], m["runner_up"], m["verdict"]) == (1, 0, "not shown")
    assert m["lead"] == pytest.approx(0.000002)
    assert m["sampling_error"] == pytest.approx(sampling_error("val_roc_auc", 0.967002, 1000, 1000))
    assert m["clear_above"] == pytest.approx(CLEAR_IN_ERRORS * m["sampling_error"])
    assert m["within"] == [0, 3]  # 0.962 is 0.005 behind: inside 2 sqrt(2) x 0.0041; 0.95 is not
    page = render_markdown(report)
    assert "### Is its lead real?" in page and "**Not shown to be better**" in page and "(0, 3)" in page


def test_a_lead_beyond_the_noise_is_clear_and_more_pairs_make_a_small_lead_clear() -> None:
    assert build_report(_study([0.99, 0.95])).margin["verdict"] == "clear"
    small = [0.970, 0.965]
    assert build_report(_study(small)).margin["verdict"] == "not shown"
    assert build_report(_study(small, val_pairs=200_000)).margin["verdict"] == "clear"
    eer = build_report(_study([0.05, 0.12], metric="val_eer")).margin  # lower is better
    assert eer["best"] == 0 and eer["verdict"] == "clear" and math.isclose(eer["lead"], 0.07)


def test_the_unpaired_bound_counts_the_pairs_the_trials_were_scored_on() -> None:
    """Validation pairs are balanced whatever the training pairs' positive_fraction (0.15 counted 300 positives of
    2,000); a small split is scored on each of its pairs once, fewer than pairs.val_pairs asks: the best trial's
    kept outcomes say how many (20 pairs, not 2,000), where the paired test cannot run (another fingerprint)."""
    study = _study([0.967000, 0.967002])
    study.set_user_attr(names.STUDY_ATTR_SPEC, {"base": {"pairs": {"val_pairs": 2000, "positive_fraction": 0.15}}})
    assert build_report(study).margin["sampling_error"] == pytest.approx(
        sampling_error("val_roc_auc", 0.967002, 1000, 1000))
    y = np.array([1, 0] * 10)
    kept = encode_per_pair(np.linspace(0, 1, 20), y, np.ones(20, bool))
    small = _study([0.70])
    small.add_trial(optuna.trial.create_trial(params={"x": 0.1}, distributions={"x": X}, value=0.75, user_attrs={
        **measured(1), names.TRIAL_ATTR_PER_PAIR_VAL: kept, names.TRIAL_ATTR_EVAL_FINGERPRINT: "new"}))
    m = build_report(small).margin
    assert m["val_pairs"] == 20 and m["sampling_error"] == pytest.approx(sampling_error("val_roc_auc", 0.75, 10, 10))
    assert m["verdict"] == "not shown"
    # more than MAX_PER_PAIR pairs keep no outcomes: the count of pairs scored is kept on its own
    large = _study([0.70])
    large.add_trial(optuna.trial.create_trial(params={"x": 0.1}, distributions={"x": X}, value=0.75, user_attrs={
        **measured(1), names.TRIAL_ATTR_VAL_PAIRS: {"pairs": 40_000, "positives": 4_000}}))  # pre-paired: its own share
    large.set_user_attr(names.STUDY_ATTR_SPEC, {"base": {"pairs": {"val_pairs": 100_000}}})
    m = build_report(large).margin
    assert m["val_pairs"] == 40_000
    assert m["sampling_error"] == pytest.approx(sampling_error("val_roc_auc", 0.75, 4_000, 36_000))


def test_trials_scored_on_different_pairs_are_said_to_compare_only_roughly() -> None:
    """A study resumed across the change of session 44 (a small split's pairs drawn once each) ranked trials
    scored on two sets of pairs together without a word; the paired test fell back in silence."""
    study = _study([0.70])
    for value, fingerprint in ((0.72, "old"), (0.75, "new")):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.1}, distributions={"x": X}, value=value,
                                                  user_attrs={**measured(1), names.TRIAL_ATTR_EVAL_FINGERPRINT:
                                                              fingerprint}))
    assert any("scored on 2 different sets of evaluation pairs" in n for n in build_report(study).notes)
    assert not any("different sets" in n for n in build_report(_study([0.7, 0.72])).notes)


def test_no_margin_without_a_formula_a_spec_or_a_runner_up() -> None:
    assert build_report(_study([0.3, 0.4], metric="val_loss")).margin is None
    assert build_report(_study([0.9])).margin is None
    bare = optuna.create_study(direction="maximize")
    bare.add_trial(optuna.trial.create_trial(params={"x": 0.1}, distributions={"x": X}, value=0.9))
    bare.add_trial(optuna.trial.create_trial(params={"x": 0.2}, distributions={"x": X}, value=0.8))
    report = build_report(bare)
    assert report.margin is None and "Is its lead real?" not in render_markdown(report)
    assert best_margin(bare, bare.trials) is None


# ---------------------------------------------------------------- paired: the trials' per-pair validation outcomes

def test_delong_is_its_definition_and_sklearns_auc() -> None:
    """The midrank form against the O(m n) definition (each positive's share of negatives below it, ties half),
    on scores with many ties."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    y = rng.random(300) < 0.4
    a, b = np.round(rng.normal(y * 1.0, 1), 1), np.round(rng.normal(y * 0.5, 1), 1)
    aucs, cov = delong([a, b], y)
    assert aucs == pytest.approx([roc_auc_score(y, a), roc_auc_score(y, b)], abs=1e-12)
    psi = [(s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :]) for s in (a, b)]
    v10, v01 = np.array([p.mean(axis=1) for p in psi]), np.array([p.mean(axis=0) for p in psi])
    assert cov == pytest.approx(np.cov(v10) / y.sum() + np.cov(v01) / (~y).sum(), rel=1e-9)


def test_the_paired_error_of_a_difference_matches_monte_carlo() -> None:
    """Two scorings of the same 1,000 + 1,000 pairs that share most of their signal (as two trials of one sweep
    do): DeLong's error of the AUC difference against its spread over 400 fresh draws, and far below the
    unpaired bound's."""
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    diffs, errors = [], []
    for _ in range(400):
        shared = rng.normal(y * 2.0, 1)
        a, b = shared + rng.normal(0, 0.3, 2000), shared + rng.normal(0, 0.3, 2000)
        aucs, cov = delong([a, b], y)
        diffs.append(aucs[0] - aucs[1])
        errors.append(math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))
    ratio = float(np.mean(errors)) / float(np.std(diffs))
    assert 0.85 < ratio < 1.15, ratio
    one = sampling_error("val_roc_auc", float(aucs[0]), 1000, 1000)
    assert one is not None and float(np.mean(errors)) < 0.5 * math.sqrt(2) * one  # correlated: a far smaller error


def test_per_pair_outcomes_round_trip_and_refuse_what_they_cannot_keep() -> None:
    rng = np.random.default_rng(4)
    s, y = np.round(rng.normal(size=2000), 2), rng.random(2000) < 0.5
    ok = rng.random(2000) < 0.9
    kept = decode_per_pair(encode_per_pair(s, y, ok))
    assert kept is not None
    rank, label, correct = kept
    assert (label == y).all() and (correct == ok).all()
    assert delong([rank], y)[0][0] == pytest.approx(delong([s], y)[0][0], abs=1e-12)  # ranks keep order and ties
    attr = encode_per_pair(s, y, ok)
    assert attr is not None and len(json.dumps(attr)) < 6_200  # 2,000 pairs: 6 KB in the trial's row
    assert encode_per_pair(np.zeros(MAX_PER_PAIR + 1), np.ones(MAX_PER_PAIR + 1), np.ones(MAX_PER_PAIR + 1)) is None
    assert encode_per_pair(np.r_[s[:-1], np.nan], y, ok) is None
    assert decode_per_pair({"n": 3, "rank": "AAAA"}) is None and decode_per_pair(None) is None


def _paired_study(scorings: list[np.ndarray], y: np.ndarray, *, metric: str = "val_roc_auc",
                  fingerprints: list[str] | None = None) -> optuna.Study:
    """A study whose trials kept their per-pair outcomes, valued as a sweep values them."""
    from sklearn.metrics import roc_auc_score

    from siamese_core.verification import equal_error_rate

    study = optuna.create_study(direction="minimize" if metric == "val_eer" else "maximize")
    study.set_user_attr(names.STUDY_ATTR_METRICS, [metric])
    study.set_user_attr(names.STUDY_ATTR_SPEC, {"base": {"pairs": {"val_pairs": len(y), "positive_fraction": 0.5}}})
    for i, s in enumerate(scorings):
        correct = (s > 0.5) == y
        if metric == "val_roc_auc":
            value = float(roc_auc_score(y, s))
        elif metric == "val_eer":
            value = equal_error_rate(s, y, higher_is_same=True)
        else:
            value = float(correct.mean())
        attrs = {**measured(i), names.TRIAL_ATTR_PER_PAIR_VAL: encode_per_pair(s, y, correct),
                 names.TRIAL_ATTR_EVAL_FINGERPRINT: (fingerprints or ["f"] * len(scorings))[i]}
        study.add_trial(optuna.trial.create_trial(params={"x": i / 10}, distributions={"x": X}, value=value,
                                                  user_attrs=attrs))
    return study


def test_a_small_lead_that_holds_on_every_pair_is_clear_when_tested_paired() -> None:
    """Trial 1 ranks the same 2,000 pairs as trial 0 with a little less of the same noise: its lead (0.0017 of
    AUC) is inside the unpaired bound (0.012) and many paired errors (0.00016); trial 2 is far behind."""
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    signal = rng.normal(y * 2.5, 1)
    noise = rng.normal(0, 1, 2000)
    scorings = [signal + 0.5 * noise, signal + 0.48 * noise, signal + rng.normal(0, 1, 2000)]
    study = _paired_study(scorings, y)
    m = build_report(study).margin
    assert m is not None and m["paired"] and m["method"] == "DeLong"
    assert (m["best"], m["runner_up"], m["verdict"], m["within"]) == (1, 0, "clear", []), m
    assert m["lead"] < CLEAR_IN_ERRORS * m["sampling_error"]  # the unpaired bound would not have shown it
    values = [t.value for t in study.trials]
    unpaired = best_margin(_study(values), _study(values).trials)
    assert unpaired is not None and unpaired.verdict == "not shown" and not unpaired.paired
    assert "DeLong's paired test over those pairs gives the lead a standard error of" in render_markdown(
        build_report(study))

    tie = _paired_study([signal + 0.5 * noise, signal + 0.5 * rng.normal(0, 1, 2000)], y)
    m = build_report(tie).margin
    assert m is not None and m["paired"] and m["verdict"] == "not shown" and m["within"] == [m["runner_up"]]
    assert "**Not shown to be better**" in render_markdown(build_report(tie))


def test_pair_accuracy_is_tested_on_the_paired_outcomes() -> None:
    rng = np.random.default_rng(6)
    y = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    signal = rng.normal(np.where(y, 0.8, 0.2), 0.3)
    better = np.where(rng.random(2000) < 0.03, np.where(y, 0.9, 0.1), signal)  # 3 % of pairs mended, none broken
    m = build_report(_paired_study([signal, better], y, metric="val_pair_accuracy")).margin
    assert m is not None and m["paired"] and m["method"] == "paired outcomes"
    assert m["best"] == 1 and m["verdict"] == "clear" and m["lead"] == pytest.approx(
        float(((better > 0.5) == y).mean() - ((signal > 0.5) == y).mean()))


def test_the_paired_test_needs_the_same_pairs_in_every_trial_and_outcomes_that_reproduce_the_score() -> None:
    rng = np.random.default_rng(7)
    y = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    scorings = [rng.normal(y * 2.0, 1) for _ in range(3)]
    assert build_report(_paired_study(scorings, y)).margin["paired"]
    other_pairs = _paired_study(scorings, y, fingerprints=["f", "f", "g"])
    assert build_report(other_pairs).margin["paired"] is False  # back to the unpaired bound
    study = _paired_study(scorings, y)
    changed = optuna.create_study(direction="maximize")
    for key, value in study.user_attrs.items():
        changed.set_user_attr(key, value)
    for t in study.trials:  # a value the kept outcomes do not give: not what the trial was scored on
        changed.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                    value=t.value + (0.01 if t.number == 0 else 0.0),
                                                    user_attrs=t.user_attrs))
    assert build_report(changed).margin["paired"] is False


def test_the_status_line_of_a_paired_margin() -> None:
    from sweeps.margin import one_line

    line = one_line({"paired": True, "verdict": "not shown", "within": [3, 5], "runner_up": 3, "lead": 0.00041,
                         "difference_error": 0.0012, "val_pairs": 2000})
    assert line == ("lead over trial #3: 0.000410 (not shown to be better; 2 trial(s) within two errors; paired "
                    "error 0.0012 on the same 2,000 validation pairs)")


def test_the_eer_of_ranks_is_the_trainers_eer_and_resamples_are_weights() -> None:
    """`equal_error_rates` on kept ranks against `siamese_core.verification.equal_error_rate` on the scores, with
    many ties; a resample's counts against the same EER of the pairs repeated that many times."""
    from siamese_core.verification import equal_error_rate

    rng = np.random.default_rng(8)
    for decimals in (0, 1, 3):
        y = rng.random(700) < 0.4
        s = np.round(rng.normal(y * 1.5, 1), decimals)
        rank = decode_per_pair(encode_per_pair(s, y, y))[0]  # type: ignore[index]
        assert equal_error_rates([rank], y, np.ones((1, 700)))[0, 0] == pytest.approx(
            equal_error_rate(s, y, higher_is_same=True), abs=1e-12)
        weights = bootstrap_weights(y, draws=3, seed=decimals)
        assert (weights[:, y].sum(axis=1) == y.sum()).all() and (weights[:, ~y].sum(axis=1) == (~y).sum()).all()
        for row, eer in zip(weights, equal_error_rates([rank], y, weights)[:, 0], strict=True):
            pairs = np.repeat(np.arange(700), row)
            assert eer == pytest.approx(equal_error_rate(s[pairs], y[pairs], higher_is_same=True), abs=1e-12)


def test_the_paired_bootstrap_error_of_an_eer_difference_matches_monte_carlo() -> None:
    """As for DeLong above: two scorings sharing most of their signal, 150 fresh draws of 1,000 + 1,000 pairs.
    Measured: ratio 0.97 (and 1.01 for scorings that share less), the paired error 0.0067 against 0.0116 for the
    difference of two uncorrelated scores."""
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    diffs, errors = [], []
    for draw in range(150):
        shared = rng.normal(y * 2.0, 1)
        ranks = [np.unique(shared + rng.normal(0, 0.3, 2000), return_inverse=True)[1] for _ in range(2)]
        values = equal_error_rates(ranks, y, np.ones((1, 2000)))[0]
        drawn = equal_error_rates(ranks, y, bootstrap_weights(y, seed=draw))
        diffs.append(values[0] - values[1])
        errors.append(float((drawn[:, 0] - drawn[:, 1]).std(ddof=1)))
    ratio = float(np.mean(errors)) / float(np.std(diffs))
    assert 0.85 < ratio < 1.15, ratio
    one = sampling_error("val_eer", float(values[0]), 1000, 1000)
    assert one is not None and float(np.mean(errors)) < math.sqrt(2) * one


def test_eer_is_tested_paired_by_bootstrap_and_says_so() -> None:
    """Trial 1 mends the pairs trial 0 ranks worst: a lower EER on every resample (clear); a scoring with fresh
    noise of the same size is not told apart from trial 0."""
    rng = np.random.default_rng(9)
    y = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    signal = rng.normal(y * 2.0, 1)
    mended = np.where((np.abs(signal - 1.0) < 0.4) & (rng.random(2000) < 0.5), y * 3.0 - 0.5, signal)
    study = _paired_study([signal, mended, signal + rng.normal(0, 1.5, 2000)], y, metric="val_eer")
    m = build_report(study).margin
    assert m is not None and m["paired"] and m["method"] == "paired bootstrap", m
    assert (m["best"], m["runner_up"], m["verdict"], m["within"]) == (1, 0, "clear", []), m
    assert m["lead"] == pytest.approx(study.trials[0].value - study.trials[1].value)
    assert build_report(study).margin == m  # fixed resamples: the same study, the same verdict
    page = render_markdown(build_report(study))
    assert f"a paired bootstrap over those pairs ({BOOTSTRAP_DRAWS} resamples) gives the lead" in page

    tie = _paired_study([signal + 0.3 * rng.normal(0, 1, 2000), signal + 0.3 * rng.normal(0, 1, 2000)], y,
                        metric="val_eer")
    m = build_report(tie).margin
    assert m is not None and m["paired"] and m["verdict"] == "not shown" and m["within"] == [m["runner_up"]], m


def test_status_json_tests_the_margin_once(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """`status --json` carries the report too: it reuses status's margin instead of decoding every trial again."""
    import sweeps.margin
    from sweeps.cli import main
    from sweeps.storage import make_storage

    rng = np.random.default_rng(10)
    y = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    source = _paired_study([rng.normal(y * 2.0, 1) for _ in range(3)], y)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    stored = optuna.create_study(study_name="once", storage=make_storage(url), direction="maximize")
    for key, value in source.user_attrs.items():
        stored.set_user_attr(key, value)
    stored.add_trials(source.trials)
    calls = []
    paired = sweeps.margin._paired
    monkeypatch.setattr(sweeps.margin, "_paired", lambda *a: calls.append(a) or paired(*a))
    assert main(["status", "--study", "once", "--storage", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(calls) == 1 and out["margin"]["paired"] and out["report"]["margin"] == out["margin"]
