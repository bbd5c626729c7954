"""Trustworthy cache (issue #11): partial decodes, repaired timestamps, files changed during
a run, --rehash, refused runs leaving the store intact, mixed precision in the config.

Every input is a real file encoded in the test; the backbone is the seeded random one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline import backbone, extract, training
from pipeline.backbone import load_checked_backbone
from pipeline.contracts import VideoRecord
from pipeline.encode import write_video
from pipeline.errors import StoreError, WeightsError
from pipeline.extract import ExtractOptions, run_extraction
from pipeline.featurize import CHANGED_REASON
from pipeline.identity import file_sha256, video_id_from_sha256
from pipeline.store import backbone_sidecar, open_store
from stages.cli import app

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
OPTIONS = ExtractOptions(weights="random", input_size=SIZE, resize="squash", batch_size=16)


def noisy_clip(frames: int, seed: int) -> np.ndarray:
    """Incompressible 64×48 frames: every packet is large, so damage hits many packets."""
    return np.random.default_rng(seed).integers(0, 255, (frames, 48, 64, 3), dtype=np.uint8)


def clip_file(path: Path, frames: int, seed: int) -> Path:
    """A real MJPEG/mkv clip of noise at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, noisy_clip(frames, seed), fps=10)


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
    healthy = clip_file(tmp_path / "fine.mkv", 10, 4)
    store = tmp_path / "features.h5"
    args = ["extract", str(tmp_path), "-o", str(store), "--weights", "random"]
    result = CliRunner().invoke(app, [*args, "--input-size", str(SIZE), "--resize", "squash"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "features.h5.report.json").read_text())  # named after the store
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


def other_content_same_size(path: Path) -> None:
    """Change one byte near the end of ``path`` keeping its size and mtime (like ``cp -p``)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-len(data) // 4] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_file_replaced_after_hashing_is_a_failure_not_wrong_features(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    first = clip_file(videos / "a.mkv", 8, 5)
    second = clip_file(videos / "b.mkv", 12, 6)
    replacement = clip_file(tmp_path / "new.mkv", 20, 7)
    old_id = video_id_from_sha256(file_sha256(second))

    def replace_second(plan) -> None:  # hashed by the plan, replaced before it is decoded
        assert [Path(item.path).name for item in plan.todo] == ["a.mkv", "b.mkv"]
        shutil.copyfile(replacement, second)

    store = tmp_path / "features.h5"
    report = run_extraction([first, second], store, OPTIONS, on_plan=replace_second)
    assert (report.extracted, report.failed) == (1, 1)
    failure = {"path": str(second), "reason": CHANGED_REASON, "video_id": old_id}
    assert report.failures == [{**failure, "size": -1, "mtime_ns": -1}]  # -1: retried
    with open_store(store) as feature_store:
        assert old_id not in feature_store  # the new content is not stored under the old id
        assert str(second) not in feature_store.path_index
    rerun = run_extraction([first, second], store, OPTIONS)  # picks up the new content
    assert (rerun.extracted, rerun.skipped, rerun.failed) == (1, 1, 0)
    with open_store(store) as feature_store:
        new_id = video_id_from_sha256(file_sha256(replacement))
        assert feature_store.path_index[str(second)][0] == new_id
        assert len(feature_store.read(new_id).features) == 20
        assert feature_store.failures == []


def test_file_changing_while_hashed_is_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = clip_file(tmp_path / "a.mkv", 8, 5)
    real_hash = extract.file_sha256

    def hash_then_touch(path: Path) -> str:
        digest = real_hash(path)
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))  # written to while read
        return digest

    monkeypatch.setattr(extract, "file_sha256", hash_then_touch)
    report = run_extraction([clip], tmp_path / "features.h5", OPTIONS)
    assert (report.extracted, report.failed) == (0, 1)
    assert report.failures[0]["reason"] == CHANGED_REASON


def test_rehash_finds_new_content_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    clip = clip_file(tmp_path / "videos" / "a.mkv", 10, 8)
    store = tmp_path / "features.h5"
    run_extraction([clip], store, OPTIONS)
    other_content_same_size(clip)
    new_id = video_id_from_sha256(file_sha256(clip))

    # The documented fast path: same path, size and mtime → not read again.
    assert run_extraction([clip], store, OPTIONS).skipped == 1
    with open_store(store) as feature_store:
        assert feature_store.path_index[str(clip)][0] != new_id

    rehashed = run_extraction([clip], store, dataclasses.replace(OPTIONS, rehash=True))
    assert (rehashed.extracted, rehashed.skipped) == (1, 0)
    with open_store(store) as feature_store:
        assert feature_store.path_index[str(clip)][0] == new_id
        assert new_id in feature_store
    # Unchanged content under --rehash is hashed and skipped, not extracted again.
    again = run_extraction([clip], store, dataclasses.replace(OPTIONS, rehash=True))
    assert (again.extracted, again.skipped) == (0, 1)


def test_rehash_option_reaches_the_cli(tmp_path: Path) -> None:
    clip = clip_file(tmp_path / "videos" / "a.mkv", 10, 8)
    store = tmp_path / "features.h5"
    base = ["extract", str(clip.parent), "-o", str(store), "--weights", "random"]
    base += ["--input-size", str(SIZE), "--resize", "squash"]
    assert CliRunner().invoke(app, base).exit_code == 0
    other_content_same_size(clip)
    result = CliRunner().invoke(app, [*base, "--rehash"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("extracted 1, skipped 0 (already stored)")


def test_refused_weights_leave_the_store_and_its_sidecar_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = clip_file(tmp_path / "videos" / "a.mkv", 8, 9)
    store = tmp_path / "features.h5"
    run_extraction([first], store, OPTIONS)
    sidecar = backbone_sidecar(store)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    def no_build(*args, **kwargs):
        raise AssertionError("a backbone was built before the refusal")

    with monkeypatch.context() as patch:
        patch.setattr(backbone, "build_backbone", no_build)
        for wrong in (
            dataclasses.replace(OPTIONS, weights="random:1"),  # the typo of the issue
            dataclasses.replace(OPTIONS, mixed_precision=True),  # float16 compute
        ):
            with pytest.raises(StoreError, match="was built by a different extractor") as refused:
                run_extraction([first], store, wrong)
            assert "\n" not in str(refused.value)
    assert "compute=float32), this run uses" in str(refused.value)
    assert "compute=float16" in str(refused.value)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # not one byte written, the sidecar included

    # The store stays extendable and its sidecar still rebuilds its backbone.
    second = clip_file(tmp_path / "videos" / "b.mkv", 6, 10)
    assert run_extraction([first, second], store, OPTIONS).extracted == 1
    with open_store(store) as feature_store:
        load_checked_backbone(feature_store.config, sidecar)


def test_stores_sharing_a_stem_keep_their_own_backbone_weights(tmp_path: Path) -> None:
    clip = clip_file(tmp_path / "videos" / "a.mkv", 8, 11)
    stores = [tmp_path / "features.h5", tmp_path / "features.hdf5", tmp_path / "features"]
    seeds = ["random:0", "random:1", "random:2"]
    for store, weights in zip(stores, seeds, strict=True):
        run_extraction([clip], store, dataclasses.replace(OPTIONS, weights=weights))
    assert len({backbone_sidecar(store) for store in stores}) == 3
    for store in stores:
        with open_store(store) as feature_store:
            load_checked_backbone(feature_store.config, backbone_sidecar(store))  # sha256 checked


def test_mixed_precision_is_part_of_the_extractor_config(tmp_path: Path) -> None:
    clip = clip_file(tmp_path / "videos" / "a.mkv", 4, 12)
    store = tmp_path / "features.h5"
    run_extraction([clip], store, dataclasses.replace(OPTIONS, mixed_precision=True))
    with open_store(store) as feature_store:
        assert feature_store.config.mixed_precision is True
    with pytest.raises(StoreError, match=r"compute=float16\), this run uses .*compute=float32"):
        run_extraction([clip], store, OPTIONS)


def test_train_refuses_a_sidecar_with_other_weights(tmp_path: Path) -> None:
    records = [
        VideoRecord(
            clip_file(tmp_path / label / f"{i}.mkv", 4, seed), label, f"{label}{i}", "train"
        )
        for seed, (label, i) in enumerate([("a", 0), ("a", 1), ("b", 0), ("b", 1)])
    ]
    store, other = tmp_path / "features.h5", tmp_path / "other.h5"
    run_extraction([r.path for r in records], store, OPTIONS)
    run_extraction([records[0].path], other, dataclasses.replace(OPTIONS, weights="random:1"))
    shutil.copyfile(backbone_sidecar(other), backbone_sidecar(store))  # the wrong weights
    config = training.TrainConfig(seq_len=4, epochs=1, batch_size=2)
    with pytest.raises(WeightsError, match="does not match the extractor's"):
        training.train(records, store, tmp_path / "model", config)
    assert not (tmp_path / "model").exists()  # refused before training, nothing copied


def _dvc(repo: Path, *args: str) -> str:
    dvc = Path(sys.executable).parent / "dvc"
    done = subprocess.run([str(dvc), *args], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.skipif(
    not (Path(sys.executable).parent / "dvc").exists(), reason="dvc is not installed"
)
def test_taking_the_store_lock_does_not_change_the_dvc_output(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    store = repo / "data" / "features" / "features.h5"
    run_extraction([clip_file(tmp_path / "a.mkv", 4, 13)], store, OPTIONS)
    lock = store.with_name(store.name + ".lock")
    assert lock.exists() and lock.read_bytes() == b""  # content-free
    _dvc(repo, "init", "--no-scm", "-q")
    shutil.copyfile(REPO / ".dvcignore", repo / ".dvcignore")  # the shipped ignore rules
    _dvc(repo, "add", "-q", "data/features")
    before = (repo / "data" / "features.dvc").read_text()
    # Another process takes the lock and finds nothing to do (an up-to-date rerun).
    code = (
        "import sys; from pathlib import Path; from pipeline.store import StoreBuilder, "
        "open_store\np = Path(sys.argv[1])\nwith open_store(p) as s: config = s.config\n"
        "with StoreBuilder(p, config) as b: b.discard_staging()\n"
    )
    subprocess.run([sys.executable, "-c", code, str(store)], check=True, cwd=REPO)
    assert "modified" not in _dvc(repo, "status", "data/features.dvc")
    _dvc(repo, "add", "-q", "data/features")
    assert (repo / "data" / "features.dvc").read_text() == before
    # And a lock file with content (an older vrnn's pid) is outside the output's hash.
    lock.write_text("12345")
    _dvc(repo, "add", "-q", "data/features")
    assert (repo / "data" / "features.dvc").read_text() == before
