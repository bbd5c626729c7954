"""Store maintenance under the writer's lock: compact small shards, migrate version-1 stores.

Both build new shard files under temporary names, rename them into the shard directory,
then atomically replace the index; superseded shards (or the version-1 file's contents) are
deleted only after that. A kill at any point leaves the previous store readable; the next
writer removes the unreferenced shards it left.
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
from pipeline.store import StoreBuilder, read_committed, replace_index
from pipeline.store_commit import remove_unreferenced
from pipeline.store_index import PathEntry, StoreIndex, VideoEntry
from pipeline.store_layout import (
    FEATURES,
    FORMAT_NAME,
    VIDEOS,
    config_of,
    new_shard_name,
    open_store_file,
    os_reason,
    require_free_space,
    shards_dir_for,
    write_config_attrs,
)
from pipeline.store_read import open_store

SHARD_BYTES = 1 << 30
"""Target size of a shard written by compaction or migration (1 GiB)."""


@dataclass
class MaintenanceSummary:
    """What a compaction or migration did."""

    videos: int = 0
    shards_before: int = 0
    shards_after: int = 0
    shards_written: int = 0


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


def compact(store_path: Path, max_bytes: int = SHARD_BYTES) -> MaintenanceSummary:
    """Merge the store's shards smaller than ``max_bytes / 2`` into shards of ~``max_bytes``.

    Holds the writer's lock (an extraction appending to the same store is refused meanwhile).
    Readers that opened the old index reload it when they meet a removed shard.
    """
    with open_store(store_path) as store:
        config = store.config
    with StoreBuilder(store_path, config) as builder:
        index = read_committed(store_path)
        shards_dir = shards_dir_for(store_path)
        sizes = {e.shard: (shards_dir / e.shard).stat().st_size for e in index.videos.values()}
        small = sorted(s for s, n in sizes.items() if n < max_bytes // 2)
        summary = MaintenanceSummary(len(index.videos), len(sizes), len(sizes))
        if len(small) > 1:
            require_free_space(
                shards_dir, sum(sizes[s] for s in small) + 2**20, "compacted shards",
                _remedy(store_path),
            )  # fmt: skip
            files = {s: h5py.File(shards_dir / s, "r") for s in small}
            try:
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
            replace_index(store_path, new, config, incremental=False)
            remove_unreferenced(shards_dir, {e.shard for e in new.videos.values()})
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


def migrate(store_path: Path, max_bytes: int = SHARD_BYTES) -> MaintenanceSummary:
    """Convert a version-1 store (one HDF5 file) into a version-2 store in place.

    The videos are copied into new shards (raw chunks, no recompression), then the index
    replaces the version-1 file atomically: until that rename the old store is intact.
    """
    with open_store_file(store_path) as f:
        version = f.attrs.get("format_version")
        if f.attrs.get("format") != FORMAT_NAME or int(version) != 1:
            raise StoreError(
                f"{store_path}: not a version 1 feature store (format version {version}); "
                "nothing to migrate"
            )
        config = config_of(f)
        shards_dir = shards_dir_for(store_path)
        with StoreBuilder(store_path, config).lock_only():
            require_free_space(
                store_path.parent, store_path.stat().st_size + 2**20, "the migrated shards",
                _remedy(store_path),
            )  # fmt: skip
            remove_unreferenced(shards_dir, set())  # a killed migration's shards
            try:
                shards_dir.mkdir(exist_ok=True)
                groups = ((vid, f[VIDEOS][vid]) for vid in sorted(f[VIDEOS]))
                videos = _pack(shards_dir, config, groups, max_bytes)
                paths, failures = _read_v1(f)
                index = StoreIndex(videos, paths, failures)
                replace_index(store_path, index, config, incremental=False)
            except OSError as e:
                raise StoreError(f"cannot migrate {store_path}: {os_reason(e)}") from e
    shards = len({e.shard for e in videos.values()})
    return MaintenanceSummary(len(videos), 1, shards, shards)
