"""The ``vrnn`` Typer app: composes one command per stage and owns the error boundary.

A :class:`~pipeline.errors.PipelineError` becomes one red line on stderr and exit status 1;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from pipeline import __version__
from pipeline.errors import PipelineError
from stages import evaluate, export, extract, index, predict, sample_data, train
from stages.quiet_tf import quiet_tensorflow

app = typer.Typer(
    name="vrnn",
    help="Video classification: cache frozen MobileNetV2 features, train light RNN heads.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as e:
            err_console.print(
                f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True
            )
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
    """Video classification: cache frozen MobileNetV2 features, train light RNN heads."""
    quiet_tensorflow(verbose)  # before any command imports TensorFlow
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
