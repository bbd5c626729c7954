"""The steps of a commit: read staging → merge (pure dict logic) → write shards + index → replace.

Staged part files already have the shard layout, so "writing" a new video's shard is a hard
link into the shard directory (a copy where the file system has no hard links): no feature
byte is read or rewritten by the committing process. A new generation of the index is then
published (:mod:`pipeline.store.generations`). Until its root is renamed into place the new
shards, index and links files are unreferenced; :func:`remove_unreferenced` (run by the next
writer, under the lock) deletes such leftovers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from pipeline import fsio
from pipeline.contracts import ExtractionFailure, ExtractorConfig
from pipeline.store.index import IndexDelta, PathEntry, StoreIndex, VideoEntry
from pipeline.store.layout import (
    FEATURES,
    VIDEOS,
    config_of,
    from_h5_text,
    new_shard_name,
)

NO_HARD_LINKS = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK}


@dataclass(frozen=True)
class StagedVideo:
    """One finished video waiting in the staging directory."""

    part: Path
    video_id: str
    frames: int
    source: str
    entry: PathEntry
    shard: str = field(default_factory=new_shard_name)


@dataclass
class Staging:
    """Everything a staging directory holds: finished videos, aliases and failures."""

    videos: list[StagedVideo] = field(default_factory=list)
    aliases: dict[str, PathEntry] = field(default_factory=dict)
    failures: list[ExtractionFailure] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    """Staged files to delete once the commit is in place."""
    foreign: list[Path] = field(default_factory=list)
    """Parts made by another extractor (or unreadable): refused, left staged, never committed."""


@dataclass
class CommitSummary:
    """What a commit changed: videos now stored, videos and frames added, failures recorded."""

    videos: int = 0
    added: int = 0
    frames_added: int = 0
    failures: list[ExtractionFailure] = field(default_factory=list)
    foreign: int = 0
    """Staged parts refused: made by another extractor, or unreadable."""
    paths_dropped: int = 0
    """Path-index rows of files that no longer exist, dropped by a fold into a new base."""


def _staged_video(part: Path) -> StagedVideo:
    with h5py.File(part, "r") as f:
        (video_id, group), *_ = f[VIDEOS].items()
        attrs = group.attrs
        # Version-1 parts (left by an older vrnn) kept the source stat on the root.
        size = attrs.get("source_size", f.attrs.get("source_size"))
        mtime_ns = attrs.get("source_mtime_ns", f.attrs.get("source_mtime_ns"))
        return StagedVideo(
            part=part,
            video_id=video_id,
            frames=int(group[FEATURES].shape[0]),
            source=from_h5_text(attrs["source_path"]),
            entry=PathEntry(video_id, int(size), int(mtime_ns)),
        )


def _part_config(part: Path) -> ExtractorConfig | None:
    """The extractor a part file records; None when it records none (or is unreadable)."""
    try:
        with h5py.File(part, "r") as f:
            return config_of(f)
    except (OSError, KeyError, ValueError):
        return None


def staged_config(parts_dir: Path) -> ExtractorConfig | None:
    """The extractor of the first staged part that records one (a killed run's), else None."""
    for part in sorted(parts_dir.glob("v*.h5")):
        made_by = _part_config(part)
        if made_by is not None:
            return made_by
    return None


def foreign_parts(parts_dir: Path, config: ExtractorConfig) -> dict[Path, ExtractorConfig]:
    """Staged parts whose recorded extractor does not compute ``config``'s features."""
    found = {}
    for part in sorted(parts_dir.glob("v*.h5")):
        made_by = _part_config(part)
        if made_by is not None and not made_by.same_features(config):
            found[part] = made_by
    return found


def read_staging(parts_dir: Path, config: ExtractorConfig) -> Staging:
    """Read the metadata (never the features) of everything staged in ``parts_dir``.

    A part made by an extractor other than ``config`` (or one whose extractor cannot be
    read) is refused: listed in ``foreign``, left where it is, never committed.
    """
    staging = Staging()
    for part in sorted(parts_dir.glob("v*.h5")):
        made_by = _part_config(part)
        if made_by is None or not made_by.same_features(config):
            staging.foreign.append(part)
            continue
        staging.videos.append(_staged_video(part))
        staging.files.append(part)
    for path in sorted(parts_dir.glob("*.alias.json")):
        alias = json.loads(path.read_text())
        entry = PathEntry(alias["video_id"], alias["size"], alias["mtime_ns"])
        staging.aliases[alias["path"]] = entry
        staging.files.append(path)
    for path in sorted(parts_dir.glob("*.failed.json")):
        staging.failures.append(ExtractionFailure(**json.loads(path.read_text())))
        staging.files.append(path)
    return staging


def merge(
    index: StoreIndex, staging: Staging
) -> tuple[IndexDelta, list[StagedVideo], CommitSummary]:
    """The rows that commit ``staging`` onto ``index``, the videos needing a shard, a summary.

    Pure and O(staged rows): ``index`` is only looked up, and a row that would not change it
    is left out (an empty delta: nothing to publish). A staged video already stored (same
    content) only updates the path index; an alias counts only when its video is stored; a
    failure removes its path from the path index until the file extracts again.
    """
    delta = IndexDelta()
    summary = CommitSummary(failures=list(staging.failures), foreign=len(staging.foreign))
    new: list[StagedVideo] = []
    for staged in staging.videos:
        if staged.video_id not in index.videos and staged.video_id not in delta.videos:
            delta.videos[staged.video_id] = VideoEntry(staged.shard, staged.frames)
            new.append(staged)
            summary.added += 1
            summary.frames_added += staged.frames
        _set(delta.paths, index.paths, staged.source, staged.entry)
        _set(delta.failures, index.failures, staged.source, None)
    for path, entry in staging.aliases.items():
        if entry.video_id in index.videos or entry.video_id in delta.videos:
            _set(delta.paths, index.paths, path, entry)  # (its original may have failed)
            _set(delta.failures, index.failures, path, None)
    for failure in staging.failures:
        _set(delta.failures, index.failures, failure.path, failure)
        _set(delta.paths, index.paths, failure.path, None)
    summary.videos = len(index.videos) + len(delta.videos)
    return delta, new, summary


def _set(rows: dict, committed: dict, key: str, value: object) -> None:
    """Record ``key`` → ``value`` (None: removed) in a delta's ``rows`` unless the table
    already says so."""
    current = rows[key] if key in rows else committed.get(key)
    if current != value:
        rows[key] = value


def link_shards(new: list[StagedVideo], shards_dir: Path) -> None:
    """Make each new video's part file a shard (hard link; copy without hard links)."""
    shards_dir.mkdir(exist_ok=True)
    for staged in new:
        target = shards_dir / staged.shard
        try:
            os.link(staged.part, target)
        except OSError as e:
            if e.errno not in NO_HARD_LINKS:
                raise
            _copy_durably(staged.part, target)
    fsio.fsync_dir(shards_dir)


def _copy_durably(source: Path, target: Path) -> None:
    with fsio.replacing(target) as tmp:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


STORE_FILES = ("shard-*.h5", "index-*.h5", "links-*.h5")


def remove_unreferenced(shards_dir: Path, referenced: set[str]) -> list[Path]:
    """Delete shard, index and links files (and temp files) not in ``referenced``; the ones
    removed.

    Only a writer holding the store's lock may call this: a reader never deletes anything.
    """
    if not shards_dir.is_dir():
        return []
    found = (p for pattern in STORE_FILES for p in shards_dir.glob(pattern))
    stale = [p for p in found if p.name not in referenced]
    stale += list(shards_dir.glob(fsio.TEMP_GLOB))
    for path in stale:
        fsio.remove(path)
    return stale
