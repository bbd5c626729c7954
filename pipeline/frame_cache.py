"""A derived, uncompressed, memory-mapped copy of a store's frames: stage 2's streaming input.

The HDF5 store keeps features gzip-compressed in chunks of up to 256 rows, so sampling 16
frames of a 180-frame video decompresses (and checksums) the whole video, every epoch, behind
h5py's global lock. This cache pays that once: an index (``frames.json``, in a per-store
directory under ``~/.cache/vrnn/frames/``, see :func:`index_path_for`) names raw float16
segment files holding the rows of the cached videos back to back. Training memory-maps
them: a sampled frame costs one 2.5 KB row read from the page cache (or disk), and mapped
pages are file-backed, so the process's anonymous memory does not grow with the store.
Building the cache also notes which videos hold NaN or inf, so a run refuses them without
reading every row again.

The cache is keyed by the store file's size and mtime plus its extractor configuration; a
changed store rebuilds it. Videos are added on demand: a later run needing more videos
appends a segment with only the new ones. The index is renamed into place last,
so readers only ever see a complete cache, and a reader keeps its mapping of a segment even
after a rebuild for a changed store removed it. Reads go through the store's public
:meth:`~pipeline.store.FeatureStore.read_features`, so a corrupt chunk fails with the store's
own one-line error naming the video, exactly as the in-memory path does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import mmap
import os
import tempfile
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline import fsio
from pipeline.errors import StoreError
from pipeline.store import FeatureStore
from pipeline.streaming import all_finite

log = logging.getLogger(__name__)

CACHE_VERSION = 2


def index_path_for(store_path: Path) -> Path:
    """Where the cache index of ``store_path`` lives by default.

    Under ``$XDG_CACHE_HOME/vrnn/frames/`` (``~/.cache`` by default), one directory per store
    (keyed by its absolute path): never beside the store, whose directory may be a DVC output
    that an extra file would mark as modified.
    """
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "vrnn" / "frames" / _store_key(store_path) / "frames.json"


def _store_key(store_path: Path) -> str:
    digest = uuid.uuid5(uuid.NAMESPACE_URL, str(Path(store_path).resolve())).hex[:16]
    return f"{Path(store_path).stem}-{digest}"


def _fallback_index_path(store_path: Path) -> Path:
    """A temporary location, when the cache directory is not writable."""
    return Path(tempfile.gettempdir()) / "vrnn-frames" / _store_key(store_path) / "frames.json"


def _fingerprint(store: FeatureStore) -> dict:
    st = store.path.stat()
    return {
        "version": CACHE_VERSION,
        "store_size": st.st_size,
        "store_mtime_ns": st.st_mtime_ns,
        "extractor": store.config.to_dict(),
    }


class FrameCache:
    """An open cache: ``frames(video_id)`` is a read-only ``[T, D]`` memory-mapped view.

    Prefer :func:`open_frame_cache`, which builds or extends the cache as needed.
    """

    def __init__(self, index_path: Path, index: dict):
        self.index_path = index_path
        self.segments = [index_path.with_name(name) for name, _ in index["segments"]]
        dtype, dim = np.dtype(index["dtype"]), index["dim"]
        self._data = [
            np.memmap(path, dtype=dtype, mode="r", shape=(rows, dim)) if rows else None
            for path, (_, rows) in zip(self.segments, index["segments"], strict=True)
        ]
        for data in self._data:
            if data is not None:  # sampled rows are scattered: no readahead around a fault
                data._mmap.madvise(mmap.MADV_RANDOM)
        self._row_bytes = dim * dtype.itemsize
        self._rows: dict[str, list[int]] = index["videos"]
        self._nonfinite = set(index["nonfinite"])
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

    def finite(self, video_id: str) -> bool:
        """Whether a cached video's features are free of NaN and inf (checked when cached)."""
        return video_id not in self._nonfinite

    def will_need(self, video_id: str, rows: np.ndarray) -> None:
        """Ask the kernel to read these rows of a video in the background (``MADV_WILLNEED``).

        Returns at once; a later access to the rows then finds them in the page cache
        instead of waiting for the disk (with the GIL held) on the training thread.
        """
        segment, start, _ = self._rows[video_id]
        data = self._data[segment]
        if data is None:
            return
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
        paths = [p for p, data in zip(self.segments, self._data, strict=True) if data is not None]
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
        except OSError:  # removed by a rebuild: the open mapping still works, uncached
            continue
        try:
            for offset in range(0, os.fstat(fd).st_size, step):
                os.posix_fadvise(fd, offset, step, os.POSIX_FADV_WILLNEED)
        except OSError as e:
            log.debug("frame cache read-ahead of %s stopped: %s", path, e)
        finally:
            os.close(fd)


def _read_index(index_path: Path, fingerprint: dict) -> dict | None:
    """The index if it belongs to this store and all its segments are complete, else None."""
    try:
        index = json.loads(index_path.read_text())
        if not isinstance(index, dict) or index.get("fingerprint") != fingerprint:
            return None
        row_bytes = index["dim"] * np.dtype(index["dtype"]).itemsize
        for name, rows in index["segments"]:
            if index_path.with_name(name).stat().st_size != rows * row_bytes:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return index


def open_frame_cache(
    store: FeatureStore, video_ids: Iterable[str], index_path: Path | None = None
) -> FrameCache:
    """Open the frame cache of ``store`` holding at least ``video_ids``, building what is missing.

    Args:
        store: the open store (the cache is derived from it and checked against it).
        video_ids: the videos this run reads.
        index_path: the cache index; default :func:`index_path_for`, or a temporary
            directory when that is not writable.

    Raises:
        StoreError: a video is not in the store or is corrupt (the store's own message), or
            the cache cannot be written.
    """
    wanted = set(video_ids)
    fingerprint = _fingerprint(store)
    candidates = [index_path] if index_path else [index_path_for(store.path)]
    if index_path is None:
        candidates.append(_fallback_index_path(store.path))
    for candidate in candidates:
        index = _read_index(candidate, fingerprint)
        if index is not None and wanted <= index["videos"].keys():
            return FrameCache(candidate, index)
    errors = []
    for candidate in candidates:
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            return _extend(store, wanted, candidate, fingerprint)
        except PermissionError as e:
            errors.append(f"{candidate.parent}: {e.strerror}")
        except OSError as e:
            if e.errno != errno.EROFS:  # a read-only file system: try the next location
                raise StoreError(f"cannot write the frame cache {candidate}: {e.strerror}") from e
            errors.append(f"{candidate.parent}: {e.strerror}")
    raise StoreError(f"cannot write the frame cache of {store.path} ({'; '.join(errors)})")


def _extend(
    store: FeatureStore, wanted: set[str], index_path: Path, fingerprint: dict
) -> FrameCache:
    """Append a segment with the ``wanted`` videos the valid cache lacks, then a new index."""
    index = _read_index(index_path, fingerprint) or {
        "fingerprint": fingerprint,
        "dtype": np.dtype(store.config.dtype).name,
        "dim": store.config.feature_dim,
        "segments": [],
        "videos": {},
        "nonfinite": [],
    }
    new = sorted(wanted - index["videos"].keys())
    dim, dtype = index["dim"], np.dtype(index["dtype"])
    token = uuid.uuid4().hex[:12]
    segment = index_path.with_name(f"{store.path.name}.frames-{token}.bin")
    number = len(index["segments"])
    offset = 0
    with fsio.replacing(segment) as tmp, open(tmp, "wb") as out:
        for video_id in new:
            features = store.read_features(video_id)  # StoreError names a corrupt video
            if features.ndim != 2 or features.shape[1] != dim:
                raise StoreError(
                    f"{store.path}: video {video_id} has features of shape "
                    f"{features.shape}, expected [T, {dim}]"
                )
            if not all_finite(features):  # a corrupt entry: refused when a run reads it
                index["nonfinite"].append(video_id)
            out.write(np.ascontiguousarray(features, dtype=dtype).tobytes())
            index["videos"][video_id] = [number, offset, len(features)]
            offset += len(features)
        out.flush()
        os.fsync(out.fileno())
    index["segments"].append([segment.name, offset])
    fsio.atomic_json(index_path, index)  # the commit point
    log.info(
        "frame cache %s: %d videos, %d read from the store",
        index_path,
        len(index["videos"]),
        len(new),
    )
    _remove_stale(index_path, store.path.name, keep={name for name, _ in index["segments"]})
    return FrameCache(index_path, index)


def _remove_stale(index_path: Path, store_name: str, keep: set[str]) -> None:
    """Delete segments the index no longer names (open mappings of them stay valid)."""
    for stale in index_path.parent.glob(f"{store_name}.frames-*.bin"):
        if stale.name not in keep:
            with contextlib.suppress(OSError):
                stale.unlink()
