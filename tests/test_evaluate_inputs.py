"""``evaluate`` and ``predict --features`` on real extracted stores: missing test videos are
counted (and fatal with ``--strict``), and stores are matched by weight values, not names.

Real H.264/MPEG-4 clips are encoded in the test, extracted with a seeded random 32 px backbone
and a tiny LSTM is trained once per module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.contracts import VideoRecord
from pipeline.encode import write_video
from pipeline.manifest import write_manifest
from pipeline.store import backbone_sidecar, open_store
from pipeline.train_config import TrainConfig
from pipeline.training import train
from stages.cli import app

CONFIG = TrainConfig(seq_len=4, units=4, dense_units=4, epochs=1, batch_size=4, patience=1)
SPLITS = ("train", "train", "val", "test", "test")


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _clip(path: Path, n_frames: int, reverse: bool) -> Path:
    """A real clip: a bright bar sweeping right (or left, ``reverse``) over dark grey."""
    frames = np.full((n_frames, 32, 48, 3), 40, dtype=np.uint8)
    for t in range(n_frames):
        x = 4 * (n_frames - 1 - t if reverse else t)
        frames[t, :, x : x + 6] = 220
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, frames, fps=10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Ten real clips (two classes × five splits), two stores from copies of one weights file,
    a model trained on the first store, and a manifest with one extra test video that was
    never extracted and one that does not exist."""
    from pipeline.extract import ExtractOptions, run_extraction

    root = tmp_path_factory.mktemp("evaluate_inputs")
    records = []
    for c, label in enumerate(("left", "right")):
        for i, split in enumerate(SPLITS):
            ext = ".mp4" if i % 2 else ".avi"
            path = _clip(root / "videos" / label / f"{label}{i}{ext}", 6 + i, reverse=bool(c))
            records.append(VideoRecord(path, label, f"{label}{i}", split))
    videos = [r.path for r in records]
    seed_store = root / "seed" / "features.h5"
    seed_store.parent.mkdir()
    run_extraction(videos[:1], seed_store, ExtractOptions(weights="random", input_size=32))
    stores = []
    for name in ("first", "second"):
        copy = root / name / f"{name}.weights.h5"
        copy.parent.mkdir()
        shutil.copyfile(backbone_sidecar(seed_store), copy)
        store = root / name / "features.h5"
        run_extraction(videos, store, ExtractOptions(weights=str(copy), input_size=32))
        stores.append(store)
    model_dir = root / "model"
    train(records, stores[0], model_dir, CONFIG)
    unextracted = _clip(root / "videos" / "left" / "late.mp4", 11, reverse=False)
    gone = root / "videos" / "right" / "deleted.mp4"
    extra = [
        VideoRecord(unextracted, "left", "late", "test"),
        VideoRecord(gone, "right", "deleted", "test"),
    ]
    manifest = write_manifest(records, root / "manifest.csv")
    with_missing = write_manifest(records + extra, root / "with_missing.csv")
    return {
        "root": root,
        "stores": stores,
        "model": model_dir,
        "manifest": manifest,
        "with_missing": with_missing,
        "test_videos": [r.path for r in records if r.split == "test"],
    }


def test_stores_from_two_copies_of_one_weights_file_differ_only_in_name(setup):
    with open_store(setup["stores"][0]) as a, open_store(setup["stores"][1]) as b:
        assert a.config.weights != b.config.weights
        assert a.config.weights_sha256 == b.config.weights_sha256
        assert a.config.same_features(b.config)
        for video_id in a.video_ids:  # same values; CPU kernels may round the last bit apart
            np.testing.assert_allclose(
                a.read(video_id).features.astype(np.float32),
                b.read(video_id).features.astype(np.float32),
                rtol=2**-10,
                atol=1e-3,
            )


def test_evaluate_accepts_a_store_made_from_a_copy_of_the_weights(setup, tmp_path):
    """#11 item 12: compared by weight values (sha256), not by the weights' file name."""
    scores = []
    for i, store in enumerate(setup["stores"]):
        result = invoke(
            "evaluate", setup["model"], setup["manifest"], store, "-o", tmp_path / f"{i}"
        )
        assert result.exit_code == 0, result.output
        scores.append(json.loads((tmp_path / f"{i}" / "eval.json").read_text()))
    assert scores[0] == scores[1] and scores[0]["missing"] == 0


def test_predict_features_accepts_a_store_made_from_a_copy_of_the_weights(setup):
    videos = setup["test_videos"]
    args = ["predict", setup["model"], *videos, "--json", "--features", setup["stores"][1]]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["cached"] for r in records] == [True] * len(videos)


def test_evaluate_counts_missing_test_videos_and_strict_fails(setup, tmp_path):
    """#11 item 11 (+ #19: printed once, a missing file is not 'not in the feature store')."""
    args = ["evaluate", setup["model"], setup["with_missing"], setup["stores"][0]]
    result = invoke(*args, "--split", "TEST", "-o", tmp_path / "lenient")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "lenient" / "eval.json").read_text())
    assert summary["n"] == len(setup["test_videos"]) and summary["missing"] == 2
    assert f"on {summary['n']} videos (2 missing)" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 1, result.stderr
    assert "1 file not found" in warnings[0] and "deleted.mp4" in warnings[0]
    assert "1 not in the feature store" in warnings[0] and "late.mp4" in warnings[0]

    strict = invoke(*args, "--strict", "-o", tmp_path / "strict")
    assert strict.exit_code == 1
    assert "error: 2 test videos are missing from the store (--strict)" in strict.stderr
    assert json.loads((tmp_path / "strict" / "eval.json").read_text())["missing"] == 2

    complete = invoke(*args[:2], setup["manifest"], args[3], "--strict", "-o", tmp_path / "ok")
    assert complete.exit_code == 0, complete.output


def test_train_refuses_test_copies_of_train_videos_and_warns_on_relabelled_copies(
    setup, tmp_path, caplog
):
    """#19: the same content under two paths (different labels, or in train and test)."""
    from pipeline.manifest import read_manifest

    records = read_manifest(setup["manifest"])
    first_train = next(r for r in records if r.split == "train")
    relabelled = tmp_path / "copy_relabelled.mp4"
    shutil.copyfile(first_train.path, relabelled)
    other = next(r.label for r in records if r.label != first_train.label)
    rows = [*records, VideoRecord(relabelled, other, "copy1", "train")]
    args = ["train", "--seq-len", "4", "--epochs", "1", "--units", "4", "--batch-size", "4"]
    manifest = write_manifest(rows, tmp_path / "relabelled.csv")
    result = invoke(*args, manifest, setup["stores"][0], "-o", tmp_path / "model")
    assert result.exit_code == 0, result.output
    assert "1 videos are in the manifest more than once with different labels" in caplog.text
    assert str(relabelled) in caplog.text

    leaked = tmp_path / "copy_in_test.mp4"
    shutil.copyfile(first_train.path, leaked)
    rows = [*records, VideoRecord(leaked, first_train.label, "copy2", "test")]
    manifest = write_manifest(rows, tmp_path / "leaked.csv")
    result = invoke(*args, manifest, setup["stores"][0], "-o", tmp_path / "model2")
    assert result.exit_code == 1
    [error] = errors(result.output)
    assert error.startswith("error: 1 test videos have the same content as train/val videos")
    assert str(leaked) in error and str(first_train.path) in error
    assert not (tmp_path / "model2").exists()
