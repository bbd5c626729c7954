"""``vrnn sample-data``: write the bundled synthetic dataset (real encoded video files)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.errors import OutputError
from pipeline.outputs import CLASS_FOLDER, SAMPLE_DATA, check_output
from pipeline.sample_data import CATALOGUE, generate
from stages import console
from stages.options import MAX_COUNT, MAX_SEED, bounded


def command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write <label>/<video> files into.")],
    classes: Annotated[
        int,
        typer.Option(help=f"Number of classes (1-{len(CATALOGUE)}), in catalogue order."),
    ] = 6,
    per_class: Annotated[
        int, typer.Option(callback=bounded(1, MAX_COUNT), help="Clips per class (groups of 3).")
    ] = 12,
    seed: Annotated[
        int,
        typer.Option(
            callback=bounded(0, MAX_SEED), help="Seed: the same seed writes the same files."
        ),
    ] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Write into an OUT_DIR that holds more than sample-data folders.")
    ] = False,
) -> None:
    """Write a labelled synthetic dataset: order-only class pairs plus appearance classes."""
    for spec in CATALOGUE[:classes]:
        check_output(out_dir / spec.label, CLASS_FOLDER)
    check_output(out_dir, SAMPLE_DATA, overwrite=overwrite, option="OUT_DIR")
    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]sample-data"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console.err,
        transient=True,
        disable=not console.err.is_terminal,
    ) as bar:
        task = bar.add_task("sample-data", total=classes * per_class)
        try:
            files = generate(
                out_dir,
                classes=classes,
                per_class=per_class,
                seed=seed,
                on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except OSError as e:  # a full disk, or the folder changed under us
            where = f" {e.filename}" if e.filename else ""
            raise OutputError(f"cannot write{where} in {out_dir}: {e.strerror or e}") from e
    elapsed = time.perf_counter() - start
    typer.echo(
        f"wrote {len(files)} videos ({classes} classes × {per_class}) to {out_dir} "
        f"in {elapsed:.1f} s"
    )
