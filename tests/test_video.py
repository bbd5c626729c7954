"""Decoding real encoded files: counts, timestamps, sampling, rotation, resize, errors."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.encode import write_video
from pipeline.errors import DecodeError
from pipeline.video import VideoReader


def _ramp(frames: int, height: int = 96, width: int = 128) -> np.ndarray:
    """Frames whose green channel encodes the frame index (robust to lossy codecs)."""
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[..., 1] = (np.arange(frames) * 255 // max(frames - 1, 1))[:, None, None]
    return video


def write_with_pts(path: Path, pts_ms: list[int], *, rotation: int | None = None) -> Path:
    """H.264/mp4 with explicit presentation times in milliseconds (variable frame rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        image = np.zeros((96, 128, 3), np.uint8)
        image[:24, :32] = 255  # a white block in the top-left corner
        for pts in pts_ms:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".webm", ".mkv"])
def test_every_frame_with_pts_timestamps(tmp_path: Path, suffix: str) -> None:
    path = write_video(tmp_path / f"clip{suffix}", _ramp(37), fps=15)
    reader = VideoReader(path, size=64)
    chunk = reader.read_all()
    assert chunk.frames.shape == (37, 64, 64, 3)
    assert chunk.frames.dtype == np.uint8
    with av.open(str(path)) as container:  # what PyAV itself reports: pts × time_base
        pyav_times = [frame.time for frame in container.decode(video=0)]
    np.testing.assert_array_equal(chunk.timestamps_sec, pyav_times)
    np.testing.assert_allclose(chunk.timestamps_sec, np.arange(37) / 15, atol=1e-3)  # webm: ms
    assert reader.info.frame_count == 37
    assert (reader.info.width, reader.info.height) == (128, 96)
    # The last frames survive threaded decoding (PyAV #1098/#1158): the ramp's end is there.
    assert chunk.frames[-1, ..., 1].mean() > 240
    assert np.all(np.diff(chunk.frames[:, 32, 32, 1].astype(int)) >= -3)


def test_variable_frame_rate_keeps_real_timestamps(tmp_path: Path) -> None:
    pts_ms = [0, 33, 66, 200, 210, 500, 533, 1000]
    reader = VideoReader(write_with_pts(tmp_path / "vfr.mp4", pts_ms), size=32)
    np.testing.assert_allclose(reader.read_all().timestamps_sec, np.array(pts_ms) / 1000)


def test_fps_sampling_uses_presentation_time(tmp_path: Path) -> None:
    path = write_video(tmp_path / "30fps.mp4", _ramp(60), fps=30)
    stamps = VideoReader(path, size=32, fps=10).read_all().timestamps_sec
    assert len(stamps) == 20
    np.testing.assert_allclose(np.diff(stamps), 0.1, atol=1e-6)
    vfr = write_with_pts(tmp_path / "vfr.mp4", [0, 33, 66, 200, 210, 500, 533, 1000])
    kept = VideoReader(vfr, size=32, fps=4).read_all().timestamps_sec
    np.testing.assert_allclose(kept, [0.0, 0.5, 1.0])  # first frame at or after each 0.25 s tick


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    path = write_with_pts(tmp_path / "rot.mp4", [0, 33, 66], rotation=90)
    reader = VideoReader(path, size=64, resize="squash")
    image = reader.read_all().frames[0, ..., 0]
    # Rotated 90° counter-clockwise for display: the top-left block moves to bottom-left.
    assert image[60, 4] > 200 and image[4, 4] < 50
    assert (reader.info.width, reader.info.height, reader.info.rotation) == (96, 128, 90)


def test_crop_keeps_aspect_squash_stretches(tmp_path: Path) -> None:
    video = np.zeros((2, 96, 192, 3), np.uint8)
    video[:, :, :48] = 255  # white left quarter: outside the centre square
    path = write_video(tmp_path / "wide.mp4", video, fps=10)
    cropped = VideoReader(path, size=32, resize="crop").read_all().frames[0]
    squashed = VideoReader(path, size=32, resize="squash").read_all().frames[0]
    assert cropped.mean() < 10
    assert squashed[:, :6].mean() > 200 and squashed[:, 10:].mean() < 10


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for _ in range(5):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _bytes_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d / "missing.mp4", "file not found"),
        (lambda d: _bytes_file(d / "empty.mp4", b""), "empty file"),
        (lambda d: _bytes_file(d / "text.mp4", b"not a video"), "not a readable"),
        (lambda d: _audio_only(d / "audio.m4a"), "no video stream"),
        (lambda d: d, "is a directory"),
    ],
)
def test_unreadable_inputs_raise_decode_error(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DecodeError, match=reason):
        VideoReader(path, size=32).read_all()


def test_truncated_file_decodes_what_is_there_or_fails_cleanly(tmp_path: Path) -> None:
    good = write_video(tmp_path / "good.avi", _ramp(40), fps=20)
    truncated = tmp_path / "cut.avi"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    reader = VideoReader(truncated, size=32)
    frames = reader.read_all().frames
    assert 0 < len(frames) < 40

    head_only = tmp_path / "head.mp4"
    head_only.write_bytes(write_video(tmp_path / "g.mp4", _ramp(40), fps=20).read_bytes()[:200])
    with pytest.raises(DecodeError):
        VideoReader(head_only, size=32).read_all()


@pytest.mark.parametrize(
    ("suffix", "codec"), [(".mp4", None), (".mkv", "mjpeg"), (".webm", None), (".avi", "libx264")]
)
def test_fps_sampling_scales_only_the_frames_it_keeps(
    tmp_path: Path, suffix: str, codec: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#25: frames the sampler drops are not scaled (the --fps path paid for scaling every
    frame), and the kept frames, pixels and timestamps are those of sampling every frame.
    .mp4 is H.264 with B-frames (presentation pts), .mkv MJPEG and .webm VP9 have none; .avi
    H.264 has decode-order pts, whose repair must see every frame (all scaled there)."""
    pix_fmt = "yuvj420p" if codec == "mjpeg" else None
    options = {"bf": "3"} if codec == "libx264" else None
    clip = tmp_path / f"c{suffix}"
    path = write_video(clip, _ramp(90), fps=30, codec=codec, pix_fmt=pix_fmt, options=options)
    every_reader = VideoReader(path, size=32)
    every = every_reader.read_all()
    scaled = []
    original = VideoReader._to_square
    monkeypatch.setattr(
        VideoReader, "_to_square", lambda self, *a: scaled.append(1) or original(self, *a)
    )
    reader = VideoReader(path, size=32, fps=5)
    sampled = reader.read_all()
    assert (reader.info.timestamps_repaired > 0) == (suffix == ".avi")  # decode-order pts
    facts = ("duration_sec", "decoded_frames", "container_frames")  # sampling changes none
    for fact in facts:
        assert getattr(reader.info, fact) == getattr(every_reader.info, fact), fact
    keep = np.searchsorted(every.timestamps_sec, sampled.timestamps_sec)
    np.testing.assert_array_equal(every.timestamps_sec[keep], sampled.timestamps_sec)
    np.testing.assert_array_equal(every.frames[keep], sampled.frames)
    assert len(sampled.timestamps_sec) == 15  # 3 s at 5 fps: one frame of every 6
    assert np.allclose(np.diff(sampled.timestamps_sec), 0.2)
    if suffix == ".avi":
        assert len(scaled) == 90
    else:
        assert len(scaled) < 90 / 2  # the first window's frames, then one per bucket
