"""The PNG pictures: valid files whose pixels follow the data they were drawn from.

Pixels are read back from the saved file and sampled where the figure's own axes put each
cell or bar (``transData`` after the save, which fixed the layout), so the checks hold for
any font or label length.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from pipeline import plots
from pipeline.metrics import ClassScores
from pipeline.outputs import PNG_SIGNATURE

LABELS = ["clap", "jump", "wave"]


def _saved(figure, path: Path) -> np.ndarray:
    plots.save_png(figure, path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    return mpimg.imread(path)[..., :3]  # float RGB in [0, 1], row 0 at the top


def _pixel(figure, ax, x: float, y: float) -> tuple[int, int]:
    """(row, column) in the saved image of data point (x, y) of ``ax``."""
    px, py = ax.transData.transform((x, y))
    return round(figure.bbox.height - py), round(px)


def _cell_darkness(figure, pixels: np.ndarray, n: int) -> np.ndarray:
    """1 - median brightness of each confusion cell's inner square (the count text is
    small, so the median is the cell's colour)."""
    ax = figure.axes[0]
    darkness = np.zeros((n, n))
    for row in range(n):
        for col in range(n):
            top, left = _pixel(figure, ax, col - 0.35, row - 0.35)
            bottom, right = _pixel(figure, ax, col + 0.35, row + 0.35)
            patch = pixels[top:bottom, left:right]
            assert patch.size, "cell outside the image"
            darkness[row, col] = 1 - np.median(patch.mean(axis=-1))
    return darkness


def test_a_perfect_classifier_is_darkest_on_the_diagonal(tmp_path):
    matrix = np.diag([3, 4, 5])
    figure = plots.confusion_figure(matrix, LABELS)
    darkness = _cell_darkness(figure, _saved(figure, tmp_path / "c.png"), 3)
    off = darkness[~np.eye(3, dtype=bool)]
    assert darkness.diagonal().min() > off.max() + 0.5
    # row-normalised: 3, 4 and 5 videos all fill their row, so the diagonal is one colour
    assert np.ptp(darkness.diagonal()) < 0.02


def test_a_swapped_pair_is_darkest_off_the_diagonal(tmp_path):
    matrix = np.array([[0, 4, 0], [4, 0, 0], [0, 0, 4]])  # clap and jump always swapped
    figure = plots.confusion_figure(matrix, LABELS)
    darkness = _cell_darkness(figure, _saved(figure, tmp_path / "c.png"), 3)
    dark = matrix > 0
    assert darkness[dark].min() > darkness[~dark].max() + 0.5
    assert darkness[0, 1] > darkness[0, 0] and darkness[1, 0] > darkness[1, 1]


def test_confusion_rows_are_normalised_and_name_the_classes(tmp_path):
    matrix = np.array([[6, 2, 0], [0, 1, 0], [0, 0, 0]])  # wave: no videos
    figure = plots.confusion_figure(matrix, LABELS)
    darkness = _cell_darkness(figure, _saved(figure, tmp_path / "c.png"), 3)
    # jump's single video outweighs clap's six: shares, not counts, set the colour
    assert darkness[1, 1] > darkness[0, 0] > darkness[0, 1] > darkness[0, 2]
    assert darkness[2].max() < 0.1  # a class with no videos stays blank
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == LABELS
    assert [t.get_text() for t in ax.get_yticklabels()] == LABELS
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(c) for c in matrix.ravel())


def test_counts_are_left_out_when_cells_are_too_many():
    n = plots.MAX_COUNTED_CLASSES + 1
    figure = plots.confusion_figure(np.eye(n, dtype=int), [f"c{i}" for i in range(n)])
    assert not figure.axes[0].texts


def _bar_length(figure, pixels: np.ndarray, index: int) -> int:
    """Pixels of bar colour along the middle row of bar ``index``."""
    ax = figure.axes[0]
    row, _ = _pixel(figure, ax, 0, index)
    colour = np.array([0x1F, 0x77, 0xB4]) / 255  # tab:blue
    return int((np.abs(pixels[row] - colour).max(axis=-1) < 0.05).sum())


def test_f1_bars_are_as_long_as_the_scores(tmp_path):
    scores = [
        ClassScores(label, 0.0, 0.0, f1, 4)
        for label, f1 in zip(LABELS, (0.9, 0.0, 0.45), strict=True)
    ]
    figure = plots.f1_figure(scores)
    pixels = _saved(figure, tmp_path / "f1.png")
    lengths = [_bar_length(figure, pixels, i) for i in range(3)]
    assert lengths[1] == 0 and lengths[0] > 0
    assert lengths[2] / lengths[0] == pytest.approx(0.5, abs=0.03)
    names = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert names == [f"{label} (n=4)" for label in LABELS]


def _history(losses: list[float]) -> list[dict[str, float]]:
    return [
        {"loss": x, "accuracy": 1 - x, "val_loss": x + 0.1, "val_accuracy": 0.9 - x} for x in losses
    ]


def test_curves_image_changes_with_the_history_and_the_kept_epoch(tmp_path):
    def draw(history, kept, name):
        return (_saved(plots.curves_figure(history, kept), tmp_path / name) * 255).astype(int)

    base = draw(_history([0.9, 0.5, 0.3, 0.4]), 3, "a.png")
    assert np.array_equal(base, draw(_history([0.9, 0.5, 0.3, 0.4]), 3, "again.png"))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "again.png").read_bytes()
    assert not np.array_equal(base, draw(_history([0.9, 0.7, 0.6, 0.2]), 3, "b.png"))
    assert not np.array_equal(base, draw(_history([0.9, 0.5, 0.3, 0.4]), 4, "c.png"))


def test_curves_without_a_val_split_draw_the_train_lines_only():
    history = [{"loss": 0.8, "accuracy": 0.4}, {"loss": 0.6, "accuracy": 0.5}]
    figure = plots.curves_figure(history, 2)
    for ax in figure.axes:
        names = [line.get_label() for line in ax.get_lines()]
        assert names == ["train", "kept epoch 2"]


KERAS_WITHOUT_MATPLOTLIB = """
import sys
import pipeline, keras
loaded_with_keras = sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib")
import keras.src.visualization.plot_image_gallery as gallery
from matplotlib.figure import Figure  # user code still gets the real matplotlib
print(repr((loaded_with_keras, gallery.plt, Figure.__module__)))
"""


def test_keras_loads_without_matplotlib_which_the_plots_still_import():
    # Keras 3 imports matplotlib.pyplot when installed (~0.3-0.8 CPU s per TensorFlow
    # process): pipeline.keras_imports hides it from Keras's plotting helpers only.
    run = subprocess.run(
        [sys.executable, "-c", KERAS_WITHOUT_MATPLOTLIB], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    loaded_with_keras, gallery_plt, figure_module = ast.literal_eval(run.stdout.splitlines()[-1])
    assert loaded_with_keras == []
    assert gallery_plt is None  # Keras took its own no-matplotlib branch
    assert figure_module == "matplotlib.figure"
