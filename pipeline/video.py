"""PyAV decoding: frames as uint8 RGB arrays with presentation timestamps.

The only module that imports ``av``. Colour conversion and scaling run inside FFmpeg
(``VideoFrame.reformat``); Python only slices (centre crop) and rotates by multiples of 90°.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.contracts import RESIZE_POLICIES, VideoInfo
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

MAX_CORRUPT_PACKETS = 100
"""Skipped packets after which a file is declared undecodable rather than damaged."""


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
    """Decode every frame, skipping packets FFmpeg rejects (counted in ``counter[0]``)."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:
            # A demuxer error ends the generator; what was decoded so far stands.
            counter[0] += 1
            log.debug("demux error in %s", container.name, exc_info=True)
            return
        try:
            yield from packet.decode()
        except av.error.FFmpegError:
            counter[0] += 1
            if counter[0] > MAX_CORRUPT_PACKETS:
                return


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
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
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
        corrupt = [0]
        frames: list[np.ndarray] = []
        stamps: list[float] = []
        kept, last_t, first_t, rotation, shape = 0, None, None, 0, (0, 0)
        try:
            for frame in _decoded_frames(container, stream, corrupt):
                if frame.is_corrupt:  # FFmpeg concealed damage (e.g. a cut-off last frame)
                    corrupt[0] += 1
                    continue
                t = frame.time
                if t is None:  # no pts: continue the clock of the previous frame
                    t = 0.0 if last_t is None else last_t + nominal_period
                if last_t is not None and t <= last_t - 1e-9:
                    continue  # out-of-order or duplicate pts after a seek/corruption
                last_t = t
                if not sampler.keep(t):
                    continue
                rotation = round(frame.rotation or 0) % 360
                image = self._to_square(frame, rotation, sar)
                shape = (frame.width, frame.height)
                first_t = t if first_t is None else first_t
                frames.append(image)
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
