"""The HDF5 store contract: parts, commits, path index, locks, config checks, checksums."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.contracts import ExtractionFailure, ExtractorConfig, VideoFeatures, VideoInfo
from pipeline.errors import StoreError
from pipeline.store import StoreBuilder, open_store, write_failure, write_part

CONFIG = ExtractorConfig(weights="random:seed=0", weights_sha256="ab" * 32, input_size=64)


def _video(tmp_path: Path, name: str, frames: int, seed: int) -> VideoFeatures:
    source = tmp_path / name
    source.write_bytes(name.encode())  # part files record the source's size and mtime
    rng = np.random.default_rng(seed)
    info = VideoInfo(str(source), 25.0, 160, 120, frames, frames, frames / 25, "h264")
    return VideoFeatures(
        f"v{seed:020d}",
        f"{seed:064d}",
        rng.random((frames, 1280), dtype=np.float32),
        np.arange(frames) / 25,
        info,
    )


def test_parts_commit_into_a_readable_store(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    videos = [_video(tmp_path, f"{i}.mp4", 10 + i, i) for i in range(3)]
    with StoreBuilder(store_path, CONFIG) as builder:
        for vf in videos:
            write_part(builder.parts_dir, CONFIG, vf)
        write_failure(builder.parts_dir, ExtractionFailure(str(tmp_path / "bad.mp4"), "broken"))
        summary = builder.commit()
        builder.discard_staging()
    assert (summary.videos, summary.added, summary.frames_added) == (3, 3, 33)
    assert not builder.parts_dir.exists()
    with open_store(store_path, expected=CONFIG) as store:
        assert store.video_ids == [vf.video_id for vf in videos]
        for vf in videos:
            got = store.read(vf.video_id)
            assert got.features.dtype == np.float16
            np.testing.assert_allclose(got.features, vf.features, rtol=1e-3, atol=1e-3)
            np.testing.assert_array_equal(got.timestamps_sec, vf.timestamps_sec)
            assert got.info == vf.info
            assert store.video_id_for(Path(vf.info.path)) == vf.video_id
        assert [f.reason for f in store.failures] == ["broken"]


def test_second_commit_appends_and_keeps_old_videos(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    first, second = _video(tmp_path, "a.mp4", 5, 1), _video(tmp_path, "b.mp4", 7, 2)
    for vf in (first, second):
        with StoreBuilder(store_path, CONFIG) as builder:
            write_part(builder.parts_dir, CONFIG, vf)
            builder.commit()
    with open_store(store_path) as store:
        assert len(store) == 2
        assert store.read(first.video_id).features.shape == (5, 1280)


def test_float32_store_keeps_exact_values(tmp_path: Path) -> None:
    config = ExtractorConfig(**{**CONFIG.to_dict(), "dtype": "float32"})
    vf = _video(tmp_path, "a.mp4", 4, 1)
    with StoreBuilder(tmp_path / "f.h5", config) as builder:
        write_part(builder.parts_dir, config, vf)
        builder.commit()
    with open_store(tmp_path / "f.h5") as store:
        np.testing.assert_array_equal(store.read(vf.video_id).features, vf.features)


def test_other_extractor_config_is_refused_naming_both(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    with StoreBuilder(store_path, CONFIG) as builder:
        write_part(builder.parts_dir, CONFIG, _video(tmp_path, "a.mp4", 3, 1))
        builder.commit()
    other = ExtractorConfig(**{**CONFIG.to_dict(), "input_size": 224})
    with pytest.raises(StoreError, match=r"size=64.*size=224"), StoreBuilder(store_path, other):
        pass
    with pytest.raises(StoreError, match="different extractor"):
        open_store(store_path, expected=other)


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    with (
        StoreBuilder(store_path, CONFIG),
        pytest.raises(StoreError, match="another extraction"),
        StoreBuilder(store_path, CONFIG),
    ):
        pass
    with StoreBuilder(store_path, CONFIG):  # released on exit
        pass


def test_corrupted_feature_bytes_are_detected_naming_the_video(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    vf = _video(tmp_path, "a.mp4", 50, 1)
    with StoreBuilder(store_path, CONFIG) as builder:
        write_part(builder.parts_dir, CONFIG, vf)
        builder.commit()
    with h5py.File(store_path, "r") as f:  # through the index's external link, to the shard
        features = f["videos"][vf.video_id]["features"]
        chunk, shard = features.id.get_chunk_info(0), Path(features.file.filename)
    data = bytearray(shard.read_bytes())
    middle = chunk.byte_offset + chunk.size // 2
    data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
    shard.write_bytes(bytes(data))
    with open_store(store_path) as store, pytest.raises(StoreError, match=vf.video_id):
        store.read(vf.video_id)


@pytest.mark.parametrize("content", [b"", b"definitely not hdf5"])
def test_not_a_store(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f.h5"
    path.write_bytes(content)
    with pytest.raises(StoreError, match="not a readable HDF5"):
        open_store(path)
    with pytest.raises(StoreError, match="not found"):
        open_store(tmp_path / "absent.h5")
