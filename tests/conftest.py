"""Shared fixtures: the default synthetic dataset (built once per session) and a video writer.

* ``sample_dataset`` (session): :func:`pipeline.sample_data.generate` with its defaults into a
  temporary folder; a :class:`SampleDataset` with ``root``, ``files`` and ``labels``. Read-only:
  copy files elsewhere before changing them.
* ``sample_manifest`` (session): ``manifest.csv`` indexing ``sample_dataset`` (default split),
  written beside its root.
* ``trained_dir`` (session): one small model trained on 18 sample clips (random 32 px
  backbone, 3 classes × 6 clips, the default head), with its store; a :class:`TrainedDir`.
  Read-only: copy the model directory before changing it.
* ``make_video`` (per test): a factory writing one small real video file into ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.contracts import VideoRecord
from pipeline.encode import write_video
from pipeline.index_sources import index_folder
from pipeline.manifest import write_manifest
from pipeline.sample_data import generate
from pipeline.train_config import TrainConfig


@dataclass(frozen=True)
class SampleDataset:
    """The default sample dataset on disk.

    Attributes:
        root: dataset folder (``root/<label>/v_<label>_g<NN>_c<MM>.<ext>``).
        files: every video written, class by class in catalogue order.
        labels: class labels in catalogue order.
    """

    root: Path
    files: tuple[Path, ...]
    labels: tuple[str, ...]


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory: pytest.TempPathFactory) -> SampleDataset:
    """The default sample dataset (6 classes × 12 clips, seed 0), generated once per session."""
    root = tmp_path_factory.mktemp("sample_dataset") / "videos"
    files = generate(root)
    labels = tuple(dict.fromkeys(path.parent.name for path in files))
    return SampleDataset(root=root, files=tuple(files), labels=labels)


@pytest.fixture(scope="session")
def sample_manifest(sample_dataset: SampleDataset) -> Path:
    """``manifest.csv`` for ``sample_dataset`` with the default group-aware split."""
    path = sample_dataset.root.parent / "manifest.csv"
    return write_manifest(index_folder(sample_dataset.root).records, path)


TRAINED_CLASSES = ("brightening", "darkening", "disc")
TRAINED_CLIPS_PER_CLASS = 6  # the first 4 train, the next 2 val
TRAINED_CONFIG = TrainConfig(seq_len=8, units=8, dense_units=8, epochs=2, batch_size=8, patience=2)


@dataclass(frozen=True)
class TrainedDir:
    """The shared model: its directory, its store, stored and never-extracted videos."""

    model_dir: Path
    store: Path
    stored: list[Path]
    unseen: list[Path]


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory: pytest.TempPathFactory, sample_dataset) -> TrainedDir:
    """Extract 18 sample clips, train :data:`TRAINED_CONFIG`'s head on them, once a session."""
    from pipeline.extract import ExtractOptions, run_extraction
    from pipeline.training import train

    root = tmp_path_factory.mktemp("trained_model")
    by_class = {
        label: [p for p in sample_dataset.files if p.parent.name == label]
        for label in TRAINED_CLASSES
    }
    stored = [p for label in TRAINED_CLASSES for p in by_class[label][:TRAINED_CLIPS_PER_CLASS]]
    unseen = [p for p in sample_dataset.files if p.parent.name not in TRAINED_CLASSES][::12]
    result = TrainedDir(root / "model", root / "features.h5", stored, unseen)
    records = [
        VideoRecord(p, p.parent.name, p.stem, "train" if i % TRAINED_CLIPS_PER_CLASS < 4 else "val")
        for i, p in enumerate(stored)
    ]
    run_extraction(stored, result.store, ExtractOptions(weights="random", input_size=32))
    train(records, result.store, result.model_dir, TRAINED_CONFIG)
    return result


def moving_square(n_frames: int, width: int, height: int) -> np.ndarray:
    """A bright square sliding right over a dark gradient: ``[T, H, W, 3]`` uint8 RGB.

    The square moves at least one pixel per frame (wrapping around), so frame-order mistakes
    show.
    """
    side = max(2, min(width, height) // 4)
    xs = np.arange(width)
    left = (np.arange(n_frames) * max(1, (width - side) // max(n_frames - 1, 1))) % max(
        width - side, 1
    )
    rows = np.zeros(height, dtype=bool)
    rows[(height - side) // 2 : (height - side) // 2 + side] = True
    cols = (xs >= left[:, None]) & (xs < left[:, None] + side)  # [T, W]
    inside = rows[None, :, None] & cols[:, None, :]  # [T, H, W]
    background = np.broadcast_to((40 + 60 * xs / max(width - 1, 1))[:, None], (width, 3))
    frames = np.where(inside[..., None], np.array([230, 200, 60]), background[None, None])
    return frames.astype(np.uint8)


VideoFactory = Callable[..., Path]


@pytest.fixture
def make_video(tmp_path: Path) -> VideoFactory:
    """Factory writing a small real video into ``tmp_path``; returns the file's path.

    ``make_video(name="clip.mp4", *, n_frames=8, width=64, height=48, fps=10, codec=None,
    pix_fmt=None, frames=None)``. The suffix of ``name`` picks the container; ``codec``
    defaults to the sample dataset's codec for it (.mp4 H.264, .avi MPEG-4, .webm VP9,
    .mkv MJPEG); ``frames`` (``[T, H, W, 3]`` uint8, even H and W) overrides the default
    :func:`moving_square` content. ``name`` may contain folders (created as needed).
    """

    def make(
        name: str = "clip.mp4",
        *,
        n_frames: int = 8,
        width: int = 64,
        height: int = 48,
        fps: int = 10,
        codec: str | None = None,
        pix_fmt: str | None = None,
        frames: np.ndarray | None = None,
    ) -> Path:
        if frames is None:
            frames = moving_square(n_frames, width, height)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_video(path, frames, fps=fps, codec=codec, pix_fmt=pix_fmt)

    return make
