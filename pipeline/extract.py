"""Stage 1 engine: decode → batched backbone → one part file per video.

A decoder thread fills a bounded queue with frame chunks; the calling thread cuts them into
fixed-size batches *across video boundaries*, so the CNN (the real cost) never waits on a
short video's tail, and memory stays bounded however long a video is. Each finished video is
written as a part file (see :mod:`pipeline.store`); nothing here touches the final store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.contracts import ExtractionFailure, ExtractorConfig, VideoFeatures, VideoInfo
from pipeline.errors import DecodeError, WeightsError
from pipeline.store import write_failure, write_part
from pipeline.video import VideoReader

log = logging.getLogger(__name__)

QUEUE_CHUNKS = 8
"""Decoded chunks buffered ahead of inference (each ≤ ``CHUNK_FRAMES`` frames)."""
CHUNK_FRAMES = 16
DECODER_NICE = 10
"""Nice increment of the decoder thread (see ``_lower_thread_priority``)."""


CHANGED_REASON = "changed during extraction (size or mtime differ from when it was hashed)"


@dataclass(frozen=True)
class WorkItem:
    """One video to extract: its path and content identity (hashed by the planner).

    ``size``/``mtime_ns`` are the file's as hashed (-1: not recorded); a file that no
    longer has them after decoding is recorded as :data:`CHANGED_REASON`, never stored
    under the old content's id.
    """

    path: str
    video_id: str
    content_sha256: str
    size: int = -1
    mtime_ns: int = -1

    def changed(self) -> bool:
        """True when the file's size or mtime differ from those recorded at hash time."""
        if self.size < 0:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns)


@dataclass(frozen=True)
class VideoDone:
    """Progress event: one video finished (``failure`` set when it failed)."""

    item: WorkItem
    frames: int
    failure: ExtractionFailure | None = None


@dataclass
class TaskResult:
    """What one call of :func:`extract_items` achieved."""

    ok: list[str] = field(default_factory=list)
    failed: list[ExtractionFailure] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- backbone cache

_BACKBONES: dict[tuple[str, int, bool], Callable[[np.ndarray], np.ndarray]] = {}
_BACKBONES_LOCK = threading.Lock()


def register_backbone(
    weights_sha256: str, input_size: int, mixed_precision: bool, infer: Callable
) -> None:
    """Make an already built inference function reusable by :func:`backbone_for`."""
    with _BACKBONES_LOCK:
        _BACKBONES[(weights_sha256, input_size, mixed_precision)] = infer


def backbone_for(config: ExtractorConfig, weights_file: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The inference function for ``config``, built once per process and then reused.

    The weights are loaded from ``weights_file`` and must match ``config.weights_sha256``;
    the compute precision is ``config.mixed_precision``.
    """
    mixed_precision = config.mixed_precision
    key = (config.weights_sha256, config.input_size, mixed_precision)
    with _BACKBONES_LOCK:
        if key not in _BACKBONES:
            from pipeline.backbone import (
                build_backbone,
                fingerprint,
                make_inference_fn,
                parse_weights,
            )

            model = build_backbone(
                parse_weights(str(weights_file)),
                config.input_size,
                weights_file=weights_file,
                mixed_precision=mixed_precision,
            )
            if fingerprint(model) != config.weights_sha256:
                raise WeightsError(
                    f"{weights_file}: weights sha256 {fingerprint(model)[:12]} does not match "
                    f"the extractor's {config.weights_sha256[:12]} ({config.weights})"
                )
            _BACKBONES[key] = make_inference_fn(model)
        return _BACKBONES[key]


# --------------------------------------------------------------------------- the engine

_END = object()


def _reason(error: Exception, path: str) -> str:
    text = str(error)
    return text[len(path) + 2 :] if text.startswith(f"{path}: ") else text


def _lower_thread_priority() -> None:
    """Give the calling (decoder) thread a lower CPU priority than inference, on Linux.

    The backbone is the bottleneck and its intra-op threads wait on each other at every op,
    so a decoder preempting one of them stalls all of them. The decoder needs a small share
    of one core and has a queue of chunks to absorb delays, so it yields to inference; on an
    otherwise idle machine (or when a GPU does the inference) nice changes nothing.
    """
    if sys.platform == "linux":  # per-thread nice values are a Linux feature
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODER_NICE)


def _decode_into(
    items: Sequence[WorkItem],
    config: ExtractorConfig,
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    """Producer: ("frames", i, chunk), then ("done", i, info) or ("failed", i, reason)."""

    def put(message: object) -> bool:
        while not stop.is_set():
            try:
                out.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    _lower_thread_priority()
    try:
        for i, item in enumerate(items):
            reader = VideoReader(
                Path(item.path), size=config.input_size, resize=config.resize, fps=config.fps
            )
            try:
                for chunk in reader.chunks(CHUNK_FRAMES):
                    if not put(("frames", i, chunk)):
                        return
            except DecodeError as e:
                message: tuple = ("failed", i, _reason(e, item.path))
            except MemoryError:
                message = ("failed", i, "out of memory while decoding")
            except Exception as e:
                # An unexpected error on one file (a decoder or library bug) must not stall
                # a whole batch night after night: record it loudly and go on.
                log.exception("unexpected error while decoding %s", item.path)
                message = ("failed", i, f"unexpected decoder error ({type(e).__name__}: {e})")
            else:
                message = ("done", i, reader.info)
            if not put(message):
                return
        put(_END)
    except BaseException as e:  # a bug: hand it to the consumer, which re-raises it
        put(("error", -1, e))


class _Assembler:
    """Collects per-video feature rows as batches come back from the backbone."""

    def __init__(self, items: Sequence[WorkItem], config: ExtractorConfig):
        self.items = items
        self.config = config
        self.rows: dict[int, list[np.ndarray]] = {}
        self.stamps: dict[int, list[np.ndarray]] = {}
        self.pending: dict[int, int] = {}  # frames queued for inference, not yet back
        self.finished: dict[int, VideoInfo] = {}

    def add_frames(self, i: int, timestamps: np.ndarray) -> None:
        self.stamps.setdefault(i, []).append(timestamps)
        self.rows.setdefault(i, [])
        self.pending[i] = self.pending.get(i, 0) + len(timestamps)

    def add_features(self, i: int, features: np.ndarray) -> None:
        self.rows[i].append(features.astype(self.config.dtype))
        self.pending[i] -= len(features)

    def drop(self, i: int) -> None:
        for table in (self.rows, self.stamps, self.pending, self.finished):
            table.pop(i, None)

    def complete(self) -> list[tuple[int, VideoFeatures]]:
        """Pop every finished video whose frames have all come back from the backbone."""
        ready = [i for i in self.finished if self.pending.get(i, 0) == 0]
        videos = []
        for i in ready:
            item, info = self.items[i], self.finished[i]
            features = np.concatenate(self.rows[i])
            stamps = np.concatenate(self.stamps[i])
            videos.append(
                (i, VideoFeatures(item.video_id, item.content_sha256, features, stamps, info))
            )
            self.drop(i)
        return videos


def iter_features(
    items: Sequence[WorkItem],
    *,
    config: ExtractorConfig,
    infer: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 32,
    stop: threading.Event | None = None,
) -> Iterator[tuple[int, VideoFeatures | ExtractionFailure]]:
    """Decode and embed ``items``, yielding each video as soon as it is complete.

    Decoding runs in a background thread, inference in the caller's. Batches of
    ``batch_size`` frames span video boundaries, so results arrive in item order except
    that a failed video is reported as soon as its decoder gives up. Setting ``stop`` (or
    closing the generator) ends the run after the current batch.

    Args:
        items: the videos, with ids already computed.
        config: the extractor configuration (input size, resize, sampling, dtype).
        infer: uint8 ``[B, S, S, 3]`` → float32 ``[B, 1280]`` (see ``backbone_for``).
        batch_size: frames per backbone call.
        stop: cooperative cancellation.

    Yields:
        ``(index into items, VideoFeatures)`` or ``(index, ExtractionFailure)``.
    """
    stop = stop or threading.Event()
    chunks: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
    decoder = threading.Thread(
        target=_decode_into, args=(items, config, chunks, stop), name="vrnn-decode", daemon=True
    )
    size = config.input_size
    batch = np.empty((batch_size, size, size, 3), np.uint8)
    owners: list[tuple[int, int]] = []  # (video index, frame count) slices of `batch`
    filled = 0
    videos = _Assembler(items, config)

    def run_batch() -> None:
        nonlocal filled
        if filled:
            features = infer(batch[:filled])
            start = 0
            for i, count in owners:
                if i in videos.rows:  # a video that failed mid-way was dropped
                    videos.add_features(i, features[start : start + count])
                start += count
        owners.clear()
        filled = 0

    decoder.start()
    try:
        while not stop.is_set():
            message = chunks.get()
            if message is _END:
                break
            kind, i, payload = message
            if kind == "error":
                raise payload
            if kind == "frames":
                videos.add_frames(i, payload.timestamps_sec)
                frames, offset = payload.frames, 0
                while offset < len(frames):
                    take = min(batch_size - filled, len(frames) - offset)
                    batch[filled : filled + take] = frames[offset : offset + take]
                    owners.append((i, take))
                    filled += take
                    offset += take
                    if filled == batch_size:
                        run_batch()
                        yield from videos.complete()
            elif kind == "done":
                videos.finished[i] = payload
                yield from videos.complete()  # now, if none of its frames await inference
            else:  # failed
                videos.drop(i)
                yield i, ExtractionFailure(items[i].path, payload, items[i].video_id)
        if not stop.is_set():
            run_batch()
            yield from videos.complete()
    finally:
        stop.set()
        decoder.join()


def extract_items(
    items: Sequence[WorkItem],
    *,
    config: ExtractorConfig,
    infer: Callable[[np.ndarray], np.ndarray],
    parts_dir: Path,
    batch_size: int = 32,
    stop: threading.Event | None = None,
    on_video: Callable[[VideoDone], None] | None = None,
) -> TaskResult:
    """Extract ``items`` into part files under ``parts_dir`` (see :func:`iter_features`).

    A video that fails to decode is recorded as a failure part and the rest continue;
    videos not yet written when ``stop`` is set are simply not there (a rerun does them).

    Args:
        items: the videos, with ids already computed.
        config: the extractor configuration.
        infer: the backbone's inference function.
        parts_dir: the store's staging directory.
        batch_size: frames per backbone call; batches span video boundaries.
        stop: cooperative cancellation.
        on_video: called after each video is written or recorded as failed.

    Returns:
        ids written, failures, frames extracted and wall seconds.
    """
    started = time.perf_counter()
    result = TaskResult()
    for i, outcome in iter_features(
        items, config=config, infer=infer, batch_size=batch_size, stop=stop
    ):
        if not isinstance(outcome, ExtractionFailure) and items[i].changed():
            outcome = ExtractionFailure(items[i].path, CHANGED_REASON, items[i].video_id)
        if isinstance(outcome, ExtractionFailure):
            write_failure(parts_dir, outcome)
            result.failed.append(outcome)
            done = VideoDone(items[i], 0, outcome)
        else:
            stat = (items[i].size, items[i].mtime_ns) if items[i].size >= 0 else None
            write_part(parts_dir, config, outcome, source_stat=stat)
            result.ok.append(outcome.video_id)
            result.frames += len(outcome.features)
            done = VideoDone(items[i], len(outcome.features))
        if on_video:
            on_video(done)
    result.seconds = time.perf_counter() - started
    return result
