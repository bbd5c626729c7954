"""A derived, uncompressed, memory-mapped copy of stored frames: stage 2's streaming input.

The HDF5 store keeps features gzip-compressed in chunks of up to 256 rows, so sampling 16
frames of a 180-frame video decompresses (and checksums) the whole video, every epoch, behind
h5py's global lock. This cache pays that once: raw float16 segment files hold the rows of
the cached videos back to back, and training memory-maps them (a sampled frame costs one
2.5 KB row read from the page cache; mapped pages are file-backed, so the process's anonymous
memory does not grow with the store).

**What a row is.** A cached row is keyed by what makes it true: the video's content id, the
extractor that made its features (one cache directory per extractor fingerprint) and its row
count (checked against the store's index on every open). Commits, compactions, renames and
copies of a store therefore invalidate nothing: a run reads from the store only the videos
the cache lacks, and rows of videos that no registered store holds any more are removed
(segments that are mostly dead are rewritten), so each row is on disk once. Rows are read
through :meth:`~pipeline.store.FeatureStore.read_features`, so they passed the one validity
rule (:mod:`pipeline.validity`) before they were cached.

**Where it lives.** Only where the user owns it: ``$VRNN_CACHE_DIR``, else
``$XDG_CACHE_HOME/vrnn`` (``~/.cache/vrnn``), under ``frames/<extractor key>/``; a directory
owned by another user or writable by others is refused (:class:`CacheUnavailable`), and so is
one that cannot be written. The caller then reads the store directly: the cache is never why a
run fails. Builders take an exclusive lock on the directory, readers a shared one while they
map the segments, so concurrent runs all succeed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mmap
import os
import shutil
import stat
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import fsio
from pipeline.contracts import ExtractorConfig
from pipeline.store import FeatureStore

log = logging.getLogger(__name__)

CACHE_VERSION = 3
INDEX_FILE = "index.json"
LOCK_FILE = "lock"
SEGMENT_PREFIX, SEGMENT_SUFFIX = "seg-", ".bin"


class CacheUnavailable(Exception):
    """The frame cache cannot be used here; the message says where and why (one line)."""


def cache_root() -> Path:
    """``$VRNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/vrnn`` (``~/.cache/vrnn`` by default).

    Never beside the store, whose directory may be a DVC output that an extra file would
    mark as modified, and never a shared temporary directory.
    """
    explicit = os.environ.get("VRNN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vrnn"


def frames_root(root: Path | None = None) -> Path:
    """The directory holding one frame cache per extractor."""
    return (root or cache_root()) / "frames"


def extractor_key(config: ExtractorConfig) -> str:
    """The cache directory name of one extractor: a digest of its whole configuration."""
    text = json.dumps(config.to_dict(), sort_keys=True)
    return f"{config.backbone}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _private_dir(path: Path) -> Path:
    """``path`` as a directory this user owns and nobody else may write (created 0700).

    Raises:
        CacheUnavailable: it cannot be created, is not a directory, belongs to another
            user or is writable by group or others (anyone could plant features there).
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise CacheUnavailable(f"{path}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise CacheUnavailable(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise CacheUnavailable(f"{path} belongs to another user (uid {st.st_uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheUnavailable(
            f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
        )
    return path


def cache_dir_for(config: ExtractorConfig, root: Path | None = None) -> Path:
    """The frame cache directory of one extractor, checked to be the user's own.

    Raises:
        CacheUnavailable: see :func:`_private_dir` (checked for every level vrnn owns).
    """
    base = root or cache_root()
    for level in (base, frames_root(base)):
        _private_dir(level)
    return _private_dir(frames_root(base) / extractor_key(config))


@contextlib.contextmanager
def _locked(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the cache directory's lock: exclusive to change it, shared to map it."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


class FrameCache:
    """An open cache: ``frames(video_id)`` is a read-only ``[T, D]`` memory-mapped view.

    Prefer :func:`open_frame_cache`, which builds or extends the cache as needed. Mappings
    stay valid after a later run removes or rewrites a segment.
    """

    def __init__(self, directory: Path, index: dict):
        self.directory = directory
        dtype, dim = np.dtype(index["dtype"]), index["dim"]
        self.segments = [directory / name for name in index["segments"]]
        self._data = {
            name: np.memmap(directory / name, dtype=dtype, mode="r", shape=(rows, dim))
            for name, rows in index["segments"].items()
            if rows
        }
        for data in self._data.values():  # sampled rows are scattered: no readahead
            data._mmap.madvise(mmap.MADV_RANDOM)
        self._row_bytes = dim * dtype.itemsize
        self._rows: dict[str, list] = index["videos"]
        self.warming = False
        """Set once :meth:`warm` has started reading the whole cache into the page cache
        (it stays set: per-row read-ahead hints are then pointless for this cache)."""

    @property
    def video_ids(self) -> set[str]:
        """Ids of the cached videos."""
        return set(self._rows)

    def frames(self, video_id: str) -> np.ndarray:
        """``[T, D]`` read-only view of one cached video's features (no copy is made)."""
        segment, start, count = self._rows[video_id]
        return self._data[segment][start : start + count]

    def will_need(self, video_id: str, rows: np.ndarray) -> None:
        """Ask the kernel to read these rows of a video in the background (``MADV_WILLNEED``).

        Returns at once; a later access to the rows then finds them in the page cache
        instead of waiting for the disk (with the GIL held) on the training thread.
        """
        segment, start, _ = self._rows[video_id]
        data = self._data[segment]
        for row in np.unique(rows):
            begin = (start + int(row)) * self._row_bytes
            page = begin - begin % mmap.PAGESIZE
            data._mmap.madvise(mmap.MADV_WILLNEED, page, begin + self._row_bytes - page)

    def warm(self) -> bool:
        """Start reading the cache into the page cache, sequentially, in the background.

        Only when the segments fit in half of the memory the kernel reports available:
        then one sequential pass (~1 GB/s here) replaces the random 4 KB page faults that
        would otherwise fetch rows one by one over the first epochs (a cold 4.9 GiB cache
        took a 9.5k-video run from 147 s to 307 s). Cached pages are file-backed, so the
        process's anonymous memory does not grow. Returns whether warming started.
        """
        paths = [self.directory / name for name in self._data]
        available = _available_memory()
        if not paths or available is None or not hasattr(os, "posix_fadvise"):
            return False
        if sum(p.stat().st_size for p in paths) > available // 2:
            return False
        threading.Thread(target=_read_ahead, args=(paths,), daemon=True).start()
        self.warming = True
        return True


def _available_memory() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes; None where the kernel has none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_ahead(paths: list[Path], step: int = 8 << 20) -> None:
    """Have the kernel read ``paths`` into the page cache, ``step`` bytes per request.

    One request for a whole file is capped by the kernel to a few MB; chunked
    ``POSIX_FADV_WILLNEED`` reads it all without copying any byte into the process.
    """
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # removed by a later run: the open mapping still works, uncached
            continue
        try:
            for offset in range(0, os.fstat(fd).st_size, step):
                os.posix_fadvise(fd, offset, step, os.POSIX_FADV_WILLNEED)
        except OSError as e:
            log.debug("frame cache read-ahead of %s stopped: %s", path, e)
        finally:
            os.close(fd)


def _read_index(directory: Path, config: ExtractorConfig) -> dict | None:
    """The index if it is this version's, of this extractor, with complete segments."""
    try:
        index = json.loads((directory / INDEX_FILE).read_text())
        if index.get("version") != CACHE_VERSION or index.get("extractor") != config.to_dict():
            return None
        row_bytes = index["dim"] * np.dtype(index["dtype"]).itemsize
        for name, rows in index["segments"].items():
            if (directory / name).stat().st_size != rows * row_bytes:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return index


def _empty_index(config: ExtractorConfig) -> dict:
    return {
        "version": CACHE_VERSION,
        "extractor": config.to_dict(),
        "dtype": np.dtype(config.dtype).name,
        "dim": config.feature_dim,
        "segments": {},
        "videos": {},
        "stores": {},
    }


def _store_key(store: FeatureStore) -> str:
    return str(Path(store.path).resolve())


def _serves(index: dict, store: FeatureStore, wanted: set[str]) -> bool:
    """Whether the index holds every wanted row, at the store's row counts, and already
    knows the store's current videos (else the registry and removals need an update)."""
    catalog = store.catalog
    rows = index["videos"]
    if any(v not in rows or v not in catalog or rows[v][2] != catalog[v].frames for v in wanted):
        return False
    return set(index["stores"].get(_store_key(store), ())) == catalog.keys()


def open_frame_cache(
    store: FeatureStore, video_ids: Iterable[str], root: Path | None = None
) -> FrameCache:
    """Open the frame cache holding at least ``video_ids`` of ``store``, adding what it lacks.

    Args:
        store: the open store (rows are read from it, and checked against its index).
        video_ids: the videos this run reads.
        root: the cache root; default :func:`cache_root`.

    Raises:
        CacheUnavailable: the cache directory is not the user's own or cannot be written
            (e.g. a full disk): the caller reads the store instead.
        StoreError: a wanted video is not in the store or is not valid (the store's line).
    """
    wanted = set(video_ids)
    directory = cache_dir_for(store.config, root)
    try:
        with _locked(directory, exclusive=False):
            index = _read_index(directory, store.config)
            if index is not None and _serves(index, store, wanted):
                return FrameCache(directory, index)
        with _locked(directory, exclusive=True):  # re-read: another run may have built it
            index = _read_index(directory, store.config) or _empty_index(store.config)
            return _update(store, wanted, directory, index)
    except OSError as e:
        raise CacheUnavailable(f"cannot write the frame cache {directory}: {e.strerror}") from e


def _update(store: FeatureStore, wanted: set[str], directory: Path, index: dict) -> FrameCache:
    """Register the store, drop rows no live store holds, append the rows it lacks.

    Runs under the exclusive lock. Segments whose live rows fell under half are rewritten
    into the new segment; files the new index does not name are removed after it is written.
    """
    catalog = store.catalog
    stores = {
        key: ids for key, ids in index["stores"].items() if Path(key).exists()
    }  # a store that is gone no longer keeps its rows
    stores[_store_key(store)] = sorted(catalog)
    live = set(catalog).union(*map(set, stores.values()))
    videos = {
        v: entry
        for v, entry in index["videos"].items()
        if v in live and (v not in catalog or entry[2] == catalog[v].frames)
    }
    segments = {name: rows for name, rows in index["segments"].items()}
    live_rows = Counter()
    for segment, _, count in videos.values():
        live_rows[segment] += count
    sparse = {name for name, rows in segments.items() if 2 * live_rows[name] < rows}
    moved = sorted(v for v, (segment, _, _) in videos.items() if segment in sparse)
    new = sorted(wanted - videos.keys())
    old = FrameCache(directory, index) if moved else None
    segments = {name: rows for name, rows in segments.items() if name not in sparse}
    if moved or new:
        name = f"{SEGMENT_PREFIX}{uuid.uuid4().hex[:12]}{SEGMENT_SUFFIX}"
        offset = 0
        dtype = np.dtype(index["dtype"])
        with fsio.replacing(directory / name) as tmp, open(tmp, "wb") as out:
            for video_id in [*moved, *new]:
                rows = old.frames(video_id) if video_id in moved else store.read_features(video_id)
                out.write(np.ascontiguousarray(rows, dtype=dtype).tobytes())
                videos[video_id] = [name, offset, len(rows)]
                offset += len(rows)
            out.flush()
            os.fsync(out.fileno())
        segments[name] = offset
    index = {**index, "segments": segments, "videos": videos, "stores": stores}
    index["used"] = time.time()
    fsio.atomic_json(directory / INDEX_FILE, index)  # the commit point
    removed = _remove_unnamed(directory, set(segments))
    log.info(
        "frame cache %s: %d videos, %d read from the store, %d moved, %d files removed",
        directory,
        len(videos),
        len(new),
        len(moved),
        removed,
    )
    return FrameCache(directory, index)


def _remove_unnamed(directory: Path, keep: set[str]) -> int:
    """Delete the files of ``directory`` the index does not name (open mappings stay valid).

    Names are compared exactly (no pattern), so any store or directory name is safe.
    """
    removed = 0
    for path in directory.iterdir():
        if path.name in keep or path.name in (INDEX_FILE, LOCK_FILE):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


@dataclass(frozen=True)
class CacheSummary:
    """One extractor's frame cache, for ``vrnn store cache info``."""

    directory: Path
    videos: int
    nbytes: int
    stores: list[str]
    """The stores that registered it (absolute paths); gone ones are marked by ``live``."""
    live: list[bool]
    valid: bool
    """False for a directory of another cache version or a damaged index."""


def _directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def list_caches(root: Path | None = None) -> list[CacheSummary]:
    """Every frame cache under the root, with its size and the stores that use it."""
    base = frames_root(root)
    if not base.is_dir():
        return []
    summaries = []
    for directory in sorted(p for p in base.iterdir() if p.is_dir()):
        try:
            index = json.loads((directory / INDEX_FILE).read_text())
            valid = index.get("version") == CACHE_VERSION
            stores = sorted(index.get("stores", {})) if valid else []
            videos = len(index.get("videos", {})) if valid else 0
        except (OSError, ValueError, AttributeError):
            valid, stores, videos = False, [], 0
        live = [Path(s).exists() for s in stores]
        summaries.append(
            CacheSummary(directory, videos, _directory_bytes(directory), stores, live, valid)
        )
    return summaries


def prune_caches(root: Path | None = None) -> list[CacheSummary]:
    """Remove the caches no existing store uses, and directories that are not current caches.

    Returns the removed caches. A cache some store still uses is kept whole (its rows of
    gone videos are removed by the next run that opens it).
    """
    removed = []
    for summary in list_caches(root):
        if summary.valid and any(summary.live):
            continue
        with _locked(summary.directory, exclusive=True):  # no run is using it meanwhile
            _remove_unnamed(summary.directory, keep=set())
            (summary.directory / INDEX_FILE).unlink(missing_ok=True)
        shutil.rmtree(summary.directory, ignore_errors=True)
        removed.append(summary)
    return removed
