"""``vrnn store export``: a store's features as plain per-video NumPy files other tools can load.

One ``[T, D]`` array per video (float32, or the stored dtype), named after the source file's
stem, its timestamps beside it, and ``index.csv`` mapping source paths to files. With a window,
W consecutive rows are mean-pooled every S rows into ``[T', D]`` clip features with
window-centre timestamps (the fixed-stride layout temporal action localisation code reads).
Videos are read and written one at a time; each file is written atomically and a file that
already holds the same bytes is left alone, so a rerun only writes what changed.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.choices import ArrayFormat, choose
from pipeline.contracts import VideoFeatures
from pipeline.errors import ConfigError
from pipeline.store.layout import atomic_bytes
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
)
"""``frames``: rows in the store; ``rows``: rows exported (fewer with ``--window``)."""
TIMESTAMPS_SUFFIX = ".timestamps"
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


def file_names(stems: dict[str, str], fmt: str) -> dict[str, str]:
    """``{video_id: file name}`` from ``{video_id: source stem}``, never two alike.

    A stem shared by several videos (compared case-insensitively, also against another
    video's timestamps file) gets ``-<video id>`` appended to each, so every name is stable.
    """
    taken = Counter(stem.casefold() for stem in stems.values())
    if fmt == ArrayFormat.NPY:
        taken.update((stem + TIMESTAMPS_SUFFIX).casefold() for stem in stems.values())
    names = {}
    for video_id, stem in stems.items():
        base = stem if stem and taken[stem.casefold()] == 1 else f"{stem}-{video_id}"
        names[video_id] = f"{base}.{fmt}"
    return names


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


def export_store(
    path: Path,
    out_dir: Path,
    options: ExportOptions,
    on_video: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Export every video of the store at ``path`` into ``out_dir`` (see the module doc).

    The caller checks ``out_dir`` with the output guard first; this creates it if needed.

    Args:
        on_video: called as ``on_video(done, total)`` after each video (progress).

    Raises:
        StoreError: the store cannot be read (a corrupt video names itself), or a file
            cannot be written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary()
    rows: list[dict[str, object]] = []
    with open_store(path) as store:
        names = file_names(_stems(store), options.fmt)
        for done, video_id in enumerate(store.video_ids, 1):
            vf = store.read(video_id)
            features, timestamps = _arrays(vf, options)
            name = names[video_id]
            if options.fmt == ArrayFormat.NPZ:
                files = {name: _npz_bytes({"features": features, "timestamps": timestamps})}
                times_name = name
            else:
                times_name = f"{name.removesuffix('.npy')}{TIMESTAMPS_SUFFIX}.npy"
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
    return summary
