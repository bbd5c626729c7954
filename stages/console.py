"""Every line the CLI prints through Rich goes through this module.

User strings (labels, paths, reasons, option values) are passed as plain text and never
parsed as Rich markup, so ``bad[red]x.mp4`` prints as it is and ``[/b]`` in a label cannot
crash a command; only the fixed styles below are markup. ``tests/test_user_mistakes.py``
checks that no other module in ``stages/`` creates a console or calls ``.print``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console, RenderableType
from rich.text import Text

out = Console(highlight=False)
"""stdout: results (predict's table)."""
err = Console(stderr=True, soft_wrap=True, highlight=False)
"""stderr: diagnostics; soft_wrap keeps a long path + reason one greppable line in logs."""


OFF_TERMINAL_HELP_WIDTH = 120
"""``--help``'s width when stdout is not a terminal (a log, a pipe, a file): Rich's default
80 columns cut option names short (``--mixed-precis…``); every option fits in 120."""
OFF_TERMINAL_TABLE_WIDTH = 10_000
"""A table's width limit when its stream is not a terminal: each table keeps its natural
width, so no class name is cut (``b…``) and no path is wrapped in a log."""


def _chosen_width() -> bool:
    """Whether the user set the width (``COLUMNS``, or Typer's ``TERMINAL_WIDTH``)."""
    return bool(os.environ.get("COLUMNS") or os.environ.get("TERMINAL_WIDTH"))


def help_width() -> int | None:
    """The width for Typer's help: None (Rich measures the terminal, or the user's choice)
    on a terminal or with a width set; :data:`OFF_TERMINAL_HELP_WIDTH` otherwise."""
    if _chosen_width() or sys.stdout.isatty():
        return None
    return OFF_TERMINAL_HELP_WIDTH


def _sized(console: Console) -> Console:
    """``console``, measuring its terminal, or :data:`OFF_TERMINAL_TABLE_WIDTH` wide when its
    stream is not one (decided per print: tests and redirections swap the streams)."""
    if not _chosen_width():
        console.width = None  # type: ignore[assignment]  # Rich: None = measure again
        if not console.is_terminal:
            console.width = OFF_TERMINAL_TABLE_WIDTH
    return console


def plain(text: object) -> Text:
    """``text`` as a Rich renderable that is never read as markup (for tables and titles)."""
    return Text(str(text))


def first_few(names: Sequence[object], limit: int = 3) -> str:
    """``a, b, c and 4 more``: the first ``limit`` of ``names``, then a count of the rest."""
    shown = ", ".join(str(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def passed_over(files: Sequence[Path]) -> str:
    """``; passed over N files that are not videos by extension (first: …)``, or ``""``."""
    if not files:
        return ""
    named = first_few([f.name for f in files])
    return f"; passed over {len(files)} files that are not videos by extension ({named})"


def line(message: object, *, tag: str = "", style: str = "", to_stdout: bool = False) -> None:
    """Print ``[tag] message`` on stderr (stdout with ``to_stdout``): ``tag`` in ``style``."""
    text = Text.assemble((tag, style), " " if tag and str(message) else "", str(message))
    _sized(out if to_stdout else err).print(text)


def error(message: object) -> None:
    """``error: message`` (bold red tag) on stderr."""
    line(message, tag="error:", style="bold red")


def warning(message: object) -> None:
    """``warning: message`` (bold yellow tag) on stderr."""
    line(message, tag="warning:", style="bold yellow")


def show(renderable: RenderableType, *, to_stdout: bool = False) -> None:
    """Print a table built from :func:`plain` cells (at its natural width off a terminal)."""
    _sized(out if to_stdout else err).print(renderable)
