"""The HDF5 feature store (contract in docs/FORMAT.md): atomic parts, atomic commits, checked reads.

The only module that imports ``h5py``. Writers never share a file: each finished video is
a small part file renamed into ``<store>.parts/``; :meth:`StoreBuilder.commit` assembles the
previous store plus the parts into a temporary file and renames it over the store. Readers
therefore only ever see a complete store, and a kill at any moment loses at most the videos
in flight.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import glob
import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pipeline import __version__
from pipeline.contracts import ExtractionFailure, ExtractorConfig, VideoFeatures, VideoInfo
from pipeline.errors import StoreError
from pipeline.identity import file_sha256, video_id_from_sha256

log = logging.getLogger(__name__)

FORMAT_NAME = "video-rnn-features"
FORMAT_VERSION = 1
VIDEOS = "videos"
FEATURES = "features"
TIMESTAMPS = "timestamps"
PATH_INDEX = "path_index"
FAILURES = "failures"
CHUNK_ROWS = 256
"""Feature rows per HDF5 chunk: a short video is one chunk, long ones read in 320–640 KB pieces."""


def parts_dir_for(store_path: Path) -> Path:
    """Staging directory of finished-but-uncommitted videos for ``store_path``."""
    return store_path.with_name(store_path.name + ".parts")


def backbone_sidecar(store_path: Path) -> Path:
    """Where the exact backbone weights of a store are saved (``<stem>.backbone.weights.h5``)."""
    return store_path.with_name(f"{store_path.stem}.backbone.weights.h5")


def _lock_path_for(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".lock")


def _path_key(path: str) -> str:
    return video_id_from_sha256(_sha256_text(path))


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _file_stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_reason(e: OSError) -> str:
    """The short reason of an OSError ("No space left on device"), also for h5py's."""
    return os.strerror(e.errno) if e.errno else str(e)


def discard(path: Path) -> None:
    """Remove a temporary file if it is there (a read-only file system refuses even that)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _write_error(path: Path, e: OSError) -> StoreError:
    """A one-line StoreError for a failed write (disk full, read-only, permissions)."""
    return StoreError(f"cannot write {path}: {os_reason(e)}")


def require_free_space(directory: Path, nbytes: int, what: str, remedy: str = "") -> None:
    """Raise :class:`StoreError` unless ``directory``'s file system has ``nbytes`` free.

    HDF5 can crash the process (h5py issue #914) instead of raising when the disk fills up
    mid-write, so large HDF5 writes check first and fail with a readable message.
    """
    try:
        st = os.statvfs(directory)
    except OSError:
        return  # cannot tell: let the write itself report
    if st.f_flag & os.ST_RDONLY:
        raise StoreError(f"cannot write {what} in {directory}: {os.strerror(errno.EROFS)}")
    free = st.f_bavail * st.f_frsize
    if free < nbytes:
        raise StoreError(
            f"not enough free space in {directory} to write {what}: needs about "
            f"{nbytes / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free"
            + (f"; {remedy}" if remedy else "")
        )


def _atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp name, fsync, rename); StoreError on failure."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        discard(tmp)


def _atomic_json(path: Path, payload: dict) -> None:
    _atomic_bytes(path, json.dumps(payload).encode())


# --------------------------------------------------------------------------- writing


def _write_config_attrs(f: h5py.File, config: ExtractorConfig) -> None:
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["tool_version"] = __version__
    f.attrs["extractor"] = json.dumps(config.to_dict(), sort_keys=True)
    for key, value in config.to_dict().items():  # readable with h5dump / HDFView
        f.attrs[key] = "every frame" if key == "fps" and value is None else value


def _write_video(group: h5py.Group, vf: VideoFeatures, dtype: str) -> None:
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
        g.attrs["source_path" if key == "path" else key] = value


def write_part(parts_dir: Path, config: ExtractorConfig, vf: VideoFeatures) -> Path:
    """Write one extracted video as a part file, atomically (temp name, fsync, rename).

    Safe to call from any process: each part has its own file and a unique temp name.
    """
    final = parts_dir / f"{vf.video_id}.h5"
    try:
        size, mtime_ns = _file_stat(Path(vf.info.path))
    except OSError:  # source deleted mid-run: an index entry that never matches, so rehash
        size, mtime_ns = -1, -1
    # Built in memory, written with plain file I/O: a full disk is then a clean OSError,
    # not an HDF5 crash (h5py issue #914).
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        _write_config_attrs(f, config)
        _write_video(f.create_group(VIDEOS), vf, config.dtype)
        f.attrs["source_size"] = size
        f.attrs["source_mtime_ns"] = mtime_ns
    _atomic_bytes(final, image.getvalue())
    return final


def staged_video_ids(parts_dir: Path) -> set[str]:
    """Ids of the finished part files in a staging directory (see :func:`write_part`)."""
    return {p.stem for p in parts_dir.glob("v*.h5")}


def write_failure(parts_dir: Path, failure: ExtractionFailure) -> Path:
    """Record a failed video in the staging directory (committed into the store's failures)."""
    path = parts_dir / f"{_path_key(failure.path)}.failed.json"
    _atomic_json(
        path, {"path": failure.path, "reason": failure.reason, "video_id": failure.video_id}
    )
    return path


def write_alias(parts_dir: Path, source: Path, video_id: str) -> Path:
    """Record that ``source`` has the content of an already stored ``video_id``."""
    size, mtime_ns = _file_stat(source)
    path = parts_dir / f"{_path_key(str(source))}.alias.json"
    _atomic_json(
        path, {"path": str(source), "video_id": video_id, "size": size, "mtime_ns": mtime_ns}
    )
    return path


@dataclass
class CommitSummary:
    """What a commit changed: videos now stored, videos and frames added, failures recorded."""

    videos: int = 0
    added: int = 0
    frames_added: int = 0
    failures: list[ExtractionFailure] = field(default_factory=list)


class StoreBuilder:
    """Exclusive writer of one store: owns the lock, the staging directory and the commit.

    Args:
        store_path: the final ``.h5`` file.
        config: the extractor configuration this run uses; an existing store or staging
            directory made with another one is a :class:`StoreError` naming both.

    Use as a context manager; the lock is released on exit (and by the OS if killed).
    """

    def __init__(self, store_path: Path, config: ExtractorConfig):
        self.path = Path(store_path)
        self.config = config
        self.parts_dir = parts_dir_for(self.path)
        self._lock_fd: int | None = None

    def __enter__(self) -> StoreBuilder:
        if not self.path.parent.is_dir():
            raise StoreError(f"output directory {self.path.parent} does not exist")
        self._acquire_lock()
        try:
            self._check_existing()
            # Only the lock holder assembles this store: an old temp is a killed commit's.
            for stale in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
                discard(stale)
            try:
                self.parts_dir.mkdir(exist_ok=True)
            except OSError as e:
                raise _write_error(self.parts_dir, e) from e
            _atomic_json(self.parts_dir / "config.json", self.config.to_dict())
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release_lock()

    def _acquire_lock(self) -> None:
        lock_path = _lock_path_for(self.path)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot create lock file {lock_path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(
                f"{self.path} is being written by another extraction (pid {holder}); "
                "wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_existing(self) -> None:
        if self.path.exists():
            with open_store(self.path) as store:
                store.require_config(self.config)
        staged = self.parts_dir / "config.json"
        if staged.exists():
            other = ExtractorConfig.from_dict(json.loads(staged.read_text()))
            if other != self.config:
                raise StoreError(
                    f"{self.parts_dir} holds uncommitted videos from another extractor "
                    f"({other.describe()}) but this run uses ({self.config.describe()}); "
                    "rerun with the original options or delete that directory"
                )

    def staged_ids(self) -> set[str]:
        """Video ids finished in the staging directory but not yet committed."""
        return staged_video_ids(self.parts_dir)

    def commit(self) -> CommitSummary:
        """Merge the store and all staged parts into a new store, atomically.

        Staged parts are deleted only after the new store has been renamed into place, so a
        kill at any point leaves either the old or the new store plus redoable parts.
        """
        parts = sorted(self.parts_dir.glob("v*.h5"))
        aliases = [json.loads(p.read_text()) for p in sorted(self.parts_dir.glob("*.alias.json"))]
        failed = [json.loads(p.read_text()) for p in sorted(self.parts_dir.glob("*.failed.json"))]
        summary = CommitSummary(failures=[ExtractionFailure(**f) for f in failed])
        index, failures = {}, {}
        if self.path.exists():
            with open_store(self.path) as old:
                index, failures = old.path_index, {f.path: f for f in old.failures}
                summary.videos = len(old)
            known = all(failures.get(f.path) == f for f in summary.failures)
            if not (parts or aliases) and known:  # nothing new: keep the store as it is
                self._clear_staged(parts)
                return summary
        # The new store holds the old one plus every part (raw chunks are copied as they are).
        needed = sum(p.stat().st_size for p in parts) + (
            self.path.stat().st_size if self.path.exists() else 0
        )
        require_free_space(
            self.path.parent,
            needed + needed // 50 + 2**18,
            "the new store",
            f"the previous {self.path.name} is unchanged and finished videos stay staged in "
            f"{self.parts_dir.name}/; free space and rerun to commit them",
        )
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with h5py.File(tmp, "w") as out:
                _write_config_attrs(out, self.config)
                videos = out.create_group(VIDEOS)
                if self.path.exists():
                    with h5py.File(self.path, "r") as old:
                        for vid in old[VIDEOS]:
                            old.copy(old[VIDEOS][vid], videos, name=vid)
                for part in parts:
                    with h5py.File(part, "r") as src:
                        for vid, group in src[VIDEOS].items():
                            if vid not in videos:
                                src.copy(group, videos, name=vid)
                                summary.added += 1
                                summary.frames_added += group[FEATURES].shape[0]
                            path = str(group.attrs["source_path"])
                            index[path] = [
                                vid,
                                int(src.attrs["source_size"]),
                                int(src.attrs["source_mtime_ns"]),
                            ]
                            failures.pop(path, None)
                for alias in aliases:
                    if alias["video_id"] in videos:  # its original may have failed meanwhile
                        index[alias["path"]] = [alias["video_id"], alias["size"], alias["mtime_ns"]]
                        failures.pop(alias["path"], None)
                for failure in summary.failures:
                    failures[failure.path] = failure
                    index.pop(failure.path, None)
                out.create_dataset(PATH_INDEX, data=json.dumps(index, sort_keys=True))
                out.create_dataset(
                    FAILURES, data=json.dumps([asdict(f) for f in failures.values()])
                )
                summary.videos = len(videos)
                out.flush()
                os.fsync(out.id.get_vfd_handle())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as e:
            raise StoreError(
                f"cannot write {self.path} ({os_reason(e)}); the previous store is unchanged "
                f"and finished videos stay staged in {self.parts_dir} until a rerun commits them"
            ) from e
        finally:
            discard(tmp)
        self._clear_staged(parts)
        return summary

    def _clear_staged(self, parts: list[Path]) -> None:
        for staged in [*parts, *self.parts_dir.glob("*.json")]:
            if staged.name != "config.json":
                staged.unlink(missing_ok=True)

    def discard_staging(self) -> None:
        """Remove the (empty) staging directory after a successful commit."""
        with contextlib.suppress(OSError):
            (self.parts_dir / "config.json").unlink(missing_ok=True)
            for leftover in self.parts_dir.glob(".*.tmp"):  # temp files of killed writers
                leftover.unlink()
            self.parts_dir.rmdir()


# --------------------------------------------------------------------------- reading


class FeatureStore:
    """Read-only view of a committed store. Prefer :func:`open_store`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a feature store (.h5 file)")
        try:
            self._file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise StoreError(f"{self.path}: feature store not found") from None
        except OSError as e:
            raise StoreError(f"{self.path}: not a readable HDF5 feature store ({e})") from e
        attrs = self._file.attrs
        if attrs.get("format") != FORMAT_NAME:
            self.close()
            raise StoreError(f"{self.path}: not a video-rnn feature store")
        if int(attrs.get("format_version", -1)) != FORMAT_VERSION:
            self.close()
            raise StoreError(
                f"{self.path}: store format version {attrs.get('format_version')} is not "
                f"supported (this vrnn reads version {FORMAT_VERSION}); re-extract it"
            )
        self.config = ExtractorConfig.from_dict(json.loads(attrs["extractor"]))

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying HDF5 file."""
        self._file.close()

    @property
    def video_ids(self) -> list[str]:
        """Ids of all stored videos, sorted."""
        return sorted(self._file[VIDEOS]) if VIDEOS in self._file else []

    def __contains__(self, video_id: str) -> bool:
        return VIDEOS in self._file and video_id in self._file[VIDEOS]

    def __len__(self) -> int:
        return len(self.video_ids)

    @functools.cached_property
    def path_index(self) -> dict[str, list]:
        """``{source path: [video_id, size_bytes, mtime_ns]}`` as recorded at extraction.

        Parsed once per open store (the file is read-only), so joining a large manifest
        costs one JSON parse, not one per video.
        """
        if PATH_INDEX not in self._file:
            return {}
        return json.loads(self._file[PATH_INDEX][()])

    @property
    def failures(self) -> list[ExtractionFailure]:
        """Videos whose last extraction attempt failed, with reasons."""
        if FAILURES not in self._file:
            return []
        return [ExtractionFailure(**f) for f in json.loads(self._file[FAILURES][()])]

    def require_config(self, expected: ExtractorConfig) -> None:
        """Raise :class:`StoreError` naming both configurations unless they are equal."""
        if self.config != expected:
            raise StoreError(
                f"{self.path} was built by a different extractor: store has "
                f"({self.config.describe()}), expected ({expected.describe()})"
            )

    def video_id_for(self, source: Path) -> str | None:
        """The stored id for a video file, or None when its content is not in the store.

        Uses the path index when size and mtime still match; otherwise hashes the file.
        """
        entry = self.path_index.get(str(source))
        if entry is not None:
            with contextlib.suppress(OSError):
                if tuple(entry[1:]) == _file_stat(source) and entry[0] in self:
                    return entry[0]
        try:
            video_id = video_id_from_sha256(file_sha256(source))
        except OSError:
            return None
        return video_id if video_id in self else None

    def read(self, video_id: str) -> VideoFeatures:
        """One video's features (stored dtype), timestamps and decode facts.

        Raises:
            StoreError: unknown id, or data failing its fletcher32 checksum.
        """
        if video_id not in self:
            raise StoreError(f"{self.path}: no video {video_id}")
        g = self._file[VIDEOS][video_id]
        attrs = dict(g.attrs)
        try:
            features = g[FEATURES][()]
            timestamps = g[TIMESTAMPS][()]
        except OSError as e:
            raise StoreError(
                f"{self.path}: video {video_id} ({attrs.get('source_path')}) is corrupt on "
                f"disk ({e}); delete the store or re-extract"
            ) from e
        info = VideoInfo(
            path=str(attrs.pop("source_path")),
            **{k: _plain(attrs[k]) for k in VideoInfo.__dataclass_fields__ if k in attrs},
        )
        return VideoFeatures(video_id, str(attrs["content_sha256"]), features, timestamps, info)

    def iter_videos(self) -> Iterator[VideoFeatures]:
        """Every stored video, in id order."""
        for video_id in self.video_ids:
            yield self.read(video_id)


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


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
