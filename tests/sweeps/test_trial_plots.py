"""A trial's three plots: figures kept by the process draw what new figures draw, pixel for pixel."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest

from sweeps import artifacts
from sweeps.artifacts import PlotInputs

PLOTS = ("curves.png", "distance_histogram.png", "embeddings_pca.png")


def inputs(seed: int, *, epochs: int = 4, classes: int = 10, threshold: float | None = 0.5,
           scale: float = 1.0) -> PlotInputs:
    rng = np.random.default_rng(seed)
    history = [{"epoch": e, "loss": scale / (e + 1), "val_loss": 1.2 * scale / (e + 1),
                "val_pair_accuracy": 0.6 + 0.05 * e, "val_roc_auc": 0.7 + 0.05 * e} for e in range(epochs)]
    labels = rng.integers(0, 2, 3000)
    embedding_labels = rng.integers(0, classes, 500)
    return PlotInputs(history=history, arrays={
        "distances": rng.gamma(2.0 + labels, 0.3 * scale), "labels": labels,
        "embeddings": (rng.normal(size=(classes, 16))[embedding_labels] * scale
                       + rng.normal(size=(500, 16))).astype("float32"),
        "embedding_labels": embedding_labels}, threshold=threshold, higher_is_same=False)


def draw(plot: PlotInputs, directory: Path) -> list[str]:
    directory.mkdir()
    return [p.name for p in artifacts.draw_trial_plots(plot, directory)]


def pixels(directory: Path) -> dict[str, np.ndarray]:
    return {name: matplotlib.image.imread(directory / name) for name in PLOTS}


def drawn_new(plot: PlotInputs, directory: Path) -> dict[str, np.ndarray]:
    artifacts._Kept.kept.clear()  # private: the only way to ask for new figures, which is the reference here
    assert draw(plot, directory) == list(PLOTS)
    return pixels(directory)


@pytest.mark.parametrize("first, second", [
    (inputs(0), inputs(1, scale=7.0)),                                   # other ranges: other tick labels
    (inputs(2, epochs=2, classes=3), inputs(3, epochs=5, threshold=None)),  # other classes, no threshold line
    (inputs(4, threshold=None, scale=0.01), inputs(5, classes=2)),
], ids=["other_ranges", "more_epochs_and_classes", "fewer_classes"])
def test_kept_figures_draw_the_pixels_new_figures_draw(tmp_path: Path, first: PlotInputs,
                                                       second: PlotInputs) -> None:
    artifacts._Kept.kept.clear()
    draw(first, tmp_path / "first")
    draw(second, tmp_path / "second")  # on the figures the first trial drew
    kept = pixels(tmp_path / "second")
    new = drawn_new(second, tmp_path / "new")
    for name in PLOTS:
        assert kept[name].shape == new[name].shape, name
        assert np.array_equal(kept[name], new[name]), f"{name}: {np.mean(kept[name] != new[name]):.4%} differ"
    assert not np.array_equal(pixels(tmp_path / "first")["embeddings_pca.png"], kept["embeddings_pca.png"])


def test_a_second_trial_draws_on_the_first_ones_figures(tmp_path: Path, monkeypatch: Any) -> None:
    """A new figure made its ticks, texts and colorbar anew for every trial (BENCHMARKS.md §2)."""
    made: list[object] = []
    init = matplotlib.figure.Figure.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        init(self, *args, **kwargs)

    draw(inputs(0), tmp_path / "a")
    monkeypatch.setattr(matplotlib.figure.Figure, "__init__", counting)
    assert draw(inputs(1), tmp_path / "b") == list(PLOTS)
    assert made == []
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # none of them is one of the user's open pyplot figures


class Unprintable(float):
    def __format__(self, spec: str) -> str:
        raise ValueError("cannot format this threshold")


def test_a_draw_that_fails_leaves_no_half_drawn_figure(tmp_path: Path, caplog: Any) -> None:
    artifacts._Kept.kept.clear()
    draw(inputs(0), tmp_path / "a")
    broken = inputs(1)
    # fails after both histograms are on the axes, at the threshold line's label
    broken = PlotInputs(broken.history, broken.arrays, Unprintable(0.5), False)
    assert draw(broken, tmp_path / "b") == ["curves.png", "embeddings_pca.png"]
    assert "could not write distance histogram: ValueError: cannot format this threshold" in caplog.text
    after = inputs(2)
    draw(after, tmp_path / "c")
    kept = pixels(tmp_path / "c")
    new = drawn_new(after, tmp_path / "new")
    assert all(np.array_equal(kept[name], new[name]) for name in PLOTS)
