"""Stage 2's inputs: the manifest joined with the feature store, per-split features, targets.

Labels and splits come from the manifest, features from the store (joined by content hash),
so relabelling or re-splitting only re-runs stage 2. Missing videos are counted and named.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipeline.contracts import VideoRecord
from pipeline.errors import ManifestError, ModelError
from pipeline.frame_cache import CacheUnavailable, FrameCache, open_frame_cache
from pipeline.store import FeatureStore
from pipeline.streaming import InputPlan, plan_input

SHOW_MISSING = 5
"""How many missing video paths a message lists before summarising the rest."""


def describe_missing(missing: Sequence[VideoRecord]) -> str:
    """One line: how many manifest videos were skipped and why, with the first few paths.

    A file that does not exist is told apart from one that exists but is not in the store
    (never extracted, or its extraction failed).
    """
    gone = [r for r in missing if not os.path.lexists(r.path)]
    absent = [r for r in missing if os.path.lexists(r.path)]
    parts = []
    for rows, why in ((gone, "file not found"), (absent, "not in the feature store")):
        if rows:
            shown = ", ".join(str(r.path) for r in rows[:SHOW_MISSING])
            more = f" and {len(rows) - SHOW_MISSING} more" if len(rows) > SHOW_MISSING else ""
            parts.append(f"{len(rows)} {why} ({shown}{more})")
    return f"{len(missing)} manifest video(s) skipped: {'; '.join(parts)}"


@dataclass(frozen=True)
class JoinedVideo:
    """A manifest row whose content is in the store, under ``video_id``."""

    record: VideoRecord
    video_id: str


@dataclass(frozen=True)
class JoinResult:
    """Manifest rows found in the store, and those that were not (excluded, not fatal)."""

    videos: list[JoinedVideo]
    missing: list[VideoRecord]


@dataclass(frozen=True)
class SplitData:
    """The cached features of one split, with class indices.

    Attributes:
        videos: the joined rows, in manifest order.
        features: per-video ``[T_i, D]`` arrays in the store's dtype (float16 by default).
        targets: ``[N]`` int64 class indices into the label list.
    """

    videos: list[JoinedVideo]
    features: list[np.ndarray]
    targets: np.ndarray


def join_manifest(
    records: Sequence[VideoRecord], store: FeatureStore, what: str = "manifest"
) -> JoinResult:
    """Find each manifest video's features in the store by content hash.

    Missing videos are returned, not fatal (the caller reports them, once: see
    :func:`describe_missing`). ``what`` names the records in messages (e.g. ``"test split"``).

    Raises:
        ManifestError: the manifest is empty or has no video in common with the store.
    """
    if not records:
        raise ManifestError(f"the {what} lists no videos")
    found, missing = [], []
    for record in records:
        video_id = store.video_id_for(record.path)
        if video_id is None:
            missing.append(record)
        else:
            found.append(JoinedVideo(record, video_id))
    if not found:
        raise ManifestError(
            f"none of the {len(records)} {what} videos are in the feature store "
            f"{store.path}; extract them first (vrnn extract)"
        )
    return JoinResult(found, missing)


def class_labels(videos: Sequence[JoinedVideo]) -> list[str]:
    """Sorted class names of the joined videos.

    Raises:
        ManifestError: the train split has no videos, or some class has none in it.
    """
    train_labels = {v.record.label for v in videos if v.record.split == "train"}
    if not train_labels:
        raise ManifestError("the train split has no videos in the feature store")
    labels = sorted({v.record.label for v in videos})
    untrained = [label for label in labels if label not in train_labels]
    if untrained:
        raise ManifestError(
            f"class(es) {', '.join(map(repr, untrained))} have no videos in the train split"
        )
    if len(labels) < 2:
        raise ManifestError(f"only one class ({labels[0]!r}) in the manifest; need at least 2")
    return labels


def split_targets(
    videos: Sequence[JoinedVideo], split: str, labels: Sequence[str]
) -> tuple[list[JoinedVideo], np.ndarray]:
    """The rows of one split and their ``[N]`` int64 class indices into ``labels``.

    Raises:
        ModelError: a video's label is not one of ``labels``.
    """
    chosen = [v for v in videos if v.record.split == split]
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({v.record.label for v in chosen} - index.keys())
    if unknown:
        raise ModelError(
            f"the {split} split has class(es) the model was not trained on: "
            f"{', '.join(map(repr, unknown))}"
        )
    return chosen, np.array([index[v.record.label] for v in chosen], dtype=np.int64)


def read_split(
    store: FeatureStore,
    videos: Sequence[JoinedVideo],
    split: str,
    labels: Sequence[str],
    cache: FrameCache | None = None,
) -> SplitData:
    """Read the features of one split once (a video listed twice is read once).

    Args:
        cache: None reads the features into memory (:meth:`FeatureStore.read_features`); a
            :class:`~pipeline.frame_cache.FrameCache` gives memory-mapped views instead. Both
            hold only features that passed the store's validity rule (:mod:`pipeline.validity`).

    Raises:
        ModelError: a video's label is not one of ``labels``.
        StoreError: a video's stored features are not valid (e.g. hold NaN or inf).
    """
    chosen, targets = split_targets(videos, split, labels)
    read = store.read_features if cache is None else cache.frames
    features: dict[str, np.ndarray] = {}
    for v in chosen:
        if v.video_id not in features:
            features[v.video_id] = read(v.video_id)
    return SplitData(chosen, [features[v.video_id] for v in chosen], targets)


def feature_reader(
    store: FeatureStore, videos: Sequence[JoinedVideo], memory_budget: int
) -> tuple[InputPlan, FrameCache | None]:
    """Decide the input path for ``videos``: in memory (None) when their features fit
    ``memory_budget`` bytes, else the frame cache (memory-mapped views, read into the page
    cache in the background when they fit there: :meth:`FrameCache.warm`).

    When the frame cache cannot be used (not the user's own, a full or read-only disk), the
    run reads the store into memory instead (never a failure) and the plan's ``note`` says so.
    """
    ids = [v.video_id for v in videos]
    plan = plan_input(store, ids, memory_budget)
    if not plan.streaming:
        return plan, None
    try:
        cache = open_frame_cache(store, ids)
    except CacheUnavailable as e:
        return replace(plan, note=f"{e}; read the features from the store instead"), None
    cache.warm()
    return plan, cache


def read_ahead(
    cache: FrameCache | None, data: SplitData
) -> Callable[[int, np.ndarray], None] | None:
    """The sampler's read-ahead hint when streaming: upcoming rows fetched by the kernel.

    None when the whole cache is being read into the page cache (:meth:`FrameCache.warm`):
    hints then cost ~1.5 ms of system calls per batch (512 rows) and fetch nothing.
    """
    if cache is None or cache.warming:
        return None
    return lambda i, rows: cache.will_need(data.videos[i].video_id, rows)
