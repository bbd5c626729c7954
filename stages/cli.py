"""The ``vrnn`` Typer app: composes one command per stage and owns the error boundary.

Exit-status contract, the same for every command: 0 success; 1 any error a user can fix, a
usage error (unknown option, bad value: see :mod:`stages.options`) as much as a
:class:`~pipeline.errors.PipelineError` (missing file, refused output), always one
``error: …`` line on stderr and never a traceback; 130 interrupted (Ctrl-C). Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from typer import rich_utils
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # Typer's vendored Click
from typer.core import TyperGroup

from pipeline import __version__
from pipeline.errors import PipelineError
from stages import console, evaluate, export, extract, index, predict, sample_data, store, train
from stages.tf_import import prepare_tensorflow_import

_TYPER_HELP_WIDTH = rich_utils.MAX_WIDTH
"""Typer's own help width (``TERMINAL_WIDTH``), None when unset."""


class _OneLineUsageErrors(TyperGroup):
    """Usage errors as one ``error: …`` line and exit 1, like every other error."""

    def main(self, args: Sequence[str] | None = None, *a: Any, **kw: Any) -> Any:
        """Run the app; ``standalone_mode`` is handled here, not by Click's panels."""
        kw.pop("standalone_mode", None)
        rich_utils.MAX_WIDTH = _TYPER_HELP_WIDTH or console.help_width()  # uncut in a log
        try:
            code = super().main(args, *a, standalone_mode=False, **kw)
        except NoArgsIsHelpError as e:
            e.show()  # the help text, as Click prints it
            sys.exit(e.exit_code)
        except ClickException as e:
            context = getattr(e, "ctx", None)
            where = f" (see {context.command_path} --help)" if context is not None else ""
            console.error(f"{e.format_message()}{where}")
            sys.exit(1)
        except typer.Abort:
            console.error("interrupted")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="vrnn",
    help="Video classification: cache frozen MobileNetV2 features, train light heads "
    "(linear by default, LSTM/GRU).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


OUT_OF_MEMORY_REMEDY = "lower --batch-size (or --seq-len, --units, --input-size) and rerun"


def _out_of_memory(error: Exception) -> bool:
    """A host ``MemoryError`` or TensorFlow's ``ResourceExhaustedError`` (checked lazily)."""
    tf = sys.modules.get("tensorflow")
    exhausted = getattr(getattr(tf, "errors", None), "ResourceExhaustedError", ())
    return isinstance(error, MemoryError) or (bool(exhausted) and isinstance(error, exhausted))


def _one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as e:
            console.error(e)
            raise typer.Exit(1) from None
        except Exception as e:
            if not _out_of_memory(e):
                raise
            console.error(f"out of memory ({type(e).__name__}); {OUT_OF_MEMORY_REMEDY}")
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vrnn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Video classification: cache frozen MobileNetV2 features, train light heads."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as its bytes
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="surrogateescape")
    prepare_tensorflow_import(verbose)  # before any command imports TensorFlow
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _name, _command in [
    ("sample-data", sample_data.command),
    ("index", index.command),
    ("extract", extract.command),
    ("train", train.command),
    ("evaluate", evaluate.command),
    ("predict", predict.command),
    ("export", export.command),
]:
    app.command(_name)(_one_line_errors(_command))

for _info in [*store.app.registered_commands, *store.cache_app.registered_commands]:
    _info.callback = _one_line_errors(_info.callback)  # `vrnn store …` shares the boundary
app.add_typer(store.app, name="store")
