"""Stage 1 engine: decode → batched backbone → one part file per video.

Decoder threads (:mod:`pipeline.decoder_thread`, each taking whole videos) fill one bounded
queue with typed messages; the calling thread cuts their frame chunks into fixed-size batches
*across video boundaries*, so the CNN (the real cost) never waits on a short video's tail, and
memory stays bounded however long a video is. Each finished video is written as a part file
(see :mod:`pipeline.store`); nothing here touches the final store.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.contracts import ExtractionFailure, ExtractorConfig, VideoFeatures, VideoInfo
from pipeline.decoder_thread import (
    POLL_SEC,
    Crashed,
    Decoded,
    DecoderThread,
    Failed,
    Frames,
    OutOfWork,
)
from pipeline.errors import ConfigError
from pipeline.store import unchanged, write_failure, write_part

log = logging.getLogger(__name__)

QUEUE_CHUNKS = 8
"""Decoded chunks buffered ahead of inference (each ≤ ``decoder_thread.CHUNK_FRAMES``
frames), at least."""
CHUNKS_PER_DECODER = 4
"""Queue depth per decoder thread when there are more than two (see :func:`queue_depth`)."""
MAX_AUTO_DECODERS = 8
"""Most decoder threads ``--decoders auto`` starts (memory grows with the queue depth)."""
STALL_TIMEOUT_SEC = 300.0
"""A decoder that gets no frame from its video for this long is abandoned (video failed)."""


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
        return self.size >= 0 and not unchanged(Path(self.path), self.size, self.mtime_ns)

    def failure(self, reason: str, *, transient: bool = False) -> ExtractionFailure:
        """This video's failure: one of its content is remembered with its stat at hash
        time (a rerun skips the unchanged file); a ``transient`` one (of the run) is not."""
        if transient:
            return ExtractionFailure(self.path, reason, self.video_id)
        return ExtractionFailure(self.path, reason, self.video_id, self.size, self.mtime_ns)


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


# --------------------------------------------------------------------------- the engine

JOIN_SEC = 2.0
"""How long the end of a run waits for each decoder to exit; one stuck inside its reader is
left behind (a daemon thread that exits at its next chunk) rather than blocking the caller."""


def auto_decoders(cores: int | None = None) -> int:
    """Decoder threads for ``--decoders auto``: one per core, at most ``MAX_AUTO_DECODERS``.

    PyAV releases the GIL while decoding, so threads scale with cores. Extra decoders cost
    nothing when inference is the bottleneck (they run at a lower priority and block on the
    full queue), and keep a fast backbone (a GPU, a small input) fed when it is not.
    """
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_DECODERS))


def parse_decoders(text: str) -> int | None:
    """``--decoders`` value: ``auto`` → None (see :func:`auto_decoders`), else an int ≥ 1."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"--decoders must be a whole number ≥ 1 or auto, got {text!r}")
    return value


def queue_depth(decoders: int) -> int:
    """Chunks buffered ahead of inference for ``decoders`` decoder threads."""
    return max(QUEUE_CHUNKS, CHUNKS_PER_DECODER * decoders)


def decode_order(items: Sequence[WorkItem], decoders: int) -> list[int]:
    """The order in which decoder threads take ``items``: biggest files first when several.

    Each video is decoded whole by one thread, so a big video taken last would leave the
    other decoders idle while it finishes (measured: a quarter of a short decode-bound run).
    Biggest first (file size as hashed, a proxy for decoding work) leaves only small videos
    for the end. One decoder keeps the items' order (results then arrive in that order).
    """
    if decoders == 1:
        return list(range(len(items)))
    return sorted(range(len(items)), key=lambda i: -items[i].size)


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
        ready = sorted(i for i in self.finished if self.pending.get(i, 0) == 0)
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
    decoders: int = 1,
    stall_timeout_sec: float = STALL_TIMEOUT_SEC,
) -> Iterator[tuple[int, VideoFeatures | ExtractionFailure]]:
    """Decode and embed ``items``, yielding each video as soon as it is complete.

    ``decoders`` background threads each take whole videos; inference runs in the caller's
    thread. Batches of ``batch_size`` frames span video boundaries (and decoders), so the
    backbone never waits on one video's tail; when no chunk arrives for ``POLL_SEC`` the
    partial batch runs, so a slow or hung decoder never holds other videos back. With one
    decoder, results arrive in item order except that a failed video is reported as soon as
    its decoder gives up; with several (biggest files first, see :func:`decode_order`), in
    the order videos complete (the store sorts by id, so it is the same either way).

    A video whose decoder gets no frame for ``stall_timeout_sec`` fails ("decoder hung") and
    a fresh decoder takes over the remaining videos. Setting ``stop`` (from any thread) or
    closing the generator ends the run after the current batch.

    Args:
        items: the videos, with ids already computed.
        config: the extractor configuration (input size, resize, sampling, dtype).
        infer: uint8 ``[B, S, S, 3]`` → float32 ``[B, 1280]`` (see
            :func:`pipeline.backbone.backbone_for`).
        batch_size: frames per backbone call.
        stop: cooperative cancellation.
        decoders: decoder threads (see :func:`auto_decoders`).
        stall_timeout_sec: seconds without a frame before a decoder is declared hung.

    Yields:
        ``(index into items, VideoFeatures)`` or ``(index, ExtractionFailure)``.
    """
    if decoders < 1:
        raise ValueError(f"decoders must be ≥ 1, got {decoders}")
    stop = stop or threading.Event()
    decoders = max(1, min(decoders, len(items)))
    chunks: queue.Queue = queue.Queue(maxsize=queue_depth(decoders))
    work: queue.SimpleQueue = queue.SimpleQueue()
    for i in decode_order(items, decoders):
        work.put(i)
    live: set[DecoderThread] = set()
    paths = [item.path for item in items]

    def start_decoder() -> None:
        decoder = DecoderThread(paths, work, config, chunks, stop)
        live.add(decoder)
        decoder.start()

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

    def abandon_hung() -> Iterator[tuple[int, ExtractionFailure]]:
        now = time.monotonic()
        for decoder in list(live):
            busy = decoder.busy
            if busy is not None and now - busy[1] > stall_timeout_sec:
                decoder.abandoned = True  # its late messages are ignored; it exits at its next
                live.discard(decoder)
                videos.drop(busy[0])
                item = items[busy[0]]
                log.error("decoder hung on %s; going on without it", item.path)
                reason = f"decoder hung (no frame for {stall_timeout_sec:g} s)"
                yield busy[0], item.failure(reason)
                start_decoder()  # takes the remaining videos (exits at once if none)

    for _ in range(decoders):
        start_decoder()
    try:
        while live and not stop.is_set():
            try:
                message = chunks.get(timeout=POLL_SEC)
            except queue.Empty:  # decoders are behind: the backbone would idle anyway
                run_batch()  # so run a partial batch rather than hold videos back
                yield from videos.complete()
                yield from abandon_hung()
                continue
            if message.decoder.abandoned:
                continue
            match message:
                case OutOfWork(decoder):
                    live.discard(decoder)
                case Crashed(_, error):
                    raise error
                case Frames(_, i, chunk):
                    videos.add_frames(i, chunk.timestamps_sec)
                    frames, offset = chunk.frames, 0
                    while offset < len(frames):
                        take = min(batch_size - filled, len(frames) - offset)
                        batch[filled : filled + take] = frames[offset : offset + take]
                        owners.append((i, take))
                        filled += take
                        offset += take
                        if filled == batch_size:
                            run_batch()
                            yield from videos.complete()
                case Decoded(_, i, info):
                    videos.finished[i] = info
                    yield from videos.complete()  # now, if none of its frames await inference
                case Failed(_, i, reason, transient):
                    videos.drop(i)
                    yield i, items[i].failure(reason, transient=transient)
            yield from abandon_hung()
        if not stop.is_set():
            run_batch()
            yield from videos.complete()
    finally:
        stop.set()
        for decoder in live:  # each notices `stop` at its next chunk; a hung one is left
            decoder.join(timeout=JOIN_SEC)


def extract_items(
    items: Sequence[WorkItem],
    *,
    config: ExtractorConfig,
    infer: Callable[[np.ndarray], np.ndarray],
    parts_dir: Path,
    batch_size: int = 32,
    stop: threading.Event | None = None,
    on_video: Callable[[VideoDone], None] | None = None,
    decoders: int = 1,
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
        decoders: decoder threads feeding the one backbone.

    Returns:
        ids written, failures, frames extracted and wall seconds.
    """
    started = time.perf_counter()
    result = TaskResult()
    for i, outcome in iter_features(
        items, config=config, infer=infer, batch_size=batch_size, stop=stop, decoders=decoders
    ):
        if not isinstance(outcome, ExtractionFailure) and items[i].changed():
            outcome = items[i].failure(CHANGED_REASON, transient=True)
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
