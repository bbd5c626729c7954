"""``vrnn sample-data``: write the bundled synthetic dataset (real encoded video files)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.sample_data import CATALOGUE, generate

console = Console(stderr=True)


def command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write <label>/<video> files into.")],
    classes: Annotated[
        int, typer.Option(help=f"Number of classes (1-{len(CATALOGUE)}), in catalogue order.")
    ] = 6,
    per_class: Annotated[int, typer.Option(help="Clips per class (groups of 3).")] = 12,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same files.")] = 0,
) -> None:
    """Write a labelled synthetic dataset: order-only class pairs plus appearance classes."""
    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]sample-data"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("sample-data", total=classes * per_class)
        files = generate(
            out_dir,
            classes=classes,
            per_class=per_class,
            seed=seed,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    elapsed = time.perf_counter() - start
    typer.echo(
        f"wrote {len(files)} videos ({classes} classes × {per_class}) to {out_dir} "
        f"in {elapsed:.1f} s"
    )
