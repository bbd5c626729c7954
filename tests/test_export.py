"""``vrnn export``: one end-to-end model (uint8 frames → probabilities) that agrees with predict.

Reuses the session's small trained model from ``test_predict.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_predict import CLASSES, CONFIG, FLOAT16_ATOL, TrainedDir, errors, invoke, trained_model

from pipeline.export import load_exported
from pipeline.predict import Predictor
from pipeline.sequences import uniform_indices
from pipeline.training import load_model_dir
from pipeline.video import VideoReader

SIGNATURE = "frames uint8 [B, 8, 32, 32, 3] → probabilities float32 [B, 3]"


@pytest.fixture(scope="module")
def model(tmp_path_factory, sample_dataset) -> TrainedDir:
    return trained_model(tmp_path_factory, sample_dataset)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "classifier.keras"
    result = invoke("export", model.model_dir, "-o", out)
    assert result.exit_code == 0, result.output
    assert SIGNATURE in result.stdout and str(out) in result.stdout
    return out


@pytest.fixture(scope="module")
def clip(model) -> tuple[np.ndarray, np.ndarray]:
    """A stored clip's frames as the export takes them (``[1, T, S, S, 3]``), and predict's
    probabilities for it."""
    extractor = load_model_dir(model.model_dir).extractor
    path = model.stored[1]
    reader = VideoReader(
        path, size=extractor.input_size, resize=extractor.resize, fps=extractor.fps
    )
    frames = reader.read_all().frames
    assert len(frames) >= CONFIG.seq_len  # no padding: the export's inputs are all real frames
    (prediction,) = Predictor(model.model_dir).predict([path])
    return frames[uniform_indices(len(frames), CONFIG.seq_len)][None], prediction.probabilities


def test_export_writes_the_model_and_labels_beside_it(exported):
    assert exported.is_file()
    assert json.loads((exported.parent / "labels.json").read_text()) == list(CLASSES)


def test_exported_model_gives_predicts_probabilities(exported, clip):
    frames, expected = clip
    model = load_exported(exported)
    assert (
        model.input_shape == (None, CONFIG.seq_len, 32, 32, 3) and model.inputs[0].dtype == "uint8"
    )
    np.testing.assert_allclose(model.predict(frames, verbose=0)[0], expected, atol=FLOAT16_ATOL)


FRESH = """
import sys
import keras
import numpy as np
import pipeline.export  # registers the vrnn layers
model_path, frames_path, out = sys.argv[1:]
model = keras.models.load_model(model_path, safe_mode=True)
np.save(out, model.predict(np.load(frames_path), verbose=0))
"""


def test_exported_keras_file_loads_in_a_fresh_process_in_safe_mode(exported, clip, tmp_path):
    frames, _ = clip
    np.save(tmp_path / "frames.npy", frames)
    subprocess.run(
        [sys.executable, "-c", FRESH, str(exported), str(tmp_path / "frames.npy"),
         str(tmp_path / "probs.npy")],
        check=True,
        capture_output=True,
    )  # fmt: skip
    here = load_exported(exported).predict(frames, verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), here, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_savedmodel_and_tflite_exports_agree(model, clip, tmp_path):
    import tensorflow as tf

    frames, expected = clip
    result = invoke("export", model.model_dir, "-o", tmp_path / "saved", "--format", "savedmodel")
    assert result.exit_code == 0 and SIGNATURE in result.stdout, result.output
    saved = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(saved.serve(frames).numpy()[0], expected, atol=FLOAT16_ATOL)

    out = tmp_path / "classifier.tflite"
    result = invoke("export", model.model_dir, "-o", out, "--format", "tflite")
    assert result.exit_code == 0, result.output
    assert SIGNATURE.replace("B", "1") in result.stdout
    interpreter = tf.lite.Interpreter(model_path=str(out))
    interpreter.allocate_tensors()
    (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(given["shape"]) == [1, CONFIG.seq_len, 32, 32, 3] and given["dtype"] == np.uint8
    interpreter.set_tensor(given["index"], frames)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(taken["index"])[0], expected, atol=1e-3)


BAD_EXPORTS = {
    "keras needs .keras": (["-o", "{tmp}/model.h5"], "a keras export must end with .keras"),
    "tflite needs .tflite": (
        ["-o", "{tmp}/m.keras", "--format", "tflite"],
        "a tflite export must end with .tflite",
    ),
    "unknown format": (
        ["-o", "{tmp}/m.onnx", "--format", "onnx"],
        "unknown --format 'onnx'; choose one of keras, savedmodel, tflite",
    ),
    "not a savedmodel": (
        ["-o", "{tmp}", "--format", "savedmodel"],
        "exists and is not a SavedModel directory made by vrnn; refusing to replace it",
    ),
    "missing weights file": (
        ["-o", "{tmp}/m.keras", "--weights", "{tmp}/none.h5"],
        "none.h5: no such file",
    ),
}


@pytest.mark.parametrize("case", BAD_EXPORTS)
def test_bad_exports_are_one_line_errors(case, model, tmp_path):
    args, message = BAD_EXPORTS[case]
    (tmp_path / "keep.txt").write_text("precious")
    result = invoke("export", model.model_dir, *(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 1, result.output
    (line,) = errors(result.output)
    assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
