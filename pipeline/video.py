"""PyAV decoding: frames as uint8 RGB arrays with presentation timestamps.

The only module that imports ``av``. Colour conversion and scaling run inside FFmpeg
(``VideoFrame.reformat``); Python only slices (centre crop) and rotates by multiples of 90°.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Generic, TypeVar

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.choices import Resize, choose
from pipeline.contracts import VideoInfo
from pipeline.errors import DecodeError

log = logging.getLogger(__name__)

T = TypeVar("T")

VIDEO_EXTENSIONS = frozenset(
    {
        # MP4 / QuickTime family (FFmpeg's mov demuxer)
        ".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".f4v",
        # Matroska / WebM
        ".mkv", ".mk3d", ".webm",
        # MPEG program and transport streams, DVD
        ".mpg", ".mpeg", ".m2p", ".vob", ".evo", ".vro", ".ts", ".m2t", ".mts", ".m2ts",
        # other containers
        ".avi", ".divx", ".flv", ".asf", ".wmv", ".ogv", ".mxf", ".dv", ".nut", ".rm", ".rmvb",
        ".ivf", ".y4m", ".gif",
        # raw video streams
        ".m1v", ".m2v", ".mpv", ".h264", ".264", ".hevc", ".h265", ".265", ".mjpeg", ".mjpg",
    }
)  # fmt: skip
"""File extensions taken as videos when walking folders: containers and raw streams FFmpeg
demuxes as video. Names that are ambiguous (``.ps`` PostScript, ``.mod`` tracker music) are
left out; every other file a walk passes over is counted and named in the command's summary."""

MAX_DEMUX_ERRORS = 100
"""Consecutive demuxer errors (no packet read in between) after which the file is given up.

Decode errors never stop the reader: every decodable frame after damage is kept, and the
video is reported as decoded partially (see :attr:`VideoInfo.partial`)."""

REORDER_WINDOW = 16
"""Frames over which pictures or timestamps are re-sorted (H.264/HEVC reorder at most 16)."""


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


def _video_stream(
    container: av.container.InputContainer, path: Path
) -> tuple[av.video.VideoStream, list[av.video.VideoStream]]:
    """The video stream to decode, and the file's other video streams (cover art left out)."""
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
    # FFmpeg's own rule (av_find_best_stream): the default track first, then a track with
    # several frames over a one-picture one (a cover PNG muxed as a plain track), then the
    # bit rate. It may name a flagged cover picture, which is never the video.
    best = container.streams.best("video")
    chosen = next((s for s in moving if best is not None and s.index == best.index), moving[0])
    return chosen, [s for s in moving if s.index != chosen.index]


@dataclass
class _PacketStats:
    """What reading one video stream's packets found.

    Attributes:
        corrupt: packets skipped: failed to demux or decode, or cut off at the end of a
            truncated file (frames flagged corrupt are added by the reader).
        packets: non-empty packets read that the container means to show.
        discarded: packets decoded only as references for later frames (before an edit
            list's start); FFmpeg drops their frames, so they are no loss.
        presentation_pts: packet pts went down somewhere in demux (decode) order: they are
            each frame's presentation time (B-frames in MP4, MKV, TS), not decode-order
            stamps (AVI).
        other_packets: non-empty packets of each other video stream, by stream index.
    """

    corrupt: int = 0
    packets: int = 0
    discarded: int = 0
    presentation_pts: bool = False
    other_packets: Counter[int] = field(default_factory=Counter)
    last_pts: int | None = None

    def note(self, packet: av.Packet) -> None:
        """Count one non-empty packet of the decoded stream."""
        if packet.is_discard:
            self.discarded += 1
        else:
            self.packets += 1
        if packet.pts is not None:
            if self.last_pts is not None and packet.pts < self.last_pts:
                self.presentation_pts = True
            self.last_pts = packet.pts


def _decode_packet(packet: av.Packet | None, stats: _PacketStats) -> Iterator[av.VideoFrame]:
    if packet is None:
        return
    try:
        yield from packet.decode()
    except av.error.FFmpegError:
        stats.corrupt += 1


def _decode_last(packet: av.Packet | None, stats: _PacketStats) -> Iterator[av.VideoFrame]:
    """Decode the stream's last data packet, unless the file ends inside it.

    The demuxer flags a packet cut off by the end of the file as corrupt. Fed to FFmpeg's
    frame-threaded decoder it fails inside a worker thread, and the frames the decoder still
    held back for reordering never come out of the flush (the last 2 of a truncated MP4 with
    3 threads); single-threaded decoding loses only the cut-off frame. Skipped and counted,
    it costs just that frame, whatever the threading.
    """
    if packet is not None and packet.is_corrupt:
        stats.corrupt += 1
        return
    yield from _decode_packet(packet, stats)


def _decoded_frames(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    others: list[av.video.VideoStream],
    stats: _PacketStats,
) -> Iterator[av.VideoFrame]:
    """Decode every frame of ``stream``, skipping packets FFmpeg rejects (see ``stats``).

    Packets of the ``others`` are only counted. Damage never ends decoding early: a failed
    packet is skipped, a demuxer error resumes at the next readable packet (up to
    :data:`MAX_DEMUX_ERRORS` in a row). Each packet is decoded once the next one is read,
    so the last one is known to be last (see :func:`_decode_last`).
    """
    failed_reads = 0
    held: av.Packet | None = None
    while failed_reads <= MAX_DEMUX_ERRORS:
        try:
            for packet in container.demux(stream, *others):
                failed_reads = 0
                # packet.stream, not stream_index: PyAV leaves the latter 0 on flush packets
                if packet.stream.index != stream.index:
                    stats.other_packets[packet.stream.index] += packet.size > 0
                elif packet.size == 0:  # end of the stream: flush the decoder
                    yield from _decode_last(held, stats)
                    held = None
                    yield from _decode_packet(packet, stats)
                else:
                    stats.note(packet)
                    yield from _decode_packet(held, stats)
                    held = packet
            return
        except av.error.FFmpegError:
            stats.corrupt += 1
            failed_reads += 1
            log.debug("demux error in %s", container.name, exc_info=True)
    # The demuxer cannot go on: flush the frames the decoder still holds.
    yield from _decode_last(held, stats)
    try:
        yield from stream.codec_context.decode(None)
    except av.error.FFmpegError:
        stats.corrupt += 1


class _Retimer(Generic[T]):
    """Hands decoded pictures out in presentation order with strictly increasing timestamps,
    never dropping one.

    Where packets carry presentation timestamps (:attr:`presentation_pts`), every picture
    keeps its own pts, and pictures are released in pts order over a window of
    :data:`REORDER_WINDOW`: after damage a decoder outputs pictures out of order, each with
    its right pts. Where pts are in decode order (AVI with B-frames: the pictures come out in
    order, the stamps scrambled), the window's pts are sorted and handed out in output order.
    A timestamp that is missing or still not after the previous one continues the previous
    one's clock by one nominal frame period. :attr:`repaired` counts frames whose timestamp
    differs from their pts. The window holds what is pushed (the reader pushes scaled
    pictures, so its memory is bounded by the output size).
    """

    def __init__(self, nominal_period: float) -> None:
        self.period = nominal_period or 1e-3
        self.presentation_pts = False
        """Set by the reader once packet pts prove to be presentation times; never unset."""
        self.pending: list[tuple[T, float | None]] = []  # in decoder output order
        self.times: list[float] = []  # heap of the pending pictures' pts (decode-order mode)
        self.last: float | None = None
        self.repaired = 0

    def push(self, picture: T, own: float | None) -> Iterator[tuple[T, float]]:
        """Add a decoded picture with its pts (seconds); yield those now settled."""
        self.pending.append((picture, own))
        if self.presentation_pts:
            self.times.clear()  # each picture keeps its own pts: the heap is never read again
        elif own is not None:
            heapq.heappush(self.times, own)
        if len(self.pending) > REORDER_WINDOW:
            yield self._pop()

    def drain(self) -> Iterator[tuple[T, float]]:
        """Yield the pictures still held (at the end of the stream)."""
        while self.pending:
            yield self._pop()

    def _pop(self) -> tuple[T, float]:
        picture, own = self.pending.pop(self._next())
        # Presentation pts: the picture's own; decode-order pts: the window's earliest one,
        # whichever picture this is; missing: repaired below.
        t = own if self.presentation_pts or own is None else heapq.heappop(self.times)
        if t is None:
            t = 0.0 if self.last is None else self.last + self.period
        elif not self._after_last(t):
            t = self.last + self.period
        if t != own:
            self.repaired += 1
        self.last = t
        return picture, t

    def _next(self) -> int:
        """Which pending picture goes next: with presentation pts, the earliest one still
        after the last timestamp; a missing or late pts at the head goes first and is
        repaired (so pts restarting at a splice keep the pictures in output order)."""
        head = self.pending[0][1]
        if not self.presentation_pts or head is None or not self._after_last(head):
            return 0
        stamped = [
            k
            for k, (_, own) in enumerate(self.pending)
            if own is not None and self._after_last(own)
        ]
        return min(stamped, key=lambda k: self.pending[k][1])

    def _after_last(self, t: float) -> bool:
        return self.last is None or t > self.last + 1e-9


class _Sampler:
    """Keeps the first frame at or after each tick of a ``fps`` clock (None keeps all): the
    earliest frame of each period-long bucket, counted from the first frame's time."""

    EDGE_SEC = 1e-4
    """A time this close to a tick is in no sure bucket (see :meth:`bucket`)."""

    def __init__(self, fps: float | None) -> None:
        self.period = None if fps is None else 1.0 / fps
        self.start: float | None = None
        self.next_tick: float | None = None

    def bucket(self, t: float) -> int | None:
        """The bucket ``t`` falls in, once the clock has started; None while it has not, or
        when ``t`` is too close to a tick for rounding to be sure of it."""
        if self.period is None or self.start is None:
            return None
        position = (t - self.start) / self.period
        if abs(position - round(position)) * self.period < self.EDGE_SEC:
            return None
        return math.floor(position)

    def keep(self, t: float) -> bool:
        if self.period is None:
            return True
        if self.next_tick is None:
            self.start = self.next_tick = t
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
        stream, others = _video_stream(container, self.path)
        stream.thread_type = self.thread_type
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        nominal_period = 1.0 / float(rate) if rate else 0.0
        sampler = _Sampler(self.fps)
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        stats = _PacketStats()
        retimer: _Retimer[tuple[np.ndarray, int, tuple[int, int]]] = _Retimer(nominal_period)
        frames: list[np.ndarray] = []
        stamps: list[float] = []
        decoded, kept, rotation, shape = 0, 0, 0, (0, 0)
        first_t = last_t = 0.0

        earliest: dict[int, float] = {}  # sampling bucket → earliest own pts decoded in it
        dropped_last: float | None = None  # latest pts of a frame sampled out before scaling

        # AVI stores decode-order stamps: where its B-frames reorder, the retimer hands the
        # window's sorted stamps out in output order, so it must see every frame.
        own_pts = container.format.name != "avi" or not stream.codec_context.has_b_frames

        def sampled_out(t: float | None) -> bool:
            """True for a frame the sampler will drop, so it is never scaled: an earlier
            frame of its bucket was decoded already (only where frames keep their own pts)."""
            if t is None or not (own_pts or retimer.presentation_pts):
                return False
            bucket = sampler.bucket(t)
            if bucket is None:
                return False
            if bucket in earliest and earliest[bucket] < t:
                nonlocal dropped_last
                dropped_last = t if dropped_last is None else max(dropped_last, t)
                return True
            earliest[bucket] = t
            return False

        def settled() -> Iterator[tuple[tuple[np.ndarray, int, tuple[int, int]], float]]:
            nonlocal decoded
            for frame in _decoded_frames(container, stream, others, stats):
                if frame.is_corrupt:  # FFmpeg concealed damage (e.g. a cut-off last frame)
                    stats.corrupt += 1
                    continue
                decoded += 1
                retimer.presentation_pts = stats.presentation_pts
                if sampled_out(frame.time):
                    continue
                # Scaled before the reorder window: it then holds output-sized pictures,
                # never full-resolution frames.
                turn = round(frame.rotation or 0) % 360
                picture = (self._to_square(frame, turn, sar), turn, (frame.width, frame.height))
                yield from retimer.push(picture, frame.time)
            yield from retimer.drain()

        try:
            for (image, turn, size), t in settled():
                last_t = t
                if not sampler.keep(t):
                    continue
                rotation, shape = turn, size
                frames.append(image)
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
            if stats.corrupt:
                reason += f" ({stats.corrupt} corrupt packets)"
            raise DecodeError(f"{self.path}: {reason}")
        if frames:
            yield FrameChunk(np.stack(frames), np.asarray(stamps, dtype=np.float64))
        end_t = last_t if dropped_last is None else max(last_t, dropped_last)
        if sar and sar.numerator and sar != 1:  # displayed size, as the frames are scaled
            shape = (max(1, round(shape[0] * float(sar))), shape[1])
        width, height = shape if rotation in (0, 180) else shape[::-1]
        start = stream.start_time
        self.info = VideoInfo(
            path=str(self.path),
            fps=float(rate),
            width=width,
            height=height,
            frame_count=kept,
            container_frames=int(stream.frames or 0),
            duration_sec=float(end_t - first_t + nominal_period),
            codec=stream.codec_context.name,
            rotation=rotation,
            corrupt_packets=stats.corrupt,
            decoded_frames=decoded,
            video_packets=stats.packets,
            timestamps_repaired=retimer.repaired,
            discarded_packets=stats.discarded,
            stream_index=stream.index,
            video_streams=1 + sum(n > 1 for n in stats.other_packets.values()),
            start_time_sec=None if start is None else float(start * stream.time_base),
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
