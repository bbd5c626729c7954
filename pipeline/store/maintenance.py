"""Store maintenance under the writer's lock: compact small shards, migrate older stores.

Compaction and version-1 migration build new shard files under temporary names and rename
them into the shard directory; then (also for a version-2 store, whose shards are kept as
they are) a new base index and links files are written and the root atomically replaces the
old file. Superseded shards, index and links files are deleted only after that. A kill at any
point leaves the previous store readable; the next writer removes the files it left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py

from pipeline import fsio
from pipeline.contracts import ExtractionFailure, ExtractorConfig
from pipeline.errors import StoreError
from pipeline.fsio import os_reason, require_free_space
from pipeline.store.commit import remove_unreferenced
from pipeline.store.generations import Root, publish, read_generation, referenced_files
from pipeline.store.index import PathEntry, StoreIndex, VideoEntry, read_tables
from pipeline.store.layout import (
    FEATURES,
    FORMAT_NAME,
    MIGRATABLE_VERSIONS,
    VIDEOS,
    config_of,
    new_shard_name,
    open_store_file,
    shards_dir_for,
    write_config_attrs,
)
from pipeline.store.read import open_store
from pipeline.store.write import StoreBuilder

SHARD_BYTES = 1 << 30
"""Target size of a shard written by compaction or migration (1 GiB)."""


@dataclass
class MaintenanceSummary:
    """What a compaction or migration did."""

    videos: int = 0
    shards_before: int = 0
    shards_after: int = 0
    shards_written: int = 0
    paths_dropped: int = 0
    """Path-index rows of files that no longer exist (their videos stay stored)."""


def _copy_into_shard(
    shards_dir: Path, config: ExtractorConfig, groups: list[tuple[str, h5py.Group]]
) -> str:
    """Copy video groups (raw chunks, no recompression) into a new shard; its name."""
    name = new_shard_name()
    with fsio.replacing(shards_dir / name) as tmp, h5py.File(tmp, "w") as out:
        write_config_attrs(out, config, shard=True)
        videos = out.create_group(VIDEOS)
        for video_id, group in groups:
            group.file.copy(group, videos, name=video_id)
        out.flush()
        os.fsync(out.id.get_vfd_handle())
    return name


def _batches(
    groups: Iterable[tuple[str, h5py.Group]], max_bytes: int
) -> Iterator[list[tuple[str, h5py.Group]]]:
    batch, size = [], 0
    for video_id, group in groups:
        nbytes = group[FEATURES].id.get_storage_size()
        if batch and size + nbytes > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append((video_id, group))
        size += nbytes
    if batch:
        yield batch


def _pack(
    shards_dir: Path,
    config: ExtractorConfig,
    groups: Iterable[tuple[str, h5py.Group]],
    max_bytes: int,
) -> dict[str, VideoEntry]:
    """Write ``groups`` into as few shards of about ``max_bytes`` as fit; the new entries."""
    moved: dict[str, VideoEntry] = {}
    for batch in _batches(groups, max_bytes):
        name = _copy_into_shard(shards_dir, config, batch)
        for video_id, group in batch:
            moved[video_id] = VideoEntry(name, int(group[FEATURES].shape[0]))
    fsio.fsync_dir(shards_dir)
    return moved


def _remedy(store_path: Path) -> str:
    return f"{store_path.name} is unchanged"


def _shard_sizes(store_path: Path, shards_dir: Path, names: set[str]) -> dict[str, int]:
    sizes, missing = {}, []
    for name in sorted(names):
        try:
            sizes[name] = (shards_dir / name).stat().st_size
        except FileNotFoundError:
            missing.append(name)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise StoreError(
            f"cannot compact {store_path}: shard file(s) missing from {shards_dir}: "
            f"{', '.join(missing[:5])}{more}; restore them or re-extract "
            f"({_remedy(store_path)})"
        )
    return sizes


def _open_shard(store_path: Path, shard: Path) -> h5py.File:
    try:
        return h5py.File(shard, "r")
    except OSError as e:
        raise StoreError(
            f"cannot compact {store_path}: shard {shard} is not readable ({os_reason(e)}); "
            f"restore it or re-extract ({_remedy(store_path)})"
        ) from e


def compact(store_path: Path, max_bytes: int = SHARD_BYTES) -> MaintenanceSummary:
    """Merge the store's shards smaller than ``max_bytes / 2`` into shards of ~``max_bytes``.

    Holds the writer's lock (an extraction appending to the same store is refused meanwhile).
    Readers that opened the old index reload it when they meet a removed shard. Also folds
    every delta index file into a new base.
    """
    with open_store(store_path) as store:
        config = store.config
    with StoreBuilder(store_path, config) as builder:
        root, index = read_generation(store_path)
        shards_dir = shards_dir_for(store_path)
        sizes = _shard_sizes(store_path, shards_dir, {e.shard for e in index.videos.values()})
        small = sorted(s for s, n in sizes.items() if n < max_bytes // 2)
        summary = MaintenanceSummary(len(index.videos), len(sizes), len(sizes))
        moved: dict[str, VideoEntry] = {}
        if len(small) > 1:
            require_free_space(
                shards_dir, sum(sizes[s] for s in small) + 2**20, "compacted shards",
                _remedy(store_path),
            )  # fmt: skip
            files: dict[str, h5py.File] = {}
            try:
                for s in small:
                    files[s] = _open_shard(store_path, shards_dir / s)
                groups = (
                    (vid, files[e.shard][VIDEOS][vid])
                    for vid, e in sorted(index.videos.items(), key=lambda kv: kv[1].shard)
                    if e.shard in files
                )
                moved = _pack(shards_dir, config, groups, max_bytes)
            except OSError as e:
                raise StoreError(f"cannot compact {store_path}: {os_reason(e)}") from e
            finally:
                for f in files.values():
                    f.close()
        new = StoreIndex({**index.videos, **moved}, index.paths, index.failures)
        try:
            published, summary.paths_dropped = publish(store_path, config, root, new)
        except OSError as e:
            raise StoreError(f"cannot compact {store_path}: {os_reason(e)}") from e
        remove_unreferenced(shards_dir, referenced_files(shards_dir, published, new))
        summary.shards_after = len({e.shard for e in new.videos.values()})
        summary.shards_written = len({e.shard for e in moved.values()})
        builder.discard_staging()
    return summary


def _read_v1(f: h5py.File) -> tuple[dict[str, PathEntry], dict[str, ExtractionFailure]]:
    paths = json.loads(f["path_index"][()]) if "path_index" in f else {}
    failures = json.loads(f["failures"][()]) if "failures" in f else []
    return (
        {path: PathEntry(vid, int(size), int(mtime)) for path, (vid, size, mtime) in paths.items()},
        {x["path"]: ExtractionFailure(**x) for x in failures},
    )


def _read_v2(f: h5py.File) -> StoreIndex:
    tables = read_tables(f)  # version 2 kept whole tables (no removals) in the index file
    paths = {path: entry for path, entry in tables.paths.items() if entry is not None}
    failures = {path: x for path, x in tables.failures.items() if x is not None}
    return StoreIndex(tables.videos, paths, failures)


def migrate(store_path: Path, max_bytes: int = SHARD_BYTES) -> MaintenanceSummary:
    """Convert a version-1 or version-2 store into a version-3 store in place.

    Version 1 (one HDF5 file): the videos are copied into new shards (raw chunks, no
    recompression). Version 2: its shards are kept as they are. Then a base index, links files
    and a root are written, and the root replaces the old file atomically: until that rename
    the old store is intact.
    """
    with open_store_file(store_path) as f:
        version = int(f.attrs.get("format_version", -1))
        if f.attrs.get("format") != FORMAT_NAME or version not in MIGRATABLE_VERSIONS:
            raise StoreError(
                f"{store_path}: not a version 1 or 2 feature store (format version "
                f"{f.attrs.get('format_version')}); nothing to migrate"
            )
        config = config_of(f)
        shards_dir = shards_dir_for(store_path)
        with StoreBuilder(store_path, config).lock_only():
            size = store_path.stat().st_size if version == 1 else 0
            require_free_space(
                store_path.parent, size + 2**20, "the migrated store", _remedy(store_path)
            )
            try:
                if version == 1:
                    remove_unreferenced(shards_dir, set())  # a killed migration's files
                    shards_dir.mkdir(exist_ok=True)
                    groups = ((vid, f[VIDEOS][vid]) for vid in sorted(f[VIDEOS]))
                    index = StoreIndex(_pack(shards_dir, config, groups, max_bytes), *_read_v1(f))
                else:
                    index = _read_v2(f)
                    remove_unreferenced(shards_dir, {e.shard for e in index.videos.values()})
                _, dropped = publish(store_path, config, Root(), index)
            except OSError as e:
                raise StoreError(f"cannot migrate {store_path}: {os_reason(e)}") from e
    shards = len({e.shard for e in index.videos.values()})
    if version == 1:
        return MaintenanceSummary(len(index.videos), 1, shards, shards, dropped)
    return MaintenanceSummary(len(index.videos), shards, shards, 0, dropped)
