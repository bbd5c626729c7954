"""One feature-validity rule for every reader: a corrupt stored video is refused with the same
line by ``train``, ``evaluate`` (both input paths), ``store export`` and ``predict --features``,
and never scored; an unreadable model file is one ``error:`` line naming it."""

from __future__ import annotations

import numpy as np
import pytest
from test_train_evaluate import CONFIG, build_store, make_videos
from typer.testing import CliRunner

from pipeline import training
from pipeline.manifest import write_manifest
from pipeline.validity import feature_problem
from stages.cli import app


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> dict:
    """A store whose first test video holds a NaN, and a model trained on the clean splits."""
    root = tmp_path_factory.mktemp("validity")
    videos = make_videos(root / "videos", {"train": 3, "val": 1, "test": 2}, seed=11)
    broken = next(i for i, (r, _) in enumerate(videos) if r.split == "test")
    videos[broken][1][1, 3] = np.nan
    store = build_store(root / "features.h5", videos)
    records = [r for r, _ in videos]
    training.train(records, store, root / "models", CONFIG)
    manifest = write_manifest(records, root / "manifest.csv")
    return {"root": root, "store": store, "manifest": manifest, "broken": videos[broken][0]}


def test_every_reader_refuses_a_non_finite_video_with_the_same_line(
    poisoned, tmp_path, monkeypatch
):
    monkeypatch.setenv("VRNN_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    root, store = poisoned["root"], str(poisoned["store"])
    lines = []
    for budget in ("2GiB", "0"):  # in memory, streamed
        result = runner.invoke(
            app, ["evaluate", str(root / "models"), str(poisoned["manifest"]), store,
                  "-o", str(tmp_path / budget), "--memory-budget", budget],
        )  # fmt: skip
        assert result.exit_code == 1, result.output  # never scored
        lines += _errors(result.output)
        assert not (tmp_path / budget / "eval.json").exists()
    result = runner.invoke(app, ["store", "export", store, "-o", str(tmp_path / "export")])
    assert result.exit_code == 1, result.output
    lines += _errors(result.output)
    assert len(lines) == 3 and len(set(lines)) == 1, lines
    assert f"{poisoned['broken'].path}: its stored features contain NaN or inf" in lines[0]
    result = runner.invoke(
        app, ["predict", str(root / "models"), str(poisoned["broken"].path), "--features", store]
    )
    assert lines[0].removeprefix("error: ") in result.output  # that video fails, unscored
    assert "clap" not in result.stdout and "jump" not in result.stdout


def test_a_flipped_byte_in_head_keras_is_one_error_line_naming_it(poisoned, tmp_path):
    import shutil

    model = tmp_path / "models"
    shutil.copytree(poisoned["root"] / "models", model)
    head = model / "head.keras"
    data = bytearray(head.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a member: the archive's directory still reads
    head.write_bytes(bytes(data))
    for args in (
        ["evaluate", str(model), str(poisoned["manifest"]), str(poisoned["store"]),
         "-o", str(tmp_path / "m")],
        ["predict", str(model), str(poisoned["broken"].path)],
    ):  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        (line,) = _errors(result.output)
        assert str(head) in line and "Traceback" not in result.output


def test_feature_problem_names_each_broken_property():
    features = np.zeros((4, 8), np.float16)
    times = np.arange(4) / 25.0
    assert feature_problem(features, times, rows=4, dim=8) is None
    assert "shape" in feature_problem(features, times, rows=4, dim=16)
    assert "index records 5" in feature_problem(features, times, rows=5, dim=8)
    assert "index records 4" in feature_problem(features, times[:3], rows=4, dim=8)
    broken = features.copy()
    broken[2, 1] = np.inf
    assert feature_problem(broken, times, rows=4, dim=8) == "contain NaN or inf"
    assert "strictly increasing" in feature_problem(features, times[::-1], rows=4, dim=8)
    assert "strictly increasing" in feature_problem(
        features, np.array([0, 0.1, np.nan, 0.3]), rows=4, dim=8
    )
