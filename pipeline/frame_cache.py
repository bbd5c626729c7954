"""A derived, uncompressed, memory-mapped copy of a store's frames: stage 2's streaming input.

The HDF5 store keeps features gzip-compressed in chunks of up to 256 rows, so sampling 16
frames of a 180-frame video decompresses (and checksums) the whole video, every epoch, behind
h5py's global lock. This cache pays that once: ``<store>.frames.json`` (the index) names a
raw float16 file ``<store>.frames-<token>.bin`` holding the rows of every cached video back
to back. Training then memory-maps it: a sampled frame costs one 2.5 KB row read from the
page cache (or disk), and mapped pages are file-backed, so the process's anonymous memory
does not grow with the store.

The cache is keyed by the store file's size and mtime plus its extractor configuration; a
changed store rebuilds it. Videos are added on demand (a later run needing more videos
copies the cached rows and reads only the new ones). The index is renamed into place last,
so readers only ever see a complete cache, and a reader keeps its mapping of an older data
file even after a concurrent rebuild replaced it. Reads go through the store's public
:meth:`~pipeline.store.FeatureStore.read`, so a corrupt chunk fails with the store's own
one-line error naming the video, exactly as the in-memory path does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.errors import StoreError
from pipeline.store import FeatureStore

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def index_path_for(store_path: Path) -> Path:
    """Where the cache index of ``store_path`` lives by default (beside the store)."""
    return store_path.with_name(store_path.name + ".frames.json")


def _fallback_index_path(store_path: Path) -> Path:
    """A per-user temporary location, for stores in read-only directories."""
    key = uuid.uuid5(uuid.NAMESPACE_URL, str(store_path.resolve())).hex[:16]
    return Path(tempfile.gettempdir()) / f"vrnn-frames-{key}" / (store_path.name + ".frames.json")


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
        self.data_path = index_path.with_name(index["data"])
        self._rows: dict[str, tuple[int, int]] = {k: tuple(v) for k, v in index["videos"].items()}
        total, dim = index["rows"], index["dim"]
        self.dim = dim
        if total:
            self._data = np.memmap(
                self.data_path, dtype=index["dtype"], mode="r", shape=(total, dim)
            )
        else:
            self._data = np.zeros((0, dim), dtype=index["dtype"])

    @property
    def video_ids(self) -> set[str]:
        """Ids of the cached videos."""
        return set(self._rows)

    def frames(self, video_id: str) -> np.ndarray:
        """``[T, D]`` read-only view of one cached video's features (no copy is made)."""
        start, count = self._rows[video_id]
        return self._data[start : start + count]


def _read_index(index_path: Path, fingerprint: dict) -> dict | None:
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(index, dict) or index.get("fingerprint") != fingerprint:
        return None
    data = index_path.with_name(str(index.get("data")))
    try:
        expected = index["rows"] * index["dim"] * np.dtype(index["dtype"]).itemsize
        if data.stat().st_size != expected:
            return None
    except (OSError, KeyError, TypeError):
        return None
    return index


def open_frame_cache(
    store: FeatureStore, video_ids: Iterable[str], index_path: Path | None = None
) -> FrameCache:
    """Open the frame cache of ``store`` holding at least ``video_ids``, building what is missing.

    Args:
        store: the open store (the cache is derived from it and checked against it).
        video_ids: the videos this run reads.
        index_path: the cache index; default beside the store, or a temporary directory when
            the store's directory is not writable.

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
            return _build(store, wanted, candidate, fingerprint)
        except PermissionError as e:
            errors.append(f"{candidate.parent}: {e.strerror}")
        except OSError as e:
            if e.errno != errno.EROFS:  # a read-only file system: try the next location
                raise StoreError(f"cannot write the frame cache {candidate}: {e.strerror}") from e
            errors.append(f"{candidate.parent}: {e.strerror}")
    raise StoreError(f"cannot write the frame cache of {store.path} ({'; '.join(errors)})")


def _build(
    store: FeatureStore, wanted: set[str], index_path: Path, fingerprint: dict
) -> FrameCache:
    """Write a new data file with ``wanted`` ∪ the valid old cache's videos, then the index."""
    old_index = _read_index(index_path, fingerprint)
    old = FrameCache(index_path, old_index) if old_index is not None else None
    ids = sorted(wanted | (old.video_ids if old else set()))
    dim, dtype = store.config.feature_dim, np.dtype(store.config.dtype)
    token = uuid.uuid4().hex[:12]
    data_path = index_path.with_name(f"{store.path.name}.frames-{token}.bin")
    tmp_data = data_path.with_name(f".{data_path.name}.tmp")
    rows: dict[str, list[int]] = {}
    offset = 0
    added = 0
    try:
        with open(tmp_data, "wb") as out:
            for video_id in ids:
                if old is not None and video_id in old.video_ids:
                    features = np.asarray(old.frames(video_id))
                else:
                    features = store.read(video_id).features  # StoreError names a corrupt video
                    added += 1
                features = np.ascontiguousarray(features, dtype=dtype)
                if features.ndim != 2 or features.shape[1] != dim:
                    raise StoreError(
                        f"{store.path}: video {video_id} has features of shape "
                        f"{features.shape}, expected [T, {dim}]"
                    )
                out.write(features.tobytes())
                rows[video_id] = [offset, len(features)]
                offset += len(features)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_data, data_path)
        index = {
            "fingerprint": fingerprint,
            "data": data_path.name,
            "dtype": dtype.name,
            "dim": dim,
            "rows": offset,
            "videos": rows,
        }
        tmp_index = index_path.with_name(f".{index_path.name}.{token}.tmp")
        tmp_index.write_text(json.dumps(index))
        os.replace(tmp_index, index_path)  # the commit point
    finally:
        with contextlib.suppress(OSError):
            tmp_data.unlink(missing_ok=True)
    log.info("frame cache %s: %d videos (%d read from the store)", index_path, len(ids), added)
    _remove_stale(index_path, store.path.name, keep=data_path)
    return FrameCache(index_path, index)


def _remove_stale(index_path: Path, store_name: str, keep: Path) -> None:
    """Delete data files the index no longer names (open mappings of them stay valid)."""
    for stale in index_path.parent.glob(f"{store_name}.frames-*.bin"):
        if stale != keep:
            with contextlib.suppress(OSError):
                stale.unlink()
