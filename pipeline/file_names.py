"""The names of the files vrnn writes into its output directories, defined once.

Plain strings and nothing imported: :mod:`pipeline.outputs` checks an output directory with
them before any work (without loading Keras), and the writers (:mod:`pipeline.model_dir`,
:mod:`pipeline.training`) write under the same names. Store file names belong to the store.
"""

from __future__ import annotations

HEAD_FILE = "head.keras"
LABELS_FILE = "labels.json"
EXTRACTOR_FILE = "extractor.json"
BACKBONE_FILE = "backbone.weights.h5"
"""Copy of the store's exact backbone weights: ``predict``/``export`` rebuild the extractor."""
TRAIN_CONFIG_FILE = "train_config.json"
HISTORY_FILE = "history.csv"
CURVES_IMAGE = "training_curves.png"
MODEL_FILES = (HEAD_FILE, LABELS_FILE, EXTRACTOR_FILE, TRAIN_CONFIG_FILE)
"""Files a model directory must hold to be loadable (``history.csv`` is informational)."""
MODEL_DIR_FILES = frozenset({*MODEL_FILES, HISTORY_FILE, CURVES_IMAGE, BACKBONE_FILE})
"""Every file ``vrnn train`` writes into a model directory."""

EVAL_FILE = "eval.json"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion.csv"
CONFUSION_IMAGE = "confusion.png"
F1_IMAGE = "per_class_f1.png"
EVAL_FILES = (EVAL_FILE, PER_CLASS_FILE, CONFUSION_FILE, CONFUSION_IMAGE, F1_IMAGE)
"""The files ``vrnn evaluate`` writes into its metrics directory (tables, then pictures)."""

SAVED_MODEL_FILE = "saved_model.pb"
"""The file TensorFlow writes into a ``vrnn export --format savedmodel`` directory."""
