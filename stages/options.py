"""One rule for every numeric option: a finite number within bounds, checked while parsing.

A value outside the bounds (``--fps inf``, ``--batch-size 0``, ``--seed -1``, ``--units 10**9``)
is a usage error: one ``error: Invalid value for '--OPTION': …`` line and exit status 1,
before any file is read. The upper bounds are far above any sensible setting; they exist so
that a typo gives a message instead of a hang or an out-of-memory crash.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import typer

MAX_BATCH = 4096
"""Frames (extract, predict) or sequences (train) per batch."""
MAX_SEQ_LEN = 1024
MAX_UNITS = 4096
MAX_LAYERS = 16
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1
MAX_FPS = 1000.0
MAX_SECONDS = 86_400.0
MAX_COUNT = 1_000_000
"""Workers, threads, videos per task, clips per class, top-k."""


def bounded(
    low: float, high: float, *, low_open: bool = False
) -> Callable[[float | None], float | None]:
    """An option callback accepting finite numbers in ``[low, high]`` (``(low, high]``)."""
    interval = f"{'(' if low_open else '['}{low}, {high}]"

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        inside = low < value if low_open else low <= value
        if not (math.isfinite(value) and inside and value <= high):
            raise typer.BadParameter(f"must be a finite number in {interval}, got {value}")
        return value

    return check
