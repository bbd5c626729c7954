"""Render ``docs/cli.md``, the CLI reference, from the ``vrnn`` Typer app itself.

Every command, its usage line, its arguments and options with their help and defaults come
from the Click command that Typer builds (``typer.main.get_command``), so the page cannot
drift from ``vrnn --help``:

    python tools/cli_reference.py            # exit 1 when docs/cli.md is stale
    python tools/cli_reference.py --write    # regenerate docs/cli.md

``tests/test_docs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import typer
from typer import _click as click  # the Click that Typer builds its commands with
from typer.core import TyperGroup

from stages.cli import app

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "cli.md"

HEADER = """\
# CLI reference

Generated from the `vrnn` Typer app by `python tools/cli_reference.py --write` (do not edit by
hand: `tests/test_docs.py` fails when this page and the app differ). Every command also has
`--help`; what the commands share (exit status, refused outputs, progress) is in
[Using the CLI](usage.md).
"""


def _cell(text: str, *, code: bool = False) -> str:
    """One Markdown table cell: one line, HTML-escaped, ``|`` as an entity (also in code)."""
    text = " ".join(text.split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("|", "&#124;")
    return f"<code>{text}</code>" if code else text


def _command_section(command: click.Command, ctx: click.Context) -> list[str]:
    """The Markdown of one command: heading, help, usage, then its parameters as a table."""
    lines = [f"## `{ctx.command_path}`", ""]
    if command.help:
        lines += [inspect.cleandoc(command.help), ""]
    if isinstance(command, TyperGroup):
        lines += [f"Subcommands: {', '.join(f'`{n}`' for n in command.list_commands(ctx))}.", ""]
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines += ["```text", f"{ctx.command_path} {usage}".rstrip(), "```", ""]
    rows = [record for p in command.params if (record := p.get_help_record(ctx))]
    if rows:
        lines += ["| argument or option | meaning |", "|---|---|"]
        lines += [f"| {_cell(name, code=True)} | {_cell(help_text)} |" for name, help_text in rows]
        lines.append("")
    return lines


def _walk(command: click.Command, ctx: click.Context) -> list[str]:
    """``command``'s section, then each subcommand's, in the order ``--help`` lists them."""
    lines = _command_section(command, ctx)
    if isinstance(command, TyperGroup):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                lines += _walk(sub, click.Context(sub, info_name=name, parent=ctx))
    return lines


def render() -> str:
    """The whole reference page."""
    root = typer.main.get_command(app)
    body = _walk(root, click.Context(root, info_name="vrnn"))
    return HEADER + "\n" + "\n".join(body).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Check (default) or rewrite ``docs/cli.md``; 1 when it is stale and not rewritten."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite docs/cli.md")
    args = parser.parse_args(argv)
    page = render()
    if args.write:
        PAGE.write_text(page)
        return 0
    if not PAGE.is_file() or PAGE.read_text() != page:
        print(f"{PAGE.relative_to(REPO)} is stale: run python tools/cli_reference.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
