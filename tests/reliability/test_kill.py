"""kill -9 and Ctrl-C during ``vrnn extract``: a rerun always ends with the clean run's store.

Each faulty run extends a copy of ``half_store`` (8 videos) with ``all.csv`` (16 videos), so the
previous store is at stake too. After the fault the store must be either the previous one or
the finished one (never anything in between, never unreadable); after a plain rerun it must
equal ``reference``: same backbone sha256, each video exactly once, same path index, same
features and timestamps.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.contracts import ExtractorConfig
from pipeline.featurize import WorkItem, extract_items
from pipeline.store import backbone_sidecar, open_store, parts_dir_for, shards_dir_for

from .conftest import CleanStore, Clips, copy_store
from .helpers import (
    assert_same_store,
    extract_args,
    finish,
    leftovers,
    messages,
    run_vrnn,
    signal_when,
    snapshot,
    start_vrnn,
)

EXTRA = ("--batch-size", "8")  # small batches: parts appear one by one, kills land mid-run


def _has_part(store: Path) -> bool:
    parts = parts_dir_for(store)
    return parts.is_dir() and any(parts.glob("v*.h5"))


def _commit_in_progress(store: Path) -> bool:
    return any(store.parent.glob(f".{store.name}.*.tmp"))


def _assert_previous_or_finished(store: Path, before: CleanStore, after: CleanStore) -> None:
    """Right after a fault: the store is whole and is the previous or the finished one."""
    ids = snapshot(store).ids  # reads every video through the fletcher32-checked reader
    assert ids in (before.contents.ids, after.contents.ids)


def _resume_equals_reference(store: Path, manifest: Path, reference: CleanStore) -> str:
    done = run_vrnn(*extract_args(manifest, store, *EXTRA), cwd=store.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_store(snapshot(store), reference.contents)
    assert not parts_dir_for(store).exists()  # staging cleaned up once committed
    return done.stdout


def test_kill_9_after_the_first_part_file_appears(
    tmp_path: Path, clips: Clips, half_store: CleanStore, reference: CleanStore
) -> None:
    store = copy_store(half_store, tmp_path)
    proc = start_vrnn(*extract_args(clips.all_csv, store, *EXTRA), cwd=tmp_path)
    assert signal_when(proc, lambda: _has_part(store)), "finished before any part appeared"
    assert finish(proc)[0] == -signal.SIGKILL
    assert snapshot(store).ids == half_store.contents.ids  # killed before any commit
    assert any(parts_dir_for(store).glob("v*.h5"))  # finished videos wait, staged
    _resume_equals_reference(store, clips.all_csv, reference)
    assert leftovers(tmp_path) == []


def test_kill_9_while_the_store_is_being_committed(
    tmp_path: Path, clips: Clips, half_store: CleanStore, reference: CleanStore
) -> None:
    # The commit takes a few tens of milliseconds: poll for its temporary file, then kill.
    for attempt in range(3):
        directory = tmp_path / f"attempt{attempt}"
        store = copy_store(half_store, directory)
        proc = start_vrnn(*extract_args(clips.all_csv, store, *EXTRA), cwd=directory)
        caught = signal_when(proc, lambda s=store: _commit_in_progress(s), poll_sec=0.0002)
        if finish(proc)[0] == -signal.SIGKILL and caught:
            break
    else:
        pytest.skip("the commit was too quick to catch 3 times (the inject.py points cover it)")
    _assert_previous_or_finished(store, half_store, reference)
    _resume_equals_reference(store, clips.all_csv, reference)
    assert leftovers(directory) == []  # the killed commit's temp store is removed


def test_kill_9_at_a_random_early_time(tmp_path: Path, clips: Clips, reference: CleanStore) -> None:
    delay = random.uniform(0.2, 5.0)  # import, backbone build, weights save, decoding, commit
    store = tmp_path / "features.h5"
    proc = start_vrnn(*extract_args(clips.all_csv, store, *EXTRA), cwd=tmp_path)
    time.sleep(delay)
    proc.kill()
    assert finish(proc)[0] in (-signal.SIGKILL, 0), f"delay {delay:.2f} s"
    if store.exists():
        assert set(snapshot(store).ids) <= set(reference.contents.ids), f"delay {delay:.2f} s"
    _resume_equals_reference(store, clips.all_csv, reference)
    # Only a kill while the backbone weights or the report were being saved leaves an (inert)
    # temp file; staging and commit temps are cleaned up by the rerun.
    inert = (".weights.h5", f".{store.name}.report.json.")
    left = leftovers(tmp_path)
    assert all(name.endswith(inert[0]) or name.startswith(inert[1]) for name in left), delay


def test_kill_9_while_saving_the_backbone_weights(
    tmp_path: Path, clips: Clips, reference: CleanStore
) -> None:
    store = tmp_path / "features.h5"
    args = extract_args(clips.all_csv, store, *EXTRA)
    killed = run_vrnn(*args, cwd=tmp_path, inject="sidecar-before-rename")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not store.exists()
    assert not backbone_sidecar(store).exists()  # never half-written under its real name
    _resume_equals_reference(store, clips.all_csv, reference)
    # The killed save's temp file (~9 MB) is removed by the rerun, which holds the store's lock.
    assert leftovers(tmp_path) == []


# Crashes in a row, each at an exact moment of the write path, then one plain rerun.
GAUNTLET = [
    # (point, videos in the store right after the kill, staged parts right after the kill)
    ("part-before-rename", 8, 0),  # the first finished video dies with the process
    ("commit-half-written", 8, 8),  # all 8 new videos staged, 2 linked as unreferenced shards
    ("index-file-before-rename", 8, 8),  # the commit's delta index under its temp name
    ("links-half-written", 8, 8),  # the spare links file taken and half updated
    ("links-before-rename", 8, 8),  # the updated links file under its temp name
    ("store-before-rename", 8, 8),  # new store complete under its temp name
    ("store-after-rename", 16, 8),  # new store in place, staged parts not yet deleted
]


def test_kill_9_at_each_exact_point_of_the_write_path(
    tmp_path: Path, clips: Clips, half_store: CleanStore, reference: CleanStore
) -> None:
    store = copy_store(half_store, tmp_path)
    args = extract_args(clips.all_csv, store, *EXTRA)
    for point, videos, staged in GAUNTLET:
        killed = run_vrnn(*args, cwd=tmp_path, inject=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])
        assert len(snapshot(store).ids) == videos, point
        assert len(list(parts_dir_for(store).glob("v*.h5"))) == staged, point
    out = _resume_equals_reference(store, clips.all_csv, reference)
    assert out.startswith("extracted 0, skipped 16 (already stored), failed 0 of 16 videos")
    assert leftovers(tmp_path) == []
    assert _shard_files(store) == _referenced_shards(store)  # killed commits' shards removed
    assert _other_files(store) == _referenced_other_files(store)  # and their index/links files


def _shard_files(store: Path) -> set[str]:
    return {p.name for p in shards_dir_for(store).glob("shard-*")}


def _other_files(store: Path) -> set[str]:
    return {p.name for p in shards_dir_for(store).iterdir()} - _shard_files(store)


def _referenced_other_files(store: Path) -> set[str]:
    """The root's index files, its links file and one spare links file (the previous root's)."""
    with h5py.File(store, "r") as f:
        named = {name.decode() for name in f["index_files"][()]} | {f.attrs["links_file"]}
    links = {p.name for p in shards_dir_for(store).glob("links-*.h5")}
    assert len(links) == 2 and named & links, links  # the current one and the spare
    return named | links


def _referenced_shards(store: Path) -> set[str]:
    with open_store(store) as fs:
        return {entry.shard for entry in fs.catalog.values()}


# `vrnn store compact` killed at each of its steps: the store always reads whole.
COMPACT_GAUNTLET = [
    "compact-shard-before-rename",  # the merged shard complete under its temp name
    "index-file-before-rename",  # the new base index complete under its temp name
    "store-before-rename",  # the new index complete under its temp name
    "store-after-rename",  # the new index in place, the superseded shards not yet deleted
]


def test_kill_9_at_each_step_of_a_compaction(tmp_path: Path, reference: CleanStore) -> None:
    store = copy_store(reference, tmp_path)
    shards_before = _shard_files(store)
    for point in COMPACT_GAUNTLET:
        killed = run_vrnn("store", "compact", store, cwd=tmp_path, inject=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])
        assert_same_store(snapshot(store), reference.contents)
    assert len(_referenced_shards(store)) == 1  # the last kill came after the index replace
    assert shards_before <= _shard_files(store)  # superseded shards: unreferenced, still there
    done = run_vrnn("store", "compact", store, cwd=tmp_path)  # the next writer cleans up
    assert done.returncode == 0, done.stderr[-3000:]
    assert _shard_files(store) == _referenced_shards(store)
    assert _other_files(store) == _referenced_other_files(store)
    assert_same_store(snapshot(store), reference.contents)
    assert leftovers(tmp_path) == []


def test_ctrl_c_commits_finished_videos_and_exits_130(
    tmp_path: Path, clips: Clips, half_store: CleanStore, reference: CleanStore
) -> None:
    store = copy_store(half_store, tmp_path)
    args = extract_args(clips.all_csv, store, *EXTRA)
    # Ctrl-C right after the first new video is written (an exact point: never too late on
    # a busy machine); a decoder thread that hangs fails the run's timeout.
    interrupted = run_vrnn(*args, cwd=tmp_path, inject="interrupt-after-first-part")
    status, stderr = interrupted.returncode, interrupted.stderr
    assert status == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert [line for line in messages(stderr) if line.startswith("interrupted:")] == [
        f"interrupted: finished videos were committed to {store}; rerun the same command to resume"
    ]
    committed = snapshot(store).ids
    assert set(half_store.contents.ids) < set(committed) < set(reference.contents.ids)
    assert len(committed) == len(half_store.contents.ids) + 1  # exactly the finished one
    assert not parts_dir_for(store).exists()  # everything finished went into the store

    # Ctrl-C again, this time inside the commit: the store stays as it was, parts wait.
    again = run_vrnn(*args, cwd=tmp_path, inject="interrupt-in-commit")
    assert again.returncode == 130, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert snapshot(store).ids == committed
    staged = len(list(parts_dir_for(store).glob("v*.h5")))
    assert staged == len(reference.contents.ids) - len(committed)

    out = _resume_equals_reference(store, clips.all_csv, reference)
    # The staged videos are committed (not decoded again) and count as extracted.
    assert out.startswith(f"extracted {staged}, skipped {len(committed)} (already stored),")
    assert leftovers(tmp_path) == []


def test_interrupt_during_inference_stops_the_decoder_thread(tmp_path: Path, clips: Clips) -> None:
    """In-process: Ctrl-C arriving inside a backbone call ends the run with no thread left."""
    config = ExtractorConfig(weights="random:seed=0", weights_sha256="0" * 64, input_size=32)
    items = [WorkItem(str(path), f"v{i:020d}", "0" * 64) for i, path in enumerate(clips.files)]
    calls = []

    def infer(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 5:
            raise KeyboardInterrupt
        return np.ones((len(batch), 1280), np.float32)

    parts = tmp_path / "parts"
    parts.mkdir()
    before = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt):
        extract_items(items, config=config, infer=infer, parts_dir=parts, batch_size=8)
    assert [t.name for t in set(threading.enumerate()) - before] == []
    written = sorted(p.stem for p in parts.glob("v*.h5"))
    assert written == [item.video_id for item in items[: len(written)]]
    assert 0 < len(written) < len(items)  # 4 batches of 8: the first two 16-frame clips
    assert not [p for p in os.listdir(parts) if p.endswith(".tmp")]
