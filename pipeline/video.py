"""PyAV decoding: frames as uint8 RGB arrays with presentation timestamps.

The only module that imports ``av``. Colour conversion and scaling run inside FFmpeg
(``VideoFrame.reformat``); Python only slices (centre crop) and rotates by multiples of 90°.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.choices import Resize, choose
from pipeline.contracts import VideoInfo
from pipeline.errors import DecodeError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".avi",
        ".mkv",
        ".webm",
        ".mpg",
        ".mpeg",
        ".ts",
        ".flv",
        ".wmv",
        ".3gp",
        ".ogv",
        ".mts",
        ".m2ts",
    }
)
"""File extensions treated as videos when walking directories."""

MAX_DEMUX_ERRORS = 100
"""Consecutive demuxer errors (no packet read in between) after which the file is given up.

Decode errors never stop the reader: every decodable frame after damage is kept, and the
video is reported as decoded partially (see :attr:`VideoInfo.partial`)."""

REORDER_WINDOW = 16
"""Frames over which timestamps are re-sorted (H.264/HEVC reorder at most 16 frames)."""


@dataclass(frozen=True)
class FrameChunk:
    """A run of consecutive decoded frames of one video.

    Attributes:
        frames: ``[n, size, size, 3]`` uint8 RGB.
        timestamps_sec: ``[n]`` float64 presentation times in seconds.
    """

    frames: np.ndarray
    timestamps_sec: np.ndarray


def is_video_path(path: Path) -> bool:
    """True when ``path`` has a video file extension (case-insensitive)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _scaled_size(width: int, height: int, size: int, resize: str) -> tuple[int, int]:
    """Output (width, height) of FFmpeg's scaler before any crop."""
    if resize == "squash":
        return size, size
    short = min(width, height)
    return max(size, round(width * size / short)), max(size, round(height * size / short))


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise DecodeError(f"{path}: file not found")
    if path.is_dir():
        raise DecodeError(f"{path}: is a directory, not a video file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise DecodeError(f"{path}: not a readable video container ({e.strerror or e})") from e


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.VideoStream:
    demuxer = container.format.name
    if demuxer == "image2" or demuxer.endswith("_pipe"):  # e.g. a PNG renamed to .mp4
        raise DecodeError(f"{path}: a still image ({demuxer.removesuffix('_pipe')}), not a video")
    # Cover art of an audio file is a one-picture "video" stream: one frame of album art
    # would be a silently wrong video.
    cover = av.stream.Disposition.attached_pic
    moving = [s for s in container.streams.video if not s.disposition & cover]
    if not moving:
        kinds = sorted({s.type for s in container.streams if s.type != "video"})
        kinds += ["cover image"] if container.streams.video else []
        raise DecodeError(f"{path}: no video stream (streams: {', '.join(kinds) or 'none'})")
    return moving[0]


def _decoded_frames(
    container: av.container.InputContainer, stream: av.video.VideoStream, counter: list[int]
) -> Iterator[av.VideoFrame]:
    """Decode every frame, skipping packets FFmpeg rejects (counted in ``counter[0]``).

    ``counter[1]`` counts the non-empty packets read: a decoder that outputs fewer frames
    than it was given (e.g. H.264 waiting for a keyframe after damage) lost some silently.

    Damage never ends decoding early: a failed packet is skipped, a demuxer error resumes
    at the next readable packet (up to :data:`MAX_DEMUX_ERRORS` in a row).
    """
    failed_reads = 0
    while failed_reads <= MAX_DEMUX_ERRORS:
        packets = container.demux(stream)
        try:
            for packet in packets:
                failed_reads = 0
                counter[1] += packet.size > 0
                try:
                    yield from packet.decode()
                except av.error.FFmpegError:
                    counter[0] += 1
            return
        except av.error.FFmpegError:
            counter[0] += 1
            failed_reads += 1
            log.debug("demux error in %s", container.name, exc_info=True)
    # The demuxer cannot go on: flush the frames the decoder still holds.
    try:
        yield from stream.codec_context.decode(None)
    except av.error.FFmpegError:
        counter[0] += 1


class _Retimer:
    """Turns decoder output into strictly increasing timestamps, never dropping a frame.

    The decoder already outputs frames in presentation order, but some containers (AVI with
    B-frames) carry decode-order timestamps, so pts arrive scrambled. The pts of a window of
    :data:`REORDER_WINDOW` frames are sorted and handed out in order; a timestamp that is
    missing or still not after the previous one continues the previous one's clock by one
    nominal frame period. :attr:`repaired` counts frames whose timestamp differs from their pts.
    """

    def __init__(self, nominal_period: float) -> None:
        self.period = nominal_period or 1e-3
        self.frames: deque[tuple[av.VideoFrame, float | None]] = deque()
        self.times: list[float] = []  # heap of the pending frames' pts
        self.last: float | None = None
        self.repaired = 0

    def push(self, frame: av.VideoFrame) -> Iterator[tuple[av.VideoFrame, float]]:
        """Add a decoded frame; yield the frames whose timestamp is now settled."""
        own = frame.time
        self.frames.append((frame, own))
        if own is not None:
            heapq.heappush(self.times, own)
        if len(self.frames) > REORDER_WINDOW:
            yield self._pop()

    def drain(self) -> Iterator[tuple[av.VideoFrame, float]]:
        """Yield the frames still held (at the end of the stream)."""
        while self.frames:
            yield self._pop()

    def _pop(self) -> tuple[av.VideoFrame, float]:
        frame, own = self.frames.popleft()
        t = heapq.heappop(self.times) if own is not None else None
        if t is None:
            t = 0.0 if self.last is None else self.last + self.period
        elif self.last is not None and t <= self.last + 1e-9:
            t = self.last + self.period
        if t != own:
            self.repaired += 1
        self.last = t
        return frame, t


class _Sampler:
    """Keeps the first frame at or after each tick of a ``fps`` clock (None keeps all)."""

    def __init__(self, fps: float | None) -> None:
        self.period = None if fps is None else 1.0 / fps
        self.next_tick: float | None = None

    def keep(self, t: float) -> bool:
        if self.period is None:
            return True
        if self.next_tick is None:
            self.next_tick = t
        if t + 1e-6 < self.next_tick:
            return False
        while self.next_tick <= t + 1e-6:
            self.next_tick += self.period
        return True


class VideoReader:
    """Decodes one video into square RGB frames for the backbone.

    Args:
        path: video file.
        size: side of the square output frames, pixels.
        resize: ``crop`` keeps the aspect ratio and centre-crops; ``squash`` stretches.
        fps: sample this many frames per second of presentation time; None keeps every frame.
        thread_type: FFmpeg's own decoder threading (``AUTO``, ``FRAME``, ``SLICE``, ``NONE``).

    Iterate :meth:`chunks`; afterwards :attr:`info` describes what was decoded. Opening
    errors, a missing video stream and a stream without one decodable frame raise
    :class:`DecodeError`; isolated corrupt packets, and frames FFmpeg flags as corrupt
    (partly concealed damage), are skipped and counted.
    """

    def __init__(
        self,
        path: Path,
        *,
        size: int,
        resize: str = "crop",
        fps: float | None = None,
        thread_type: str = "AUTO",
    ):
        choose(Resize, resize, "--resize")
        self.path = Path(path)
        self.size = size
        self.resize = resize
        self.fps = fps
        self.thread_type = thread_type
        self.info: VideoInfo | None = None
        # One reformatter per reader caches FFmpeg's scaler context; a fresh one per frame
        # (what VideoFrame.to_ndarray(width=…) does) costs ~10× the decode itself.
        self._scaler = VideoReformatter()

    def chunks(self, chunk_frames: int = 16) -> Iterator[FrameChunk]:
        """Yield frames in chunks of at most ``chunk_frames``; sets :attr:`info` at the end."""
        container = _open(self.path)
        try:
            yield from self._decode(container, chunk_frames)
        finally:
            container.close()

    def read_all(self) -> FrameChunk:
        """Decode the whole video into one chunk (for tests and short clips)."""
        parts = list(self.chunks(chunk_frames=256))
        return FrameChunk(
            np.concatenate([p.frames for p in parts]),
            np.concatenate([p.timestamps_sec for p in parts]),
        )

    def _decode(self, container: av.container.InputContainer, chunk_frames: int):
        stream = _video_stream(container, self.path)
        stream.thread_type = self.thread_type
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        nominal_period = 1.0 / float(rate) if rate else 0.0
        sampler = _Sampler(self.fps)
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        corrupt = [0, 0]  # skipped packets, packets read
        retimer = _Retimer(nominal_period)
        frames: list[np.ndarray] = []
        stamps: list[float] = []
        decoded, kept, rotation, shape = 0, 0, 0, (0, 0)
        first_t = last_t = 0.0

        def settled() -> Iterator[tuple[av.VideoFrame, float]]:
            nonlocal decoded
            for frame in _decoded_frames(container, stream, corrupt):
                if frame.is_corrupt:  # FFmpeg concealed damage (e.g. a cut-off last frame)
                    corrupt[0] += 1
                    continue
                decoded += 1
                yield from retimer.push(frame)
            yield from retimer.drain()

        try:
            for frame, t in settled():
                last_t = t
                if not sampler.keep(t):
                    continue
                rotation = round(frame.rotation or 0) % 360
                frames.append(self._to_square(frame, rotation, sar))
                shape = (frame.width, frame.height)
                first_t = t if kept == 0 else first_t
                stamps.append(t)
                kept += 1
                if len(frames) == chunk_frames:
                    yield FrameChunk(np.stack(frames), np.asarray(stamps, dtype=np.float64))
                    frames, stamps = [], []
        except av.error.FFmpegError as e:
            raise DecodeError(f"{self.path}: decoding failed ({e.strerror or e})") from e
        if kept == 0:
            reason = "no decodable video frame"
            if corrupt[0]:
                reason += f" ({corrupt[0]} corrupt packets)"
            raise DecodeError(f"{self.path}: {reason}")
        if frames:
            yield FrameChunk(np.stack(frames), np.asarray(stamps, dtype=np.float64))
        if sar and sar.numerator and sar != 1:  # displayed size, as the frames are scaled
            shape = (max(1, round(shape[0] * float(sar))), shape[1])
        width, height = shape if rotation in (0, 180) else shape[::-1]
        self.info = VideoInfo(
            path=str(self.path),
            fps=float(rate),
            width=width,
            height=height,
            frame_count=kept,
            container_frames=int(stream.frames or 0),
            duration_sec=float(last_t - first_t + nominal_period),
            codec=stream.codec_context.name,
            rotation=rotation,
            corrupt_packets=corrupt[0],
            decoded_frames=decoded,
            video_packets=corrupt[1],
            timestamps_repaired=retimer.repaired,
        )

    def _to_square(self, frame: av.VideoFrame, rotation: int, sar: Fraction | None) -> np.ndarray:
        width = frame.width
        if sar and sar.numerator and sar != 1:  # anamorphic: scale to display aspect
            width = max(1, round(width * float(sar)))
        # Rotation does not change which side is short, so scale first, rotate after.
        out_w, out_h = _scaled_size(width, frame.height, self.size, self.resize)
        image = self._scaler.reformat(frame, width=out_w, height=out_h, format="rgb24").to_ndarray()
        if rotation:
            # FFmpeg's display matrix: rotate counter-clockwise by `rotation` to display.
            image = np.rot90(image, k=rotation // 90)
        if image.shape[0] != self.size or image.shape[1] != self.size:
            image = _center_crop(image, self.size)
        return np.ascontiguousarray(image)
