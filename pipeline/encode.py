"""Encode frames into a real video file with PyAV, bit-exact and atomically.

The codec/container pairs the bundled dataset rotates through (:data:`FORMATS`) and the one
writer behind ``vrnn sample-data`` and the tests' video files. All decoding stays in
:mod:`pipeline.video`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline import fsio
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class VideoFormat:
    """A codec inside a container, with the encoder settings we use for it.

    Attributes:
        extension: file suffix, with the dot.
        muxer: FFmpeg container (muxer) name.
        codec: FFmpeg encoder name.
        pix_fmt: pixel format the encoder receives.
        options: encoder options (FFmpeg AVOptions as strings).
    """

    extension: str
    muxer: str
    codec: str
    pix_fmt: str
    options: tuple[tuple[str, str], ...] = ()


FORMATS = (
    # x264's macroblock-tree rate control gave different bytes for the same frames from one
    # encode to the next; without it (and with one thread per encoder) output is repeatable.
    VideoFormat(
        ".mp4",
        "mp4",
        "libx264",
        "yuv420p",
        (("preset", "veryfast"), ("crf", "18"), ("threads", "1"), ("x264-params", "no-mbtree=1")),
    ),
    VideoFormat(".avi", "avi", "mpeg4", "yuv420p", (("b", "1500k"),)),
    VideoFormat(
        ".webm",
        "webm",
        "libvpx-vp9",
        "yuv420p",
        (("deadline", "realtime"), ("cpu-used", "8"), ("crf", "24"), ("b", "0"), ("threads", "1")),
    ),
    # MJPEG wants full-range ("j") YUV; the qscale bounds keep it from smearing tiny frames.
    VideoFormat(".mkv", "matroska", "mjpeg", "yuvj420p", (("qmin", "2"), ("qmax", "4"))),
)
"""The rotation of codec/container pairs: clip k of every class uses ``FORMATS[k % 4]``."""

FORMAT_BY_EXTENSION = {f.extension: f for f in FORMATS}

_MUXERS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".avi": "avi",
    ".webm": "webm",
    ".mkv": "matroska",
}
"""Containers :func:`write_video` can write, by suffix."""


def write_video(
    path: Path,
    frames: np.ndarray,
    *,
    fps: int,
    codec: str | None = None,
    pix_fmt: str | None = None,
    options: dict[str, str] | None = None,
    muxer: str | None = None,
) -> Path:
    """Encode frames into a video file, atomically (temporary name, renamed when complete).

    Output is bit-exact for the same input, so a regenerated file has the same content hash.

    Args:
        path: destination; its suffix picks the container (``.mp4 .m4v .mov .avi .webm
            .mkv``).
        frames: ``[T, H, W, 3]`` uint8 RGB with even ``H`` and ``W``.
        fps: frames per second (an integer frame rate).
        codec: FFmpeg encoder; default: the :data:`FORMATS` codec for the suffix.
        pix_fmt: encoder pixel format; default: the suffix's, or ``yuv420p`` for another codec.
        options: encoder options; default: the suffix's when its codec is used.
        muxer: FFmpeg muxer, for any other container (e.g. ``vob``); default: the suffix's.

    Returns:
        ``path``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    muxer = muxer or _MUXERS.get(suffix)
    if muxer is None:
        known = " ".join(_MUXERS)
        raise ConfigError(f"{path}: cannot write {suffix or 'suffix-less'} files (known: {known})")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    fmt = FORMAT_BY_EXTENSION.get(suffix, FORMATS[0])  # .mov/.m4v: H.264 like .mp4
    codec = codec or fmt.codec
    if options is None:
        options = dict(fmt.options) if codec == fmt.codec else {}
    pix_fmt = pix_fmt or (fmt.pix_fmt if codec == fmt.codec else "yuv420p")
    time_base = Fraction(1, fps)
    # A name without a video suffix, so indexers never pick up a half-written file.
    with (
        fsio.replacing(path) as partial,
        av.open(str(partial), mode="w", format=muxer, options={"fflags": "+bitexact"}) as container,
    ):
        stream = container.add_stream(
            codec, rate=Fraction(fps), options={**options, "flags": "+bitexact"}
        )
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.time_base = time_base
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
