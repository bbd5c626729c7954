"""Codec × container matrix: every frame the decoder outputs is kept, timestamps increase.

Each file is tiny (64×48, 30 frames) and its green channel encodes the frame index, so the
test sees both how many frames were kept and whether they are in presentation order.
Encoders missing from this FFmpeg build are skipped, not faked.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.video import VideoReader

FRAMES, WIDTH, HEIGHT, FPS = 30, 64, 48, 15

ENCODERS = {
    # encoder: (pixel format, options) — B-frames where the codec has them
    "libx264": ("yuv420p", {"bf": "3", "g": "12", "threads": "1"}),
    "mpeg4": ("yuv420p", {"bf": "2", "g": "12"}),
    "libvpx-vp9": ("yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    "mjpeg": ("yuvj420p", {}),
    "libx265": ("yuv420p", {"x265-params": "bframes=3:log-level=error"}),
}

MUXERS = {".mp4": "mp4", ".avi": "avi", ".mkv": "matroska", ".mov": "mov", ".ts": "mpegts"}
MUXERS[".webm"] = "webm"

VALID = [
    ("libx264", ".mp4"), ("libx264", ".avi"), ("libx264", ".mkv"), ("libx264", ".mov"),
    ("libx264", ".ts"),
    ("mpeg4", ".mp4"), ("mpeg4", ".avi"), ("mpeg4", ".mkv"), ("mpeg4", ".mov"), ("mpeg4", ".ts"),
    ("libvpx-vp9", ".mp4"), ("libvpx-vp9", ".mkv"), ("libvpx-vp9", ".webm"),
    ("mjpeg", ".avi"), ("mjpeg", ".mkv"), ("mjpeg", ".mov"),
    ("libx265", ".mp4"), ("libx265", ".mkv"), ("libx265", ".mov"), ("libx265", ".ts"),
]  # fmt: skip
"""Codec/container pairs the muxers accept (webm: VP8/VP9/AV1 only; AVI: no HEVC)."""


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # PyAV raises UnknownCodecError (a ValueError) or FFmpegError
        return False
    return True


def ramp_frames() -> np.ndarray:
    """``[FRAMES, H, W, 3]`` whose green level is 8 × frame index."""
    video = np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    video[..., 1] = (np.arange(FRAMES) * 8)[:, None, None]
    return video


def encode(path: Path, encoder: str) -> Path:
    """Write the ramp with ``encoder`` into ``path`` (container from the suffix)."""
    pix_fmt, options = ENCODERS[encoder]
    with av.open(str(path), "w", format=MUXERS[path.suffix]) as container:
        stream = container.add_stream(encoder, rate=Fraction(FPS), options=options)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
        for i, image in enumerate(ramp_frames()):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def decoder_output(path: Path) -> tuple[int, list[float | None]]:
    """What FFmpeg's decoder hands out for ``path``: frame count and each frame's time."""
    with av.open(str(path)) as container:
        times = [frame.time for frame in container.decode(video=0)]
    return len(times), times


@pytest.mark.parametrize(("encoder", "suffix"), VALID, ids=[f"{c}{s}" for c, s in VALID])
def test_every_decoded_frame_is_kept_with_increasing_timestamps(
    tmp_path: Path, encoder: str, suffix: str
) -> None:
    if not _has_encoder(encoder):
        pytest.skip(f"this FFmpeg build has no {encoder} encoder")
    path = encode(tmp_path / f"clip{suffix}", encoder)
    expected, pts = decoder_output(path)
    reader = VideoReader(path, size=32)
    chunk = reader.read_all()

    assert len(chunk.frames) == expected == reader.info.decoded_frames == reader.info.frame_count
    assert expected >= FRAMES - 1  # the decoder itself loses nothing worth mentioning
    assert np.all(np.diff(chunk.timestamps_sec) > 0)
    # Stored in presentation order: the green ramp never falls (lossy B-frames may repeat a
    # level) and climbs over the clip.
    green = chunk.frames[..., 1].mean(axis=(1, 2))
    assert np.all(np.diff(green) >= -2) and green[-1] - green[0] > 150, green.round()
    ordered = all(b is not None and a is not None and b > a for a, b in itertools.pairwise(pts))
    if ordered:  # healthy timestamps are stored as they are and nothing is called repaired
        np.testing.assert_array_equal(chunk.timestamps_sec, pts)
        assert reader.info.timestamps_repaired == 0
    else:
        assert reader.info.timestamps_repaired > 0
        # Re-sorted, not invented: the repaired clock still runs at the stream's frame rate.
        np.testing.assert_allclose(np.diff(chunk.timestamps_sec), 1 / FPS, rtol=1e-3)
    assert not reader.info.partial  # a healthy file is never reported as decoded partially
    assert reader.info.corrupt_packets == 0


def test_h264_b_frames_in_avi_are_all_kept(tmp_path: Path) -> None:
    """The case that lost 7–40 % of frames: ``-c:v libx264 out.avi`` (decode-order pts)."""
    path = encode(tmp_path / "camera.avi", "libx264")
    _, pts = decoder_output(path)
    assert any(b <= a for a, b in itertools.pairwise(pts)), "the encoder wrote ordered pts"
    reader = VideoReader(path, size=32)
    chunk = reader.read_all()
    assert len(chunk.frames) == FRAMES
    assert reader.info.timestamps_repaired > 0
    assert np.all(np.diff(chunk.timestamps_sec) > 0)


def test_fps_sampling_runs_on_repaired_timestamps(tmp_path: Path) -> None:
    path = encode(tmp_path / "camera.avi", "libx264")
    chunk = VideoReader(path, size=32, fps=5).read_all()
    assert len(chunk.frames) == FRAMES * 5 // FPS  # every 3rd frame of 30 at 15 fps
    np.testing.assert_allclose(np.diff(chunk.timestamps_sec), 1 / 5, rtol=1e-3)
