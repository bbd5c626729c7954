"""Real-world decode cases (#25): the right stream, presentation order after damage, the end of
a truncated file under every threading, memory bounded by the output size, edit lists.

Files are encoded here with PyAV, except two that only the ffmpeg command-line tool writes
(committed under ``tests/data``, see its README): FFmpeg 5.1's MKV with a cover PNG as a plain
first track, and ``ffmpeg -ss 1 -c copy``'s edit-listed MP4.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.store.read import video_info_from_attrs
from pipeline.video import REORDER_WINDOW, VideoReader

DATA = Path(__file__).parent / "data"
FPS = 15


def _green_ramp(frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """``[frames, H, W, 3]`` whose green level is 8 × frame index."""
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[..., 1] = (np.arange(frames) * 8)[:, None, None]
    return video


def _add_encoded(container, codec: str, frames: np.ndarray, rate: int, **options: str):
    stream = container.add_stream(codec, rate=rate, options=options)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    return stream, [
        packet
        for i, image in enumerate([*frames, None])
        for packet in stream.encode(None if image is None else _frame(image, i, Fraction(1, rate)))
    ]


def _frame(image: np.ndarray, pts: int, time_base: Fraction) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts, frame.time_base = pts, time_base
    return frame


def _mux_tracks(path: Path, tracks: list[tuple[str, np.ndarray]]) -> Path:
    """An MKV with one video track per ``(codec, frames)``, in that order."""
    with av.open(str(path), "w", format="matroska") as container:
        encoded = [_add_encoded(container, codec, frames, 10) for codec, frames in tracks]
        for _, packets in encoded:
            for packet in packets:
                container.mux(packet)
    return path


# --------------------------------------------------------------------- 1. stream choice


def test_cover_png_first_track_of_ffmpeg_5_mkv_is_not_the_video() -> None:
    path = DATA / "cover_track_first.mkv"
    with av.open(str(path)) as container:
        png, h264 = container.streams.video
        assert (png.codec_context.name, h264.codec_context.name) == ("png", "h264")
        assert not png.disposition & av.stream.Disposition.attached_pic  # a plain track
        expected = len(list(container.decode(h264)))
    reader = VideoReader(path, size=32)
    chunk = reader.read_all()
    assert len(chunk.frames) == expected == 40
    assert (reader.info.codec, reader.info.stream_index) == ("h264", 1)
    assert (reader.info.width, reader.info.height) == (64, 48)
    assert reader.info.video_streams == 1  # a one-picture track is not a second video


def test_best_stream_over_one_picture_first_track_and_several_videos_counted(
    tmp_path: Path,
) -> None:
    still = _green_ramp(1, 64, 64)
    video = _green_ramp(30)
    path = _mux_tracks(tmp_path / "still_first.mkv", [("mjpeg", still), ("libx264", video)])
    reader = VideoReader(path, size=32)
    assert len(reader.read_all().frames) == 30
    assert (reader.info.stream_index, reader.info.video_streams) == (1, 1)

    two = _mux_tracks(tmp_path / "two.mkv", [("libx264", video), ("mjpeg", video[:12])])
    reader = VideoReader(two, size=32)
    assert len(reader.read_all().frames) == 30
    assert (reader.info.stream_index, reader.info.video_streams) == (0, 2)


# ------------------------------------------------------------- 2. presentation order


def _low_delay_mpeg2(path: Path, muxer: str) -> Path:
    """MPEG-2 with B-frames whose sequence headers claim ``low_delay`` (a damaged flag).

    The decoder then outputs every picture as soon as it is decoded: in decode order
    (I0 P3 B1 B2 …), each with its own right pts, as FFmpeg does after damage.
    """
    with av.open(str(path), "w", format=muxer) as container:
        _, packets = _add_encoded(container, "mpeg2video", _green_ramp(30), FPS, bf="2", g="12")
        stream = container.streams.video[0]
        for packet in packets:
            data = bytearray(bytes(packet))
            at = data.find(b"\x00\x00\x01\xb5")
            while at >= 0:
                if data[at + 4] >> 4 == 1:  # sequence extension: low_delay is byte 5's top bit
                    data[at + 9] |= 0x80
                at = data.find(b"\x00\x00\x01\xb5", at + 4)
            damaged = av.Packet(bytes(data))
            damaged.pts, damaged.dts, damaged.time_base = packet.pts, packet.dts, packet.time_base
            damaged.is_keyframe = packet.is_keyframe
            damaged.stream = stream
            container.mux(damaged)
    return path


@pytest.mark.parametrize(("suffix", "muxer"), [(".ts", "mpegts"), (".mp4", "mp4")])
def test_frames_out_of_order_with_right_pts_are_stored_in_presentation_order(
    tmp_path: Path, suffix: str, muxer: str
) -> None:
    path = _low_delay_mpeg2(tmp_path / f"low_delay{suffix}", muxer)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base)
        output = [frame.time for frame in container.decode(stream)]
    assert any(b < a for a, b in itertools.pairwise(output)), "the decoder kept the order"
    reader = VideoReader(path, size=32)
    chunk = reader.read_all()
    assert len(chunk.frames) == len(output) == 30
    np.testing.assert_allclose(chunk.timestamps_sec, sorted(output))  # each its own pts
    assert reader.info.timestamps_repaired == 0
    # Each picture is the one its timestamp names (B-frames decoded without their delay may
    # show the neighbouring level: ±1).
    picture = chunk.frames[..., 1].mean(axis=(1, 2)) / 8
    index = (chunk.timestamps_sec - start) * FPS
    assert np.abs(picture - index).max() <= 1.2, np.c_[index, picture].round(1)


# ------------------------------------------------------ 3. the end of a truncated file


def _truncated_mp4(path: Path) -> Path:
    """H.264 with B-frames, index first (``+faststart``), cut inside its last packets."""
    rng = np.random.default_rng(0)
    video = _green_ramp(40, 96, 128)
    video[..., 0] = rng.integers(0, 255, video.shape[:3])  # noise: large packets
    whole = path.with_name("whole.mp4")
    with av.open(str(whole), "w", options={"movflags": "+faststart"}) as container:
        _, packets = _add_encoded(container, "libx264", video, 25, bf="3", g="12")
        for packet in packets:
            container.mux(packet)
    data = whole.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.85)])
    return path


def _single_threaded_frames(path: Path) -> int:
    """Intact frames FFmpeg's single-threaded decoder outputs, fed every packet."""
    kept = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        for packet in container.demux(stream):
            with contextlib.suppress(av.error.FFmpegError):
                kept += sum(not frame.is_corrupt for frame in packet.decode())
    return kept


@pytest.mark.parametrize("thread_type", ["AUTO", "FRAME", "SLICE", "NONE"])
def test_truncated_mp4_keeps_every_decodable_frame_whatever_the_threading(
    tmp_path: Path, thread_type: str
) -> None:
    path = _truncated_mp4(tmp_path / "cut.mp4")
    expected = _single_threaded_frames(path)
    assert 20 < expected < 40
    reader = VideoReader(path, size=32, thread_type=thread_type)
    chunk = reader.read_all()
    assert len(chunk.frames) == expected == reader.info.decoded_frames
    assert reader.info.partial and reader.info.corrupt_packets >= 1  # the cut is counted
    assert np.all(np.diff(chunk.timestamps_sec) > 0)


# ------------------------------------------------------------- 4. bounded memory

PEAK_RSS = """
import resource, sys
from pathlib import Path
import av
from pipeline.video import VideoReader
path = Path(sys.argv[1])
if sys.argv[2] == "reader":
    for chunk in VideoReader(path, size=224).chunks(16):
        pass
else:  # the decoder alone: each frame dropped as soon as it is output
    with av.open(str(path)) as container:
        container.streams.video[0].thread_type = "AUTO"
        for frame in container.decode(video=0):
            pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _peak_rss(path: Path, mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(path), mode], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


@pytest.mark.slow
def test_reorder_window_holds_scaled_frames_at_4000x3000(tmp_path: Path) -> None:
    width, height, frames = 4000, 3000, REORDER_WINDOW + 8
    path = tmp_path / "big.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        image = np.zeros((height, width, 3), np.uint8)
        for i in range(frames):
            image[..., 1] = i * 8
            container.mux(stream.encode(_frame(image, i, Fraction(1, 10))))
        container.mux(stream.encode(None))
    source_frame = width * height * 3 // 2  # one decoded yuv420p frame: 18 MB
    output_frame = 224 * 224 * 3
    extra = _peak_rss(path, "reader") - _peak_rss(path, "decoder")
    # The window and a chunk of scaled frames, plus scaler buffers of at most 2 source frames;
    # 16 held source frames would be 288 MB more.
    bound = (REORDER_WINDOW + 16) * output_frame + 2 * source_frame
    assert extra < bound, f"{extra / 1e6:.0f} MB above the decoder alone (bound {bound / 1e6:.0f})"


# ---------------------------------------------------------------------- 6. edit lists


def test_packets_an_edit_list_discards_are_not_losses() -> None:
    path = DATA / "trimmed_edit_list.mp4"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        discarded = sum(p.is_discard for p in packets)
    with av.open(str(path)) as container:
        expected = [frame.time for frame in container.decode(video=0)]
    assert discarded > 0  # what `ffmpeg -ss 1 -c copy` wrote: an edit list
    reader = VideoReader(path, size=32)
    chunk = reader.read_all()
    np.testing.assert_array_equal(chunk.timestamps_sec, expected)
    assert reader.info.discarded_packets == discarded
    assert reader.info.video_packets == len(packets) - discarded == len(expected)
    assert not reader.info.partial
    assert reader.info.corrupt_packets == 0


# ---------------------------------------------------------------- stored facts


def test_stream_start_time_is_recorded_and_older_stores_read_without_it(tmp_path: Path) -> None:
    path = tmp_path / "clip.ts"
    with av.open(str(path), "w", format="mpegts") as container:
        _, packets = _add_encoded(container, "libx264", _green_ramp(10), FPS)
        for packet in packets:
            container.mux(packet)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base)
    reader = VideoReader(path, size=32)
    chunk = reader.read_all()
    assert reader.info.start_time_sec == pytest.approx(start)
    assert chunk.timestamps_sec[0] == pytest.approx(start)  # the pts, not zero-based
    old = {"source_path": "old.mp4", "fps": 10.0, "width": 64, "height": 48}
    old |= {"frame_count": 3, "container_frames": 3, "duration_sec": 0.3, "codec": "h264"}
    info = video_info_from_attrs(old)
    assert (info.start_time_sec, info.stream_index, info.video_streams) == (None, None, 1)
    assert info.discarded_packets == 0


def test_pts_restarting_at_a_ts_splice_keep_the_pictures_in_output_order(tmp_path: Path) -> None:
    """Two MPEG-TS files joined (``cat a.ts b.ts``): the second one's pts start again."""
    parts = []
    for name, channel in (("a.ts", 1), ("b.ts", 0)):
        video = np.zeros((20, 48, 64, 3), np.uint8)
        video[..., channel] = 200
        path = tmp_path / name
        with av.open(str(path), "w", format="mpegts") as container:
            _, packets = _add_encoded(container, "libx264", video, FPS, bf="2", g="10")
            for packet in packets:
                container.mux(packet)
        parts.append(path.read_bytes())
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(parts))
    with av.open(str(joined)) as container:
        output = [frame.time for frame in container.decode(video=0)]
    assert len(output) == 40 and output[20] < output[19]  # the pts restart
    reader = VideoReader(joined, size=32)
    chunk = reader.read_all()
    assert len(chunk.frames) == 40
    assert np.all(np.diff(chunk.timestamps_sec) > 0)
    green_first = chunk.frames[..., 1].mean(axis=(1, 2)) > chunk.frames[..., 0].mean(axis=(1, 2))
    assert green_first.tolist() == [True] * 20 + [False] * 20  # a's pictures, then b's
    assert reader.info.timestamps_repaired == 20  # b's restarted clock is continued
