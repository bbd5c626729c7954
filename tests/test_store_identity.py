"""What a cached feature is trusted for: this file's content, this store's extractor, and a
store that keeps working wherever it is moved or copied (issue 23). Real stores on disk;
races are provoked with an injected hook, never by timing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline import extract
from pipeline.contracts import ExtractorConfig, VideoFeatures, VideoInfo
from pipeline.errors import StoreError
from pipeline.extract import hash_files, plan_extraction
from pipeline.identity import file_sha256, video_id_from_sha256
from pipeline.store import (
    StoreBuilder,
    compact,
    open_store,
    parts_dir_for,
    shards_dir_for,
    write_part,
)
from pipeline.store import read as store_read
from stages.cli import app
from tests.test_store import _commit  # commits ``videos`` under test_store's CONFIG

CONFIG = ExtractorConfig(weights="random:seed=0", weights_sha256="ab" * 32, input_size=64)
OTHER = ExtractorConfig(**{**CONFIG.to_dict(), "input_size": 96})


def _source(folder: Path, name: str, content: bytes) -> VideoFeatures:
    """A source file with ``content`` and features under its real content id."""
    path = folder / name
    path.write_bytes(content)
    sha = file_sha256(path)
    frames = 3 + len(content) % 5
    info = VideoInfo(str(path), 25.0, 160, 120, frames, frames, frames / 25, "h264")
    rng = np.random.default_rng(len(content))
    features = rng.random((frames, 1280), dtype=np.float32)
    return VideoFeatures(video_id_from_sha256(sha), sha, features, np.arange(frames) / 25, info)


def _h5py_reads(store_path: Path, video_id: str) -> int:
    """Frames of ``video_id`` read the plain-h5py way, through the root's external link."""
    with h5py.File(store_path, "r") as f:
        return f["videos"][video_id]["features"].shape[0]


def _link_target(store_path: Path) -> str:
    with h5py.File(store_path, "r") as f:
        return f.get("videos", getlink=True).filename


# ----------------------------------------------------------- item 1: relocatable


def test_a_renamed_store_works_for_readers_writers_and_compact(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    first = [_source(src, f"{i}.mp4", bytes([i]) * (10 + i)) for i in range(2)]
    _commit(tmp_path / "features.h5", first[:1])
    _commit(tmp_path / "features.h5", first[1:])
    moved = tmp_path / "elsewhere" / "moved.h5"
    moved.parent.mkdir()
    (tmp_path / "features.h5").rename(moved)
    shards_dir_for(tmp_path / "features.h5").rename(shards_dir_for(moved))

    with open_store(moved) as store:  # the reader takes the directory from the root's name
        assert [store.read(vf.video_id).features.shape[0] for vf in first] == [
            vf.features.shape[0] for vf in first
        ]
    late = _source(src, "late.mp4", b"late" * 9)
    assert _commit(moved, [late]).added == 1  # the writer too
    compact(moved)
    with open_store(moved) as store:
        assert sorted(store.video_ids) == sorted(vf.video_id for vf in [*first, late])
    # The external link plain h5py follows was re-pointed in place by the writer.
    assert _link_target(moved).startswith("moved.h5.d/")
    assert _h5py_reads(moved, first[0].video_id) == first[0].features.shape[0]


def test_a_copy_beside_its_original_is_independent_of_it(tmp_path: Path) -> None:
    original, copy = tmp_path / "features.h5", tmp_path / "copy.h5"
    videos = [_source(tmp_path, f"{i}.mp4", bytes([i + 1]) * (20 + i)) for i in range(3)]
    for vf in videos:  # one shard per commit: compact has shards to merge and delete
        _commit(original, [vf])
    shutil.copyfile(original, copy)
    shutil.copytree(shards_dir_for(original), shards_dir_for(copy))

    compact(original)  # deletes the shards the copy's index names, in the original only
    shutil.rmtree(shards_dir_for(original))  # and the original goes away altogether
    original.unlink()
    with open_store(copy) as store:
        for vf in videos:
            np.testing.assert_allclose(store.read(vf.video_id).features, vf.features, atol=1e-3)
    with StoreBuilder(copy, CONFIG):  # any writer re-points the copy's link at its own files
        pass
    assert _link_target(copy).startswith("copy.h5.d/")
    assert _h5py_reads(copy, videos[0].video_id) == videos[0].features.shape[0]


# ----------------------------------------------------------- item 2: stat at hash time


def test_a_file_replaced_after_it_was_hashed_is_never_recorded_with_the_old_id(
    tmp_path: Path,
) -> None:
    store_path = tmp_path / "features.h5"
    stored = _source(tmp_path, "a.mp4", b"A" * 100)
    _commit(store_path, [stored])
    twin = tmp_path / "b.mp4"
    twin.write_bytes(b"A" * 100)  # same content as a.mp4: planned as an alias of it

    def hash_then_replace(paths: list[str]) -> list:
        hashes = hash_files(paths)
        twin.write_bytes(b"B" * 150)  # replaced between its hash and the alias record
        return hashes

    with StoreBuilder(store_path, CONFIG) as builder:
        plan_extraction([twin], builder, hash_then_replace)
        builder.commit()
    with open_store(store_path) as store:
        assert store.video_id_for(twin) is None  # its new content is not stored
    with StoreBuilder(store_path, CONFIG) as builder:  # so the next run extracts it
        plan = plan_extraction([twin], builder)
    assert [item.video_id for item in plan.todo] == [
        video_id_from_sha256(file_sha256(twin))
    ] and plan.skipped == 0


@pytest.mark.parametrize("change", ["size", "mtime"])
def test_a_file_overwritten_in_place_is_hashed_and_extracted_again(
    tmp_path: Path, change: str
) -> None:
    store_path = tmp_path / "features.h5"
    vf = _source(tmp_path, "a.mp4", b"A" * 100)
    _commit(store_path, [vf])
    path = Path(vf.info.path)
    old = path.stat()
    path.write_bytes(b"B" * (100 if change == "mtime" else 101))  # same path, new content
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + (10**9 if change == "mtime" else 0)))
    with StoreBuilder(store_path, CONFIG) as builder:
        plan = plan_extraction([path], builder)
    assert plan.skipped == 0
    assert [item.video_id for item in plan.todo] == [video_id_from_sha256(file_sha256(path))]


# ----------------------------------------------------------- item 3: parts' extractor


def test_a_killed_runs_parts_are_refused_by_another_extractor_after_compact(
    tmp_path: Path,
) -> None:
    store_path = tmp_path / "features.h5"
    _commit(store_path, [_source(tmp_path, "a.mp4", b"A" * 30)])
    with StoreBuilder(store_path, CONFIG) as builder:  # killed before its commit
        write_part(builder.parts_dir, CONFIG, _source(tmp_path, "b.mp4", b"B" * 40))
    compact(store_path)
    store_path.unlink()  # the user starts over with another extractor, same path
    shutil.rmtree(shards_dir_for(store_path))
    with pytest.raises(StoreError, match="another extractor"), StoreBuilder(store_path, OTHER):
        pass
    assert not store_path.exists()


def test_a_commit_refuses_and_counts_parts_of_another_extractor(tmp_path: Path) -> None:
    store_path = tmp_path / "features.h5"
    ours, theirs = _source(tmp_path, "a.mp4", b"A" * 30), _source(tmp_path, "b.mp4", b"B" * 40)
    with StoreBuilder(store_path, CONFIG) as builder:
        write_part(builder.parts_dir, CONFIG, ours)
        foreign = write_part(builder.parts_dir, OTHER, theirs)  # e.g. a stale worker's
        summary = builder.commit()
    assert (summary.added, summary.foreign) == (1, 1)
    assert foreign.exists()  # left for the user to decide, never committed
    with open_store(store_path) as store:
        assert store.video_ids == [ours.video_id]


# ----------------------------------------------------------- item 4: readers in a commit


def test_a_reader_opening_the_store_during_a_commit_sees_a_whole_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_path = tmp_path / "features.h5"
    first, late = _source(tmp_path, "a.mp4", b"A" * 30), _source(tmp_path, "b.mp4", b"B" * 40)
    _commit(store_path, [first])
    real_open = store_read.open_store_file
    commits: list[object] = []

    def open_then_commit(path: Path) -> h5py.File:
        f = real_open(path)
        if not commits:  # the reader holds the old root; a commit replaces it and folds
            commits.append("started")  # the old base index away meanwhile
            commits.append(_commit(store_path, [late]))
        return f

    monkeypatch.setattr(store_read, "open_store_file", open_then_commit)
    with open_store(store_path) as store:
        assert commits and sorted(store.video_ids) == sorted([first.video_id, late.video_id])


# ----------------------------------------------------------- item 5: damaged files


def test_a_damaged_index_file_is_one_error_line_in_every_command(tmp_path: Path) -> None:
    store_path = tmp_path / "features.h5"
    _commit(store_path, [_source(tmp_path, "a.mp4", b"A" * 30)])
    (index,) = shards_dir_for(store_path).glob("index-*.h5")
    index.write_bytes(index.read_bytes()[:200])  # truncated: no longer HDF5 it can read
    with pytest.raises(StoreError, match=f"{index.name}: index file is damaged") as caught:
        open_store(store_path)
    assert "\n" not in str(caught.value)
    for args in (["info"], ["verify"], ["compact"]):
        result = CliRunner().invoke(app, ["store", *args, str(store_path)])
        assert result.exit_code == 1, (args, result.output)
        assert "index file is damaged" in result.output
        assert isinstance(result.exception, SystemExit)  # no traceback


@pytest.mark.parametrize("damage", ["missing", "unreadable"])
def test_compact_with_a_missing_or_unreadable_shard_is_one_error_line(
    tmp_path: Path, damage: str
) -> None:
    store_path = tmp_path / "features.h5"
    for i in range(2):
        _commit(store_path, [_source(tmp_path, f"{i}.mp4", bytes([i + 1]) * (30 + i))])
    shard = sorted(shards_dir_for(store_path).glob("shard-*.h5"))[0]
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(b"not hdf5")
    result = CliRunner().invoke(app, ["store", "compact", str(store_path)])
    assert result.exit_code == 1, result.output
    assert shard.name in result.output and "features.h5 is unchanged" in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("refused", ["another extractor", "unreadable"])
def test_extract_reports_the_staged_parts_its_commit_refused(
    tmp_path: Path, make_video, monkeypatch: pytest.MonkeyPatch, refused: str
) -> None:
    clip = make_video("videos/clip.mp4", n_frames=4)
    store_path = tmp_path / "features.h5"
    parts = parts_dir_for(store_path)
    stray = _source(tmp_path, "stray.mp4", b"S" * 40)
    if refused == "unreadable":  # e.g. a part damaged on disk before this run
        parts.mkdir()
        (parts / f"{stray.video_id}.h5").write_bytes(b"not hdf5")
    else:  # a stale worker of another run stages its part while this run extracts
        real_run_task = extract.run_task

        def run_task_beside_a_stale_worker(*args, **kwargs):
            write_part(parts, OTHER, stray)
            return real_run_task(*args, **kwargs)

        monkeypatch.setattr(extract, "run_task", run_task_beside_a_stale_worker)
    args = ["extract", str(clip.parent), "-o", str(store_path), "--weights", "random"]
    result = CliRunner().invoke(app, [*args, "--input-size", "32"])
    assert result.exit_code == 0, result.output
    assert f"1 staged part(s) refused (another extractor's or unreadable; left in {parts})" in (
        result.output
    )
    report = json.loads((tmp_path / "features.h5.report.json").read_text())
    assert (report["extracted"], report["foreign_parts"]) == (1, 1)
    assert (parts / f"{stray.video_id}.h5").exists()
    with open_store(store_path) as store:
        assert stray.video_id not in store and len(store) == 1
