"""Fixtures of the reliability suite: a set of good clips, and clean stores to compare with.

* ``clips`` (session): 16 short real videos (H.264/.mp4, MPEG-4/.avi, MJPEG/.mkv) and three
  manifests: ``all.csv`` (16), ``first.csv`` (the first 8).
* ``reference`` (session): a clean, uninterrupted extraction of ``all.csv``.
* ``half_store`` (session): a clean extraction of ``first.csv`` (the "previous store" that a
  faulty second run must leave intact); copy it with :func:`copy_store` before using it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.encode import write_video
from pipeline.store import backbone_sidecar, shards_dir_for

from .helpers import Snapshot, extract_args, run_vrnn, snapshot, write_csv_manifest

N_CLIPS = 16
CLIP_FRAMES = 16
FORMATS = (".mp4", ".avi", ".mkv")


@dataclass(frozen=True)
class Clips:
    """The good clips and their manifests."""

    files: tuple[Path, ...]
    all_csv: Path
    first_csv: Path


@dataclass(frozen=True)
class CleanStore:
    """A store made by one uninterrupted run, and its contents."""

    path: Path
    contents: Snapshot


def _frames(seed: int, n: int = CLIP_FRAMES, height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (n, height // 8, width // 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    root = tmp_path_factory.mktemp("clips")
    files = tuple(
        write_video(root / f"clip{i:02d}{FORMATS[i % 3]}", _frames(100 + i), fps=10)
        for i in range(N_CLIPS)
    )
    return Clips(
        files=files,
        all_csv=write_csv_manifest(root / "all.csv", files),
        first_csv=write_csv_manifest(root / "first.csv", files[: N_CLIPS // 2]),
    )


def _clean_run(manifest: Path, directory: Path) -> CleanStore:
    store = directory / "features.h5"
    done = run_vrnn(*extract_args(manifest, store, "--batch-size", "8"), cwd=directory)
    assert done.returncode == 0, done.stderr[-3000:]
    return CleanStore(store, snapshot(store))


@pytest.fixture(scope="session")
def reference(clips: Clips, tmp_path_factory: pytest.TempPathFactory) -> CleanStore:
    return _clean_run(clips.all_csv, tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="session")
def half_store(clips: Clips, tmp_path_factory: pytest.TempPathFactory) -> CleanStore:
    return _clean_run(clips.first_csv, tmp_path_factory.mktemp("half"))


def copy_store(clean: CleanStore, directory: Path) -> Path:
    """Copy a clean store and its backbone weights into ``directory``; the new store path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / clean.path.name
    shutil.copy2(clean.path, target)
    shutil.copytree(shards_dir_for(clean.path), shards_dir_for(target))
    shutil.copy2(backbone_sidecar(clean.path), backbone_sidecar(target))
    return target
