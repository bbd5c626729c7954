"""``vrnn export``: one end-to-end model (uint8 frames → probabilities) that agrees with predict.

Exports the session's small trained model (``trained_dir`` in ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_predict import FLOAT16_ATOL, errors, invoke

from pipeline.export import head_without_mask, load_exported
from pipeline.heads import FEATURES_INPUT, HEAD_NAMES, MASK_INPUT, build_head, predict_proba
from pipeline.model_dir import load_model_dir
from pipeline.predict import Predictor
from pipeline.sequences import uniform_indices
from pipeline.train_config import TrainConfig
from pipeline.video import VideoReader
from tests.conftest import TRAINED_CLASSES, TRAINED_CONFIG

SEQ_LEN = TRAINED_CONFIG.seq_len  # frames the export takes per clip

SIGNATURE = "frames uint8 [B, 8, 32, 32, 3] → probabilities float32 [B, 3]"


@pytest.fixture(scope="module")
def exported(trained_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "classifier.keras"
    result = invoke("export", trained_dir.model_dir, "-o", out)
    assert result.exit_code == 0, result.output
    assert SIGNATURE in result.stdout and str(out) in result.stdout
    return out


@pytest.fixture(scope="module")
def clip(trained_dir) -> tuple[np.ndarray, np.ndarray]:
    """A stored clip's frames as the export takes them (``[1, T, S, S, 3]``), and predict's
    probabilities for it."""
    extractor = load_model_dir(trained_dir.model_dir).extractor
    path = trained_dir.stored[1]
    reader = VideoReader(
        path, size=extractor.input_size, resize=extractor.resize, fps=extractor.fps
    )
    frames = reader.read_all().frames
    assert len(frames) >= SEQ_LEN  # no padding: the export's inputs are all real frames
    (prediction,) = Predictor(trained_dir.model_dir).predict([path])
    return frames[uniform_indices(len(frames), SEQ_LEN)][None], prediction.probabilities


def test_export_writes_the_model_and_labels_beside_it(exported):
    assert exported.is_file()
    labels = exported.with_name("classifier.labels.json")
    assert json.loads(labels.read_text()) == list(TRAINED_CLASSES)
    assert not (exported.parent / "labels.json").exists()


def test_a_second_model_exported_beside_keeps_its_own_labels(trained_dir, exported, tmp_path):
    """Two models in one folder: each export has its labels file; a labels file of the same
    name listing other classes is refused before anything is written."""
    other = tmp_path / "other_model"
    shutil.copytree(trained_dir.model_dir, other)
    (other / "labels.json").write_text(json.dumps(["x", "y", "z"]))
    folder = exported.parent
    result = invoke("export", other, "-o", folder / "other.keras")
    assert result.exit_code == 0, result.output
    assert json.loads((folder / "other.labels.json").read_text()) == ["x", "y", "z"]
    assert json.loads((folder / "classifier.labels.json").read_text()) == list(TRAINED_CLASSES)

    before = sorted(p.name for p in folder.iterdir())
    result = invoke("export", other, "-o", folder / "classifier.tflite", "--format", "tflite")
    assert result.exit_code == 1, result.output
    (line,) = errors(result.output)
    assert "classifier.labels.json lists other classes (brightening, darkening, disc)" in line
    assert sorted(p.name for p in folder.iterdir()) == before
    assert json.loads((folder / "classifier.labels.json").read_text()) == list(TRAINED_CLASSES)


def test_exported_model_gives_predicts_probabilities(exported, clip):
    frames, expected = clip
    model = load_exported(exported)
    assert model.input_shape == (None, SEQ_LEN, 32, 32, 3) and model.inputs[0].dtype == "uint8"
    np.testing.assert_allclose(model.predict(frames, verbose=0)[0], expected, atol=FLOAT16_ATOL)


WITHOUT_PACKAGE = """
import sys
sys.modules["pipeline"] = sys.modules["stages"] = None  # any import of them fails
import numpy as np
fmt, model_path, frames_path, out = sys.argv[1:]
frames = np.load(frames_path)
if fmt == "keras":  # plain Keras, the default (safe) mode
    import keras
    probs = keras.saving.load_model(model_path).predict(frames, verbose=0)
elif fmt == "savedmodel":
    import tensorflow as tf
    saved = tf.saved_model.load(model_path)  # keep it: serve() needs its variables alive
    probs = saved.serve(frames).numpy()
else:
    import tensorflow as tf
    interpreter = tf.lite.Interpreter(model_path=model_path)
    interpreter.allocate_tensors()
    (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(given["index"], frames)
    interpreter.invoke()
    probs = interpreter.get_tensor(taken["index"])
np.save(out, probs)
"""


def load_without_package(fmt: str, path: Path, frames: np.ndarray, tmp: Path) -> np.ndarray:
    """Probabilities from an export loaded in a fresh process that cannot import this project."""
    np.save(tmp / "frames.npy", frames)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PACKAGE, fmt, str(path), str(tmp / "frames.npy"),
         str(tmp / "probs.npy")],
        cwd=tmp, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(tmp / "probs.npy")


def test_exported_keras_file_loads_in_plain_keras(exported, clip, tmp_path):
    frames, expected = clip
    model = load_exported(exported)
    assert all(type(layer).__module__.startswith("keras.") for layer in model._flatten_layers())
    probs = load_without_package("keras", exported, frames, tmp_path)
    np.testing.assert_allclose(probs, model.predict(frames, verbose=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(probs[0], expected, atol=FLOAT16_ATOL)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_every_head_exports_with_builtin_layers_and_the_same_outputs(name):
    """The head re-applied without its mask (custom layers swapped for built-ins) gives the
    head's probabilities on all-real frames."""
    import keras

    head = build_head(
        TrainConfig(head=name, seq_len=5, units=6, dense_units=6), num_classes=4, feature_dim=12
    )
    features = keras.Input((5, 12), dtype="float16")
    plain = keras.Model(features, head_without_mask(head, features))
    assert all(type(layer).__module__.startswith("keras.") for layer in plain._flatten_layers())
    x = np.random.default_rng(0).normal(size=(7, 5, 12)).astype(np.float16)
    expected = predict_proba(head, x, np.ones((7, 5), dtype=bool))
    np.testing.assert_allclose(plain.predict(x, verbose=0), expected, rtol=0, atol=1e-6)
    assert {FEATURES_INPUT, MASK_INPUT} == {t.name for t in head.inputs}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_savedmodel_and_tflite_exports_agree(trained_dir, clip, tmp_path):
    import tensorflow as tf

    frames, expected = clip
    result = invoke(
        "export", trained_dir.model_dir, "-o", tmp_path / "saved", "--format", "savedmodel"
    )
    assert result.exit_code == 0 and SIGNATURE in result.stdout, result.output
    saved = load_without_package("savedmodel", tmp_path / "saved", frames, tmp_path)
    np.testing.assert_allclose(saved[0], expected, atol=FLOAT16_ATOL)

    out = tmp_path / "classifier.tflite"
    result = invoke("export", trained_dir.model_dir, "-o", out, "--format", "tflite")
    assert result.exit_code == 0, result.output
    assert SIGNATURE.replace("B", "1") in result.stdout
    interpreter = tf.lite.Interpreter(model_path=str(out))
    (given,) = interpreter.get_input_details()
    assert list(given["shape"]) == [1, SEQ_LEN, 32, 32, 3] and given["dtype"] == np.uint8
    lite = load_without_package("tflite", out, frames, tmp_path)
    np.testing.assert_allclose(lite[0], expected, atol=1e-3)


BAD_EXPORTS = {
    "keras needs .keras": (["-o", "{tmp}/model.h5"], "a keras export must end with .keras"),
    "tflite needs .tflite": (
        ["-o", "{tmp}/m.keras", "--format", "tflite"],
        "a tflite export must end with .tflite",
    ),
    "unknown format": (
        ["-o", "{tmp}/m.onnx", "--format", "onnx"],
        "Invalid value for '--format': Value error, 'onnx' is not one of 'keras', 'savedmodel',",
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
def test_bad_exports_are_one_line_errors(case, trained_dir, tmp_path):
    args, message = BAD_EXPORTS[case]
    (tmp_path / "keep.txt").write_text("precious")
    result = invoke("export", trained_dir.model_dir, *(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 1, result.output
    (line,) = errors(result.output)
    assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
