"""``vrnn predict`` on real sample videos: same probabilities as evaluation, streamed output,
per-file failures, reuse of a feature store, and the one-line errors.

The model is the session's shared one (``trained_dir`` in ``conftest.py``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline import backbone, video
from pipeline.contracts import ExtractorConfig
from pipeline.model_dir import BACKBONE_FILE, EXTRACTOR_FILE, load_model_dir
from pipeline.store import StoreBuilder, backbone_sidecar, open_store
from pipeline.training import predict_videos
from stages import predict as predict_stage
from stages.cli import app
from tests.conftest import TRAINED_CLASSES

FLOAT16_ATOL = 2e-3
"""Features rounded to float16 after slightly different float32 batches may differ in the last
bit; through the head that moves a probability by far less than this."""
RECORD_KEYS = {
    "path", "video_id", "top_k", "probabilities", "frames", "duration_sec", "elapsed_sec", "cached"
}  # fmt: skip


def invoke(*args: object):
    """Run ``vrnn`` in-process; ``result.stdout`` is stdout only."""
    return CliRunner().invoke(app, [str(a) for a in args])


def json_records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def predicted(trained_dir) -> dict[str, dict]:
    """``vrnn predict --json`` on three stored clips (three codecs) and one unseen clip."""
    videos = [*trained_dir.stored[:3], trained_dir.unseen[0]]
    result = invoke("predict", trained_dir.model_dir, *videos, "--json", "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "classified 4 videos, 0 failed" in result.stderr
    return {record["path"]: record for record in json_records(result.stdout)}


def test_predict_gives_the_evaluation_probabilities(trained_dir, predicted):
    trained = load_model_dir(trained_dir.model_dir)
    with open_store(trained_dir.store) as store:
        for path in trained_dir.stored[:3]:
            record = predicted[str(path)]
            video_id = store.video_id_for(path)
            features = store.read(video_id).features
            expected = predict_videos(trained, [features])[0]
            got = [record["probabilities"][label] for label in trained.labels]
            np.testing.assert_allclose(got, expected, atol=FLOAT16_ATOL)
            assert record["video_id"] == video_id and record["frames"] == len(features)


def test_json_records_are_complete(trained_dir, predicted):
    assert set(predicted) == {str(p) for p in [*trained_dir.stored[:3], trained_dir.unseen[0]]}
    for record in predicted.values():
        assert set(record) == RECORD_KEYS and not record["cached"]
        assert list(record["probabilities"]) == list(TRAINED_CLASSES)
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        probs = [entry["prob"] for entry in record["top_k"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True)
        assert probs[0] == max(record["probabilities"].values())
        assert record["frames"] > 0 and record["duration_sec"] > 0 and record["elapsed_sec"] > 0


def test_table_streams_one_row_per_video_and_twins_are_classified_once(
    trained_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(predict_stage.console.out, "width", 300)  # one line per row
    folder = tmp_path / "clips"
    folder.mkdir()
    first = shutil.copy(trained_dir.stored[0], folder / "a.mp4")
    shutil.copy(trained_dir.stored[0], folder / "b_same_content.mp4")
    result = invoke("predict", trained_dir.model_dir, folder, "--top-k", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["video", "top-3", "frames"]
    assert [line.split()[0].endswith(".mp4") for line in lines[1:]] == [True, True]
    assert "classified 2 videos, 0 failed" in result.stderr
    records = json_records(invoke("predict", trained_dir.model_dir, folder, "--json").stdout)
    assert [Path(r["path"]).name for r in records] == ["a.mp4", "b_same_content.mp4"]
    assert records[0]["probabilities"] == records[1]["probabilities"]
    assert Path(records[0]["path"]) == Path(first).absolute()


def test_bad_files_are_reported_and_the_others_still_predicted(trained_dir, make_video, tmp_path):
    good = make_video("good.mp4", n_frames=12)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    args = ["predict", trained_dir.model_dir, corrupt, good, tmp_path / "missing.mp4", notes]
    result = invoke(*args, "--json")
    assert result.exit_code == 1, result.output
    records = {Path(r["path"]).name: r for r in json_records(result.stdout)}
    assert set(records) == {"corrupt.mp4", "good.mp4", "missing.mp4", "notes.txt"}
    assert records["missing.mp4"] == {
        "path": str(tmp_path / "missing.mp4"),
        "error": "file not found",
    }
    for name in ("corrupt.mp4", "notes.txt"):
        assert set(records[name]) == {"path", "error"} and records[name]["error"]
    assert set(records["good.mp4"]) == RECORD_KEYS and records["good.mp4"]["frames"] == 12
    table = invoke(*args)
    assert table.exit_code == 1
    failed = [line for line in table.stderr.splitlines() if line.startswith("failed ")]
    assert len(failed) == 3 and any(line.startswith(f"failed {corrupt}: ") for line in failed)
    assert "good.mp4" in table.stdout and "classified 1 videos, 3 failed" in table.stderr


def test_features_store_is_reused_without_decoding(trained_dir, predicted, monkeypatch):
    stored, unseen = trained_dir.stored[:3], trained_dir.unseen[0]
    decoded: list[Path] = []
    chunks = video.VideoReader.chunks

    def watched(reader: video.VideoReader, *args: object, **kwargs: object):
        decoded.append(reader.path)
        if reader.path in stored:
            raise AssertionError(f"decoded a stored video: {reader.path}")
        return chunks(reader, *args, **kwargs)

    monkeypatch.setattr(video.VideoReader, "chunks", watched)
    result = invoke("predict", trained_dir.model_dir, *stored, unseen, "--json", "--top-k", "2",
                    "--features", trained_dir.store)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert decoded == [unseen]
    records = {r["path"]: r for r in json_records(result.stdout)}
    assert set(records) == set(predicted)
    for path, record in records.items():
        expected = predicted[path]
        assert record["cached"] == (Path(path) in stored)
        assert {
            k: v
            for k, v in record.items()
            if k not in ("cached", "elapsed_sec", "probabilities", "top_k")
        } == {
            k: v
            for k, v in expected.items()
            if k not in ("cached", "elapsed_sec", "probabilities", "top_k")
        }
        assert [t["label"] for t in record["top_k"]] == [t["label"] for t in expected["top_k"]]
        np.testing.assert_allclose(
            list(record["probabilities"].values()),
            list(expected["probabilities"].values()),
            atol=FLOAT16_ATOL,
        )


def test_a_store_from_another_extractor_is_one_error(trained_dir, tmp_path):
    other = ExtractorConfig(weights="random:seed=1", weights_sha256="cd" * 32, input_size=32)
    with StoreBuilder(tmp_path / "other.h5", other) as builder:
        builder.commit()
    result = invoke(
        "predict", trained_dir.model_dir, trained_dir.stored[0], "--features", tmp_path / "other.h5"
    )
    assert result.exit_code == 1
    (line,) = errors(result.output)
    assert "weights=random:seed=0" in line and "weights=random:seed=1" in line


@pytest.mark.parametrize(
    ("make_dir", "message"),
    [
        (lambda tmp: tmp / "nowhere", "model directory not found"),
        (lambda tmp: tmp, "is not a complete model directory: missing head.keras"),
    ],
    ids=["missing", "incomplete"],
)
def test_an_unusable_model_dir_is_one_error(trained_dir, tmp_path, make_dir, message):
    result = invoke("predict", make_dir(tmp_path), trained_dir.stored[0])
    assert result.exit_code == 1
    (line,) = errors(result.output)
    assert message in line and "Traceback" not in result.output


def test_weights_that_are_not_the_models_are_a_sha_mismatch(trained_dir, tmp_path, monkeypatch):
    from pipeline.backbone import build_backbone, parse_weights, save_weights

    other = tmp_path / "other.weights.h5"
    save_weights(build_backbone(parse_weights("random:1"), 32), other)
    monkeypatch.setattr(backbone, "_BACKBONES", {})  # no backbone built by earlier tests
    result = invoke("predict", trained_dir.model_dir, trained_dir.stored[0], "--weights", other)
    assert result.exit_code == 1
    (line,) = errors(result.output)
    assert "does not match the extractor's" in line and "random:seed=0" in line


def test_an_older_model_dir_without_its_backbone_copy(
    trained_dir, predicted, tmp_path, monkeypatch
):
    old = shutil.copytree(trained_dir.model_dir, tmp_path / "old")
    (old / BACKBONE_FILE).unlink()
    result = invoke("predict", old, trained_dir.stored[0])
    assert result.exit_code == 1
    (line,) = errors(result.output)
    assert "random:seed=0 weights" in line and "--weights PATH" in line
    result = invoke("predict", old, trained_dir.stored[0], "--json", "--top-k", "2",
                    "--weights", backbone_sidecar(trained_dir.store))  # fmt: skip
    assert result.exit_code == 0, result.output
    (record,) = json_records(result.stdout)
    expected = predicted[str(trained_dir.stored[0])]["probabilities"]
    np.testing.assert_allclose(
        list(record["probabilities"].values()), list(expected.values()), atol=FLOAT16_ATOL
    )

    extractor = json.loads((old / EXTRACTOR_FILE).read_text())
    (old / EXTRACTOR_FILE).write_text(json.dumps({**extractor, "weights": "imagenet"}))

    def offline(input_size: int, backbone: str = "mobilenet_v2") -> Path:
        from pipeline.errors import WeightsError

        raise WeightsError("not cached") from OSError("network unreachable")

    monkeypatch.setattr("pipeline.model_dir.imagenet_weights_file", offline)
    result = invoke("predict", old, trained_dir.stored[0])
    assert result.exit_code == 1
    (line,) = errors(result.output)
    assert "imagenet weights" in line and "network unreachable" in line
    assert "--weights PATH" in line


def test_stage_modules_do_not_import_tensorflow():
    code = (
        "import sys, stages.predict, stages.export, stages.cli; "
        "assert not {'tensorflow', 'keras'} & set(sys.modules), 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_stop_from_another_thread_ends_predict_waiting_on_a_hung_decoder(trained_dir, monkeypatch):
    """#11 item 9: ``stop=`` set while the consumer waits on the queue ends the iteration."""
    import threading

    from pipeline.predict import Predictor

    hung, entered, release = trained_dir.unseen[0], threading.Event(), threading.Event()
    original = video.VideoReader.chunks

    def chunks(self, *args, **kwargs):  # simulated hang: a read that never returns a frame
        if self.path.name == hung.name:
            entered.set()
            release.wait()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(video.VideoReader, "chunks", chunks)
    stop, got = threading.Event(), []
    thread = threading.Thread(
        target=lambda: got.extend(Predictor(trained_dir.model_dir).predict([hung], stop=stop)),
        daemon=True,
    )
    thread.start()
    try:
        assert entered.wait(timeout=120)
        stop.set()
        thread.join(timeout=120)
        assert not thread.is_alive()
        assert got == []
    finally:
        release.set()


def test_predict_dir_names_the_files_it_passed_over(trained_dir, tmp_path):
    """#25 item 5: a folder walk never drops a file without a word."""
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(trained_dir.stored[0], folder / "a.mp4")
    shutil.copy(trained_dir.stored[0], folder / "renamed.bin")  # a video, by content only
    (folder / "notes.txt").write_text("x")
    result = invoke("predict", trained_dir.model_dir, folder)
    assert result.exit_code == 0, result.output
    assert (
        "classified 1 videos, 0 failed; passed over 2 files that are not videos by extension "
        "(notes.txt, renamed.bin)" in result.stderr
    )
