"""Reading a committed version-3 store: the index once, then videos straight from their shards.

The reader loads the root file and its index files (base, then deltas) once. It does not
follow the external links (those are for plain h5py users): it looks a video up in the
catalog and reads it from its shard, keeping a few shard files open.
A shard the index references but the directory lacks is one error naming the missing
shard(s) and the videos they held. When the index was replaced since it was opened (a
compaction moved videos to new shards), the reader reloads it once before giving up; an
index file deleted while it was being loaded (a commit folded it away) means a newer root:
the load starts over from it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import OrderedDict
from collections.abc import Container, Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np

from pipeline.contracts import ExtractionFailure, ExtractorConfig, VideoFeatures, VideoInfo
from pipeline.errors import StoreError
from pipeline.identity import file_sha256, video_id_from_sha256
from pipeline.store.generations import load_index, read_root
from pipeline.store.index import PathEntry, VideoEntry
from pipeline.store.layout import (
    FEATURES,
    TIMESTAMPS,
    VIDEOS,
    check_format,
    config_of,
    from_h5_text,
    open_store_file,
    shards_dir_for,
)
from pipeline.validity import feature_problem

RELOADS = 20
"""Times a reader starts its load over when commits keep folding index files away meanwhile."""
OPEN_SHARDS = 16
"""Shard files a reader keeps open (least recently used ones are closed)."""
NAMED_VIDEOS = 5


def _file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """Which root file this is: a commit renames a new file (a new inode) over the old one."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _path_identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        return _file_identity(path.stat())
    except FileNotFoundError:
        return None


def indexed_video_id(
    index: Mapping[str, PathEntry], stored: Container[str], source: Path
) -> str | None:
    """The id the path index records for ``source``, if still valid; else None (hash it).

    Valid means: the video is ``stored`` and the file's size and mtime are those recorded
    when it was hashed. This is the one "path → stored video id" shortcut: the reader's
    :meth:`FeatureStore.video_id_for` and extraction planning both use it.
    """
    entry = index.get(str(source))
    if entry is None or entry.video_id not in stored:
        return None
    return entry.video_id if unchanged(source, entry.size, entry.mtime_ns) else None


def known_failure(
    failures: Mapping[str, ExtractionFailure], source: Path
) -> ExtractionFailure | None:
    """The recorded failure of ``source`` while the file is unchanged since it failed; else
    None (try it).

    Unchanged means: the size and mtime the failure recorded when the file was hashed (only
    failures of a file's content record them, see :class:`ExtractionFailure`).
    """
    failure = failures.get(str(source))
    if failure is None or failure.size < 0:
        return None
    return failure if unchanged(source, failure.size, failure.mtime_ns) else None


def unchanged(source: Path, size: int, mtime_ns: int) -> bool:
    """True while ``source`` still has the size and mtime recorded when it was hashed (False
    when it cannot be read): the one "same file content" shortcut of every check."""
    try:
        st = source.stat()
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (size, mtime_ns)


def _open_index(path: Path) -> h5py.File:
    f = open_store_file(path)
    try:
        check_format(path, f)
    except StoreError:
        f.close()
        raise
    return f


def require_same_features(path: Path, have: ExtractorConfig, expected: ExtractorConfig) -> None:
    """Raise :class:`StoreError` naming both configurations unless they compute the same
    features (weights compared by sha256, not by name)."""
    if not have.same_features(expected):
        raise StoreError(
            f"{path} was built by a different extractor: store has "
            f"({have.describe()}), expected ({expected.describe()})"
        )


def read_store_config(path: Path) -> ExtractorConfig:
    """A committed store's extractor configuration, from its root file alone (format checked)."""
    with _open_index(path) as f:
        return config_of(f)


class FeatureStore:
    """Read-only view of a committed store. Prefer :func:`open_store`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.shards_dir = shards_dir_for(self.path)
        """Always ``<root name>.d`` beside the root: a store moves, renames and copies whole."""
        self._shards: OrderedDict[str, h5py.File] = OrderedDict()
        self._load()

    def _load(self) -> None:
        for _ in range(RELOADS):
            with _open_index(self.path) as f:
                # The file opened, not whatever the name points at by now (a commit may
                # have renamed a new root over it meanwhile).
                self._identity = _file_identity(os.fstat(f.id.get_vfd_handle()))
                self.config: ExtractorConfig = config_of(f)
                root = read_root(f)
            try:
                index = load_index(self.shards_dir, root)
                break
            except FileNotFoundError as e:
                if _path_identity(self.path) == self._identity:  # no newer root: really gone
                    raise StoreError(
                        f"{self.path}: index file {e.filename} is missing; restore the "
                        f"{self.shards_dir.name} directory or re-extract"
                    ) from None
        else:
            raise StoreError(f"{self.path} kept changing while it was opened; try again")
        self._catalog, self._paths, self._failures = index.videos, index.paths, index.failures
        self.__dict__.pop("video_ids", None)

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every open shard file."""
        while self._shards:
            self._shards.popitem()[1].close()

    @functools.cached_property
    def video_ids(self) -> list[str]:
        """Ids of all stored videos, sorted."""
        return sorted(self._catalog)

    @property
    def catalog(self) -> dict[str, VideoEntry]:
        """``{video_id: VideoEntry(shard, frames, generation)}`` of every stored video."""
        return self._catalog

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._catalog

    def __len__(self) -> int:
        return len(self._catalog)

    @property
    def path_index(self) -> dict[str, PathEntry]:
        """``{source path: PathEntry(video_id, size, mtime_ns)}`` as recorded at extraction."""
        return self._paths

    @property
    def failures(self) -> list[ExtractionFailure]:
        """Videos whose last extraction attempt failed, with reasons."""
        return list(self._failures.values())

    def require_config(self, expected: ExtractorConfig) -> None:
        """Raise :class:`StoreError` naming both configurations unless they compute the same
        features (weights compared by sha256, not by name)."""
        require_same_features(self.path, self.config, expected)

    def video_id_for(self, source: Path) -> str | None:
        """The stored id for a video file, or None when its content is not in the store.

        Uses the path index when size and mtime still match; otherwise hashes the file.
        """
        indexed = indexed_video_id(self._paths, self, source)
        if indexed is not None:
            return indexed
        try:
            video_id = video_id_from_sha256(file_sha256(source))
        except OSError:
            return None
        return video_id if video_id in self else None

    def missing_shards(self) -> dict[str, list[str]]:
        """``{shard name: [video ids]}`` for referenced shards absent from the directory."""
        held: dict[str, list[str]] = {}
        for vid, entry in sorted(self._catalog.items()):
            held.setdefault(entry.shard, []).append(vid)
        return {s: ids for s, ids in held.items() if not (self.shards_dir / s).is_file()}

    def _missing_error(self) -> StoreError:
        missing = self.missing_shards()
        ids = [vid for held in missing.values() for vid in held]
        more = f" (and {len(ids) - NAMED_VIDEOS} more)" if len(ids) > NAMED_VIDEOS else ""
        return StoreError(
            f"{self.path}: shard file(s) missing from {self.shards_dir}: "
            f"{', '.join(sorted(missing))}; {len(ids)} video(s) affected: "
            f"{', '.join(ids[:NAMED_VIDEOS])}{more}; restore the directory or re-extract"
        )

    def _shard(self, name: str) -> h5py.File:
        if name in self._shards:
            self._shards.move_to_end(name)
            return self._shards[name]
        try:
            f = h5py.File(self.shards_dir / name, "r")
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StoreError(
                f"{self.path}: shard {self.shards_dir / name} is not readable ({e}); "
                "restore it or re-extract"
            ) from e
        self._shards[name] = f
        if len(self._shards) > OPEN_SHARDS:
            self._shards.popitem(last=False)[1].close()
        return f

    def _group(self, video_id: str) -> h5py.Group:
        try:
            return self._shard(self._catalog[video_id].shard)[VIDEOS][video_id]
        except (FileNotFoundError, KeyError):
            pass
        if _path_identity(self.path) != self._identity:  # replaced meanwhile (e.g. compacted)
            self.close()
            self._load()
            if video_id in self._catalog:
                with contextlib.suppress(FileNotFoundError, KeyError):
                    return self._shard(self._catalog[video_id].shard)[VIDEOS][video_id]
        raise self._missing_error()

    def read(self, video_id: str) -> VideoFeatures:
        """One video's features (stored dtype), timestamps and decode facts.

        Raises:
            StoreError: unknown id, a missing shard (naming it and the videos it held), or
                data failing its fletcher32 checksum.
        """
        if video_id not in self:
            raise StoreError(f"{self.path}: no video {video_id}")
        g = self._group(video_id)
        attrs = dict(g.attrs)
        features, timestamps = self._checked_arrays(video_id, g)
        info = video_info_from_attrs(attrs)
        return VideoFeatures(video_id, str(attrs["content_sha256"]), features, timestamps, info)

    def read_features(self, video_id: str) -> np.ndarray:
        """One video's ``[T, D]`` features alone (stored dtype): what :meth:`read` returns as
        ``.features``, checked the same way, without parsing its attributes.

        Raises:
            StoreError: as :meth:`read`.
        """
        if video_id not in self:
            raise StoreError(f"{self.path}: no video {video_id}")
        return self._checked_arrays(video_id, self._group(video_id))[0]

    def _checked_arrays(self, video_id: str, g: h5py.Group) -> tuple[np.ndarray, np.ndarray]:
        """A video's features and timestamps, refused unless valid (:mod:`pipeline.validity`).

        Raises:
            StoreError: a chunk fails its checksum, or the arrays are not valid features.
        """
        try:
            features = g[FEATURES][()]
            timestamps = g[TIMESTAMPS][()]
        except OSError as e:
            raise self._corrupt_error(video_id, g.attrs, e) from e
        problem = feature_problem(
            features, timestamps, rows=self._catalog[video_id].frames, dim=self.config.feature_dim
        )
        if problem is not None:
            source = from_h5_text(g.attrs.get("source_path", b"?"))
            raise StoreError(
                f"{source}: its stored features {problem} (a corrupt store entry, video id "
                f"{video_id}); re-extract it into a new store"
            )
        return features, timestamps

    def _corrupt_error(self, video_id: str, attrs: Mapping, error: OSError) -> StoreError:
        return StoreError(
            f"{self.path}: video {video_id} ({attrs.get('source_path')}) is corrupt on "
            f"disk ({error}); delete the store or re-extract"
        )

    def video_info(self, video_id: str) -> VideoInfo:
        """One video's decode facts (its group's attributes only: no feature data is read)."""
        if video_id not in self:
            raise StoreError(f"{self.path}: no video {video_id}")
        return video_info_from_attrs(dict(self._group(video_id).attrs))

    def iter_videos(self) -> Iterator[VideoFeatures]:
        """Every stored video, in id order."""
        for video_id in self.video_ids:
            yield self.read(video_id)


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def video_info_from_attrs(attrs: dict) -> VideoInfo:
    """A video group's decode facts (attributes missing in older stores take defaults)."""
    fields = {k: _plain(attrs[k]) for k in VideoInfo.__dataclass_fields__ if k in attrs}
    fields.pop("path", None)
    return VideoInfo(path=from_h5_text(attrs["source_path"]), **fields)


def open_store(path: Path, expected: ExtractorConfig | None = None) -> FeatureStore:
    """Open a committed store read-only; with ``expected``, also check its extractor config."""
    store = FeatureStore(path)
    if expected is not None:
        try:
            store.require_config(expected)
        except StoreError:
            store.close()
            raise
    return store
