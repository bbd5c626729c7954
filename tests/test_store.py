"""The HDF5 store contract: parts, commits, shards, path index, locks, config checks, checksums,
v1 migration and compaction."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.contracts import ExtractionFailure, ExtractorConfig, VideoFeatures, VideoInfo
from pipeline.errors import StoreError
from pipeline.store import StoreBuilder, open_store, shards_dir_for, write_failure, write_part
from pipeline.store.commit import link_shards, read_staging
from pipeline.store.generations import Root, publish
from pipeline.store.index import PathEntry, StoreIndex, VideoEntry
from stages.cli import app
from tests.reliability.helpers import flip_feature_chunk

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
    flip_feature_chunk(store_path, vf.video_id)
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
        link_shards(read_staging(builder.parts_dir, CONFIG).videos, builder.shards_dir)
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
                if value is not None:  # facts not recorded then (stream_index, start time)
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


# --------------------------------------------------------------------------- generations


def _root(store_path: Path) -> dict:
    with h5py.File(store_path, "r") as f:
        files = [name.decode() for name in f["index_files"][()]]
        return {"index_files": files, "links_file": str(f.attrs["links_file"])}


def _files(store_path: Path) -> dict[str, tuple[int, int, int]]:
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
        for p in shards_dir_for(store_path).iterdir()
    }


def test_an_append_adds_a_delta_and_never_rewrites_the_base_or_the_current_links(
    tmp_path: Path,
) -> None:
    store_path = tmp_path / "f.h5"
    _commit(store_path, [_video(tmp_path, f"{i}.mp4", 4, i) for i in range(12)])
    before, files = _root(store_path), _files(store_path)
    assert len(before["index_files"]) == 1  # a new store: one base
    newcomer = _video(tmp_path, "new.mp4", 6, 99)
    _commit(store_path, [newcomer])
    after = _root(store_path)
    assert after["index_files"][0] == before["index_files"][0] and len(after["index_files"]) == 2
    kept = [before["index_files"][0], before["links_file"]]
    assert {name: _files(store_path)[name] for name in kept} == {n: files[n] for n in kept}
    assert after["links_file"] not in files  # the spare, updated under a new name
    delta = shards_dir_for(store_path) / after["index_files"][1]
    assert delta.stat().st_size < files[before["index_files"][0]][2]
    with h5py.File(store_path, "r") as f:  # plain h5py: the new video through the new links
        assert len(f["videos"]) == 13
        np.testing.assert_allclose(
            f["videos"][newcomer.video_id]["features"][()], newcomer.features, atol=1e-3
        )


def _wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/io")


def _bytes_written_by_a_commit(directory: Path, stored: int) -> tuple[int, int]:
    """(bytes one commit of one small video writes, bytes of the index and links files)
    for a store already holding ``stored`` videos (made straight through ``publish``)."""
    directory.mkdir()
    store_path = directory / "f.h5"
    videos = {f"v{i:020x}": VideoEntry("shard-0000000000000000.h5", 10) for i in range(stored)}
    paths = {
        f"/data/some/class/clip{i:06d}.mp4": PathEntry(f"v{i:020x}", 1000 + i, 10**18 + i)
        for i in range(stored)
    }
    publish(store_path, CONFIG, Root(), StoreIndex(videos, paths))
    index_bytes = sum(v[2] for n, v in _files(store_path).items() if not n.startswith("shard"))
    with StoreBuilder(store_path, CONFIG) as builder:
        write_part(builder.parts_dir, CONFIG, _video(directory, "new.mp4", 5, 10**6))
        written = _wchar()
        builder.commit()
        written = _wchar() - written
    return written, index_bytes


def test_a_commit_writes_the_same_few_bytes_whatever_the_store_size(tmp_path: Path) -> None:
    small, _ = _bytes_written_by_a_commit(tmp_path / "small", 40)
    large, index_bytes = _bytes_written_by_a_commit(tmp_path / "large", 4000)
    # The links file's heap blocks grow to at most 64 KiB; everything else is a constant.
    assert large < small + 128 * 1024, (small, large)
    assert large < index_bytes / 4, (large, index_bytes)  # version 2 rewrote all of it


def test_deltas_fold_into_few_files_and_every_change_survives(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    clip = _video(tmp_path, "clip.mp4", 3, 500)
    broken = ExtractionFailure(clip.info.path, "broken")
    expected_paths = {}
    for i in range(24):
        vf = _video(tmp_path, f"{i}.mp4", 3, i)
        _commit(store_path, [vf])
        expected_paths[vf.info.path] = vf.video_id
        with open_store(store_path) as store:
            assert {p: e.video_id for p, e in store.path_index.items()} == expected_paths
        assert len(_root(store_path)["index_files"]) <= 1 + (i + 1).bit_length()
        if i == 5:  # a stored path fails later: removed from the path index by a delta
            _commit(store_path, [clip])
            with StoreBuilder(store_path, CONFIG) as builder:
                write_failure(builder.parts_dir, broken)
                builder.commit()
        if i == 9:  # and extracts again: the failure is removed by a delta
            _commit(store_path, [clip])
            expected_paths[clip.info.path] = clip.video_id
    with open_store(store_path) as store:
        tables = (store.path_index, store.failures, store.catalog)
        assert store.failures == [] and len(store) == 25
    assert len(_root(store_path)["index_files"]) > 1  # some deltas remain unfolded
    result = CliRunner().invoke(app, ["store", "compact", str(store_path)])
    assert result.exit_code == 0, result.output
    assert len(_root(store_path)["index_files"]) == 1  # compaction folds everything
    with open_store(store_path) as store:
        assert (store.path_index, store.failures) == tables[:2]
        assert {vid: e.frames for vid, e in store.catalog.items()} == {
            vid: e.frames for vid, e in tables[2].items()
        }


def test_a_failure_recorded_by_a_delta_reads_back(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    _commit(store_path, [_video(tmp_path, f"{i}.mp4", 3, i) for i in range(8)])
    failure = ExtractionFailure(str(tmp_path / "bad.mp4"), "broken")
    with StoreBuilder(store_path, CONFIG) as builder:
        write_failure(builder.parts_dir, failure)
        builder.commit()
    assert len(_root(store_path)["index_files"]) == 2
    with open_store(store_path) as store:
        assert store.failures == [failure] and len(store) == 8


def test_a_missing_index_file_is_one_error_naming_it(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    _commit(store_path, [_video(tmp_path, f"{i}.mp4", 3, i) for i in range(8)])
    _commit(store_path, [_video(tmp_path, "late.mp4", 3, 50)])
    delta = _root(store_path)["index_files"][1]
    (shards_dir_for(store_path) / delta).unlink()
    with pytest.raises(StoreError, match=f"index file .*{delta} is missing") as caught:
        open_store(store_path)
    assert "\n" not in str(caught.value)
    with pytest.raises(StoreError, match=f"{delta} is missing"), StoreBuilder(store_path, CONFIG):
        pass


HOLDER = r"""
import sys, time, h5py
from pathlib import Path
store, ready, stop = sys.argv[1:4]
with h5py.File(store, "r") as f:
    videos = f["videos"]  # holds the current links file open (HDF5 locks it)
    names = sorted(videos)
    Path(ready).write_text(str(len(names)))
    while not Path(stop).exists():
        time.sleep(0.01)
    assert sorted(videos) == names  # still the links file it opened, whole
    print(len(names), videos[names[0]]["features"].shape[0])
"""


def test_a_links_file_a_plain_h5py_reader_holds_is_never_updated(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    _commit(store_path, [_video(tmp_path, f"{i}.mp4", 3, i) for i in range(8)])
    held = _root(store_path)["links_file"]
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store_path), str(ready), str(stop)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert reader.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        held_stat = _files(store_path)[held]
        _commit(store_path, [_video(tmp_path, "a.mp4", 3, 40)])
        assert _files(store_path)[held] == held_stat  # the previous root's: the spare now
        _commit(store_path, [_video(tmp_path, "b.mp4", 3, 41)])  # would recycle it: locked
        inodes = {stat[0] for stat in _files(store_path).values()}
        assert held_stat[0] not in inodes  # copied from the current one instead, then dropped
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0 and out.split() == ["8", "3"]
    with h5py.File(store_path, "r") as f:
        assert len(f["videos"]) == 10


def _write_v2_store(store_path: Path, videos: list[VideoFeatures]) -> None:
    """A version-2 store as the previous vrnn wrote it: shards plus one index file."""
    shards = shards_dir_for(store_path)
    shards.mkdir()
    with h5py.File(store_path, "w") as f:
        f.attrs["format"] = "video-rnn-features"
        f.attrs["format_version"] = 2
        f.attrs["shards"] = shards.name
        f.attrs["extractor"] = json.dumps(CONFIG.to_dict(), sort_keys=True)
        names = []
        for i, vf in enumerate(videos):
            write_part(tmp := store_path.parent, CONFIG, vf)
            names.append(f"shard-{i:016x}.h5")
            os.replace(tmp / f"{vf.video_id}.h5", shards / names[-1])
            f[f"videos/{vf.video_id}"] = h5py.ExternalLink(
                f"{shards.name}/{names[-1]}", f"/videos/{vf.video_id}"
            )
        ids = np.array([vf.video_id.encode() for vf in videos], dtype="S21")
        f["shards/names"] = np.array(names, dtype="S64")
        f["catalog/video_ids"], f["catalog/shard"] = ids, np.arange(len(videos), dtype=np.int32)
        f["catalog/frames"] = np.array([vf.features.shape[0] for vf in videos], np.int64)
        paths = [vf.info.path.encode() for vf in videos]
        f["path_index/paths_bytes"] = np.frombuffer(b"".join(paths), np.uint8)
        f["path_index/paths_offsets"] = np.cumsum([0] + [len(p) for p in paths])
        f["path_index/video_ids"] = ids
        stats = [Path(vf.info.path).stat() for vf in videos]
        f["path_index/sizes"] = np.array([st.st_size for st in stats], np.int64)
        f["path_index/mtimes_ns"] = np.array([st.st_mtime_ns for st in stats], np.int64)
        for name in ("paths", "reasons"):
            f[f"failures/{name}_bytes"] = np.frombuffer(b"x", np.uint8)
            f[f"failures/{name}_offsets"] = np.array([0, 1], np.int64)
        f["failures/video_ids"] = np.array([b""], dtype="S21")


def test_a_version_2_store_is_refused_naming_migrate_then_migrates_keeping_its_shards(
    tmp_path: Path,
) -> None:
    store_path = tmp_path / "v2.h5"
    videos = [_video(tmp_path, f"{i}.mp4", 9 + i, i) for i in range(3)]
    _write_v2_store(store_path, videos)
    shards = _shard_files(store_path)
    with pytest.raises(StoreError, match=r"version 2 .*`vrnn store migrate .*v2\.h5`"):
        open_store(store_path)
    with pytest.raises(StoreError, match="vrnn store migrate"), StoreBuilder(store_path, CONFIG):
        pass
    result = CliRunner().invoke(app, ["store", "migrate", str(store_path)])
    assert result.exit_code == 0, result.output
    assert "to format version 3: 3 videos in 3 shards" in result.output
    assert _shard_files(store_path) == shards  # not copied, not touched
    with open_store(store_path, expected=CONFIG) as store:
        assert [(f.path, f.reason) for f in store.failures] == [("x", "x")]
        for vf in videos:
            assert store.video_id_for(Path(vf.info.path)) == vf.video_id
            np.testing.assert_allclose(store.read(vf.video_id).features, vf.features, atol=1e-3)
    _commit(store_path, [_video(tmp_path, "new.mp4", 3, 42)])
    with h5py.File(store_path, "r") as f:
        assert len(f["videos"]) == 4


def test_two_commits_of_one_writer_each_record_only_their_own_videos(tmp_path: Path) -> None:
    store_path = tmp_path / "f.h5"
    _commit(store_path, [_video(tmp_path, f"{i}.mp4", 3, i) for i in range(8)])
    first, second = _video(tmp_path, "a.mp4", 3, 40), _video(tmp_path, "b.mp4", 3, 41)
    with StoreBuilder(store_path, CONFIG) as builder:  # the generation read once, then kept
        write_part(builder.parts_dir, CONFIG, first)
        builder.commit()
        write_part(builder.parts_dir, CONFIG, second)
        builder.commit()
    with open_store(store_path) as store:
        generations = {vid: entry.generation for vid, entry in store.catalog.items()}
    # Not re-stamped by the second commit (which would also re-add its link and row).
    assert generations[second.video_id] == generations[first.video_id] + 1
    assert set(generations.values()) == {1, 2, 3}


def _copied(vf: VideoFeatures, path: Path) -> VideoFeatures:
    """``vf`` staged from a copy of its source at ``path`` (same content, another path)."""
    shutil.copy(vf.info.path, path)
    return dataclasses.replace(vf, info=dataclasses.replace(vf.info, path=str(path)))


def test_path_rows_of_files_gone_are_dropped_by_a_new_base_and_reported(tmp_path: Path) -> None:
    """#23 item 9: a job staging the same videos under a fresh folder each run (and deleting
    the last one) adds path rows with 0 new videos; they must not accumulate."""
    store_path = tmp_path / "f.h5"
    originals = [_video(tmp_path, f"{name}.mp4", 3, seed) for seed, name in enumerate("ab")]
    dropped, sizes = 0, []
    for run in range(12):
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        staged = [_copied(vf, folder / Path(vf.info.path).name) for vf in originals]
        dropped += _commit(store_path, staged).paths_dropped
        shutil.rmtree(tmp_path / f"run{run - 1}", ignore_errors=True)
        with open_store(store_path) as store:
            sizes.append(len(store.path_index))
            assert len(store) == 2
    assert max(sizes) <= 4 * len(originals) + 2  # bounded: folds into a base drop gone rows
    assert dropped > 0
    result = CliRunner().invoke(app, ["store", "compact", str(store_path)])
    assert result.exit_code == 0, result.output
    with open_store(store_path) as store:
        kept = sorted(store.path_index)
    live = [str(tmp_path / "run11" / f"{name}.mp4") for name in "ab"]
    assert kept == live
    assert f"dropped {sizes[-1] - len(kept)} path-index rows" in result.output


def test_links_stay_complete_when_each_commit_writes_only_its_new_videos(tmp_path: Path) -> None:
    """#23 item 8: a commit links only the videos stored since its spare (O(new)); every
    stored video must still open the plain-h5py way, through path-only commits (no new
    video), a compaction (all links move) and an empty store's first commit."""
    store_path = tmp_path / "f.h5"
    stored: set[str] = set()
    batch: list[VideoFeatures] = []
    for step in range(9):
        if step == 3:  # the same content under new paths only: a commit without new videos
            batch = [_copied(vf, tmp_path / f"copy-{vf.video_id}.mp4") for vf in batch]
        else:
            batch = [_video(tmp_path, f"{step}-{i}.mp4", 2, 100 * step + i) for i in range(2)]
        _commit(store_path, batch)
        stored |= {vf.video_id for vf in batch}
        if step == 5:
            assert CliRunner().invoke(app, ["store", "compact", str(store_path)]).exit_code == 0
        with h5py.File(store_path, "r") as f:
            assert set(f["videos"]) == stored
            for vid in stored:  # opens through the link, from the shard the catalog names
                assert f["videos"][vid]["features"].shape == (2, 1280)


def test_an_extract_run_reads_the_store_index_once(tmp_path: Path, monkeypatch) -> None:
    """#23 item 8: planning, the extractor check and the commit share one read."""
    from pipeline import extract
    from pipeline.encode import write_video
    from pipeline.store import index as index_files

    videos = [write_video(tmp_path / f"{i}.mkv", np.full((4, 32, 32, 3), 40 * i, np.uint8), fps=10)
              for i in range(3)]  # fmt: skip
    options = extract.ExtractOptions(weights="random", input_size=32, resize="squash")
    extract.run_extraction(videos[:2], tmp_path / "f.h5", options)
    assert len(_root(tmp_path / "f.h5")["index_files"]) == 1
    reads = []  # every reader of the index reads each index file through read_tables
    original = index_files.read_tables
    monkeypatch.setattr(index_files, "read_tables", lambda f: reads.append(f) or original(f))
    report = extract.run_extraction(videos, tmp_path / "f.h5", options)
    assert (report.extracted, report.skipped, len(reads)) == (1, 2, 1)
