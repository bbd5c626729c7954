"""Pictures of a run that open offline: training curves, confusion matrix, per-class F1.

Each builder returns a matplotlib ``Figure`` and :func:`save_png` renders it with the Agg
rasteriser, so nothing needs a display, a browser or the network, and no pyplot state is
shared between calls. This is the only project module that imports matplotlib, on first
use, so only the commands that draw load it (Keras's own optional import of matplotlib is
hidden by :mod:`pipeline.keras_imports`; the cost is measured in docs/plots.md).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import fsio

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pipeline.metrics import ClassScores

DPI = 100
COLORMAP = "Blues"  # light to dark: the darkest cell is where most of a class's videos go
MAX_COUNTED_CLASSES = 25
"""Up to this many classes each confusion cell also shows its video count."""
MAX_NAMED_CLASSES = 120
"""Up to this many classes the axes name every class; beyond, names would overlap."""
CELL_INCHES = 0.4
MAX_INCHES = 40.0


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(
        figsize=(min(width, MAX_INCHES), min(height, MAX_INCHES)), dpi=DPI, layout="constrained"
    )


def save_png(figure: Figure, path: Path) -> None:
    """Render ``figure`` to a PNG file at ``path`` (Agg, :data:`DPI` dots per inch), written
    atomically: a run cut short leaves the previous picture, never half of one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    png = io.BytesIO()
    FigureCanvasAgg(figure).print_png(png)
    fsio.atomic_bytes(Path(path), png.getvalue())


def curves_figure(history: Sequence[dict[str, float]], kept_epoch: int) -> Figure:
    """Loss and accuracy per epoch, train and val, with a line at the epoch whose weights
    were kept. ``history`` holds one dict per epoch (``loss``, ``accuracy`` and, with a
    validation split, ``val_loss``, ``val_accuracy``)."""
    figure = _figure(9, 3.6)
    epochs = np.arange(1, len(history) + 1)
    for ax, metric in zip(figure.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for key, name in ((metric, "train"), (f"val_{metric}", "val")):
            values = [h.get(key, np.nan) for h in history]
            if not np.all(np.isnan(np.asarray(values, dtype=float))):
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
        ax.axvline(kept_epoch, color="grey", linestyle="--", label=f"kept epoch {kept_epoch}")
        ax.set(xlabel="epoch", title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return figure


def confusion_figure(matrix: np.ndarray, labels: Sequence[str]) -> Figure:
    """The ``[C, C]`` confusion matrix (rows actual, columns predicted), each row divided by
    its class's video count, so a cell reads as the share of that class predicted there.
    Cells also show their count up to :data:`MAX_COUNTED_CLASSES` classes."""
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    n = len(labels)
    side = 3 + CELL_INCHES * n
    figure = _figure(side + 1.5, side)
    ax = figure.subplots()
    image = ax.imshow(shares, cmap=COLORMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=ax, label="share of the actual class", shrink=0.8)
    ax.set(xlabel="predicted", ylabel="actual", title="confusion (rows sum to 1)")
    if n <= MAX_NAMED_CLASSES:
        ax.set_xticks(range(n), labels, rotation=90)
        ax.set_yticks(range(n), labels)
    if n <= MAX_COUNTED_CLASSES:
        for (row, col), count in np.ndenumerate(matrix):
            colour = "white" if shares[row, col] > 0.5 else "black"
            ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    return figure


def f1_figure(scores: Sequence[ClassScores]) -> Figure:
    """One horizontal bar per class: its F1 on the evaluated split, the support beside it."""
    figure = _figure(7, 1.5 + 0.25 * len(scores))
    ax = figure.subplots()
    positions = np.arange(len(scores))
    ax.barh(positions, [s.f1 for s in scores], color="tab:blue")
    if len(scores) <= MAX_NAMED_CLASSES:
        ax.set_yticks(positions, [f"{s.label} (n={s.support})" for s in scores])
    ax.invert_yaxis()  # first class on top, as in per_class.csv
    ax.set(xlim=(0, 1), xlabel="F1", title="per-class F1")
    ax.grid(axis="x", alpha=0.3)
    return figure
