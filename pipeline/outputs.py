"""May I write here? The one check every command runs on each of its outputs, before any work.

An output path is accepted when it is new, or when it already holds an output of the same
kind that vrnn made (a manifest over a manifest, a model directory over a model directory).
Anything else there is refused in one line unless ``overwrite`` is given. The wrong kind of
entry (a file where a directory is wanted, or the reverse) and a location that cannot be
written (read-only, not a directory) are refused always. The check writes nothing but a probe
file, removed at once.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline import fsio
from pipeline.errors import OutputError
from pipeline.file_names import (
    CONFUSION_FILE,
    CONFUSION_IMAGE,
    EVAL_FILE,
    F1_IMAGE,
    MODEL_DIR_FILES,
    PER_CLASS_FILE,
    SAVED_MODEL_FILE,
)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TFLITE_IDENTIFIER = b"TFL3"  # the FlatBuffer file identifier, at bytes 4-8
EXPORT_MODEL_NAME = "vrnn_classifier"  # the name pipeline.export gives its end-to-end model


@dataclass(frozen=True)
class OutputKind:
    """What a command writes at one output path.

    Attributes:
        noun: how messages name it ("manifest CSV").
        directory: True when the output is a directory.
        recognise: True for an existing output of this kind made by vrnn (safe to replace).
        overwritable: the command offers ``--overwrite`` for anything else found there.
    """

    noun: str
    directory: bool
    recognise: Callable[[Path], bool]
    overwritable: bool = True


def check_output(
    path: Path, kind: OutputKind, *, overwrite: bool = False, option: str = "-o"
) -> Path:
    """Refuse, with one :class:`OutputError` line, an output path this command may not write.

    Args:
        path: the output path (it need not exist; a symlink is judged by its target).
        kind: what will be written there.
        overwrite: replace an existing entry of the right type that vrnn did not make.
        option: the option that named ``path``, for the message.

    Returns:
        ``path``.
    """
    path = Path(path)
    if path.exists():
        if path.is_dir() != kind.directory:
            found = "a directory" if path.is_dir() else "a file"
            raise OutputError(f"{option} {path} is {found}, not a {kind.noun}")
        if not overwrite and not kind.recognise(path):
            remedy = ", or pass --overwrite" if kind.overwritable else ""
            raise OutputError(
                f"{option} {path} exists and is not a {kind.noun} made by vrnn; refusing to "
                f"replace it (choose another path{remedy})"
            )
    check_writable(path)
    return path


def check_writable(path: Path) -> None:
    """Refuse a path whose directory (or nearest existing ancestor) cannot be written.

    An existing directory output is probed itself as well: commands write inside it.
    """
    path = Path(os.path.abspath(path))
    where = path.parent
    while not where.exists():
        where = where.parent
    if not where.is_dir():
        raise OutputError(f"cannot write {path}: {where} is not a directory")
    for directory in (where, path) if path.is_dir() else (where,):
        try:
            fsio.probe_writable(directory)
        except OSError as e:
            raise OutputError(f"cannot write {path}: {e.strerror or e} ({directory})") from e


# --------------------------------------------------------------------------- recognisers


def _head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _empty(path: Path) -> bool:
    """A zero-byte file holds nothing a replacement could lose."""
    return path.is_file() and path.stat().st_size == 0


def _csv_header(*columns: str) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        if _empty(path):
            return True
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                return tuple(next(csv.reader(f), ())) == columns
        except (OSError, UnicodeDecodeError, csv.Error):
            return False

    return recognise


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _json_object_with(*keys: str) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        data = _json(path)
        return _empty(path) or (isinstance(data, dict) and set(keys) <= data.keys())

    return recognise


def _labels_file(path: Path) -> bool:
    data = _json(path)
    return _empty(path) or (isinstance(data, list) and all(isinstance(x, str) for x in data))


def _starts_with(signature: bytes) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        return _empty(path) or _head(path, len(signature)) == signature

    return recognise


def _keras_export(path: Path) -> bool:
    if _empty(path):
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return isinstance(config, dict) and config.get("config", {}).get("name") == EXPORT_MODEL_NAME


def _tflite(path: Path) -> bool:
    return _empty(path) or _head(path, 8)[4:8] == TFLITE_IDENTIFIER


def _saved_model(path: Path) -> bool:
    return not any(path.iterdir()) or (path / SAVED_MODEL_FILE).is_file()


def _model_dir(path: Path) -> bool:
    return all(entry.name in MODEL_DIR_FILES for entry in path.iterdir())


def _eval_dir(path: Path) -> bool:
    return all(
        not (path / name).exists() or ((path / name).is_file() and recognise(path / name))
        for name, recognise in _EVAL_FILE_CHECKS.items()
    )


def _sample_data_dir(path: Path) -> bool:
    from pipeline.sample_data import CATALOGUE  # NumPy and PyAV only: no TensorFlow

    labels = {spec.label for spec in CATALOGUE}
    return all(entry.is_dir() and entry.name in labels for entry in path.iterdir())


def _store_export_dir(path: Path) -> bool:
    from pipeline.store.export import owned_files  # NumPy only: no TensorFlow

    owned = owned_files(path)  # index.csv's files (and an interrupted run's pending list)

    def ours(entry: Path) -> bool:
        return entry.is_file() and (entry.name in owned or fsio.is_temporary(entry))

    return owned is not None and all(ours(entry) for entry in path.iterdir())


def _any(path: Path) -> bool:
    return True


_EVAL_FILE_CHECKS: dict[str, Callable[[Path], bool]] = {
    EVAL_FILE: _json_object_with("split", "n", "top1"),
    PER_CLASS_FILE: _csv_header("label", "precision", "recall", "f1", "support"),
    CONFUSION_FILE: _csv_header("actual", "predicted"),
    CONFUSION_IMAGE: _starts_with(PNG_SIGNATURE),
    F1_IMAGE: _starts_with(PNG_SIGNATURE),
}
"""The files ``vrnn evaluate`` writes into its output directory, and how each is recognised."""

MANIFEST = OutputKind("manifest CSV", False, _csv_header("path", "label", "group", "split"))
FEATURE_STORE = OutputKind(
    "feature store (HDF5)", False, _starts_with(HDF5_SIGNATURE), overwritable=False
)
EXTRACT_REPORT = OutputKind(
    "JSON extract report", False, _json_object_with("store", "extractor", "videos", "extracted")
)
MODEL_DIR = OutputKind(
    "model directory (holding only model files)", True, _model_dir, overwritable=False
)
EVAL_DIR = OutputKind("metrics directory", True, _eval_dir)
EXPORT_FILES = {
    "keras": OutputKind(".keras export", False, _keras_export),
    "tflite": OutputKind(".tflite export", False, _tflite),
    "savedmodel": OutputKind("SavedModel directory", True, _saved_model),
}
LABELS_JSON = OutputKind("labels.json (JSON list of labels)", False, _labels_file)
SAMPLE_DATA = OutputKind("sample-data folder (one folder per class)", True, _sample_data_dir)
CLASS_FOLDER = OutputKind("class folder", True, _any, overwritable=False)
STORE_EXPORT = OutputKind(
    "store export directory (index.csv and .npy/.npz files)", True, _store_export_dir
)
