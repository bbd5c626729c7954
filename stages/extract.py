"""``vrnn extract``: stage 1, a manifest of videos → the HDF5 feature store."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
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

from pipeline.dataset import source_videos

# soft_wrap: a failure line (path + reason) stays one greppable line in overnight logs.
console = Console(stderr=True, soft_wrap=True)


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


def _runner(
    workers: int | None,
    scheduler: str | None,
    threads_per_worker: int | None,
    timeout: float,
    tls: tuple[Path | None, Path | None, Path | None] = (None, None, None),
) -> AbstractContextManager:
    """A started Dask runner for ``--workers``/``--scheduler``, else ``None`` (in-process)."""
    if workers is not None and scheduler is not None:
        raise typer.BadParameter("use either --workers or --scheduler, not both")
    if workers is None and scheduler is None:
        if threads_per_worker is not None:
            raise typer.BadParameter("--threads-per-worker needs --workers or --scheduler")
        return nullcontext(None)
    from pipeline.parallel import ClusterOptions, DaskRunner  # imports Dask only when used

    tls_files = (str(path) if path else None for path in tls)
    return DaskRunner(ClusterOptions(workers, scheduler, threads_per_worker, timeout, *tls_files))


def command(
    source: Annotated[
        Path, typer.Argument(help="Manifest CSV (path,label,group,split) or a folder of videos.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Feature store (.h5).")],
    weights: Annotated[
        str,
        typer.Option(
            help="imagenet (Keras download + cache), a local weights file, or random[:SEED] "
            "(seeded random backbone: offline smoke runs only)."
        ),
    ] = "imagenet",
    input_size: Annotated[int, typer.Option(help="Backbone input side, pixels.")] = 224,
    resize: Annotated[
        str, typer.Option(help="crop (centre-crop, keep aspect) or squash.")
    ] = "crop",
    fps: Annotated[
        float, typer.Option(help="Sample this many frames/s of presentation time; 0: every frame.")
    ] = 0.0,
    dtype: Annotated[
        str, typer.Option(help="Stored feature dtype: float16 or float32.")
    ] = "float16",
    batch_size: Annotated[int, typer.Option(help="Frames per backbone batch.")] = 32,
    mixed_precision: Annotated[
        bool, typer.Option(help="float16 compute (for GPUs with tensor cores).")
    ] = False,
    decoders: Annotated[
        str,
        typer.Option(
            help="Decoder threads feeding the backbone, per process: N or auto (one per "
            "core, at most 8)."
        ),
    ] = "auto",
    strict: Annotated[
        bool, typer.Option(help="Exit 1 if any video failed (default: record and go on).")
    ] = False,
    report: Annotated[
        Path | None, typer.Option(help="Report JSON (default: extract_report.json beside -o).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Run on a local Dask cluster of this many worker processes."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Run on a running dask.distributed cluster (tls://HOST:PORT, or tcp:// on a "
            "trusted network only); workers need the output directory and the videos on a "
            "shared filesystem."
        ),
    ] = None,
    threads_per_worker: Annotated[
        int | None,
        typer.Option(
            min=1, help="TensorFlow threads per worker (default with --workers: cores ÷ workers)."
        ),
    ] = None,
    connect_timeout: Annotated[
        float, typer.Option(help="Seconds to try reaching --scheduler.")
    ] = 10.0,
    videos_per_task: Annotated[
        int, typer.Option(min=1, help="Videos per Dask task (with --workers/--scheduler).")
    ] = 4,
    tls_ca_file: Annotated[
        Path | None,
        typer.Option(help="tls:// scheduler: CA certificate (default: Dask's TLS config)."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="tls:// scheduler: this client's certificate (PEM).")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="tls:// scheduler: this client's key, if not in --tls-cert.")
    ] = None,
) -> None:
    """Decode every video, run the frozen backbone once per frame, cache features in HDF5."""
    from pipeline.extract import parse_decoders
    from pipeline.extract_job import ExtractOptions, run_extraction

    paths = source_videos(source)
    sampling = fps or None  # 0 keeps every frame
    options = ExtractOptions(
        weights,
        input_size,
        resize,
        sampling,
        dtype,
        batch_size,
        mixed_precision,
        parse_decoders(decoders),
    )
    if weights.startswith("random"):
        console.print(
            f"[bold yellow]warning:[/] --weights {weights}: a seeded RANDOM backbone, not "
            "ImageNet features (fine for smoke runs and tests, not for real models)"
        )
    options.validate()  # before connecting to a cluster: bad options fail fast
    tls = (tls_ca_file, tls_cert, tls_key)
    with _runner(workers, scheduler, threads_per_worker, connect_timeout, tls) as runner:
        if runner is not None:
            console.print(
                f"[bold]dask:[/] {runner.info.describe()}", highlight=False, soft_wrap=True
            )
        with _progress() as bar:
            task = bar.add_task("extract", total=None, rate="-")
            frames = [0]

            def advance(videos: int, new_frames: int) -> None:
                frames[0] += new_frames
                elapsed = bar.tasks[task].elapsed or 1e-9
                bar.update(task, advance=videos, rate=f"{frames[0] / elapsed:.0f}")

            try:
                result = run_extraction(
                    paths,
                    output,
                    options,
                    runner=runner,
                    videos_per_task=videos_per_task,
                    on_plan=lambda plan: bar.update(task, total=len(plan.todo)),
                    on_video=lambda done: advance(1, done.frames),
                    on_task=lambda done: advance(len(done.ok) + len(done.failed), done.frames),
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
