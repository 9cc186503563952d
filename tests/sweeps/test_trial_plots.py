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


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def inputs(seed: int, *, epochs: int = 4, classes: int = 10, threshold: float | None = 0.5,
           scale: float = 1.0, first_class: int = 0, names: list[str] | None = None) -> PlotInputs:
    rng = np.random.default_rng(seed)
    history = [{"epoch": e, "loss": scale / (e + 1), "val_loss": 1.2 * scale / (e + 1),
                "val_pair_accuracy": 0.6 + 0.05 * e, "val_roc_auc": 0.7 + 0.05 * e} for e in range(epochs)]
    labels = rng.integers(0, 2, 3000)
    embedding_labels = rng.integers(first_class, first_class + classes, 500)
    return PlotInputs(history=history, arrays={
        "distances": rng.gamma(2.0 + labels, 0.3 * scale), "labels": labels,
        "embeddings": (rng.normal(size=(first_class + classes, 16))[embedding_labels] * scale
                       + rng.normal(size=(500, 16))).astype("float32"),
        "embedding_labels": embedding_labels}, threshold=threshold, higher_is_same=False, class_names=names)


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
    (inputs(6, names=FASHION), inputs(7, classes=3, first_class=7, names=FASHION)),  # named, then a class split
    (inputs(8, classes=3, first_class=7, names=FASHION), inputs(9, classes=40)),      # named, then too many
    (inputs(10, classes=40), inputs(11, classes=12)),                                 # too many, then tab20
], ids=["other_ranges", "more_epochs_and_classes", "fewer_classes", "class_split_named", "named_then_many",
        "many_then_twelve"])
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


def colorbar_of_a_draw(plot: PlotInputs, tmp_path: Path) -> tuple[list[str], np.ndarray]:
    """The embedding plot's colorbar tick labels and the distinct colours of its points."""
    artifacts._Kept.kept.clear()
    draw(plot, tmp_path)
    kept = artifacts._Kept.kept["embeddings"]
    points = kept.axes[0].collections[0].get_facecolors()[:, :3]
    return [t.get_text() for t in kept.colorbar.ax.get_yticklabels()], np.unique(points, axis=0)


def test_a_class_split_gets_one_colour_and_one_named_tick_per_class(tmp_path: Path) -> None:
    """Tested on classes 7-9 only, a map over all ten coloured them 0, 5 and 9 of tab10 and ticked the bar
    at 7.00, 7.25, ... 9.00."""
    import matplotlib

    ticks, colours = colorbar_of_a_draw(inputs(0, classes=3, first_class=7, names=FASHION), tmp_path / "named")
    assert ticks == ["Sneaker", "Bag", "Ankle boot"]
    tab10 = np.array(matplotlib.colormaps["tab10"].colors)
    assert np.allclose(np.sort(colours, axis=0), np.sort(tab10[:3], axis=0))
    # no names (or digits' "0".."9"): the class values
    assert colorbar_of_a_draw(inputs(1, classes=3, first_class=7), tmp_path / "plain")[0] == ["7", "8", "9"]
    digits = [str(i) for i in range(10)]
    assert colorbar_of_a_draw(inputs(2, classes=3, first_class=7, names=digits), tmp_path / "digits")[0] == \
        ["7", "8", "9"]
    # 12 classes: tab20, still one colour each; 40: a continuous map with whole-number ticks
    ticks, colours = colorbar_of_a_draw(inputs(3, classes=12), tmp_path / "twelve")
    assert ticks == [str(i) for i in range(12)] and len(colours) == 12
    ticks, _ = colorbar_of_a_draw(inputs(4, classes=40), tmp_path / "many")
    assert 3 <= len(ticks) <= 12 and all(t.lstrip("\N{MINUS SIGN}").isdigit() for t in ticks if t)


def test_plot_inputs_keep_the_class_names_through_the_recording_helpers_files(tmp_path: Path) -> None:
    saved = inputs(0, names=FASHION)
    saved.save(tmp_path / "in")
    loaded = PlotInputs.load(tmp_path / "in")
    assert loaded.class_names == FASHION and loaded.history == saved.history
    assert all(np.array_equal(loaded.arrays[k], saved.arrays[k]) for k in saved.arrays)
