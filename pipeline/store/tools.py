"""``vrnn store info`` and ``vrnn store verify``: what a store holds, and whether all of it reads.

Both read through :mod:`pipeline.store.read`. ``info`` touches only the index and each video's
attributes; ``verify`` reads every feature and timestamp chunk (HDF5 checks each chunk's
fletcher32 checksum), checks the index against the data, every shard's extractor against the
root's, and that every ``/videos/<id>`` link opens the plain-h5py way, through the root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import StoreError
from pipeline.identity import video_id_from_sha256
from pipeline.store.layout import FEATURES, VIDEOS, config_of
from pipeline.store.read import FeatureStore, open_store

COMPACT_REMEDY = "`vrnn store compact` rewrites the links"

FIRST_FEW = 5
"""Failures and partial decodes ``info`` lists by name (all of them are counted)."""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def store_info(path: Path) -> dict:
    """A JSON-able summary of a committed store.

    Keys: ``store``, ``videos``, ``frames``, ``bytes`` (``index``: root, index and links files;
    ``shards``; ``total``: what the store occupies on disk), ``shards`` (count, ``missing``
    names), ``extractor`` (the recorded configuration), ``failures`` (``count``, ``first``:
    path and reason of the first few),
    ``partial_decodes`` (``count``, ``first``: videos that lost frames to damage),
    ``timestamps_repaired`` (videos and rows whose timestamps were repaired).

    Raises:
        StoreError: ``path`` is not a readable version-3 store.
    """
    with open_store(path) as store:
        shards = sorted({entry.shard for entry in store.catalog.values()})
        missing = set(store.missing_shards())
        shard_bytes = sum(_size(store.shards_dir / s) for s in shards if s not in missing)
        partial, repaired_videos, repaired_rows = [], 0, 0
        for video_id in store.video_ids:
            if store.catalog[video_id].shard in missing:
                continue
            info = store.video_info(video_id)
            if info.partial:
                partial.append(
                    {
                        "video_id": video_id,
                        "path": info.path,
                        "decoded_frames": info.decoded_frames,
                        "container_frames": info.container_frames,
                        "corrupt_packets": info.corrupt_packets,
                    }
                )
            repaired_videos += info.timestamps_repaired > 0
            repaired_rows += info.timestamps_repaired
        failures = store.failures
        index_files = (*store.shards_dir.glob("index-*.h5"), *store.shards_dir.glob("links-*.h5"))
        index_bytes = _size(store.path) + sum(_size(p) for p in index_files)
        return {
            "store": str(store.path),
            "videos": len(store),
            "frames": sum(entry.frames for entry in store.catalog.values()),
            "bytes": {
                "index": index_bytes,
                "shards": shard_bytes,
                "total": index_bytes + shard_bytes,
            },
            "shards": {
                "count": len(shards),
                "directory": str(store.shards_dir),
                "missing": sorted(missing),
            },
            "extractor": store.config.to_dict(),
            "failures": {
                "count": len(failures),
                "first": [{"path": f.path, "reason": f.reason} for f in failures[:FIRST_FEW]],
            },
            "partial_decodes": {"count": len(partial), "first": partial[:FIRST_FEW]},
            "timestamps_repaired": {"videos": repaired_videos, "rows": repaired_rows},
        }


@dataclass(frozen=True)
class Problem:
    """One video that does not read back as the index describes it."""

    video_id: str
    path: str
    kind: str  # "missing" (its shard or group is gone), "corrupt" or "unlinked"
    reason: str


@dataclass
class VerifyReport:
    """What :func:`verify_store` checked and found."""

    store: str
    videos: int = 0
    frames: int = 0
    problems: list[Problem] = field(default_factory=list)
    damaged_files: list[str] = field(default_factory=list)
    """One line per store file found wrong as a whole (a links file, a foreign shard)."""

    @property
    def clean(self) -> bool:
        """True when every video read back intact and no store file is damaged."""
        return not self.problems and not self.damaged_files


def _check_video(store: FeatureStore, video_id: str) -> str | None:
    """Why ``video_id`` is corrupt, or None when it reads back as the index says."""
    try:
        vf = store.read(video_id)
    except StoreError as e:
        return str(e)
    except (OSError, KeyError, ValueError) as e:  # a group or dataset damaged beyond h5py
        return f"unreadable ({type(e).__name__}: {e})"
    rows, config = store.catalog[video_id].frames, store.config
    checks = [
        (vf.features.ndim == 2, f"features have shape {vf.features.shape}, not 2-D"),
        (vf.features.shape[0] == rows, f"{vf.features.shape[0]} feature rows, index says {rows}"),
        (
            vf.features.shape[-1] == config.feature_dim,
            f"feature width {vf.features.shape[-1]}, extractor says {config.feature_dim}",
        ),
        (str(vf.features.dtype) == config.dtype, f"dtype {vf.features.dtype} ≠ {config.dtype}"),
        (vf.timestamps_sec.shape == (rows,), f"{vf.timestamps_sec.shape} timestamps, {rows} rows"),
        (vf.info.frame_count == rows, f"frame_count {vf.info.frame_count} ≠ {rows} rows"),
        (bool(np.isfinite(vf.timestamps_sec).all()), "timestamps are not all finite"),
        (bool((np.diff(vf.timestamps_sec) > 0).all()), "timestamps are not strictly increasing"),
        (
            video_id_from_sha256(vf.content_sha256) == video_id,
            f"content_sha256 {vf.content_sha256[:12]}… does not give id {video_id}",
        ),
    ]
    wrong = [message for ok, message in checks if not ok]
    return "; ".join(wrong) or None


def verify_store(path: Path, on_video: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Read every video of a store back and check it against the index.

    Args:
        path: the store's index file.
        on_video: called as ``on_video(done, total)`` after each video (progress).

    Returns:
        a :class:`VerifyReport` listing every missing or corrupt video (never raises for them).

    Raises:
        StoreError: ``path`` is not a readable version-3 store.
    """
    with open_store(path) as store:
        report = VerifyReport(str(store.path), videos=len(store))
        missing = {vid: shard for shard, ids in store.missing_shards().items() for vid in ids}
        sources = {entry.video_id: source for source, entry in store.path_index.items()}
        for done, video_id in enumerate(store.video_ids, 1):
            source = sources.get(video_id, "")
            if video_id in missing:
                reason = (
                    f"shard {missing[video_id]} is missing from {store.shards_dir}; "
                    "restore it or re-extract"
                )
                report.problems.append(Problem(video_id, source, "missing", reason))
            elif (reason := _check_video(store, video_id)) is not None:
                report.problems.append(Problem(video_id, source, "corrupt", reason))
            else:
                report.frames += store.catalog[video_id].frames
            if on_video is not None:
                on_video(done, report.videos)
        for source, entry in sorted(store.path_index.items()):
            if entry.video_id not in store:
                reason = "the path index names a video the catalog does not hold"
                report.problems.append(Problem(entry.video_id, source, "missing", reason))
        report.damaged_files += _foreign_shards(store, set(missing.values()))
        flagged = {problem.video_id for problem in report.problems}
        intact = [vid for vid in store.video_ids if vid not in flagged]
        _check_links(store, intact, sources, report)
        return report


def _foreign_shards(store: FeatureStore, missing: set[str]) -> list[str]:
    """A line for each shard whose extractor attribute is not the root's (or is unreadable)."""
    lines = []
    for shard in sorted({entry.shard for entry in store.catalog.values()} - missing):
        try:
            with h5py.File(store.shards_dir / shard, "r") as f:
                config = config_of(f)
        except (OSError, KeyError, ValueError, TypeError) as e:
            lines.append(f"shard {store.shards_dir / shard}: extractor not readable ({e})")
            continue
        if not config.same_features(store.config):
            lines.append(
                f"shard {store.shards_dir / shard} was made by another extractor "
                f"({config.describe()}; the store's is {store.config.describe()}); "
                "re-extract its videos into a new store"
            )
    return lines


def _check_links(
    store: FeatureStore, video_ids: list[str], sources: dict[str, str], report: VerifyReport
) -> None:
    """Open ``/videos/<id>`` of every intact video through the root, as plain h5py does."""
    with h5py.File(store.path, "r") as f:
        link = f.get(VIDEOS, getlink=True)
        named = isinstance(link, h5py.ExternalLink)
        where = store.path.parent / link.filename if named else f"{store.path}:/{VIDEOS}"
        try:
            group = f[VIDEOS]
        except (OSError, KeyError) as e:
            report.damaged_files.append(
                f"links file {where}: /videos does not open with h5py ({e}); {COMPACT_REMEDY}"
            )
            return
        for video_id in video_ids:
            try:
                group[video_id][FEATURES].shape  # noqa: B018 (opening it is the check)
            except (OSError, KeyError) as e:
                reason = f"/videos/{video_id} does not open with h5py ({e}); {COMPACT_REMEDY}"
                report.problems.append(
                    Problem(video_id, sources.get(video_id, ""), "unlinked", reason)
                )
