"""A trained model directory: its file names, crash-safe write, checked load, weights source.

``vrnn train`` writes one (:func:`write_model_dir`); ``evaluate``, ``predict`` and ``export``
load it (:func:`load_model_dir`) and find the backbone weights it was trained on
(:func:`model_weights_file`). The directory is replaced in one step (:mod:`pipeline.fsio`).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import typing
import zipfile
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pipeline import fsio, heads, plots
from pipeline.backbone import imagenet_weights_file
from pipeline.contracts import ExtractorConfig
from pipeline.errors import ModelError, WeightsError
from pipeline.file_names import (
    BACKBONE_FILE,
    CURVES_IMAGE,
    EXTRACTOR_FILE,
    HEAD_FILE,
    HISTORY_FILE,
    LABELS_FILE,
    MODEL_FILES,
    TRAIN_CONFIG_FILE,
)
from pipeline.outputs import MODEL_DIR, check_output
from pipeline.train_config import TrainConfig

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


class TrainedModel(NamedTuple):
    """A loaded model directory: everything ``evaluate`` and ``predict`` need."""

    model: keras.Model
    labels: list[str]
    extractor: ExtractorConfig
    train_config: TrainConfig


def _write_history(path: Path, history: Sequence[dict[str, float]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HISTORY_COLUMNS)
        for epoch, logs in enumerate(history, start=1):
            writer.writerow([epoch, *(_csv_float(logs.get(k)) for k in HISTORY_COLUMNS[1:])])


def _csv_float(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def kept_epoch(history: Sequence[dict[str, float]]) -> int:
    """The 1-based epoch whose weights training kept: the lowest ``val_loss``, or the last
    epoch when there was no validation split."""
    if history and all("val_loss" in h for h in history):
        return int(np.argmin([h["val_loss"] for h in history])) + 1
    return len(history)


def check_replaceable(target: Path) -> None:
    """Refuse a target that is not a model directory, or holds other files (e.g. ``-o .``)."""
    check_output(target, MODEL_DIR)


def write_model_dir(
    target: Path,
    model: keras.Model,
    labels: Sequence[str],
    extractor: ExtractorConfig,
    config: TrainConfig,
    history: Sequence[dict[str, float]],
    backbone_weights: Path | None = None,
) -> Path:
    """Write a model directory atomically: a temporary sibling swapped in for ``target``.

    Until the final swap the previous ``target`` stays complete, so a run killed at any
    earlier point leaves it loadable (a half-written ``.<name>.<hex>.tmp`` sibling is inert).
    On Linux the swap is one atomic ``renameat2`` exchange; elsewhere two renames.

    Returns:
        ``target``.
    """
    target = Path(target)
    if target.is_symlink():  # replace the model the link points to, keep the link
        target = target.resolve()
    _restore_interrupted_swap(target)
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with fsio.replacing(target, directory=True) as tmp:
            heads.save_head(model, tmp / HEAD_FILE)
            (tmp / LABELS_FILE).write_text(json.dumps(list(labels), indent=2) + "\n")
            (tmp / EXTRACTOR_FILE).write_text(json.dumps(extractor.to_dict(), indent=2) + "\n")
            (tmp / TRAIN_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
            _write_history(tmp / HISTORY_FILE, history)
            plots.save_png(plots.curves_figure(history, kept_epoch(history)), tmp / CURVES_IMAGE)
            if backbone_weights is not None and backbone_weights.is_file():
                shutil.copyfile(backbone_weights, tmp / BACKBONE_FILE)
    except OSError as e:
        raise ModelError(f"cannot write model directory {target}: {e.strerror or e}") from e
    return target


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: unreadable model file ({e})") from e


def _restore_interrupted_swap(target: Path) -> None:
    """Put back a previous model moved aside by a fallback swap that was killed halfway."""
    aside = fsio.restore_aside(target)
    if aside is not None:
        log.warning("%s: restoring the previous model from %s", target, aside)


def load_model_dir(path: Path) -> TrainedModel:
    """Load a model directory written by :func:`train`.

    Raises:
        ModelError: not a directory, a required file missing or unreadable.
    """
    path = Path(path)
    _restore_interrupted_swap(path)
    if not path.is_dir():
        raise ModelError(f"{path}: model directory not found")
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise ModelError(f"{path} is not a complete model directory: missing {', '.join(missing)}")
    labels = _read_json(path / LABELS_FILE)
    extractor = _read_json(path / EXTRACTOR_FILE)
    config = _read_json(path / TRAIN_CONFIG_FILE)
    if not (isinstance(labels, list) and isinstance(extractor, dict) and isinstance(config, dict)):
        raise ModelError(f"{path}: malformed labels.json, extractor.json or train_config.json")
    try:
        extractor_config = ExtractorConfig.from_dict(extractor)
        train_config = TrainConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{path}: malformed extractor.json or train_config.json ({e})") from e
    _check_field_types(extractor_config, path / EXTRACTOR_FILE)
    _check_field_types(train_config, path / TRAIN_CONFIG_FILE)
    if not zipfile.is_zipfile(path / HEAD_FILE):
        raise ModelError(
            f"{path / HEAD_FILE}: not a readable .keras archive (truncated or corrupt); "
            "retrain or restore the model directory"
        )
    model = heads.load_head(path / HEAD_FILE)
    if not all(np.isfinite(w).all() for w in model.get_weights()):
        raise ModelError(
            f"{path / HEAD_FILE}: the head holds non-finite weights (NaN or inf), the mark of "
            "a diverged training run; retrain it (e.g. with a lower --lr)"
        )
    if model.output_shape[-1] != len(labels):
        raise ModelError(
            f"{path}: head has {model.output_shape[-1]} outputs but labels.json "
            f"lists {len(labels)} classes"
        )
    return TrainedModel(model, [str(x) for x in labels], extractor_config, train_config)


def _check_field_types(config: object, path: Path) -> None:
    """Refuse a hand-edited config file whose values have the wrong JSON type."""
    hints = typing.get_type_hints(type(config))
    for field in fields(config):  # type: ignore[arg-type]
        value = getattr(config, field.name)
        allowed = typing.get_args(hints[field.name]) or (hints[field.name],)
        allowed = tuple(type(None) if a is None else a for a in allowed)
        if float in allowed:
            allowed = (*allowed, int)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            raise ModelError(
                f"{path}: {field.name} is {value!r}, not of type "
                f"{' or '.join(a.__name__ for a in allowed)}"
            )


def model_weights_file(
    model_dir: Path, extractor: ExtractorConfig, weights: Path | None = None
) -> Path:
    """The file to rebuild the model's backbone from (its sha256 is checked on loading).

    In order: ``weights`` (an explicit ``--weights PATH``), the copy in the model directory
    (``backbone.weights.h5``, written by ``train``), then, for older model directories
    trained on ``imagenet``, Keras's cache.

    Raises:
        WeightsError: no source is available; the message names the weights identity and
            how to provide them.
    """
    if weights is not None:
        if not Path(weights).is_file():
            raise WeightsError(f"--weights {weights}: no such file")
        return Path(weights)
    copied = Path(model_dir) / BACKBONE_FILE
    if copied.is_file():
        return copied
    wanted = f"{extractor.weights} weights (sha256 {extractor.weights_sha256[:12]})"
    if extractor.weights == "imagenet":
        try:
            return imagenet_weights_file(extractor.input_size, extractor.backbone)
        except WeightsError as e:
            cause = str(e.__cause__ or e).splitlines()[0]
            raise WeightsError(
                f"{model_dir} has no {BACKBONE_FILE}, and the {wanted} it was trained on are "
                f"not in the Keras cache and could not be downloaded ({cause}); pass "
                f"--weights PATH with the {extractor.backbone} no-top weights file"
            ) from e
    raise WeightsError(
        f"{model_dir} has no {BACKBONE_FILE}; pass the {wanted} it was trained on with "
        "--weights PATH (e.g. the <store>.backbone.weights.h5 beside its feature store)"
    )
