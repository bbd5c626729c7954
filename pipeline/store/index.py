"""Index files of a version-3 store: the tables of a base index or of one commit's delta.

An index file holds rows of the catalog (video → shard), the path index and the failures, as
plain columnar datasets (fixed-width ASCII ids, int64 numbers, strings as one UTF-8 byte
column plus offsets), so any HDF5 reader can load them; see docs/FORMAT.md. A *base* holds
every row; a *delta* holds only the rows one or more commits added or changed, plus the
paths they removed. Reading the base and then each delta in order gives the store's tables.
Index files are written once under a temporary name and never modified afterwards.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from pipeline import __version__, fsio
from pipeline.contracts import ExtractionFailure
from pipeline.errors import StoreError
from pipeline.identity import VIDEO_ID_HEX
from pipeline.store.layout import FAILURES, FORMAT_VERSION

INDEX_FORMAT_NAME = "video-rnn-index"
CATALOG = "catalog"
SHARDS = "shards"
PATH_INDEX = "path_index"
REMOVED = "removed"
FAILURE_STAT = ("sizes", "mtimes_ns")
"""Failure columns: the file's stat when it was hashed (-1: retried; absent in older files)."""
BASE, DELTA = "base", "delta"
ID_DTYPE = f"S{VIDEO_ID_HEX + 1}"
ROWS_PER_CHUNK = 1024
BYTES_PER_CHUNK = 1 << 16


class PathEntry(NamedTuple):
    """What the path index knows about one source path (as recorded when it was hashed)."""

    video_id: str
    size: int
    mtime_ns: int


class VideoEntry(NamedTuple):
    """Where one stored video lives, its feature rows, and the commit that stored it."""

    shard: str
    frames: int
    generation: int = 0


@dataclass
class StoreIndex:
    """The store's tables: what the base and every delta add up to."""

    videos: dict[str, VideoEntry] = field(default_factory=dict)
    paths: dict[str, PathEntry] = field(default_factory=dict)
    failures: dict[str, ExtractionFailure] = field(default_factory=dict)


@dataclass
class IndexDelta:
    """The rows of one index file; ``None`` marks a path removed from that table."""

    videos: dict[str, VideoEntry] = field(default_factory=dict)
    paths: dict[str, PathEntry | None] = field(default_factory=dict)
    failures: dict[str, ExtractionFailure | None] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Rows over all tables (the size that decides when deltas are folded)."""
        return len(self.videos) + len(self.paths) + len(self.failures)


def stamp(videos: dict[str, VideoEntry], generation: int) -> None:
    """Give every entry of ``videos`` that has no generation yet (a new video) ``generation``,
    in place."""
    for vid, entry in videos.items():
        if not entry.generation:
            videos[vid] = entry._replace(generation=generation)


def drop_missing_files(index: StoreIndex) -> int:
    """Remove, in place, the path rows whose file no longer exists (their videos stay
    stored); how many.

    Run whenever a base is written, so a job that stages the same videos under new paths
    every run does not grow the path index without bound. A path that cannot be checked
    (e.g. permission denied) is kept.
    """
    gone = [path for path in index.paths if _gone(path)]
    for path in gone:
        del index.paths[path]
    return len(gone)


def _gone(path: str) -> bool:
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def apply(index: StoreIndex, delta: IndexDelta) -> None:
    """Apply ``delta`` to ``index`` in place (a later index file wins)."""
    index.videos.update(delta.videos)
    for table, rows in ((index.paths, delta.paths), (index.failures, delta.failures)):
        for key, value in rows.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value


def combine(first: IndexDelta, then: IndexDelta) -> IndexDelta:
    """One delta with the effect of ``first`` followed by ``then``."""
    return IndexDelta(
        first.videos | then.videos, first.paths | then.paths, first.failures | then.failures
    )


def as_base(index: StoreIndex) -> IndexDelta:
    """The rows of a base index file holding ``index`` (no removals)."""
    return IndexDelta(dict(index.videos), dict(index.paths), dict(index.failures))


# --------------------------------------------------------------------------- reading


def _strings(group: h5py.Group, name: str) -> list[str]:
    if f"{name}_bytes" not in group:  # a column version 2 did not have (``removed``)
        return []
    data = group[f"{name}_bytes"][()].tobytes()
    bounds = itertools.pairwise(group[f"{name}_offsets"][()].tolist())
    if data.isascii():  # the usual case: decode once, slice (byte offsets = str offsets)
        text = data.decode("ascii")
        return [text[a:b] for a, b in bounds]
    return [os.fsdecode(data[a:b]) for a, b in bounds]


def _ids(dataset: h5py.Dataset) -> list[str]:
    return dataset[()].astype(str).tolist()  # ASCII, NUL padding dropped


def _read_catalog(f: h5py.File) -> dict[str, VideoEntry]:
    catalog, names = f[CATALOG], _ids(f[SHARDS]["names"])
    shard = [names[s] for s in catalog["shard"][()].tolist()]
    frames = catalog["frames"][()].tolist()
    # Version 2 had no generation column: its videos all predate the first generation.
    generation = catalog["generation"][()].tolist() if "generation" in catalog else [0] * len(shard)
    entries = map(VideoEntry, shard, frames, generation)
    return dict(zip(_ids(catalog["video_ids"]), entries, strict=True))


def _read_paths(f: h5py.File) -> dict[str, PathEntry | None]:
    g = f[PATH_INDEX]
    rows: dict[str, PathEntry | None] = dict.fromkeys(_strings(g, REMOVED))
    columns = (_ids(g["video_ids"]), g["sizes"][()].tolist(), g["mtimes_ns"][()].tolist())
    rows.update(zip(_strings(g, "paths"), map(PathEntry, *columns), strict=True))
    return rows


def _read_failures(f: h5py.File) -> dict[str, ExtractionFailure | None]:
    g = f[FAILURES]
    ids = [v or None for v in _ids(g["video_ids"])]
    # Older index files have no stat columns: their failures are retried (-1).
    stats = [g[name][()].tolist() if name in g else [-1] * len(ids) for name in FAILURE_STAT]
    rows: dict[str, ExtractionFailure | None] = dict.fromkeys(_strings(g, REMOVED))
    columns = (_strings(g, "paths"), _strings(g, "reasons"), ids, *stats)
    for path, reason, vid, size, mtime_ns in zip(*columns, strict=True):
        rows[path] = ExtractionFailure(path, reason, vid, size, mtime_ns)
    return rows


def read_tables(f: h5py.File) -> IndexDelta:
    """The rows of an open index file (or of a version-2 index, which had the same tables)."""
    return IndexDelta(_read_catalog(f), _read_paths(f), _read_failures(f))


def read_index_file(path: Path) -> IndexDelta:
    """The rows of one index file (``FileNotFoundError`` when it is not there).

    A file that is there but damaged (not HDF5, truncated, tables missing) is one
    :class:`StoreError` line naming it.
    """
    damaged = (
        f"{path}: index file is damaged (%s); restore the store's directory from a copy "
        "or re-extract into a new store"
    )
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as e:
        if not path.exists():  # removed while HDF5 opened it: a commit folded it away
            raise FileNotFoundError(errno.ENOENT, "index file removed", str(path)) from None
        raise StoreError(damaged % f"not readable as HDF5: {e}") from None
    with f:
        if f.attrs.get("format") != INDEX_FORMAT_NAME:
            raise StoreError(damaged % "not a video-rnn index file")
        try:
            return read_tables(f)
        except (OSError, KeyError, ValueError) as e:
            raise StoreError(damaged % f"{type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------- writing


def _put(group: h5py.Group, name: str, data: np.ndarray, chunk: int = ROWS_PER_CHUNK) -> None:
    if len(data) > chunk:
        group.create_dataset(name, data=data, chunks=(chunk,))
    else:
        group.create_dataset(name, data=data)


def _put_strings(group: h5py.Group, name: str, values: Iterable[str]) -> None:
    encoded = [os.fsencode(v) for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    _put(group, f"{name}_bytes", np.frombuffer(b"".join(encoded), np.uint8), BYTES_PER_CHUNK)
    _put(group, f"{name}_offsets", offsets)


def _put_ids(group: h5py.Group, name: str, ids: Iterable[str | None]) -> None:
    _put(group, name, np.array([(v or "").encode("ascii") for v in ids], dtype=ID_DTYPE))


def _split(rows: dict) -> tuple[list, list[str]]:
    kept = sorted((key, value) for key, value in rows.items() if value is not None)
    return kept, sorted(key for key, value in rows.items() if value is None)


def _write_tables(f: h5py.File, delta: IndexDelta) -> None:
    videos = sorted(delta.videos.items())
    shard_names = sorted({entry.shard for _, entry in videos})
    row = {name: i for i, name in enumerate(shard_names)}
    _put(f.create_group(SHARDS), "names", np.array(shard_names, dtype="S64"))
    catalog = f.create_group(CATALOG)
    _put_ids(catalog, "video_ids", (vid for vid, _ in videos))
    _put(catalog, "shard", np.array([row[e.shard] for _, e in videos], np.int32))
    _put(catalog, "frames", np.array([e.frames for _, e in videos], np.int64))
    _put(catalog, "generation", np.array([e.generation for _, e in videos], np.int64))
    paths, removed = _split(delta.paths)
    g = f.create_group(PATH_INDEX)
    _put_strings(g, "paths", (p for p, _ in paths))
    _put_ids(g, "video_ids", (e.video_id for _, e in paths))
    _put(g, "sizes", np.array([e.size for _, e in paths], np.int64))
    _put(g, "mtimes_ns", np.array([e.mtime_ns for _, e in paths], np.int64))
    _put_strings(g, REMOVED, removed)
    failures, removed = _split(delta.failures)
    g = f.create_group(FAILURES)
    _put_strings(g, "paths", (p for p, _ in failures))
    _put_strings(g, "reasons", (x.reason for _, x in failures))
    _put_ids(g, "video_ids", (x.video_id for _, x in failures))
    sizes, mtimes = FAILURE_STAT
    _put(g, sizes, np.array([x.size for _, x in failures], np.int64))
    _put(g, mtimes, np.array([x.mtime_ns for _, x in failures], np.int64))
    _put_strings(g, REMOVED, removed)


def write_index_file(target: Path, delta: IndexDelta, *, kind: str, generation: int) -> None:
    """Write an index file at ``target``: under a temporary name, fsynced, then renamed.

    Args:
        target: the final path (``<shards>/index-<hex>.h5``).
        delta: its rows (a base has no removals).
        kind: ``"base"`` or ``"delta"``.
        generation: the last commit whose changes it holds.
    """
    with fsio.replacing(target) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = INDEX_FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["tool_version"] = __version__
        f.attrs["kind"] = kind
        f.attrs["generation"] = generation
        _write_tables(f, delta)
        f.flush()
        os.fsync(f.id.get_vfd_handle())
