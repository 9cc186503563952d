"""One ranking of the parameters per sweep: the report and both importance plots use `sweeps.importances`.

Optuna 5's plots default to PED-ANOVA, the report used fANOVA; on the study below they disagreed on the most
important parameter (PED-ANOVA: ``b``, fANOVA: ``a``)."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sweeps import artifacts, importances, study_plots
from sweeps.report import build_report


def _study(seed: int = 0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(lambda t: t.suggest_float("a", 0, 1) ** 2 + t.suggest_float("b", 1e-3, 1, log=True)
                   + t.suggest_int("c", 1, 3) * 0.1, n_trials=12)
    return study


def test_the_report_and_both_importance_plots_show_the_same_numbers(tmp_path: Path) -> None:
    study = _study()
    shown = importances.parameter_importances(study)
    assert max(shown, key=shown.get) == "a"
    assert build_report(study).importances == pytest.approx(shown)

    html = study_plots._figures(study)["param_importances"]()  # the figure write_study_html writes
    bars = html.data[0]
    assert dict(zip(bars.y, bars.x, strict=True)) == pytest.approx(shown, abs=1e-9)

    from optuna.visualization import matplotlib as ovm

    drawn = []  # what the PNG that the project's own function draws shows
    original = ovm.plot_param_importances

    def keep(*args, **kwargs):
        ax = original(*args, **kwargs)
        drawn.append({t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches, strict=True)})
        return ax

    mp = pytest.MonkeyPatch()
    mp.setattr(ovm, "plot_param_importances", keep)
    try:
        assert (tmp_path / "param_importances.png") in artifacts.write_study_plots(study, tmp_path)
    finally:
        mp.undo()
    assert drawn and drawn[0] == pytest.approx(shown, abs=1e-9)


def test_the_forest_is_fitted_once_for_the_report_and_the_plots(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    study = _study(seed=1)  # trials no other test computed
    fits = []
    fit = optuna.importance.FanovaImportanceEvaluator.evaluate
    monkeypatch.setattr(optuna.importance.FanovaImportanceEvaluator, "evaluate",
                        lambda self, *a, **k: (fits.append(1), fit(self, *a, **k))[1])
    artifacts.write_study_plots(study, tmp_path)
    study_plots.write_study_html(study, tmp_path / "html")
    build_report(study)
    assert len(fits) == 1
    trial = study.ask()
    study.tell(trial, trial.suggest_float("a", 0, 1) + trial.suggest_float("b", 1e-3, 1, log=True)
               + trial.suggest_int("c", 1, 3))
    build_report(study)  # another trial: computed again
    assert len(fits) == 2


@pytest.mark.parametrize("shape", ["one objective", "few trials", "two objectives"])
def test_the_pngs_and_the_html_show_the_same_plots(tmp_path: Path, shape: str) -> None:
    if shape == "two objectives":
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(0))
        study.optimize(lambda t: (t.suggest_float("a", 0, 1), t.suggest_float("b", 0, 1)), n_trials=6)
    else:
        study = _study()
        if shape == "few trials":
            study = optuna.create_study()
            study.add_trials(_study().trials[:1])  # fewer than importances.MIN_COMPLETE: no importances
    pngs = {p.stem for p in artifacts.write_study_plots(study, tmp_path)}
    html = {p.stem for p in study_plots.write_study_html(study, tmp_path / "html")}
    assert pngs == html
    assert ("param_importances" in pngs) == (shape != "few trials")
    assert ("pareto_front" in pngs) == (shape == "two objectives") != ("intermediate_values" in pngs)


def test_the_report_says_a_ranking_from_few_trials_is_a_rough_guide() -> None:
    few = optuna.create_study()
    few.add_trials(_study().trials[:importances.FEW_FOR_A_RANKING - 1])
    report = build_report(few)
    assert report.importances
    assert any("rough guide" in note and f"{importances.FEW_FOR_A_RANKING - 1} complete" in note
               for note in report.notes)
    assert not any("rough guide" in note for note in build_report(_study()).notes)  # 12 trials
