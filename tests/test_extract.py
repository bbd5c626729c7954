"""Stage 1 on real encoded files: exact features, timestamps, incremental reruns, failures."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline import decoder_thread, extract
from pipeline.backbone import build_backbone, parse_weights
from pipeline.encode import write_video
from pipeline.errors import StoreError
from pipeline.extract import ExtractOptions, run_extraction
from pipeline.store import backbone_sidecar, open_store
from stages.cli import app

SIZE = 48
OPTIONS = ExtractOptions(weights="random", input_size=SIZE, resize="squash", batch_size=8)


def _clip(frames: int, seed: int, height: int = 72, width: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, height // 8, width // 8, 3), dtype=np.uint8)
    video = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2).repeat(frames, axis=0)
    video[:, : height // 2, :, 1] = (np.arange(frames) * 7 % 256)[:, None, None]
    return video


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four short clips in four codecs/containers."""
    root = tmp_path_factory.mktemp("videos")
    return [
        write_video(root / f"clip{i}{suffix}", _clip(9 + 4 * i, i), fps=fps)
        for i, (suffix, fps) in enumerate([(".mp4", 25), (".avi", 15), (".webm", 24), (".mkv", 30)])
    ]


@pytest.fixture(scope="module")
def store(videos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "features.h5"
    report = run_extraction(videos, path, OPTIONS)
    assert (report.extracted, report.failed) == (4, 0)
    return path


def test_features_equal_backbone_on_independently_decoded_frames(
    videos: list[Path], store: Path
) -> None:
    sidecar = backbone_sidecar(store)
    model = build_backbone(parse_weights(str(sidecar)), SIZE, weights_file=sidecar)
    with open_store(store) as feature_store:
        for video in videos:
            with av.open(str(video)) as container:
                decoded = list(container.decode(video=0))
            frames = np.stack(
                [f.to_ndarray(width=SIZE, height=SIZE, format="rgb24") for f in decoded]
            )
            expected = model.predict(frames, verbose=0)
            stored = feature_store.read(feature_store.video_id_for(video))
            assert stored.features.shape == (len(decoded), 1280)
            scale = np.abs(expected).max()
            np.testing.assert_allclose(stored.features, expected, atol=2e-3 * scale, rtol=2e-3)
            np.testing.assert_array_equal(stored.timestamps_sec, [f.time for f in decoded])
            assert stored.info.frame_count == len(decoded)


def test_random_backbone_features_are_not_degenerate(store: Path) -> None:
    with open_store(store) as feature_store:
        features = np.concatenate([v.features for v in feature_store.iter_videos()]).astype(
            np.float32
        )
    assert features.std() > 0.05
    assert (np.abs(features) < 1e-5).mean() < 0.5


def test_rerun_skips_everything_without_decoding(
    videos: list[Path], store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(*args, **kwargs):
        raise AssertionError("a stored video was decoded again")

    monkeypatch.setattr(decoder_thread.VideoReader, "chunks", no_decoding)
    before = store.stat().st_mtime_ns
    report = run_extraction(videos, store, OPTIONS)
    assert (report.extracted, report.skipped, report.failed) == (0, 4, 0)
    assert store.stat().st_mtime_ns == before  # nothing new: the store is not rewritten


def test_renamed_copy_is_not_extracted_again(
    videos: list[Path], store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = shutil.copy(videos[0], tmp_path / "renamed.mp4")
    monkeypatch.setattr(decoder_thread.VideoReader, "chunks", lambda *a, **k: iter(()))
    report = run_extraction([Path(copy)], store, OPTIONS)
    assert (report.extracted, report.skipped) == (0, 1)
    with open_store(store) as feature_store:
        assert feature_store.video_id_for(Path(copy)) == feature_store.video_id_for(videos[0])
        assert str(copy) in feature_store.path_index


def test_other_extractor_options_are_refused(videos: list[Path], store: Path) -> None:
    with pytest.raises(StoreError, match=r"size=48.*size=64"):
        run_extraction(videos, store, ExtractOptions(weights="random", input_size=64))


def _broken_files(folder: Path, source: Path) -> list[Path]:
    text = folder / "text.mp4"
    text.write_text("this is not a video")
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(source.read_bytes()[:300])
    return [text, truncated]


def test_new_videos_are_added_and_bad_ones_recorded(videos: list[Path], tmp_path: Path) -> None:
    store = tmp_path / "f.h5"
    run_extraction(videos[:2], store, OPTIONS)
    one_frame = write_video(tmp_path / "one.mp4", _clip(1, 9), fps=10)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text, truncated = _broken_files(tmp_path, videos[0])
    paths = [*videos, one_frame, empty, text, truncated, tmp_path / "missing.avi"]
    report = run_extraction(paths, store, OPTIONS)
    assert (report.extracted, report.skipped, report.failed) == (3, 2, 4)
    reasons = {Path(f["path"]).name: f["reason"] for f in report.failures}
    assert reasons == {
        "empty.mp4": "empty file (0 bytes)",
        "text.mp4": reasons["text.mp4"],
        "truncated.mp4": reasons["truncated.mp4"],
        "missing.avi": "file not found",
    }
    assert reasons["text.mp4"].startswith("not a readable video container")
    with open_store(store) as feature_store:
        assert len(feature_store) == 5
        assert feature_store.read(feature_store.video_id_for(one_frame)).features.shape == (1, 1280)
        assert {Path(f.path).name for f in feature_store.failures} == set(reasons)


def test_variable_frame_rate_timestamps_survive_extraction(tmp_path: Path) -> None:
    path = tmp_path / "vfr.mkv"
    pts_ms = [0, 40, 80, 300, 310, 700]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for pts in pts_ms:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), pts % 255, np.uint8))
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    run_extraction([path], tmp_path / "f.h5", OPTIONS)
    with open_store(tmp_path / "f.h5") as feature_store:
        stamps = feature_store.read(feature_store.video_id_for(path)).timestamps_sec
    np.testing.assert_allclose(stamps, np.array(pts_ms) / 1000)


def _decoding_raises(monkeypatch: pytest.MonkeyPatch, path: Path, error: BaseException) -> None:
    """Decoding ``path`` raises ``error``; every other video decodes as usual."""
    original = decoder_thread.VideoReader.chunks

    def chunks(self, *args, **kwargs):
        if self.path == path:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(decoder_thread.VideoReader, "chunks", chunks)


def test_unexpected_decoder_error_fails_only_that_video(
    videos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _decoding_raises(monkeypatch, videos[1], RuntimeError("simulated library bug"))
    report = run_extraction(videos, tmp_path / "f.h5", OPTIONS)
    assert (report.extracted, report.failed) == (3, 1)
    assert report.failures[0]["path"] == str(videos[1])
    assert "RuntimeError: simulated library bug" in report.failures[0]["reason"]


def test_unchanged_known_failures_are_not_tried_again(
    videos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#25 item 8: a rerun neither hashes nor decodes a file that failed and is unchanged."""
    store = tmp_path / "f.h5"
    broken = _broken_files(tmp_path, videos[0])
    first = run_extraction([videos[0], *broken], store, OPTIONS)
    assert (first.extracted, first.failed, first.known_failures) == (1, 2, 0)

    def untouched(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(extract, "file_sha256", untouched)
    again = run_extraction([videos[0], *broken], store, OPTIONS)
    assert (again.extracted, again.skipped, again.failed, again.known_failures) == (0, 1, 0, 2)
    assert [v["path"] for v in again.known_failed_videos] == [str(p) for p in broken]
    with open_store(store) as feature_store:  # still recorded as failures
        assert sorted(f.path for f in feature_store.failures) == [str(p) for p in broken]
    monkeypatch.undo()

    retried = run_extraction(broken, store, dataclasses.replace(OPTIONS, retry_failed=True))
    assert (retried.failed, retried.known_failures) == (2, 0)
    shutil.copy(videos[1], broken[0])  # replaced by a real video: tried again, stored
    changed = run_extraction(broken, store, OPTIONS)
    assert (changed.extracted, changed.failed, changed.known_failures) == (1, 0, 1)


def test_a_failure_of_the_run_is_tried_again(
    videos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _decoding_raises(monkeypatch, videos[1], MemoryError())
    store = tmp_path / "f.h5"
    first = run_extraction(videos[:2], store, OPTIONS)
    assert [f["reason"] for f in first.failures] == ["out of memory while decoding"]
    monkeypatch.undo()
    again = run_extraction(videos[:2], store, OPTIONS)
    assert (again.extracted, again.known_failures) == (1, 0)


def test_cli_rerun_with_only_known_failures_never_imports_tensorflow(
    videos: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(videos[0], folder)
    broken = _broken_files(folder, videos[0])
    store = tmp_path / "f.h5"
    args = [str(folder), "-o", str(store), "--weights", "random", "--input-size", str(SIZE)]
    args += ["--resize", "squash", "--strict"]
    assert CliRunner().invoke(app, ["extract", *args]).exit_code == 1  # 2 failed
    script = f"""
import sys
from typer.testing import CliRunner
from stages.cli import app
result = CliRunner().invoke(app, ["extract", *{args!r}])
print(result.output)
assert result.exit_code == 1, result.exit_code
assert not {{"tensorflow", "keras"}} & set(sys.modules), "TF imported"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = next(line for line in done.stdout.splitlines() if line.startswith("extracted"))
    assert "skipped 1 (already stored), failed 0 of 3 videos, 2 known failures skipped" in summary
    assert "error: 2 videos failed (2 in an earlier run) (--strict)" in done.stdout
    report = json.loads((tmp_path / "f.h5.report.json").read_text())
    assert report["known_failures"] == 2 and len(report["known_failed_videos"]) == len(broken)
