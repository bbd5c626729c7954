"""The frame cache's promise: a row it serves is the stored feature of that video under that
extractor; no commit invalidates a row; it lives only where the user owns it; it is never why
a run fails; concurrent builders both succeed.

Stores are real HDF5 stores committed through :mod:`pipeline.store` (``build_store``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_train_evaluate import EXTRACTOR, build_store, make_videos
from typer.testing import CliRunner

from pipeline import frame_cache, join
from pipeline.contracts import ExtractorConfig
from pipeline.manifest import write_manifest
from pipeline.store import FeatureStore, open_store, shards_dir_for
from stages.cli import app

ROW_BYTES = EXTRACTOR.feature_dim * 2  # float16


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch) -> Path:
    """Every cache of a test goes under its own directory (``VRNN_CACHE_DIR``)."""
    monkeypatch.setenv("VRNN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The ids of the videos read from any store, in order (the cache's store reads)."""
    seen: list[str] = []
    real = FeatureStore.read_features

    def counting(self, video_id):
        seen.append(video_id)
        return real(self, video_id)

    monkeypatch.setattr(FeatureStore, "read_features", counting)
    return seen


def _segment_bytes(cache: frame_cache.FrameCache) -> int:
    return sum(p.stat().st_size for p in cache.directory.iterdir() if p.suffix == ".bin")


def _rows(store_path: Path) -> int:
    with open_store(store_path) as store:
        return sum(e.frames for e in store.catalog.values())


def test_a_commit_invalidates_no_row_and_a_run_reads_only_the_new_videos(tmp_path, reads):
    videos = make_videos(tmp_path / "videos", {"train": 4}, seed=1)
    path = build_store(tmp_path / "features.h5", videos)
    with open_store(path) as store:
        first = frame_cache.open_frame_cache(store, store.video_ids)
        old_ids = store.video_ids
    assert sorted(reads) == sorted(old_ids)
    reads.clear()
    added = make_videos(tmp_path / "more", {"train": 1}, seed=2)[:1]
    build_store(path, added)  # one more commit: the root file changes
    with open_store(path) as store:
        cache = frame_cache.open_frame_cache(store, store.video_ids)
        (new_id,) = set(store.video_ids) - set(old_ids)
        assert reads == [new_id]  # one video read from the store, not the whole store
        assert first.segments[0] in cache.segments  # the old rows stay where they were
        assert _segment_bytes(cache) == _rows(path) * ROW_BYTES  # one copy of each row
        for video_id in store.video_ids:
            np.testing.assert_array_equal(cache.frames(video_id), store.read_features(video_id))


def test_a_renamed_copy_of_a_store_shares_the_rows(tmp_path, reads):
    path = build_store(tmp_path / "a.h5", make_videos(tmp_path / "v", {"train": 3}))
    with open_store(path) as store:
        frame_cache.open_frame_cache(store, store.video_ids)
    reads.clear()
    copy = tmp_path / "elsewhere" / "a.h5"  # moved (a new name needs #23's relative links)
    copy.parent.mkdir()
    shutil.copy2(path, copy)
    shutil.copytree(shards_dir_for(path), shards_dir_for(copy))
    with open_store(copy) as store:
        cache = frame_cache.open_frame_cache(store, store.video_ids)
        assert reads == []  # same content, same extractor: the same rows
        assert {str(path.resolve()), str(copy.resolve())} <= set(
            frame_cache.list_caches()[0].stores
        )
        assert _segment_bytes(cache) == _rows(copy) * ROW_BYTES


def test_rows_of_videos_no_store_holds_are_removed_and_dead_segments_rewritten(tmp_path):
    """A store rebuilt at the same path (named with glob characters) with fewer videos."""
    path = tmp_path / "feat[1].h5"
    videos = make_videos(tmp_path / "v", {"train": 5}, seed=3)
    build_store(path, videos)
    with open_store(path) as store:
        frame_cache.open_frame_cache(store, store.video_ids)
    path.unlink()
    shutil.rmtree(shards_dir_for(path))
    build_store(path, videos[:2])  # 2 of 10 videos left
    with open_store(path) as store:
        cache = frame_cache.open_frame_cache(store, store.video_ids)
        assert cache.video_ids == set(store.video_ids)
        for video_id in store.video_ids:  # moved rows are the same rows
            np.testing.assert_array_equal(cache.frames(video_id), store.read_features(video_id))
    assert _segment_bytes(cache) == _rows(path) * ROW_BYTES  # the dead rows are gone
    names = {p.name for p in cache.directory.iterdir()}
    assert names == {"index.json", "lock", *(p.name for p in cache.segments)}


def test_a_cache_place_owned_by_another_user_or_writable_by_others_is_refused(tmp_path):
    path = build_store(tmp_path / "features.h5", make_videos(tmp_path / "v", {"train": 2}))
    with open_store(path) as store:
        cache = frame_cache.open_frame_cache(store, store.video_ids)
        victim = store.video_ids[0]
        # another user plants rows: same size, other values
        segment = cache.segments[0]
        segment.write_bytes(b"\x00\x3c" * (segment.stat().st_size // 2))  # all 1.0
        os.chown(cache.directory, 4321, 4321)
        with pytest.raises(frame_cache.CacheUnavailable, match="belongs to another user"):
            frame_cache.open_frame_cache(store, [victim])
        os.chown(cache.directory, os.geteuid(), os.getegid())
        os.chmod(cache.directory, 0o777)
        with pytest.raises(frame_cache.CacheUnavailable, match="writable by other users"):
            frame_cache.open_frame_cache(store, [victim])
        # the run goes on reading the store itself
        joined = join.join_manifest(
            [r for r, _ in make_videos(tmp_path / "v", {"train": 2})], store
        )
        plan, reader = join.feature_reader(store, joined.videos, memory_budget=0)
        assert plan.streaming and reader is None
        labels = join.class_labels(joined.videos)
        data = join.read_split(store, joined.videos, "train", labels, reader)
        for video, features in zip(data.videos, data.features, strict=True):
            np.testing.assert_array_equal(features, store.read_features(video.video_id))


def test_train_goes_on_with_one_warning_when_the_cache_cannot_be_written(tmp_path, monkeypatch):
    videos = make_videos(tmp_path / "videos", {"train": 3, "val": 1}, seed=5)
    store = build_store(tmp_path / "features.h5", videos)
    manifest = write_manifest([r for r, _ in videos], tmp_path / "manifest.csv")
    real_open = open

    def full_disk(file, mode="r", *args, **kwargs):
        if "wb" in mode and ".seg-" in str(file):
            raise OSError(28, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk)
    args = ["train", str(manifest), str(store), "-o", str(tmp_path / "m"), "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--memory-budget", "0"])
    assert result.exit_code == 0, result.output
    warnings = [x for x in result.output.splitlines() if "frame cache" in x]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], result.output
    assert (tmp_path / "m" / "head.keras").is_file()


def test_two_builders_at_once_both_succeed_and_read_each_video_once(tmp_path, monkeypatch):
    path = build_store(tmp_path / "features.h5", make_videos(tmp_path / "v", {"train": 3}))
    real = FeatureStore.read_features
    seen: list[str] = []

    def slow(self, video_id):  # the first builder is mid-segment when the second arrives
        seen.append(video_id)
        time.sleep(0.05)
        return real(self, video_id)

    monkeypatch.setattr(FeatureStore, "read_features", slow)
    results: list[object] = []

    def build() -> None:
        try:
            with open_store(path) as store:
                cache = frame_cache.open_frame_cache(store, store.video_ids)
                results.append({v: np.array(cache.frames(v)) for v in store.video_ids})
        except Exception as e:  # reported below
            results.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, dict) for r in results), results
    assert len(seen) == len(set(seen)) == len(results[0])  # the second found the first's rows
    for video_id, rows in results[0].items():
        np.testing.assert_array_equal(rows, results[1][video_id])


def test_cache_info_and_prune_name_the_stores_and_remove_caches_of_gone_stores(tmp_path):
    kept = build_store(tmp_path / "kept.h5", make_videos(tmp_path / "a", {"train": 1}))
    other = ExtractorConfig.from_dict({**EXTRACTOR.to_dict(), "input_size": 64})
    gone = build_store(tmp_path / "gone.h5", make_videos(tmp_path / "b", {"train": 1}), other)
    for path in (kept, gone):
        with open_store(path) as store:
            frame_cache.open_frame_cache(store, store.video_ids)
    (frame_cache.frames_root() / "frames-old-version").mkdir()  # e.g. a version-2 cache
    gone.unlink()
    runner = CliRunner()
    info = runner.invoke(app, ["store", "cache", "info"])
    assert info.exit_code == 0, info.output
    assert "kept.h5" in info.output and "gone.h5" in info.output
    pruned = runner.invoke(app, ["store", "cache", "prune"])
    assert pruned.exit_code == 0, pruned.output
    assert "2 frame cache(s) removed" in pruned.output
    (left,) = frame_cache.list_caches()
    assert left.stores == [str(kept.resolve())] and left.live == [True]
