"""The index file of a version-2 store: catalog, path index, failures and per-video links.

All tables are plain columnar datasets (fixed-width ASCII ids, int64 numbers, strings as one
UTF-8 byte column plus offsets), so any HDF5 reader can load them; see docs/FORMAT.md. A
commit copies the previous index file, appends the new ``videos/<id>`` external links and
rewrites the columns in place: its cost grows with the number of videos, never their frames.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from pipeline.contracts import ExtractionFailure, ExtractorConfig
from pipeline.identity import VIDEO_ID_HEX
from pipeline.store_layout import FAILURES, SHARDS_ATTR, VIDEOS, write_config_attrs

CATALOG = "catalog"
SHARDS = "shards"
PATH_INDEX = "path_index"
ID_DTYPE = f"S{VIDEO_ID_HEX + 1}"
ROWS_PER_CHUNK = 1024
BYTES_PER_CHUNK = 1 << 16


class PathEntry(NamedTuple):
    """What the path index knows about one source path (as recorded when it was hashed)."""

    video_id: str
    size: int
    mtime_ns: int


class VideoEntry(NamedTuple):
    """Where one stored video lives: its shard file name and its number of feature rows."""

    shard: str
    frames: int


@dataclass
class StoreIndex:
    """Everything an index file holds besides its provenance attributes."""

    videos: dict[str, VideoEntry] = field(default_factory=dict)
    paths: dict[str, PathEntry] = field(default_factory=dict)
    failures: dict[str, ExtractionFailure] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def _strings(group: h5py.Group, name: str) -> list[str]:
    data = group[f"{name}_bytes"][()].tobytes()
    offsets = group[f"{name}_offsets"][()].tolist()
    return [os.fsdecode(data[a:b]) for a, b in itertools.pairwise(offsets)]


def _ids(dataset: h5py.Dataset) -> list[str]:
    return [v.decode("ascii") for v in dataset[()].tolist()]


def read_catalog(f: h5py.File) -> dict[str, VideoEntry]:
    """``{video_id: VideoEntry}`` of every stored video."""
    catalog, names = f[CATALOG], _ids(f[SHARDS]["names"])
    shard, frames = catalog["shard"][()].tolist(), catalog["frames"][()].tolist()
    return {
        vid: VideoEntry(names[s], n)
        for vid, s, n in zip(_ids(catalog["video_ids"]), shard, frames, strict=True)
    }


def read_paths(f: h5py.File) -> dict[str, PathEntry]:
    """``{source path: PathEntry}``: the path index."""
    g = f[PATH_INDEX]
    columns = (_ids(g["video_ids"]), g["sizes"][()].tolist(), g["mtimes_ns"][()].tolist())
    return {
        path: PathEntry(*entry) for path, *entry in zip(_strings(g, "paths"), *columns, strict=True)
    }


def read_failures(f: h5py.File) -> dict[str, ExtractionFailure]:
    """``{path: ExtractionFailure}``: videos whose last extraction failed."""
    g = f[FAILURES]
    ids = [v or None for v in _ids(g["video_ids"])]
    rows = zip(_strings(g, "paths"), _strings(g, "reasons"), ids, strict=True)
    return {path: ExtractionFailure(path, reason, vid) for path, reason, vid in rows}


def read_index(f: h5py.File) -> StoreIndex:
    """All tables of an open index file."""
    return StoreIndex(read_catalog(f), read_paths(f), read_failures(f))


# --------------------------------------------------------------------------- writing


def _put(group: h5py.Group, name: str, data: np.ndarray, chunk: int = ROWS_PER_CHUNK) -> None:
    """Write a 1-D column, resizing it in place when it exists (no space is leaked)."""
    if name in group:
        dataset = group[name]
        dataset.resize(data.shape)
    else:
        dataset = group.create_dataset(
            name, shape=data.shape, dtype=data.dtype, maxshape=(None,), chunks=(chunk,)
        )
    if len(data):
        dataset[...] = data


def _put_strings(group: h5py.Group, name: str, values: Iterable[str]) -> None:
    encoded = [os.fsencode(v) for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    _put(group, f"{name}_bytes", np.frombuffer(b"".join(encoded), np.uint8), BYTES_PER_CHUNK)
    _put(group, f"{name}_offsets", offsets)


def _put_ids(group: h5py.Group, name: str, ids: Iterable[str | None]) -> None:
    _put(group, name, np.array([(v or "").encode("ascii") for v in ids], dtype=ID_DTYPE))


def _write_tables(f: h5py.File, index: StoreIndex) -> None:
    videos = sorted(index.videos.items())
    shard_names = sorted({entry.shard for _, entry in videos})
    row = {name: i for i, name in enumerate(shard_names)}
    _put(f.require_group(SHARDS), "names", np.array(shard_names, dtype="S64"))
    catalog = f.require_group(CATALOG)
    _put_ids(catalog, "video_ids", (vid for vid, _ in videos))
    _put(catalog, "shard", np.array([row[e.shard] for _, e in videos], np.int32))
    _put(catalog, "frames", np.array([e.frames for _, e in videos], np.int64))
    paths = sorted(index.paths.items())
    g = f.require_group(PATH_INDEX)
    _put_strings(g, "paths", (p for p, _ in paths))
    _put_ids(g, "video_ids", (e.video_id for _, e in paths))
    _put(g, "sizes", np.array([e.size for _, e in paths], np.int64))
    _put(g, "mtimes_ns", np.array([e.mtime_ns for _, e in paths], np.int64))
    failures = sorted(index.failures.values(), key=lambda x: x.path)
    g = f.require_group(FAILURES)
    _put_strings(g, "paths", (x.path for x in failures))
    _put_strings(g, "reasons", (x.reason for x in failures))
    _put_ids(g, "video_ids", (x.video_id for x in failures))


def _update_links(
    group: h5py.Group, shards: str, old: dict[str, VideoEntry], new: dict[str, VideoEntry]
) -> None:
    for vid, entry in old.items():
        if new.get(vid, VideoEntry("", 0)).shard != entry.shard:
            del group[vid]
    for vid, entry in new.items():
        if old.get(vid, VideoEntry("", 0)).shard != entry.shard:
            group[vid] = h5py.ExternalLink(f"{shards}/{entry.shard}", f"/{VIDEOS}/{vid}")


def write_index(
    target: Path,
    index: StoreIndex,
    config: ExtractorConfig,
    shards: str,
    base: Path | None = None,
) -> None:
    """Write a complete index file at ``target`` (a temporary name: the caller renames it).

    Args:
        target: the file to create.
        index: the tables to store.
        config: the extractor configuration (root attributes).
        shards: the shard directory, relative to the index file's directory.
        base: a previous index file of the same store to start from: it is copied and only
            the links that changed are touched, so a commit does O(new videos) link work.
    """
    old: dict[str, VideoEntry] = {}
    if base is not None:
        shutil.copyfile(base, target)
        with h5py.File(target, "r") as f:
            old = read_catalog(f)
    with h5py.File(target, "r+" if base is not None else "w") as f:
        write_config_attrs(f, config)
        f.attrs[SHARDS_ATTR] = shards
        _update_links(f.require_group(VIDEOS), shards, old, index.videos)
        _write_tables(f, index)
        f.flush()
        os.fsync(f.id.get_vfd_handle())
