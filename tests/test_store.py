"""The HDF5 store contract: parts, commits, shards, path index, locks, config checks, checksums,
v1 migration and compaction."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.contracts import ExtractionFailure, ExtractorConfig, VideoFeatures, VideoInfo
from pipeline.errors import StoreError
from pipeline.store import StoreBuilder, open_store, shards_dir_for, write_failure, write_part
from pipeline.store_commit import link_shards, read_staging
from stages.cli import app

FORMAT_DOC = Path(__file__).parents[1] / "docs" / "FORMAT.md"

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


# --------------------------------------------------------------------------- format version 3


def _commit(store_path: Path, videos: list[VideoFeatures], config: ExtractorConfig = CONFIG):
    with StoreBuilder(store_path, config) as builder:
        for vf in videos:
            write_part(builder.parts_dir, config, vf)
        summary = builder.commit()
        builder.discard_staging()
    return summary


def _shard_files(store_path: Path) -> dict[str, tuple[int, int, int]]:
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
        for p in shards_dir_for(store_path).glob("shard-*.h5")
    }


def test_an_append_writes_new_shards_and_never_rewrites_old_ones(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    _commit(store_path, [_video(tmp_path, f"{i}.mp4", 20, i) for i in range(3)])
    before = _shard_files(store_path)
    index_inode = store_path.stat().st_ino
    newcomers = [_video(tmp_path, f"n{i}.mp4", 30, 10 + i) for i in range(2)]
    summary = _commit(store_path, newcomers)
    after = _shard_files(store_path)
    assert (summary.added, summary.videos) == (2, 5)
    assert {name: after[name] for name in before} == before  # same inode, mtime and size
    assert len(after) == len(before) + 2
    assert store_path.stat().st_ino != index_inode  # the index was replaced, atomically
    with open_store(store_path) as store:
        assert len(store) == 5
        for vf in newcomers:
            np.testing.assert_allclose(store.read(vf.video_id).features, vf.features, atol=1e-3)


def test_plain_h5py_reads_a_video_through_the_index_links(tmp_path: Path) -> None:
    """The docs/FORMAT.md "read it without vrnn" snippet, run from another directory."""
    store_path = tmp_path / "store" / "features.h5"
    store_path.parent.mkdir()
    videos = [_video(tmp_path, f"{i}.mp4", 7 + i, i) for i in range(3)]
    _commit(store_path, videos)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    snippet = re.search(r"```python\n(.*?)```", FORMAT_DOC.read_text(), re.S).group(1)
    snippet = snippet.replace('"features.h5"', repr(str(store_path)))
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        with contextlib.redirect_stdout(out):
            exec(snippet, {})
    finally:
        os.chdir(cwd)
    printed = out.getvalue()
    for vf in videos:
        assert f"{vf.video_id} {vf.info.path} ({vf.features.shape[0]}, 1280)" in printed
    assert "path index: 3 paths" in printed


def test_a_missing_shard_is_one_error_naming_it_and_its_videos(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    videos = [_video(tmp_path, f"{i}.mp4", 5, i) for i in range(3)]
    _commit(store_path, videos)
    with open_store(store_path) as store:
        victim = store.catalog[videos[1].video_id].shard
    (shards_dir_for(store_path) / victim).unlink()
    with open_store(store_path) as store:
        store.read(videos[0].video_id)  # the others still read
        with pytest.raises(StoreError) as caught:
            store.read(videos[1].video_id)
    message = str(caught.value)
    assert victim in message and videos[1].video_id in message and "1 video(s)" in message
    assert "\n" not in message


def test_shards_of_a_killed_commit_are_removed_by_the_next_writer_not_readers(
    tmp_path: Path,
) -> None:
    store_path = tmp_path / "f.h5"
    _commit(store_path, [_video(tmp_path, "a.mp4", 5, 1)])
    committed = _shard_files(store_path)
    with StoreBuilder(store_path, CONFIG) as builder:  # a commit killed after linking
        write_part(builder.parts_dir, CONFIG, _video(tmp_path, "b.mp4", 5, 2))
        link_shards(read_staging(builder.parts_dir).videos, builder.shards_dir)
    orphan = set(_shard_files(store_path)) - set(committed)
    assert len(orphan) == 1
    with open_store(store_path) as store:  # a reader neither sees nor removes it
        assert len(store) == 1
    assert set(_shard_files(store_path)) == set(committed) | orphan
    summary = _commit(store_path, [])  # the next writer: removes it, commits the staged part
    assert (summary.added, summary.videos) == (1, 2)
    assert not orphan & set(_shard_files(store_path))
    with open_store(store_path) as store:
        assert len(store) == 2


def test_compact_merges_shards_atomically_and_keeps_every_video(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    videos = [_video(tmp_path, f"{i}.mp4", 10 + i, i) for i in range(6)]
    for vf in videos:
        _commit(store_path, [vf])
    failure = ExtractionFailure(str(tmp_path / "bad.mp4"), "broken")
    with StoreBuilder(store_path, CONFIG) as builder:
        write_failure(builder.parts_dir, failure)
        builder.commit()
    with open_store(store_path) as before:
        paths, failures = before.path_index, before.failures
    reader = open_store(store_path)  # opened before compaction, used after it
    assert len(_shard_files(store_path)) == 6
    result = CliRunner().invoke(app, ["store", "compact", str(store_path)])
    assert result.exit_code == 0, result.output
    assert "6 videos, 6 → 1 shards" in result.output
    assert len(_shard_files(store_path)) == 1
    with open_store(store_path) as store:
        assert store.path_index == paths and store.failures == failures
        for vf in videos:
            np.testing.assert_allclose(store.read(vf.video_id).features, vf.features, atol=1e-3)
            assert store.read(vf.video_id).info == vf.info
    np.testing.assert_allclose(
        reader.read(videos[2].video_id).features, videos[2].features, atol=1e-3
    )
    reader.close()


def _write_v1_store(path: Path, videos: list[VideoFeatures]) -> None:
    """A version-1 store as the previous vrnn wrote it (docs/FORMAT.md of version 1)."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "video-rnn-features"
        f.attrs["format_version"] = 1
        f.attrs["extractor"] = json.dumps(CONFIG.to_dict(), sort_keys=True)
        group = f.create_group("videos")
        index = {}
        for vf in videos:
            g = group.create_group(vf.video_id)
            g.create_dataset("features", data=vf.features.astype(np.float16), chunks=True,
                             compression="gzip", shuffle=True, fletcher32=True)  # fmt: skip
            g.create_dataset("timestamps", data=vf.timestamps_sec, fletcher32=True)
            g.attrs["content_sha256"] = vf.content_sha256
            for key, value in asdict(vf.info).items():
                g.attrs["source_path" if key == "path" else key] = value
            st = Path(vf.info.path).stat()
            index[vf.info.path] = [vf.video_id, st.st_size, st.st_mtime_ns]
        f.create_dataset("path_index", data=json.dumps(index))
        failed = [{"path": "/x/bad.mp4", "reason": "broken", "video_id": None}]
        f.create_dataset("failures", data=json.dumps(failed))


def test_a_version_1_store_is_refused_naming_migrate_then_migrates(tmp_path: Path) -> None:
    store_path = tmp_path / "old.h5"
    videos = [_video(tmp_path, f"{i}.mp4", 9 + i, i) for i in range(4)]
    _write_v1_store(store_path, videos)
    with pytest.raises(StoreError, match=r"version 1 .*`vrnn store migrate .*old\.h5`"):
        open_store(store_path)
    with pytest.raises(StoreError, match="vrnn store migrate"), StoreBuilder(store_path, CONFIG):
        pass
    result = CliRunner().invoke(app, ["store", "migrate", str(store_path)])
    assert result.exit_code == 0, result.output
    with open_store(store_path, expected=CONFIG) as store:
        assert store.video_ids == sorted(vf.video_id for vf in videos)
        assert [(f.path, f.reason) for f in store.failures] == [("/x/bad.mp4", "broken")]
        for vf in videos:
            assert store.video_id_for(Path(vf.info.path)) == vf.video_id  # stat fast path
            np.testing.assert_allclose(store.read(vf.video_id).features, vf.features, atol=1e-3)
    again = CliRunner().invoke(app, ["store", "migrate", str(store_path)])
    assert again.exit_code == 1 and "nothing to migrate" in again.output
    _commit(store_path, [_video(tmp_path, "new.mp4", 3, 42)])  # and it takes appends
    with open_store(store_path) as store:
        assert len(store) == 5
