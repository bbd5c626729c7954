"""Links files: ``/videos/<id>`` external links into the shards, for plain h5py readers.

The root file's ``/videos`` is an external link to the ``/videos`` group of the current links
file, so ``h5py.File("features.h5")["videos"][video_id]`` reads any stored video. A links file
is not rewritten by each commit: the writer keeps one *spare* (the previous commit's links
file, one commit behind), takes it under a temporary name, adds the links of the videos
stored since its generation in place and renames it to a new name; the new root then points
at it. The links file the current root names is never modified. Without a usable spare (a
new store, a crash, a plain h5py reader holding the spare open) the current links file is
copied instead: O(videos) bytes, the exception (and when the current links file is damaged or
gone too, a complete one is written from the catalog: the commit heals it).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import h5py
import numpy as np

from pipeline import __version__, fsio
from pipeline.store.index import ID_DTYPE, VideoEntry
from pipeline.store.layout import FORMAT_VERSION, VIDEOS

LINKS_FORMAT_NAME = "video-rnn-links"
LINKS_GLOB = "links-*.h5"
ADDED = "added_ids"
"""Dataset of a links file: the ids it linked at its own generation (a commit's new videos)."""


def new_links_name() -> str:
    """A fresh links file name (``links-<16 hex>.h5``)."""
    return f"links-{uuid.uuid4().hex[:16]}.h5"


def links_generation(path: Path) -> int | None:
    """The generation a complete links file reflects; None when it is not a readable one."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != LINKS_FORMAT_NAME:
                return None
            return int(f.attrs["generation"])
    except (OSError, KeyError):
        return None


def _link(group: h5py.Group, video_id: str, entry: VideoEntry) -> None:
    if video_id in group:
        del group[video_id]
    group[video_id] = h5py.ExternalLink(entry.shard, f"/{VIDEOS}/{video_id}")


def _added_ids(path: Path, generation: int) -> list[str] | None:
    """The ids the links file at ``path`` linked at ``generation`` (its own); None when it
    is of another generation or records none (a complete file)."""
    try:
        with h5py.File(path, "r") as f:
            if ADDED not in f or int(f.attrs["generation"]) != generation:
                return None
            return f[ADDED][()].astype(str).tolist()
    except (OSError, KeyError):
        return None


def _add_links(
    f: h5py.File,
    videos: dict[str, VideoEntry],
    ids: list[str],
    added: list[str] | None,
    generation: int,
) -> None:
    """Link ``ids`` (each to its shard in ``videos``) and record ``added``, the ids whose
    links are new at ``generation`` (None: not recorded, as in a complete file)."""
    group = f.require_group(VIDEOS)
    for video_id in sorted(ids):
        _link(group, video_id, videos[video_id])
    if ADDED in f:
        del f[ADDED]
    if added is not None:
        f.create_dataset(ADDED, data=np.array(sorted(added), dtype=ID_DTYPE))
    f.attrs["generation"] = generation
    f.flush()
    os.fsync(f.id.get_vfd_handle())


def write_links(shards_dir: Path, videos: dict[str, VideoEntry], generation: int) -> str:
    """Write a complete links file for ``videos``; its name (temp name, fsync, rename)."""
    name = new_links_name()
    with fsio.replacing(shards_dir / name) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = LINKS_FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["tool_version"] = __version__
        _add_links(f, videos, list(videos), None, generation)
    return name


def find_spare(shards_dir: Path, current: str, valid: range) -> tuple[str, int] | None:
    """The newest complete links file other than ``current`` whose generation is in ``valid``."""
    found = []
    for path in shards_dir.glob(LINKS_GLOB):
        generation = links_generation(path) if path.name != current else None
        if generation is not None and generation in valid:
            found.append((generation, path.name))
    if not found:
        return None
    generation, name = max(found)
    return name, generation


def _open_for_update(path: Path) -> h5py.File | None:
    """``path`` opened for writing, or None while another process (a reader) has it open."""
    try:
        return h5py.File(path, "r+", locking="best-effort")
    except OSError:
        return None


def _linked_since(
    shards_dir: Path,
    current: str,
    since: int,
    videos: dict[str, VideoEntry],
    added: list[str],
    generation: int,
) -> list[str]:
    """Ids of the videos stored after generation ``since``: this commit's ``added``, plus,
    for a spare two generations behind, those the current links file recorded as its own
    additions; a scan of ``videos`` only when neither applies (an older spare)."""
    if since == generation - 1:
        return added
    previous = _added_ids(shards_dir / current, generation - 1)
    if previous is not None and since == generation - 2:
        return [*previous, *added]
    return [vid for vid, entry in videos.items() if entry.generation > since]


def advance_links(
    shards_dir: Path,
    current: str,
    spare: tuple[str, int] | None,
    videos: dict[str, VideoEntry],
    added: list[str],
    generation: int,
) -> str:
    """A links file for ``videos`` at ``generation``, made from ``spare`` (or a copy of
    ``current``) by adding the links of videos stored after it; its new name.

    ``added``: the videos this commit stores (their entries carry ``generation``). Only the
    links of videos stored since the spare's generation are written: O(new videos). The file
    is modified only under a temporary name: a kill leaves the current links file untouched
    and a temporary file the next writer deletes.
    """
    if spare is None and links_generation(shards_dir / current) is None:
        return write_links(shards_dir, videos, generation)  # current one damaged or gone
    name = new_links_name()
    with fsio.replacing(shards_dir / name) as tmp:
        f = _open_for_update(shards_dir / spare[0]) if spare else None
        recycled = spare if f is not None else None
        if recycled:
            since = recycled[1]
        else:
            since = links_generation(shards_dir / current)
            shutil.copyfile(shards_dir / current, tmp)
            f = h5py.File(tmp, "r+")
        with f:
            if recycled:  # kept open meanwhile: nobody else can lock it
                fsio.swap_in(shards_dir / recycled[0], tmp)
            since = -1 if since is None else since
            ids = _linked_since(shards_dir, current, since, videos, added, generation)
            _add_links(f, videos, ids, added, generation)
    return name
