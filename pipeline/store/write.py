"""Writing the feature store: atomic part files, the writer's lock, atomic commits.

Writers never share a file: each finished video is a small part file renamed into
``<store>.parts/``, already laid out as a shard. :meth:`StoreBuilder.commit` hard-links the
new parts into ``<store>.d/`` as immutable shards, adds a small delta index file beside them
and atomically replaces the small root file (``<store>``) that names them
(:mod:`pipeline.store.generations`); old shards and index files are never touched. Readers therefore
only ever see a complete store, and a kill at any moment loses at most the videos in flight.
Reading lives in :mod:`pipeline.store.read`, the index tables in :mod:`pipeline.store.index`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from pipeline import fsio
from pipeline.contracts import ExtractionFailure, ExtractorConfig, VideoFeatures, VideoInfo
from pipeline.errors import StoreError
from pipeline.fsio import os_reason, require_free_space
from pipeline.identity import video_id_from_sha256
from pipeline.store.commit import (
    CommitSummary,
    foreign_parts,
    link_shards,
    merge,
    read_staging,
    remove_unreferenced,
)
from pipeline.store.generations import Root, publish, read_generation, referenced_files, relink
from pipeline.store.index import StoreIndex
from pipeline.store.layout import (
    CHUNK_ROWS,
    FEATURES,
    TIMESTAMPS,
    VIDEOS,
    atomic_bytes,
    atomic_json,
    h5_text,
    parts_dir_for,
    shards_dir_for,
    write_config_attrs,
    write_error,
)
from pipeline.store.read import (
    read_store_config,
    require_same_features,
    video_info_from_attrs,
)

log = logging.getLogger(__name__)


WEIGHTS_SUFFIX = ".weights.h5"  # Keras saves weights only under names that end so


def backbone_sidecar(store_path: Path) -> Path:
    """Where the exact backbone weights of a store are saved (``<name>.backbone.weights.h5``).

    Named after the full store file name, so ``features.h5`` and ``features.hdf5`` in one
    folder never share (and overwrite) one weights file.
    """
    return store_path.with_name(f"{store_path.name}.backbone{WEIGHTS_SUFFIX}")


def _lock_path_for(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".lock")


def _path_key(path: str) -> str:
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()
    return video_id_from_sha256(digest)


def _file_stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


# --------------------------------------------------------------------------- staging


def _write_video(group: h5py.Group, vf: VideoFeatures, dtype: str) -> h5py.Group:
    rows = vf.features.shape[0]
    g = group.create_group(vf.video_id)
    g.create_dataset(
        FEATURES,
        data=vf.features.astype(dtype, copy=False),
        chunks=(min(rows, CHUNK_ROWS), vf.features.shape[1]),
        compression="gzip",
        compression_opts=1,  # level 1: ~35% less CPU than 4 for ~4% more bytes
        shuffle=True,
        fletcher32=True,
    )
    g.create_dataset(TIMESTAMPS, data=vf.timestamps_sec.astype(np.float64), fletcher32=True)
    g.attrs["content_sha256"] = vf.content_sha256
    for key, value in asdict(vf.info).items():
        if value is None:  # unknown (HDF5 has no null): the attribute is left out
            continue
        if key == "path":
            g.attrs["source_path"] = h5_text(value)
        else:
            g.attrs[key] = value
    return g


def write_part(
    parts_dir: Path,
    config: ExtractorConfig,
    vf: VideoFeatures,
    *,
    source_stat: tuple[int, int] | None = None,
) -> Path:
    """Write one extracted video as a part file, atomically (temp name, fsync, rename).

    A part file has the layout of a shard (docs/FORMAT.md), so the commit links it into the
    store as it is. Safe to call from any process: each part has its own file and temp name.
    ``source_stat`` is the source's ``(size, mtime_ns)`` when it was hashed (the path
    index's fast-path key); None stats the file now.
    """
    final = parts_dir / f"{vf.video_id}.h5"
    try:
        size, mtime_ns = source_stat or _file_stat(Path(vf.info.path))
    except OSError:  # source deleted mid-run: an index entry that never matches, so rehash
        size, mtime_ns = -1, -1
    # Built in memory, written with plain file I/O: a full disk is then a clean OSError,
    # not an HDF5 crash (h5py issue #914).
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        write_config_attrs(f, config, shard=True)
        group = _write_video(f.create_group(VIDEOS), vf, config.dtype)
        group.attrs["source_size"] = size
        group.attrs["source_mtime_ns"] = mtime_ns
    atomic_bytes(final, image.getvalue())
    return final


def staged_video_ids(parts_dir: Path) -> set[str]:
    """Ids of the finished part files in a staging directory (see :func:`write_part`)."""
    return {p.stem for p in parts_dir.glob("v*.h5")}


def staged_video_infos(parts_dir: Path) -> list[tuple[str, VideoInfo]]:
    """``(video_id, decode facts)`` of every finished part file, features left unread."""
    infos = []
    for part in sorted(parts_dir.glob("v*.h5")):
        with contextlib.suppress(OSError), h5py.File(part, "r") as f:
            infos.extend(
                (vid, video_info_from_attrs(dict(g.attrs))) for vid, g in f[VIDEOS].items()
            )
    return infos


def write_failure(parts_dir: Path, failure: ExtractionFailure) -> Path:
    """Record a failed video in the staging directory (committed into the store's failures)."""
    path = parts_dir / f"{_path_key(failure.path)}.failed.json"
    atomic_json(path, asdict(failure))
    return path


def write_alias(parts_dir: Path, source: Path, video_id: str, source_stat: tuple[int, int]) -> Path:
    """Record that ``source`` has the content of an already stored ``video_id``.

    ``source_stat`` is the file's ``(size, mtime_ns)`` when it was hashed, never a later
    stat: a file replaced since then then no longer matches its entry and is hashed again.
    """
    size, mtime_ns = source_stat
    path = parts_dir / f"{_path_key(str(source))}.alias.json"
    atomic_json(
        path, {"path": str(source), "video_id": video_id, "size": size, "mtime_ns": mtime_ns}
    )
    return path


# --------------------------------------------------------------------------- committing


class StoreBuilder:
    """Exclusive writer of one store: owns the lock, the staging directory and the commit.

    Args:
        store_path: the index file (``features.h5``); shards go to ``<store_path>.d/``.
        config: the extractor configuration this run uses; an existing store or staging
            directory made with another one is a :class:`StoreError` naming both.

    Use as a context manager; the lock is released on exit (and by the OS if killed).
    """

    def __init__(self, store_path: Path, config: ExtractorConfig):
        self.path = Path(store_path)
        self.config = config
        self.parts_dir = parts_dir_for(self.path)
        self.shards_dir = shards_dir_for(self.path)
        self._lock_fd: int | None = None
        self._committed: tuple[Root, StoreIndex] | None = None
        """The committed generation, read once under the lock (only this writer changes it)."""

    def __enter__(self) -> StoreBuilder:
        if not self.path.parent.is_dir():
            raise StoreError(f"output directory {self.path.parent} does not exist")
        self._acquire_lock()
        try:
            self._check_existing()
            self.remove_leftovers()
            relink(self.path)  # a renamed or copied store: its link names its own directory
            try:
                self.parts_dir.mkdir(exist_ok=True)
            except OSError as e:
                raise write_error(self.parts_dir, e) from e
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release_lock()

    @contextlib.contextmanager
    def lock_only(self) -> Iterator[StoreBuilder]:
        """Hold the writer's lock without checking or staging anything (store migration)."""
        self._acquire_lock()
        try:
            yield self
        finally:
            self._release_lock()

    def remove_leftovers(self) -> None:
        """Delete what killed commits left: temp index files and unreferenced shards.

        Only the lock holder writes this store, so nothing here can be another writer's.
        """
        fsio.remove_leftovers(self.path)
        fsio.remove_leftovers(backbone_sidecar(self.path), suffix=WEIGHTS_SUFFIX)
        root, index = self._generation()
        referenced = referenced_files(self.shards_dir, root, index)
        removed = remove_unreferenced(self.shards_dir, referenced)
        if removed:
            log.info("removed %d file(s) no commit references", len(removed))

    def _acquire_lock(self) -> None:
        lock_path = _lock_path_for(self.path)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot create lock file {lock_path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"{self.path} is being written by another extraction ({lock_path} is "
                "locked); wait for it to finish"
            ) from None
        # Content-free (an older vrnn wrote its pid here): the lock file beside a store in
        # a DVC output never changes the output's hash (.dvcignore also excludes it).
        os.ftruncate(fd, 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
        self._committed = None

    def _check_existing(self) -> None:
        if self.path.exists():  # the root's attributes only: O(1) whatever the store's size
            require_same_features(self.path, read_store_config(self.path), self.config)
        # Each part records the extractor that made it: no separate guard file to lose.
        other = next(iter(foreign_parts(self.parts_dir, self.config).values()), None)
        if other is not None:
            raise StoreError(
                f"{self.parts_dir} holds uncommitted videos from another extractor "
                f"({other.describe()}) but this run uses ({self.config.describe()}); "
                "rerun with the original options or delete that directory"
            )

    def staged_ids(self) -> set[str]:
        """Video ids finished in the staging directory but not yet committed."""
        return staged_video_ids(self.parts_dir)

    def commit(self) -> CommitSummary:
        """Add the staged videos to the store: link them in as shards, publish a generation.

        Steps: read staging → merge (pure) → write (shard links, the delta index file, the
        links file, the root under a temporary name) → replace (rename the root). Staged
        files are deleted only after the rename, so a kill at any point leaves the old or the
        new store plus redoable parts; files written by a killed commit are removed by the
        next writer.
        """
        staging = read_staging(self.parts_dir, self.config)
        root, committed = self._generation()
        delta, new, summary = merge(committed, staging)
        if staging.foreign:
            log.warning(
                "%d staged part(s) in %s were made by another extractor (or are unreadable) "
                "and are not committed; delete them or rerun with that extractor",
                len(staging.foreign),
                self.parts_dir,
            )
        if self.path.exists() and not delta.rows:
            self._clear_staged(staging.files)
            return summary
        require_free_space(  # room for a fold into a new base: rare, but never half-done
            self.path.parent,
            512 * (len(committed.videos) + len(committed.paths) + delta.rows) + 2**20,
            "the new store index",
            f"the previous {self.path.name} is unchanged and finished videos stay staged in "
            f"{self.parts_dir.name}/; free space and rerun to commit them",
        )
        try:
            link_shards(new, self.shards_dir)
            published, summary.paths_dropped = publish(
                self.path, self.config, root, committed, delta
            )
        except OSError as e:
            self._committed = None  # ``committed`` may hold part of the change: read it again
            raise StoreError(
                f"cannot write {self.path} ({os_reason(e)}); the previous store is unchanged "
                f"and finished videos stay staged in {self.parts_dir} until a rerun commits them"
            ) from e
        except BaseException:
            self._committed = None
            raise
        self._committed = (published, committed)  # updated in place by publish
        self._clear_staged(staging.files)
        return summary

    def committed_index(self) -> StoreIndex:
        """The committed tables, read once under the lock (and kept up to date by commits)."""
        return self._generation()[1]

    def _generation(self) -> tuple[Root, StoreIndex]:
        if self._committed is None:
            self._committed = read_generation(self.path)
        return self._committed

    def _clear_staged(self, files: list[Path]) -> None:
        for staged in files:
            staged.unlink(missing_ok=True)

    def discard_staging(self) -> None:
        """Remove the (empty) staging directory after a successful commit."""
        with contextlib.suppress(OSError):
            (self.parts_dir / "config.json").unlink(missing_ok=True)  # an older vrnn's guard
            for leftover in self.parts_dir.glob(fsio.TEMP_GLOB):  # temp files of killed writers
                leftover.unlink()
            self.parts_dir.rmdir()
