"""``vrnn extract``: stage 1, a manifest of videos → the HDF5 feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline.dataset import read_manifest

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]extract"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("videos · {task.fields[rate]} fr/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def command(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV (path,label,group,split).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Feature store (.h5).")],
    weights: Annotated[
        str,
        typer.Option(
            help="imagenet (Keras download + cache), a local weights file, or random[:SEED] "
            "(seeded random backbone: offline smoke runs only)."
        ),
    ] = "imagenet",
    input_size: Annotated[int, typer.Option(help="Backbone input side, pixels.")] = 224,
    resize: Annotated[str, typer.Option(help="crop (centre-crop, keep aspect) or squash.")] = "crop",
    fps: Annotated[
        float | None, typer.Option(help="Sample this many frames/s (default: every frame).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="Stored feature dtype: float16 or float32.")] = "float16",
    batch_size: Annotated[int, typer.Option(help="Frames per backbone batch.")] = 32,
    mixed_precision: Annotated[
        bool, typer.Option(help="float16 compute (for GPUs with tensor cores).")
    ] = False,
    strict: Annotated[
        bool, typer.Option(help="Exit 1 if any video failed (default: record and go on).")
    ] = False,
    report: Annotated[
        Path | None, typer.Option(help="Report JSON (default: extract_report.json beside -o).")
    ] = None,
) -> None:
    """Decode every video, run the frozen backbone once per frame, cache features in HDF5."""
    from pipeline.extract_job import ExtractOptions, run_extraction

    records = read_manifest(manifest)
    options = ExtractOptions(weights, input_size, resize, fps, dtype, batch_size, mixed_precision)
    if weights.startswith("random"):
        console.print(
            f"[bold yellow]warning:[/] --weights {weights}: a seeded RANDOM backbone, not "
            "ImageNet features (fine for smoke runs and tests, not for real models)"
        )
    with _progress() as bar:
        task = bar.add_task("extract", total=None, rate="-")
        frames = [0]

        def on_plan(plan) -> None:
            bar.update(task, total=len(plan.todo))

        def on_video(done) -> None:
            frames[0] += done.frames
            elapsed = bar.tasks[task].elapsed or 1e-9
            bar.update(task, advance=1, rate=f"{frames[0] / elapsed:.0f}")

        try:
            result = run_extraction(
                [r.path for r in records],
                output,
                options,
                on_plan=on_plan,
                on_video=on_video,
            )
        except KeyboardInterrupt:
            console.print(
                "[bold red]interrupted:[/] finished videos were committed to "
                f"{output}; rerun the same command to resume"
            )
            raise typer.Exit(130) from None
    result.write(report or output.with_name("extract_report.json"))
    typer.echo(
        f"extracted {result.extracted}, skipped {result.skipped} (already stored), "
        f"failed {result.failed} of {result.videos} videos; {result.frames} frames at "
        f"{result.frames_per_sec:.0f} fr/s → {output}"
    )
    for failure in result.failures[:20]:
        console.print(f"  [red]failed[/] {failure['path']}: {failure['reason']}", highlight=False)
    if result.failed > 20:
        console.print(f"  … and {result.failed - 20} more (see the report)")
    if strict and result.failed:
        console.print(f"[bold red]error:[/] {result.failed} videos failed (--strict)")
        raise typer.Exit(1)
