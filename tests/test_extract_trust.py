"""Trustworthy cache (issue #11): partial decodes, repaired timestamps, files changed during
a run, --rehash, refused runs leaving the store intact, mixed precision in the config.

Every input is a real file encoded in the test; the backbone is the seeded random one.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from typer.testing import CliRunner

from pipeline.extract_job import ExtractOptions, run_extraction
from pipeline.sample_data import write_video
from pipeline.store import open_store
from stages.cli import app

SIZE = 32
OPTIONS = ExtractOptions(weights="random", input_size=SIZE, resize="squash", batch_size=16)


def noisy_clip(frames: int, seed: int) -> np.ndarray:
    """Incompressible 64×48 frames: every packet is large, so damage hits many packets."""
    return np.random.default_rng(seed).integers(0, 255, (frames, 48, 64, 3), dtype=np.uint8)


def damaged_h264(tmp_path: Path, name: str = "damaged.mp4") -> Path:
    """300 frames of H.264/mp4 with 40 % of the file (from 20 %) overwritten by noise."""
    good = write_video(tmp_path / f"good-{name}", noisy_clip(300, 1), fps=30)
    data = bytearray(good.read_bytes())
    start, stop = len(data) // 5, len(data) * 3 // 5
    data[start:stop] = np.random.default_rng(2).integers(0, 255, stop - start, np.uint8).tobytes()
    path = tmp_path / name
    path.write_bytes(bytes(data))
    good.unlink()
    return path


def decodable_frames(path: Path) -> int:
    """Intact frames FFmpeg can decode from ``path``, skipping every packet it rejects."""
    count = 0
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            try:
                count += sum(not frame.is_corrupt for frame in packet.decode())
            except av.error.FFmpegError:
                continue
    return count


def h264_avi(path: Path, frames: int = 30) -> Path:
    """H.264 with B-frames in AVI: the container holds decode-order timestamps only."""
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("libx264", rate=Fraction(15), options={"bf": "3"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i, image in enumerate(noisy_clip(frames, 3)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 15)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_long_damaged_stretch_stores_every_decodable_frame_and_is_reported(
    tmp_path: Path,
) -> None:
    damaged = damaged_h264(tmp_path)
    expected = decodable_frames(damaged)
    assert 100 < expected < 300  # the damage cost frames, and many frames follow it
    store = tmp_path / "out" / "features.h5"
    report = run_extraction([damaged], store, OPTIONS)
    assert (report.extracted, report.failed, report.partial) == (1, 0, 1)
    with open_store(store) as feature_store:
        video = feature_store.read(feature_store.video_ids[0])
    assert len(video.features) == video.info.decoded_frames == expected
    assert video.info.container_frames == 300
    assert video.info.corrupt_packets > 100  # past the old give-up point: decoding went on
    assert video.info.partial
    [entry] = report.partial_videos
    assert entry == {
        "path": str(damaged),
        "video_id": video.video_id,
        "decoded_frames": expected,
        "container_frames": 300,
        "corrupt_packets": video.info.corrupt_packets,
    }


def test_cli_summary_and_report_name_partial_and_repaired_videos(tmp_path: Path) -> None:
    damaged = damaged_h264(tmp_path)
    avi = h264_avi(tmp_path / "camera.avi")
    healthy = write_video(tmp_path / "fine.mkv", noisy_clip(10, 4), fps=10)
    store = tmp_path / "features.h5"
    args = ["extract", str(tmp_path), "-o", str(store), "--weights", "random"]
    result = CliRunner().invoke(app, [*args, "--input-size", str(SIZE), "--resize", "squash"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "extract_report.json").read_text())
    assert [v["path"] for v in report["partial_videos"]] == [str(damaged)]
    repaired = {v["path"]: v["frames"] for v in report["repaired_videos"]}
    assert repaired[str(avi)] > 0 and str(healthy) not in repaired  # damage may scramble too
    assert report["repaired_timestamps"] == len(repaired)
    summary = next(line for line in result.stdout.splitlines() if line.startswith("extracted"))
    assert summary.startswith(
        "extracted 3, skipped 0 (already stored), failed 0 of 3 videos, 1 decoded partially, "
        f"{len(repaired)} with repaired timestamps;"
    )
    with open_store(store) as feature_store:
        info = feature_store.read(feature_store.video_id_for(avi)).info
        assert info.frame_count == 30 and info.timestamps_repaired > 0
        healthy_info = feature_store.read(feature_store.video_id_for(healthy)).info
        assert (healthy_info.timestamps_repaired, healthy_info.partial) == (0, False)
