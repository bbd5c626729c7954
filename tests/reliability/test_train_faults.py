"""A killed ``vrnn train`` leaves the previous model directory whole and loadable."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path

import pytest

from .conftest import CleanStore, Clips
from .helpers import finish, run_vrnn, start_vrnn

SMALL = ("--units", "4", "--seq-len", "4", "--batch-size", "4", "--dense-units", "0")


def _train_args(clips: Clips, store: Path, model: Path, *extra: str) -> list[str | Path]:
    return ["train", clips.all_csv, store, "-o", model, *SMALL, *extra]


def _digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained_model(
    clips: Clips, reference: CleanStore, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A model directory from one completed run (1 epoch)."""
    model = tmp_path_factory.mktemp("train") / "model"
    done = run_vrnn(*_train_args(clips, reference.path, model, "--epochs", "1"), cwd=model.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return model


@pytest.fixture
def previous_model(trained_model: Path, tmp_path: Path) -> Path:
    """A private copy of ``trained_model`` for a run to (try to) replace."""
    return Path(shutil.copytree(trained_model, tmp_path / "model"))


def _assert_still_the_previous_model(model: Path, digest: dict[str, str]) -> None:
    from pipeline.model_dir import load_model_dir

    trained = load_model_dir(model)  # restores a model a killed fallback swap moved aside
    assert trained.labels == ["a", "b"]
    assert _digest(model) == digest


def test_kill_9_during_training_epochs(
    clips: Clips, reference: CleanStore, previous_model: Path
) -> None:
    digest = _digest(previous_model)
    args = _train_args(
        clips, reference.path, previous_model, "--epochs", "500", "--patience", "500"
    )
    proc = start_vrnn(*args, cwd=previous_model.parent)
    assert proc.stderr is not None
    for line in proc.stderr:  # kill as soon as the first epoch is reported
        if line.startswith("epoch"):
            proc.send_signal(signal.SIGKILL)
            break
    assert finish(proc)[0] == -signal.SIGKILL
    _assert_still_the_previous_model(previous_model, digest)


def test_kill_9_once_the_new_model_is_written_just_before_the_swap(
    clips: Clips, reference: CleanStore, previous_model: Path
) -> None:
    digest = _digest(previous_model)
    args = _train_args(clips, reference.path, previous_model, "--epochs", "1", "--seed", "1")
    killed = run_vrnn(*args, cwd=previous_model.parent, inject="model-before-swap")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    _assert_still_the_previous_model(previous_model, digest)


def test_kill_9_between_the_fallback_renames_of_the_model_directory(
    clips: Clips, reference: CleanStore, previous_model: Path
) -> None:
    digest = _digest(previous_model)
    args = _train_args(clips, reference.path, previous_model, "--epochs", "1", "--seed", "2")
    killed = run_vrnn(*args, cwd=previous_model.parent, inject="model-between-fallback-renames")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    _assert_still_the_previous_model(previous_model, digest)
