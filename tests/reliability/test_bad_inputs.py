"""A corpus of bad and unusual inputs, extracted in ONE batch by ``vrnn extract``.

Every file has a written expectation: extracted with an exact frame count, or failed with a
reason. Good files must all be extracted whatever sits beside them; bad ones cost only
themselves (recorded with their reason, never a traceback, never a silently wrong video).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.encode import write_video
from pipeline.store import open_store

from .helpers import extract_args, messages, run_vrnn, write_csv_manifest


@dataclass(frozen=True)
class Case:
    """One corpus file and what extraction must make of it.

    Attributes:
        name: file name in the corpus folder.
        frames: frames stored when it must be extracted; None when it must fail.
        reason: the start of the recorded failure reason when it must fail.
        info: decode facts the stored video must have (``VideoInfo`` fields).
        same_as: name of another case with the same content (stored once, both paths indexed).
    """

    name: str
    frames: int | None = None
    reason: str = ""
    info: dict = field(default_factory=dict)
    same_as: str | None = None


CASES = [
    # --- good and merely unusual files: extracted, exact frame counts
    Case("good_h264.mp4", 12),
    Case("good_mpeg4.avi", 12),
    Case("good_vp9.webm", 12),
    Case("one_frame.mp4", 1),
    Case("uhd_4096x2160.mp4", 2, info={"width": 4096, "height": 2160}),
    Case("odd_161x97.avi", 5, info={"width": 161, "height": 97, "codec": "mjpeg"}),
    Case("rotated_90.mp4", 6, info={"rotation": 90, "width": 48, "height": 64}),
    Case("variable_rate.mkv", 6),
    Case("café clip — ü 日本.mp4", 8),
    # MJPEG: every frame stands alone, so the 3 garbled first packets cost 3 frames.
    Case("corrupt_head.avi", 9, info={"corrupt_packets": 3, "container_frames": 12}),
    # H.264 in MPEG-TS: garbling the first packets loses the first 5-frame GOP.
    Case("corrupt_head.ts", 25),
    # AVI cut at 70 %: the 27 whole frames before the cut; the cut-off 28th is dropped.
    Case("truncated_tail.avi", 27, info={"container_frames": 40, "corrupt_packets": 1}),
    Case("link_to_good.mp4", 12, same_as="good_h264.mp4"),
    Case("link_elsewhere.mp4", 7),
    # --- bad files: failed, with the reason recorded
    Case("empty.mp4", reason="empty file (0 bytes)"),
    Case("truncated_moov.mp4", reason="not a readable video container"),
    # Cut inside the first frame: FFmpeg would conceal the missing half; never stored.
    Case("truncated_head.avi", reason="no decodable video frame (1 corrupt packets)"),
    Case("random_bytes.mkv", reason="not a readable video container"),
    Case("png_image.mp4", reason="a still image (png), not a video"),
    Case("audio_only.mp4", reason="no video stream (streams: audio)"),
    Case("cover_art.mp4", reason="no video stream (streams: audio, cover image)"),
    Case("broken_link.mp4", reason="file not found"),
    Case("missing.mp4", reason="file not found"),
    Case("x.mp4", reason="is a directory, not a video file"),
]


# --------------------------------------------------------------------------- writing the corpus


def _blocks(n: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 255, (n, height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(cells, 8, axis=1), 8, axis=2)[:, :height, :width]


def _encode(
    path: Path,
    frames: np.ndarray,
    *,
    codec: str,
    pix_fmt: str,
    container: str | None = None,
    options: dict[str, str] | None = None,
    rotation: int | None = None,
    pts: list[int] | None = None,
    rate: int = 10,
) -> Path:
    """Encode with PyAV directly: odd sizes, rotation, VFR and MPEG-TS need more than
    ``write_video`` offers. ``pts`` are in 1/1000 s when given, else frame indices."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if pts is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i if pts is None else pts[i]
            if pts is not None:
                frame.time_base = Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _packet_spans(path: Path) -> list[tuple[int, int]]:
    with av.open(str(path)) as container:
        return [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]


def _garble_first_packets(source: Path, target: Path, count: int) -> Path:
    data = bytearray(source.read_bytes())
    rng = np.random.default_rng(7)
    for pos, size in _packet_spans(source)[:count]:
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


def _write_audio(path: Path, *, cover: bool) -> Path:
    """An AAC audio file (MP4), optionally with an attached cover picture."""
    with av.open(str(path), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=16000)
        if cover:
            picture = out.add_stream("mjpeg")
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuvj420p"
            picture.disposition = av.stream.Disposition.attached_pic
            image = av.VideoFrame.from_ndarray(_blocks(1, 48, 64, 5)[0], format="rgb24")
            image.pts = 0
            out.mux(picture.encode(image))
            out.mux(picture.encode(None))
        for i in range(10):
            samples = np.zeros((1, 1024), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return path


def _write_png(path: Path) -> Path:
    with av.open(str(path), "w", format="image2pipe") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        image = av.VideoFrame.from_ndarray(_blocks(1, 48, 64, 6)[0], format="rgb24")
        image.pts = 0
        out.mux(stream.encode(image))
        out.mux(stream.encode(None))
    return path


def build_corpus(root: Path) -> list[Path]:
    """Write every :data:`CASES` file under ``root``; their paths in :data:`CASES` order."""
    root.mkdir(parents=True, exist_ok=True)
    scratch = root.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    at = {case.name: root / case.name for case in CASES}

    write_video(at["good_h264.mp4"], _blocks(12, 48, 64, 1), fps=10)
    write_video(at["good_mpeg4.avi"], _blocks(12, 48, 64, 2), fps=10)
    write_video(at["good_vp9.webm"], _blocks(12, 48, 64, 3), fps=10)
    write_video(at["one_frame.mp4"], _blocks(1, 48, 64, 4), fps=10)
    write_video(
        at["uhd_4096x2160.mp4"],
        _blocks(2, 2160, 4096, 8),
        fps=10,
        options={"preset": "ultrafast", "threads": "1"},
    )
    _encode(at["odd_161x97.avi"], _blocks(5, 97, 161, 9), codec="mjpeg", pix_fmt="yuvj444p")
    _encode(
        at["rotated_90.mp4"],
        _blocks(6, 48, 64, 10),
        codec="libx264",
        pix_fmt="yuv420p",
        options={"threads": "1"},
        rotation=90,
    )
    _encode(
        at["variable_rate.mkv"],
        _blocks(6, 48, 64, 11),
        codec="mjpeg",
        pix_fmt="yuvj420p",
        pts=[0, 40, 80, 300, 310, 700],
        rate=25,
    )
    write_video(at["café clip — ü 日本.mp4"], _blocks(8, 48, 64, 12), fps=10)

    mjpeg = _encode(
        scratch / "mjpeg.avi", _blocks(12, 48, 64, 13), codec="mjpeg", pix_fmt="yuvj420p"
    )
    _garble_first_packets(mjpeg, at["corrupt_head.avi"], 3)
    ts = _encode(
        scratch / "h264.ts",
        _blocks(30, 48, 64, 14),
        codec="libx264",
        pix_fmt="yuv420p",
        container="mpegts",
        options={"g": "5", "keyint_min": "5", "sc_threshold": "0", "threads": "1"},
    )
    _garble_first_packets(ts, at["corrupt_head.ts"], 3)

    avi = write_video(scratch / "long.avi", _blocks(40, 48, 64, 15), fps=10)
    data = avi.read_bytes()
    at["truncated_tail.avi"].write_bytes(data[: len(data) * 7 // 10])
    first_pos, first_size = _packet_spans(avi)[0]
    at["truncated_head.avi"].write_bytes(data[: first_pos + first_size // 2])
    mp4 = write_video(scratch / "moov_at_end.mp4", _blocks(20, 48, 64, 16), fps=10)
    at["truncated_moov.mp4"].write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])

    at["link_to_good.mp4"].symlink_to(at["good_h264.mp4"].name)
    outside = write_video(scratch / "outside.mp4", _blocks(7, 48, 64, 17), fps=10)
    at["link_elsewhere.mp4"].symlink_to(os.path.relpath(outside, root))

    at["empty.mp4"].write_bytes(b"")
    at["random_bytes.mkv"].write_bytes(np.random.default_rng(18).bytes(20_000))
    _write_png(at["png_image.mp4"])
    _write_audio(at["audio_only.mp4"], cover=False)
    _write_audio(at["cover_art.mp4"], cover=True)
    at["broken_link.mp4"].symlink_to("nowhere/gone.mp4")
    at["x.mp4"].mkdir()
    return [at[case.name] for case in CASES]


# --------------------------------------------------------------------------- one batch, many checks


@dataclass(frozen=True)
class Batch:
    paths: dict[str, Path]
    store: Path
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Batch:
    root = tmp_path_factory.mktemp("corpus")
    paths = build_corpus(root / "videos")
    manifest = write_csv_manifest(root / "corpus.csv", paths)
    store = root / "features.h5"
    done = run_vrnn(*extract_args(manifest, store), cwd=root)
    return Batch(
        {case.name: path for case, path in zip(CASES, paths, strict=True)},
        store,
        done.returncode,
        done.stdout,
        done.stderr,
    )


def test_the_batch_completes_with_one_summary_and_no_traceback(batch: Batch) -> None:
    good = [case for case in CASES if case.frames is not None]
    bad = [case for case in CASES if case.frames is None]
    assert batch.returncode == 0, batch.stderr[-3000:]
    assert "Traceback" not in batch.stderr
    stored_once = len([case for case in good if case.same_as is None])
    with open_store(batch.store) as store:
        partial = sorted(Path(v.info.path).name for v in store.iter_videos() if v.info.partial)
    # The three damaged files are stored partially, and the summary line says so.
    assert {"corrupt_head.avi", "corrupt_head.ts", "truncated_tail.avi"} <= set(partial)
    assert batch.stdout.startswith(
        f"extracted {stored_once}, skipped 0 (already stored), "
        f"{len(good) - stored_once} duplicates (same content), "
        f"failed {len(bad)} of {len(CASES)} videos, {len(partial)} decoded partially"
    )
    failed_lines = [line for line in messages(batch.stderr) if line.startswith("  failed ")]
    assert len(failed_lines) == len(bad)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_input_has_its_expected_outcome(batch: Batch, case: Case) -> None:
    path = str(batch.paths[case.name])
    with open_store(batch.store) as store:
        failures = {f.path: f.reason for f in store.failures}
        if case.frames is None:
            assert failures[path].startswith(case.reason), failures.get(path)
            assert path not in store.path_index
            return
        assert path not in failures, failures[path]
        video_id = store.path_index[path][0]
        video = store.read(video_id)
        assert video.features.shape == (case.frames, 1280)
        assert video.info.frame_count == len(video.timestamps_sec) == case.frames
        assert np.all(np.diff(video.timestamps_sec) > 0)
        for key, value in case.info.items():
            assert getattr(video.info, key) == value, key
        if case.same_as:
            assert video_id == store.path_index[str(batch.paths[case.same_as])][0]


def test_every_stored_video_is_a_listed_good_file_exactly_once(batch: Batch) -> None:
    with open_store(batch.store) as store:
        ids = store.video_ids
        indexed = {path: entry[0] for path, entry in store.path_index.items()}
    good = {str(batch.paths[case.name]) for case in CASES if case.frames is not None}
    assert set(indexed) == good
    assert sorted(set(indexed.values())) == ids
    assert len(ids) == len([case for case in CASES if case.frames and not case.same_as])


def test_timestamps_of_the_damaged_and_variable_rate_files(batch: Batch) -> None:
    with open_store(batch.store) as store:

        def stamps(name: str) -> np.ndarray:
            video_id = store.path_index[str(batch.paths[name])][0]
            return store.read(video_id).timestamps_sec

        np.testing.assert_allclose(stamps("variable_rate.mkv"), [0, 0.04, 0.08, 0.3, 0.31, 0.7])
        np.testing.assert_allclose(stamps("corrupt_head.avi"), np.arange(3, 12) / 10)
        np.testing.assert_allclose(np.diff(stamps("corrupt_head.ts")), 0.1)  # no gap inside
