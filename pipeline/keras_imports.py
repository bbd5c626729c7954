"""Keras loads without matplotlib: its optional image-gallery helpers do not cost every run.

Keras 3 imports ``matplotlib.pyplot`` at ``import keras`` whenever matplotlib is installed
(``keras.src.visualization``: ``try: import matplotlib.pyplot … except ImportError``), about
0.3–0.8 CPU s per TensorFlow process, drawing or not (docs/plots.md). This project draws only
in ``pipeline.plots``, so a finder on ``sys.meta_path`` answers "not installed" to matplotlib
imports made *from those Keras modules* and to no one else: Keras takes its own no-matplotlib
branch (``keras.visualization.plot_*`` then say matplotlib is missing), while
``pipeline.plots`` and any user code import the real matplotlib as usual. If a Keras release
moves those imports, the finder simply stops matching and nothing but the cost returns
(``tests/test_plots.py`` checks the cost stays away).
"""

from __future__ import annotations

import importlib.abc
import sys
from types import FrameType

KERAS_OPTIONAL_PLOTTING = "keras.src.visualization."
"""Module prefix of the Keras code whose ``import matplotlib`` is optional and unused here."""


class HideMatplotlibFromKeras(importlib.abc.MetaPathFinder):
    """Refuse a not-yet-imported ``matplotlib`` module to an import made by Keras's plotting
    helpers; defer (return None) for every other import."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        """Raise ``ModuleNotFoundError`` when Keras's plotting helpers ask for matplotlib."""
        if fullname.partition(".")[0] == "matplotlib" and _imported_by_keras_plotting():
            raise ModuleNotFoundError(f"{fullname} is hidden from Keras", name=fullname)
        return None


def _imported_by_keras_plotting() -> bool:
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(KERAS_OPTIONAL_PLOTTING):
            return True
        frame = frame.f_back
    return False


def install() -> None:
    """Put :class:`HideMatplotlibFromKeras` first on ``sys.meta_path`` (once per process)."""
    if not any(isinstance(finder, HideMatplotlibFromKeras) for finder in sys.meta_path):
        sys.meta_path.insert(0, HideMatplotlibFromKeras())
