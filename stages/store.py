"""``vrnn store …``: maintenance of a feature store (compact its shards, migrate version 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="store",
    help="Maintain a feature store: compact its shards, migrate a version-1 store.",
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
    from pipeline.store_maintenance import compact as run

    done = run(store, shard_mib * 2**20)
    typer.echo(
        f"compacted {store}: {done.videos} videos, {done.shards_before} → "
        f"{done.shards_after} shards ({done.shards_written} written)"
    )


@app.command("migrate")
def migrate(store: StorePath) -> None:
    """Convert a version-1 store (one HDF5 file) into version 2 (index + shards), in place."""
    from pipeline.store_maintenance import migrate as run

    done = run(store)
    typer.echo(
        f"migrated {store} to format version 2: {done.videos} videos in {done.shards_after} shards"
    )
