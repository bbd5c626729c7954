"""``vrnn store export``: a store's features as plain per-video NumPy files other tools can load.

One ``[T, D]`` array per video (float32, or the stored dtype), named after the source file's
stem, its timestamps beside it, and ``index.csv`` mapping source paths to files. With a window,
W consecutive rows are mean-pooled every S rows into ``[T', D]`` clip features with
window-centre timestamps (the fixed-stride layout temporal action localisation code reads).
Videos are read and written one at a time; each file is written atomically and a file that
already holds the same bytes is left alone, so a rerun only writes what changed.

An export owns exactly the files its ``index.csv`` lists (plus, while it runs, those its
pending list names): a video keeps its file name when the store grows, a rerun removes its
own files that the new ``index.csv`` no longer lists, and no other file is ever touched.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.choices import ArrayFormat, choose
from pipeline.contracts import VideoFeatures
from pipeline.errors import ConfigError
from pipeline.store.layout import atomic_bytes, write_error
from pipeline.store.read import FeatureStore, open_store

INDEX_NAME = "index.csv"
INDEX_COLUMNS = (
    "path",
    "video_id",
    "file",
    "timestamps",
    "frames",
    "rows",
    "fps",
    "duration_sec",
    "start_time_sec",
)
"""``frames``: rows in the store; ``rows``: rows exported (fewer with ``--window``);
``start_time_sec``: the stream's start (timestamps are its pts), empty when not recorded."""
TIMESTAMPS_SUFFIX = ".timestamps"
PENDING_NAME = ".export-pending.json"
"""Every file a running export may own; removed once ``index.csv`` is written."""
SUFFIXES = (".npy", ".npz")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed entry dates: the same arrays give the same .npz bytes


@dataclass(frozen=True)
class ExportOptions:
    """How ``export_store`` writes.

    Attributes:
        fmt: ``npy`` (features and timestamps in two files) or ``npz`` (one file, arrays
            ``features`` and ``timestamps``).
        keep_dtype: keep the stored dtype instead of converting to float32.
        window: rows mean-pooled into one exported row (None: export every row).
        stride: rows between the starts of consecutive windows.
    """

    fmt: str = ArrayFormat.NPY
    keep_dtype: bool = False
    window: int | None = None
    stride: int | None = None

    def __post_init__(self) -> None:
        choose(ArrayFormat, self.fmt, "--format")
        if self.stride is not None and self.window is None:
            raise ConfigError("--stride needs --window")
        for name, value in (("--window", self.window), ("--stride", self.stride)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} {value}: must be at least 1")


@dataclass
class ExportSummary:
    """What one export did."""

    videos: int = 0
    written: int = 0
    unchanged: int = 0
    removed: int = 0


def pool_windows(
    features: np.ndarray, timestamps: np.ndarray, window: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pool ``window`` rows every ``stride`` rows; timestamps are window centres.

    Windows start at rows 0, S, 2S, … and end inside the video (rows after the last full
    window are not covered); a video shorter than one window becomes one window over all its
    rows, so no video exports empty. A window's timestamp is the midpoint of its first and
    last row's timestamps. Pooling is computed in float32.

    Returns:
        ``([T', D] float32, [T'] float64)``.
    """
    rows = features.shape[0]
    span = min(window, rows)
    starts = np.arange(0, rows - span + 1, stride) if rows else np.zeros(0, np.int64)
    x = features.astype(np.float32, copy=False)
    cumulative = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0, dtype=np.float64)])
    pooled = ((cumulative[starts + span] - cumulative[starts]) / max(span, 1)).astype(np.float32)
    centres = (timestamps[starts] + timestamps[starts + span - 1]) / 2
    return pooled, centres.astype(np.float64)


def file_names(
    stems: dict[str, str], fmt: str, previous: dict[str, str] | None = None
) -> dict[str, str]:
    """``{video_id: file name}`` from ``{video_id: source stem}``, never two alike.

    ``previous`` (``{video_id: base name}`` of an earlier export into the same directory)
    keeps those videos' names. Any other video is named after its stem unless that stem is
    shared (compared case-insensitively, also against timestamps files and kept names): then
    ``-<video id>`` is appended, so a name never depends on the order videos arrive in.
    """
    kept = {vid: base for vid, base in (previous or {}).items() if vid in stems}
    reserved = {base.casefold() for base in kept.values()}
    reserved |= {(base + TIMESTAMPS_SUFFIX).casefold() for base in kept.values()}
    fresh = {vid: stem for vid, stem in stems.items() if vid not in kept}
    taken = Counter(stem.casefold() for stem in fresh.values())
    if fmt == ArrayFormat.NPY:
        taken.update((stem + TIMESTAMPS_SUFFIX).casefold() for stem in fresh.values())
    bases = dict(kept)
    for video_id, stem in fresh.items():
        free = stem and taken[stem.casefold()] == 1 and stem.casefold() not in reserved
        if free and fmt == ArrayFormat.NPY:
            free = (stem + TIMESTAMPS_SUFFIX).casefold() not in reserved
        bases[video_id] = stem if free else f"{stem}-{video_id}"
    return {vid: f"{bases[vid]}.{fmt}" for vid in stems}


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def _read_index(out_dir: Path) -> list[dict[str, str]] | None:
    """The rows of ``out_dir``'s index.csv ([] when absent or empty), None when not ours."""
    try:
        index = out_dir / INDEX_NAME
        with open(index, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return []
            return list(reader) if tuple(reader.fieldnames) == INDEX_COLUMNS else None
    except FileNotFoundError:
        return []
    except (OSError, csv.Error):
        return None


def _read_pending(out_dir: Path) -> set[str] | None:
    """The names an interrupted export's pending list holds (empty: none; None: unreadable)."""
    try:
        names = json.loads((out_dir / PENDING_NAME).read_bytes())["files"]
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return set(names) if all(isinstance(n, str) for n in names) else None


def owned_files(out_dir: Path) -> set[str] | None:
    """Names of the files earlier exports into ``out_dir`` wrote (their ``index.csv``, its
    listed arrays, an interrupted run's pending list); None when ``out_dir`` holds an
    ``index.csv`` or pending list that no export wrote."""
    rows, pending = _read_index(out_dir), _read_pending(out_dir)
    if rows is None or pending is None:
        return None
    listed = {row[column] or "" for row in rows for column in ("file", "timestamps")}
    names = listed | pending
    if not all(Path(n).name == n and n.endswith(SUFFIXES) for n in names):
        return None  # only plain array names beside index.csv: never a path to elsewhere
    return names | {INDEX_NAME, PENDING_NAME}


def _previous_bases(out_dir: Path) -> dict[str, str]:
    return {row["video_id"]: _base(row["file"]) for row in _read_index(out_dir) or []}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", _ZIP_EPOCH), _npy_bytes(array))
    return buffer.getvalue()


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly it; True if written."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_bytes(path, data)
    return True


def _arrays(vf: VideoFeatures, options: ExportOptions) -> tuple[np.ndarray, np.ndarray]:
    features, timestamps = vf.features, vf.timestamps_sec
    if options.window is not None:
        stride = options.stride or options.window
        features, timestamps = pool_windows(features, timestamps, options.window, stride)
    dtype = vf.features.dtype if options.keep_dtype else np.float32
    return features.astype(dtype, copy=False), timestamps.astype(np.float64, copy=False)


def _stems(store: FeatureStore) -> dict[str, str]:
    return {vid: Path(store.video_info(vid).path).stem for vid in store.video_ids}


def _planned_files(names: dict[str, str], fmt: str) -> dict[str, str]:
    """``{video_id: timestamps file name}`` (the array file itself for ``npz``)."""
    if fmt == ArrayFormat.NPZ:
        return dict(names)
    return {vid: f"{_base(name)}{TIMESTAMPS_SUFFIX}.npy" for vid, name in names.items()}


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise write_error(path, e) from e


def export_store(
    path: Path,
    out_dir: Path,
    options: ExportOptions,
    on_video: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Export every video of the store at ``path`` into ``out_dir`` (see the module doc).

    The caller checks ``out_dir`` with the output guard first; this creates it if needed.
    Order, so that an interruption anywhere leaves only files the next run recognises as its
    own: the pending list (old and new names) → the arrays → ``index.csv`` → removal of the
    old names the new index does not list → removal of the pending list.

    Args:
        on_video: called as ``on_video(done, total)`` after each video (progress).

    Raises:
        StoreError: the store cannot be read (a corrupt video names itself), or a file
            cannot be written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary()
    rows: list[dict[str, object]] = []
    old = (owned_files(out_dir) or set()) - {INDEX_NAME, PENDING_NAME}
    with open_store(path) as store:
        names = file_names(_stems(store), options.fmt, _previous_bases(out_dir))
        times_names = _planned_files(names, options.fmt)
        new = set(names.values()) | set(times_names.values())
        pending = json.dumps({"files": sorted(old | new)}).encode("utf-8", "surrogateescape")
        atomic_bytes(out_dir / PENDING_NAME, pending)
        for done, video_id in enumerate(store.video_ids, 1):
            vf = store.read(video_id)
            features, timestamps = _arrays(vf, options)
            name, times_name = names[video_id], times_names[video_id]
            if options.fmt == ArrayFormat.NPZ:
                files = {name: _npz_bytes({"features": features, "timestamps": timestamps})}
            else:
                files = {name: _npy_bytes(features), times_name: _npy_bytes(timestamps)}
            for file_name, data in files.items():
                if _write_if_changed(out_dir / file_name, data):
                    summary.written += 1
                else:
                    summary.unchanged += 1
            rows.append(
                {
                    "path": vf.info.path,
                    "video_id": video_id,
                    "file": name,
                    "timestamps": times_name,
                    "frames": vf.features.shape[0],
                    "rows": features.shape[0],
                    "fps": vf.info.fps,
                    "duration_sec": vf.info.duration_sec,
                    "start_time_sec": vf.info.start_time_sec,
                }
            )
            summary.videos = done
            if on_video is not None:
                on_video(done, len(store))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_if_changed(out_dir / INDEX_NAME, table.getvalue().encode("utf-8", "surrogateescape"))
    for name in sorted(old - new):
        summary.removed += (out_dir / name).exists()
        _remove(out_dir / name)
    _remove(out_dir / PENDING_NAME)
    return summary
