"""Every line the CLI prints through Rich goes through this module.

User strings (labels, paths, reasons, option values) are passed as plain text and never
parsed as Rich markup, so ``bad[red]x.mp4`` prints as it is and ``[/b]`` in a label cannot
crash a command; only the fixed styles below are markup. ``tests/test_user_mistakes.py``
checks that no other module in ``stages/`` creates a console or calls ``.print``.
"""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.text import Text

out = Console(highlight=False)
"""stdout: results (predict's table)."""
err = Console(stderr=True, soft_wrap=True, highlight=False)
"""stderr: diagnostics; soft_wrap keeps a long path + reason one greppable line in logs."""


def plain(text: object) -> Text:
    """``text`` as a Rich renderable that is never read as markup (for tables and titles)."""
    return Text(str(text))


def line(message: object, *, tag: str = "", style: str = "", to_stdout: bool = False) -> None:
    """Print ``[tag] message`` on stderr (stdout with ``to_stdout``): ``tag`` in ``style``."""
    text = Text.assemble((tag, style), " " if tag and str(message) else "", str(message))
    (out if to_stdout else err).print(text)


def error(message: object) -> None:
    """``error: message`` (bold red tag) on stderr."""
    line(message, tag="error:", style="bold red")


def warning(message: object) -> None:
    """``warning: message`` (bold yellow tag) on stderr."""
    line(message, tag="warning:", style="bold yellow")


def show(renderable: RenderableType, *, to_stdout: bool = False) -> None:
    """Print a table built from :func:`plain` cells."""
    (out if to_stdout else err).print(renderable)
