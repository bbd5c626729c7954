"""``vrnn store …``: inspect, verify, export and maintain a feature store."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.choices import ArrayFormat
from stages import console
from stages.options import bounded

if TYPE_CHECKING:
    from pipeline.store import MaintenanceSummary

app = typer.Typer(
    name="store",
    help="Inspect, verify, export or maintain a feature store (info, verify, export, compact, "
    "migrate).",
    no_args_is_help=True,
)

StorePath = Annotated[Path, typer.Argument(help="The store's index file (e.g. features.h5).")]


@app.command("compact")
def compact(
    store: StorePath,
    shard_mib: Annotated[
        int, typer.Option("--shard-mib", min=1, help="Target size of a merged shard, MiB.")
    ] = 1024,
) -> None:
    """Merge many small shards into fewer large ones, atomically (extraction is locked out)."""
    from pipeline.store import compact as run

    done = run(store, shard_mib * 2**20)
    typer.echo(
        f"compacted {store}: {done.videos} videos, {done.shards_before} → "
        f"{done.shards_after} shards ({done.shards_written} written){_dropped(done)}"
    )


@app.command("migrate")
def migrate(store: StorePath) -> None:
    """Convert a version-1 (one HDF5 file) or version-2 store into version 3, in place."""
    from pipeline.store import migrate as run

    done = run(store)
    typer.echo(
        f"migrated {store} to format version 3: {done.videos} videos in {done.shards_after} "
        f"shards{_dropped(done)}"
    )


def _dropped(done: MaintenanceSummary) -> str:
    if not done.paths_dropped:
        return ""
    return f"; dropped {done.paths_dropped} path-index rows of files that no longer exist"


@contextmanager
def _progress(name: str) -> Iterator[Callable[[int, int], None]]:
    """A transient per-video progress bar on stderr (off when stderr is not a terminal)."""
    with Progress(
        TextColumn(f"[bold]{name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("videos"),
        TimeElapsedColumn(),
        console=console.err,
        transient=True,
        disable=not console.err.is_terminal,
    ) as bar:
        task = bar.add_task(name, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def _info_table(info: dict) -> Table:
    table = Table(title=console.plain(info["store"]), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    b, shards = info["bytes"], info["shards"]
    config = info["extractor"]
    rows = [
        ("videos", f"{info['videos']:,}"),
        ("frames", f"{info['frames']:,}"),
        ("on disk", f"{_mib(b['total'])} (index {_mib(b['index'])}, shards {_mib(b['shards'])})"),
        ("shards", f"{shards['count']} in {shards['directory']}"),
        ("backbone", f"{config['backbone']} ({config['feature_dim']}-d)"),
        ("weights", f"{config['weights']} (sha256 {config['weights_sha256'][:12]})"),
        ("input", f"{config['input_size']} px, resize={config['resize']}"),
        ("sampling", "every frame" if config["fps"] is None else f"{config['fps']:g} fps"),
        ("dtype", f"{config['dtype']}{' (float16 compute)' if config['mixed_precision'] else ''}"),
        ("failures", str(info["failures"]["count"])),
        ("partial decodes", str(info["partial_decodes"]["count"])),
        (
            "timestamps repaired",
            "{videos} videos, {rows} rows".format(**info["timestamps_repaired"]),
        ),
    ]
    if shards["missing"]:
        rows.append(("missing shards", ", ".join(shards["missing"])))
    rows += [("  failed", f"{f['path']}: {f['reason']}") for f in info["failures"]["first"]]
    rows += [
        ("  partial", f"{p['path']} ({p['video_id']}): {p['decoded_frames']} of "
         f"{p['container_frames']} frames decoded, {p['corrupt_packets']} corrupt packets")
        for p in info["partial_decodes"]["first"]
    ]  # fmt: skip
    for key, value in rows:
        table.add_row(console.plain(key), console.plain(value))
    return table


@app.command("info")
def info(
    store: StorePath,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Summarise a store: videos, frames, size on disk, extractor, failures, partial decodes."""
    from pipeline.store import store_info

    summary = store_info(store)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        console.show(_info_table(summary), to_stdout=True)


@app.command("verify")
def verify(store: StorePath) -> None:
    """Read every feature and timestamp chunk (checksummed) and check the index against them.

    Exit status 0 when every video is intact, 1 listing every missing or corrupt video.
    """
    from pipeline.store import verify_store

    with _progress("verify") as on_video:
        report = verify_store(store, on_video)
    for problem in report.problems:
        console.line(
            f"{problem.video_id} {problem.path or '(path unknown)'}: {problem.reason}",
            tag=f"{problem.kind}:",
            style="bold red",
        )
    for line in report.damaged_files:
        console.line(line, tag="damaged:", style="bold red")
    if not report.clean:
        found = [f"{len(report.problems)} of {report.videos} videos missing or corrupt"]
        if report.damaged_files:
            found.append(f"{len(report.damaged_files)} store file(s) damaged")
        console.error(f"{store}: {'; '.join(found)}")
        raise typer.Exit(1)
    typer.echo(f"{store}: all {report.videos} videos intact ({report.frames:,} frames read)")


MAX_WINDOW = 1_000_000
"""Rows per window or stride (far above any video's frame count)."""


@app.command("export")
def export(
    store: StorePath,
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")],
    fmt: Annotated[
        ArrayFormat,
        typer.Option("--format", help="npy: features + .timestamps.npy; npz: one file each."),
    ] = ArrayFormat.NPY,
    keep_dtype: Annotated[
        bool, typer.Option("--keep-dtype", help="Keep the stored dtype (default: float32).")
    ] = False,
    window: Annotated[
        int | None,
        typer.Option(callback=bounded(1, MAX_WINDOW), help="Mean-pool W rows into one row."),
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option(callback=bounded(1, MAX_WINDOW), help="Rows between windows (default W)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Write into an OUT directory that holds other files.")
    ] = False,
) -> None:
    """Write one [T, D] array per video (named after its source file) plus index.csv."""
    from pipeline.outputs import STORE_EXPORT, check_output
    from pipeline.store import ExportOptions, export_store

    options = ExportOptions(fmt=fmt, keep_dtype=keep_dtype, window=window, stride=stride)
    check_output(out_dir, STORE_EXPORT, overwrite=overwrite)
    with _progress("export") as on_video:
        done = export_store(store, out_dir, options, on_video)
    typer.echo(
        f"exported {done.videos} videos to {out_dir}: {done.written} files written, "
        f"{done.unchanged} unchanged, {done.removed} removed"
    )


# --------------------------------------------------------------------------- frame caches

cache_app = typer.Typer(
    name="cache",
    help="The frame caches stage 2 streams from (derived data: safe to delete).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info() -> None:
    """List the frame caches: where, how big, how many videos, for which stores."""
    from pipeline.frame_cache import frames_root, list_caches

    caches = list_caches()
    if not caches:
        typer.echo(f"no frame caches under {frames_root()}")
        return
    for c in caches:  # plain lines: paths are never cut to the terminal's width
        if not c.valid:
            typer.echo(
                f"{c.directory}: not a current frame cache ({_mib(c.nbytes)}; "
                "`vrnn store cache prune` removes it)"
            )
            continue
        typer.echo(f"{c.directory}: {c.videos} videos, {_mib(c.nbytes)}")
        for path, live in zip(c.stores, c.live, strict=True):
            typer.echo(f"  store {path}{'' if live else ' (gone)'}")


@cache_app.command("prune")
def cache_prune() -> None:
    """Remove the frame caches that no existing store uses (and outdated cache folders)."""
    from pipeline.frame_cache import prune_caches

    removed = prune_caches()
    freed = sum(c.nbytes for c in removed)
    typer.echo(f"{len(removed)} frame cache(s) removed, {_mib(freed)} freed")
