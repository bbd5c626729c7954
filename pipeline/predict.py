"""``predict``: classify video files nobody indexed with a trained model directory.

The model directory names the extractor its head was trained on (``extractor.json``) and
holds a copy of that backbone's weights; :func:`pipeline.backbone.backbone_for` rebuilds it and
checks their sha256. Videos then go through the same streaming engine as ``extract``
(:func:`pipeline.featurize.iter_features`) and are sampled exactly as evaluation samples them
(:func:`pipeline.training.predict_videos`). Each video is classified as soon as its features
arrive and then dropped, so memory stays bounded however many files are given.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.backbone import backbone_for
from pipeline.contracts import ExtractionFailure, VideoFeatures
from pipeline.errors import ConfigError, StoreError
from pipeline.featurize import WorkItem, iter_features
from pipeline.fsio import os_reason
from pipeline.identity import NotRegularFileError, file_sha256, video_id_from_sha256
from pipeline.index_sources import find_videos
from pipeline.model_dir import TrainedModel, load_model_dir, model_weights_file
from pipeline.store import FeatureStore, open_store
from pipeline.training import check_extractor, predict_videos

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One classified video.

    Attributes:
        path: the file as given, or as found under a given folder.
        video_id: content-hash id (the feature store's key for the same file).
        probabilities: ``[C]`` float32 class probabilities in the model's label order.
        frames: frames the backbone embedded (``T``, at the extractor's sampling rate).
        duration_sec: seconds of video decoded (first to last decoded frame, plus one period).
        cached: True when the features came from a feature store instead of decoding.
    """

    path: str
    video_id: str
    probabilities: np.ndarray
    frames: int
    duration_sec: float
    cached: bool = False

    def top_k(self, labels: Sequence[str], k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable ``(label, probability)`` pairs, most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(labels[i], float(self.probabilities[i])) for i in order]


@dataclass(frozen=True)
class PredictionFailure:
    """An input that could not be classified, and why (the other inputs go on)."""

    path: str
    reason: str


def collect_videos(
    inputs: Sequence[Path],
) -> tuple[list[Path], list[PredictionFailure], list[Path]]:
    """Expand the command line: files as given, folders walked for video files.

    Returns:
        ``(paths, failures, passed_over)``: paths in order with duplicates removed; a missing
        input or a folder without video files is a failure, not an error; the files the
        folder walks passed over (not videos by extension), to be named in the summary.
    """
    paths: list[Path] = []
    failures: list[PredictionFailure] = []
    passed_over: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = find_videos(given)
            if not found.videos:
                failures.append(PredictionFailure(str(given), "no video files in this folder"))
            paths += found.videos
            passed_over += found.passed_over
        elif given.exists():
            paths.append(given)
        else:
            failures.append(PredictionFailure(str(given), "file not found"))
    return list(dict.fromkeys(paths)), failures, list(dict.fromkeys(passed_over))


def _unreadable(e: OSError) -> str:
    if isinstance(e, IsADirectoryError):
        return "is a directory, not a video file"
    if isinstance(e, NotRegularFileError):
        return str(e.strerror)
    return f"cannot read file ({os_reason(e)})"


@dataclass
class _Plan:
    """Hashed inputs: what to read from the store, what to extract, and content twins."""

    cached: list[tuple[str, str]] = field(default_factory=list)  # (path, video_id)
    todo: list[WorkItem] = field(default_factory=list)
    twins: dict[str, list[str]] = field(default_factory=dict)  # video_id → later paths
    failures: list[PredictionFailure] = field(default_factory=list)


def _plan(paths: Sequence[Path], store: FeatureStore | None) -> _Plan:
    plan = _Plan()
    for path in paths:
        try:
            sha256 = file_sha256(path)
        except OSError as e:
            plan.failures.append(PredictionFailure(str(path), _unreadable(e)))
            continue
        video_id = video_id_from_sha256(sha256)
        if video_id in plan.twins:  # same content as an earlier input: classify it once
            plan.twins[video_id].append(str(path))
            continue
        plan.twins[video_id] = []
        if store is not None and video_id in store:
            plan.cached.append((str(path), video_id))
        else:
            plan.todo.append(WorkItem(str(path), video_id, sha256))
    return plan


class Predictor:
    """A loaded model directory that classifies video files.

    Args:
        model_dir: a directory written by ``vrnn train``.
        weights: backbone weights overriding the model directory's copy (sha256-checked).

    Raises:
        ModelError: missing, incomplete or unreadable model directory.
    """

    def __init__(self, model_dir: Path, weights: Path | None = None):
        self.model_dir = Path(model_dir)
        self.trained: TrainedModel = load_model_dir(self.model_dir)
        self.weights = weights

    @property
    def labels(self) -> list[str]:
        """Class names, in probability order."""
        return self.trained.labels

    def classify(self, features: np.ndarray) -> np.ndarray:
        """``[T, D]`` per-frame features of one video → ``[C]`` float32 probabilities."""
        return predict_videos(self.trained, [features])[0]

    def predict(
        self,
        paths: Sequence[Path],
        *,
        features: Path | None = None,
        batch_size: int = 32,
        stop: threading.Event | None = None,
    ) -> Iterator[Prediction | PredictionFailure]:
        """Classify ``paths``, yielding each result as soon as it is known.

        All inputs are hashed first (the content hash is the video id). Videos found in
        ``features`` are classified from their stored features without decoding; the rest
        are decoded and embedded in batches of ``batch_size`` frames that span videos.
        Inputs with the same content are classified once and reported under every path.

        Args:
            paths: video files (see :func:`collect_videos` for folders).
            features: a feature store built by the model's extractor, to reuse.
            batch_size: frames per backbone call.
            stop: cooperative cancellation of the extraction.

        Yields:
            a :class:`Prediction` or a :class:`PredictionFailure` per path.

        Raises:
            ConfigError: ``batch_size`` below 1.
            ModelError, StoreError: ``features`` is unreadable or from another extractor.
            WeightsError: the backbone weights are missing or do not match the model's.
        """
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        store = open_store(Path(features)) if features is not None else None
        try:
            if store is not None:
                check_extractor(self.trained, store, self.model_dir)
            plan = _plan(paths, store)
            infer = None
            if plan.todo:  # fail on missing or wrong weights before reporting anything
                weights_file = model_weights_file(
                    self.model_dir, self.trained.extractor, self.weights
                )
                infer = backbone_for(self.trained.extractor, weights_file)
            yield from plan.failures
            for path, video_id in plan.cached:
                yield from self._from_store(store, path, video_id, plan.twins[video_id])
            if infer is not None:
                log.info("decoding %d videos, %d from the store", len(plan.todo), len(plan.cached))
                outcomes = iter_features(
                    plan.todo,
                    config=self.trained.extractor,
                    infer=infer,
                    batch_size=batch_size,
                    stop=stop,
                )
                with closing(outcomes):  # stops the decoder thread if our caller stops early
                    yield from self._extracted(outcomes, plan)
        finally:
            if store is not None:
                store.close()

    def _extracted(
        self, outcomes: Iterator[tuple[int, VideoFeatures | ExtractionFailure]], plan: _Plan
    ) -> Iterator[Prediction | PredictionFailure]:
        for i, outcome in outcomes:
            paths_i = [plan.todo[i].path, *plan.twins[plan.todo[i].video_id]]
            if isinstance(outcome, ExtractionFailure):
                yield from (PredictionFailure(p, outcome.reason) for p in paths_i)
            else:
                yield from self._predictions(outcome, paths_i, cached=False)

    def _from_store(
        self, store: FeatureStore, path: str, video_id: str, twins: list[str]
    ) -> list[Prediction | PredictionFailure]:
        try:
            video = store.read(video_id)
        except StoreError as e:
            return [PredictionFailure(p, str(e)) for p in [path, *twins]]
        return self._predictions(video, [path, *twins], cached=True)

    def _predictions(
        self, video: VideoFeatures, paths: list[str], *, cached: bool
    ) -> list[Prediction | PredictionFailure]:
        probabilities = self.classify(video.features)
        frames, seconds = len(video.features), float(video.info.duration_sec)
        return [
            Prediction(p, video.video_id, probabilities, frames, seconds, cached) for p in paths
        ]
