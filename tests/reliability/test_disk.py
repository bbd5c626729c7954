"""Disk faults: a full disk, a read-only output directory, and a store corrupted on disk.

Full and read-only disks are real: small tmpfs mounts (root only; the tests skip where
``mount`` is refused). Each must end with one ``error:`` line (no traceback), exit status 1
and the previous store untouched; after the disk is fixed a plain rerun finishes the job.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline import extract
from pipeline.errors import StoreError
from pipeline.extract import ExtractOptions, run_extraction
from pipeline.store import open_store, parts_dir_for, shards_dir_for

from .conftest import CleanStore, Clips, copy_store
from .helpers import (
    INPUT_SIZE,
    assert_one_error_line,
    assert_same_store,
    extract_args,
    flip_feature_chunk,
    leftovers,
    run_vrnn,
    snapshot,
)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` for the block (skips the test if not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


@contextlib.contextmanager
def read_only_dir(directory: Path, fill: Callable[[Path], object] = Path) -> Iterator[str]:
    """``directory``, filled by ``fill`` and then read-only; yields the reason writes get."""
    if os.geteuid() != 0:  # permission bits suffice for anyone but root
        directory.mkdir(parents=True)
        fill(directory)
        directory.chmod(0o555)
        try:
            yield os.strerror(errno.EACCES)
        finally:
            directory.chmod(0o755)
        return
    with tmpfs(directory, "16m"):  # root ignores permission bits: a read-only mount
        fill(directory)
        remount(directory, "ro")
        yield os.strerror(errno.EROFS)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_until(directory: Path, free: int) -> Path:
    """Write a filler file leaving about ``free`` bytes available."""
    filler = directory / "filler.bin"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free_bytes(directory) - free))
    return filler


@pytest.mark.parametrize("where", ["while staging parts", "at the commit"])
def test_disk_full_keeps_the_previous_store_and_a_rerun_finishes(
    tmp_path: Path,
    clips: Clips,
    half_store: CleanStore,
    reference: CleanStore,
    where: str,
) -> None:
    with tmpfs(tmp_path / "disk", "16m") as disk:
        store = copy_store(half_store, disk)
        new_bytes = _store_bytes(reference.path) - _store_bytes(half_store.path)
        # Room for the 8 new parts but not for the new index: the commit is what fails.
        room = 16 * 1024 if where == "while staging parts" else new_bytes * 13 // 10 + 65536
        filler = fill_until(disk, room)
        args = extract_args(clips.all_csv, store)
        failed = run_vrnn(*args, cwd=tmp_path)
        assert failed.returncode == 1, failed.stderr[-3000:]
        if where == "while staging parts":
            assert_one_error_line(failed.stderr, "No space left on device", ".parts/v")
            assert not parts_dir_for(store).exists()
        else:
            assert_one_error_line(
                failed.stderr, f"not enough free space in {disk}", "is unchanged", "rerun"
            )
            assert len(list(parts_dir_for(store).glob("v*.h5"))) == 8  # kept for the rerun
        assert_same_store(snapshot(store), half_store.contents)
        assert leftovers(disk) == []

        filler.unlink()
        done = run_vrnn(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert_same_store(snapshot(store), reference.contents)


def test_read_only_output_directory_fails_in_one_line(
    tmp_path: Path, clips: Clips, half_store: CleanStore
) -> None:
    with read_only_dir(tmp_path / "empty") as reason:
        store = tmp_path / "empty" / "features.h5"
        failed = run_vrnn(*extract_args(clips.all_csv, store), cwd=tmp_path)
        assert failed.returncode == 1, failed.stderr[-3000:]
        # The output guard comes first: nothing (the backbone weights included) before it.
        assert_one_error_line(failed.stderr, "cannot write", reason)

    with read_only_dir(tmp_path / "previous", lambda d: copy_store(half_store, d)) as reason:
        store = tmp_path / "previous" / "features.h5"
        failed = run_vrnn(*extract_args(clips.all_csv, store), cwd=tmp_path)
        assert failed.returncode == 1, failed.stderr[-3000:]
        assert_one_error_line(failed.stderr, "cannot write", reason)  # checked before any work
        assert_same_store(snapshot(store), half_store.contents)


def _store_bytes(store: Path) -> int:
    """Bytes of a store: its index plus its shards."""
    shards = shards_dir_for(store).glob("shard-*.h5")
    return store.stat().st_size + sum(p.stat().st_size for p in shards)


def test_disk_full_in_process_without_mount(
    tmp_path: Path,
    clips: Clips,
    half_store: CleanStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where tmpfs is refused: ENOSPC injected into fsync, same promises (no TensorFlow)."""
    store = copy_store(half_store, tmp_path)
    monkeypatch.setattr(
        extract, "backbone_for", lambda *a, **k: lambda x: np.ones((len(x), 1280), "f4")
    )
    real_fsync = os.fsync
    full = [""]  # files whose name starts with this cannot be synced: the disk is "full"

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(full[0]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    options = ExtractOptions(weights="random", input_size=INPUT_SIZE, resize="squash")
    full[0] = ".v"  # part files
    with pytest.raises(StoreError, match=r"cannot write .*\.parts/v.*: No space left on device"):
        run_extraction(list(clips.files), store, options)
    assert_same_store(snapshot(store), half_store.contents)
    assert leftovers(tmp_path) == []

    full[0] = f".{store.name}."  # the new index being written
    with pytest.raises(StoreError, match=r"No space left on device.*previous store is unchanged"):
        run_extraction(list(clips.files), store, options)
    assert_same_store(snapshot(store), half_store.contents)
    assert len(list(parts_dir_for(store).glob("v*.h5"))) == 8
    assert leftovers(tmp_path) == []


def test_corrupted_feature_bytes_are_reported_by_train_naming_the_video(
    tmp_path: Path, clips: Clips, reference: CleanStore
) -> None:
    store = copy_store(reference, tmp_path)  # with its backbone weights: train needs them
    victim = reference.contents.ids[3]
    with h5py.File(store, "r") as f:
        source = f["videos"][victim].attrs["source_path"]
    flip_feature_chunk(store, victim)
    trained = run_vrnn(
        "train", clips.all_csv, store, "-o", tmp_path / "model",
        "--epochs", "1", "--units", "4", "--seq-len", "4", "--batch-size", "4",
        cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 1, trained.stderr[-3000:]
    assert_one_error_line(trained.stderr, victim, source, "corrupt on disk")
    assert not (tmp_path / "model").exists()


def test_a_missing_shard_makes_train_fail_in_one_line_naming_it_and_its_videos(
    tmp_path: Path, clips: Clips, reference: CleanStore
) -> None:
    store = copy_store(reference, tmp_path)
    victim = reference.contents.ids[5]
    with open_store(store) as fs:
        shard = fs.catalog[victim].shard
    (shards_dir_for(store) / shard).unlink()
    trained = run_vrnn(
        "train", clips.all_csv, store, "-o", tmp_path / "model",
        "--epochs", "1", "--units", "4", "--seq-len", "4", "--batch-size", "4",
        cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 1, trained.stderr[-3000:]
    assert_one_error_line(trained.stderr, shard, victim, "1 video(s) affected")
    assert not (tmp_path / "model").exists()
