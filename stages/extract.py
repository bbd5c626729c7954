"""``vrnn extract``: stage 1, a manifest of videos → the HDF5 feature store."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline.choices import Backbone, FeatureDtype, Resize
from pipeline.extract import ExtractOptions
from pipeline.index_sources import source_videos
from pipeline.outputs import EXTRACT_REPORT, FEATURE_STORE, check_output
from pipeline.store import parts_dir_for
from stages import console
from stages.options import MAX_BATCH, MAX_COUNT, MAX_FPS, MAX_SECONDS, bounded

if TYPE_CHECKING:
    from pipeline.extract_report import ExtractReport

DEFAULTS = ExtractOptions()
"""The one source of ``vrnn extract``'s defaults."""
SHOW_FAILURES = 20
SCHEDULER_ADDRESS = re.compile(r"([a-z][a-z0-9+]*://)?(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):\d+")
"""``[PROTOCOL://]HOST:PORT``, as dask.distributed accepts it (tcp://, tls://, ucx://, …)."""


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]extract"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("videos · {task.fields[rate]} fr/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console.err,
        disable=not console.err.is_terminal,
    )


def _runner(
    workers: int | None,
    scheduler: str | None,
    threads_per_worker: int | None,
    timeout: float,
    tls: tuple[Path | None, Path | None, Path | None] = (None, None, None),
    videos_per_task: int | None = None,
) -> AbstractContextManager:
    """A started Dask runner for ``--workers``/``--scheduler``, else ``None`` (in-process)."""
    if workers is None and scheduler is None and threads_per_worker is None:
        return nullcontext(None)
    if scheduler is not None and not SCHEDULER_ADDRESS.fullmatch(scheduler):
        raise typer.BadParameter(
            f"--scheduler {scheduler!r} is not a scheduler address (tcp://HOST:PORT)"
        )
    from pipeline.parallel import VIDEOS_PER_TASK, ClusterOptions, DaskRunner  # Dask, if used

    ca_file, cert, key = (str(path) if path else None for path in tls)
    return DaskRunner(
        ClusterOptions(
            workers=workers,
            scheduler=scheduler,
            threads_per_worker=threads_per_worker,
            connect_timeout_sec=timeout,
            videos_per_task=videos_per_task or VIDEOS_PER_TASK,
            tls_ca_file=ca_file,
            tls_cert=cert,
            tls_key=key,
        )
    )


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
    ] = DEFAULTS.weights,
    backbone: Annotated[
        Backbone,
        typer.Option(help="All give 1280-d features; see docs/backbones.md."),
    ] = DEFAULTS.backbone,
    input_size: Annotated[
        int, typer.Option(callback=bounded(32, 1024), help="Backbone input side, pixels.")
    ] = DEFAULTS.input_size,
    resize: Annotated[
        Resize, typer.Option(help="crop: centre-crop keeping aspect; squash: stretch.")
    ] = DEFAULTS.resize,
    fps: Annotated[
        float,
        typer.Option(
            callback=bounded(0, MAX_FPS),
            help="Sample this many frames/s of presentation time; 0: every frame.",
        ),
    ] = 0.0,
    dtype: Annotated[FeatureDtype, typer.Option(help="Stored feature dtype.")] = DEFAULTS.dtype,
    batch_size: Annotated[
        int, typer.Option(callback=bounded(1, MAX_BATCH), help="Frames per backbone batch.")
    ] = DEFAULTS.batch_size,
    mixed_precision: Annotated[
        bool, typer.Option(help="float16 compute (for GPUs with tensor cores).")
    ] = DEFAULTS.mixed_precision,
    rehash: Annotated[
        bool,
        typer.Option(
            help="Hash every listed file, even those whose path, size and mtime match the "
            "store (finds content replaced with the same size and mtime, e.g. cp -p); "
            "implies --retry-failed."
        ),
    ] = DEFAULTS.rehash,
    retry_failed: Annotated[
        bool,
        typer.Option(
            help="Try again the files that failed to decode before (default: skipped while "
            "their size and mtime are unchanged, and counted)."
        ),
    ] = DEFAULTS.retry_failed,
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
        Path | None,
        typer.Option(help="Report JSON (default: <store name>.report.json beside -o)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a --report file that vrnn did not write.")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            callback=bounded(1, MAX_COUNT),
            help="Run on a local Dask cluster of this many worker processes.",
        ),
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
            callback=bounded(1, MAX_COUNT),
            help="TensorFlow threads per worker (default with --workers: cores ÷ workers).",
        ),
    ] = None,
    connect_timeout: Annotated[
        float,
        typer.Option(callback=bounded(0, MAX_SECONDS), help="Seconds to try reaching --scheduler."),
    ] = 10.0,
    videos_per_task: Annotated[
        int | None,
        typer.Option(
            callback=bounded(1, MAX_COUNT),
            help="Videos per Dask task (with --workers/--scheduler; default 4).",
        ),
    ] = None,
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
    from pipeline.extract import run_extraction
    from pipeline.extract_report import ExtractInterrupted
    from pipeline.featurize import parse_decoders

    report = report or report_path(output)
    check_output(output, FEATURE_STORE)
    check_output(report, EXTRACT_REPORT, overwrite=overwrite, option="--report")
    found = source_videos(source)
    paths = found.videos
    sampling = fps or None  # 0 keeps every frame
    options = ExtractOptions(
        weights=weights,
        backbone=backbone,
        input_size=input_size,
        resize=resize,
        fps=sampling,
        dtype=dtype,
        batch_size=batch_size,
        mixed_precision=mixed_precision,
        rehash=rehash,
        retry_failed=retry_failed,
        decoders=parse_decoders(decoders),
    )
    if weights.startswith("random"):
        console.warning(
            f"--weights {weights}: a seeded RANDOM backbone, not "
            "ImageNet features (fine for smoke runs and tests, not for real models)"
        )
    options.validate()  # before connecting to a cluster: bad options fail fast
    tls = (tls_ca_file, tls_cert, tls_key)
    cluster = (workers, scheduler, threads_per_worker, connect_timeout, tls, videos_per_task)
    with _runner(*cluster) as runner:
        if runner is not None:
            console.line(runner.info.describe(), tag="dask:", style="bold")
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
                    on_plan=lambda plan: bar.update(task, total=len(plan.todo)),
                    on_video=lambda done: advance(1, done.frames),
                    on_task=lambda done: advance(len(done.ok) + len(done.failed), done.frames),
                )
            except KeyboardInterrupt as e:
                committed = e.report if isinstance(e, ExtractInterrupted) else None
                _interrupted(output, report, committed)
    result.not_videos = [str(p) for p in found.passed_over]
    result.write(report)
    notes = "".join(
        f", {count} {what}"
        for count, what in [
            (result.partial, "decoded partially"),
            (result.repaired_timestamps, "with repaired timestamps"),
            (
                result.known_failures,
                "known failures skipped (unchanged since they failed; --retry-failed tries them)",
            ),
            (result.paths_dropped, "path-index rows of files that no longer exist dropped"),
            (
                result.foreign_parts,
                f"staged part(s) refused (another extractor's or unreadable; left in "
                f"{parts_dir_for(output)})",
            ),
        ]
        if count
    )
    typer.echo(
        f"extracted {result.extracted}, skipped {result.skipped} (already stored), "
        + (f"{result.duplicates} duplicates (same content), " if result.duplicates else "")
        + f"failed {result.failed} of {result.videos} videos{notes}; {result.frames} frames at "
        f"{result.frames_per_sec:.0f} fr/s{console.passed_over(found.passed_over)} → {output}"
    )
    for video in result.partial_videos[:SHOW_FAILURES]:
        console.line(
            f"{video['path']}: decoded {video['decoded_frames']} frames "
            f"(container: {video['container_frames'] or '?'}), "
            f"{video['corrupt_packets']} corrupt packets skipped",
            tag="  partial",
            style="yellow",
        )
    for failure in result.failures[:SHOW_FAILURES]:
        console.line(f"{failure['path']}: {failure['reason']}", tag="  failed", style="red")
    if result.failed > SHOW_FAILURES:
        console.line(f"  … and {result.failed - SHOW_FAILURES} more (see the report)")
    if strict and (result.failed or result.known_failures):
        earlier = f" ({result.known_failures} in an earlier run)" if result.known_failures else ""
        console.error(f"{result.failed + result.known_failures} videos failed{earlier} (--strict)")
        raise typer.Exit(1)


def report_path(store: Path) -> Path:
    """The default report of a store: ``<store name>.report.json`` beside it (one per store)."""
    return store.with_name(f"{store.name}.report.json")


def _interrupted(store: Path, report: Path, result: ExtractReport | None) -> NoReturn:
    """Ctrl-C: say what was committed, write the report (``interrupted: true``), exit 130.

    ``result`` is None when nothing reached the commit (Ctrl-C while planning, or a second
    Ctrl-C during the commit): the store is then unchanged.
    """
    if result is not None:
        result.write(report)
    if result is not None and result.extracted:
        console.line(
            f"finished videos were committed to {store}; rerun the same command to resume",
            tag="interrupted:",
            style="bold red",
        )
    else:
        console.line(
            f"nothing new was committed to {store}; rerun the same command to resume",
            tag="interrupted:",
            style="bold red",
        )
    raise typer.Exit(130)
