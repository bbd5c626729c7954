"""Stage 2 logic: join manifest and store, train a head, save/load model dirs, evaluate.

Labels and splits come from the manifest, features from the store (joined by content hash),
so relabelling or re-splitting only re-runs this stage. A model directory holds the head and
everything needed to use it again: labels, the extractor that made its features (provenance),
the training options and the per-epoch history. It is written into a temporary sibling and
renamed over the target at the end, so a killed run leaves the previous model loadable.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pipeline import heads, metrics
from pipeline.contracts import SPLITS, ExtractorConfig, VideoRecord
from pipeline.errors import ConfigError, ManifestError, ModelError, StoreError
from pipeline.sequences import MIN_CROP_FRACTION, TrainingSampler, check_seq_len, eval_sequences
from pipeline.store import FeatureStore, backbone_sidecar, open_store

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

HEAD_FILE = "head.keras"
LABELS_FILE = "labels.json"
EXTRACTOR_FILE = "extractor.json"
BACKBONE_FILE = "backbone.weights.h5"
"""Copy of the store's exact backbone weights: ``predict``/``export`` rebuild the extractor."""
TRAIN_CONFIG_FILE = "train_config.json"
HISTORY_FILE = "history.csv"
MODEL_FILES = (HEAD_FILE, LABELS_FILE, EXTRACTOR_FILE, TRAIN_CONFIG_FILE)
"""Files a model directory must hold to be loadable (``history.csv`` is informational)."""
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
EVAL_FILE = "eval.json"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion.csv"
SHOW_MISSING = 5
MIN_VAL_PER_CLASS = 5
"""Below this many val clips in some class, early stopping on val loss is noisy (warned)."""
"""How many missing video paths a message lists before summarising the rest."""


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run (``train_config.json``).

    Attributes:
        head: builder name, one of :data:`pipeline.heads.HEAD_NAMES`.
        seq_len: frames per sample.
        units: recurrent units per layer.
        layers: stacked recurrent layers.
        dropout: dropout rate before the softmax layer.
        dense_units: hidden dense width (0 = none).
        epochs: maximum training epochs.
        batch_size: sequences per gradient step.
        learning_rate: Adam's learning rate.
        patience: epochs without a val_loss improvement before early stopping.
        seed: seeds weight init, shuffling and temporal crops.
        min_crop_fraction: shortest random training crop, as a fraction of a video.
        normalize: standardize features with train-split statistics inside the model.
        projection: per-frame linear projection width before the temporal layers (0: none).
        input_dropout: dropout on the per-frame inputs of the temporal layers.
        weight_decay: AdamW's decoupled weight decay (0: plain Adam).
    """

    head: str = "lstm"
    seq_len: int = 16
    units: int = 64
    layers: int = 1
    dropout: float = 0.0
    dense_units: int = 32
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 5
    seed: int = 0
    min_crop_fraction: float = MIN_CROP_FRACTION
    normalize: bool = False
    projection: int = 0
    input_dropout: float = 0.0
    weight_decay: float = 0.0

    def validate(self) -> None:
        """Raise :class:`ConfigError` for an unknown head or an out-of-range option."""
        if self.head not in heads.HEAD_NAMES:
            raise ConfigError(
                f"unknown head {self.head!r}; choose one of {', '.join(heads.HEAD_NAMES)}"
            )
        check_seq_len(self.seq_len)
        for name in ("units", "layers", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.dense_units < 0 or self.patience < 0:
            raise ConfigError("--dense-units and --patience must be >= 0")
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}"
                )
        if self.projection < 0 or self.weight_decay < 0:
            raise ConfigError("--projection and --weight-decay must be >= 0")
        if not self.learning_rate > 0:
            raise ConfigError(f"--lr must be > 0, got {self.learning_rate}")
        if not 0.0 < self.min_crop_fraction <= 1.0:
            raise ConfigError(f"min_crop_fraction must be in (0, 1], got {self.min_crop_fraction}")

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def describe_missing(missing: Sequence[VideoRecord]) -> str:
    """One line: how many manifest videos are not in the store and the first few paths."""
    shown = ", ".join(str(r.path) for r in missing[:SHOW_MISSING])
    more = len(missing) - SHOW_MISSING
    tail = f" and {more} more" if more > 0 else ""
    return (
        f"{len(missing)} manifest video(s) are not in the feature store and were skipped: "
        f"{shown}{tail}"
    )


@dataclass(frozen=True)
class JoinedVideo:
    """A manifest row whose content is in the store, under ``video_id``."""

    record: VideoRecord
    video_id: str


@dataclass(frozen=True)
class JoinResult:
    """Manifest rows found in the store, and those that were not (excluded, not fatal)."""

    videos: list[JoinedVideo]
    missing: list[VideoRecord]


@dataclass(frozen=True)
class SplitData:
    """The cached features of one split, with class indices.

    Attributes:
        videos: the joined rows, in manifest order.
        features: per-video ``[T_i, D]`` arrays in the store's dtype (float16 by default).
        targets: ``[N]`` int64 class indices into the label list.
    """

    videos: list[JoinedVideo]
    features: list[np.ndarray]
    targets: np.ndarray


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        model_dir: the written model directory.
        labels: class names, in output order.
        counts: videos used per split (``train``, ``val``).
        history: per-epoch logs (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``).
        best_epoch: 1-based epoch whose weights were kept.
        missing: train/val manifest rows not found in the store (excluded).
        warnings: one-line notes on splits too small to train or stop well on.
    """

    model_dir: Path
    labels: list[str]
    counts: dict[str, int]
    history: list[dict[str, float]]
    best_epoch: int
    missing: list[VideoRecord]
    warnings: list[str]


class TrainedModel(NamedTuple):
    """A loaded model directory: everything ``evaluate`` and ``predict`` need."""

    model: keras.Model
    labels: list[str]
    extractor: ExtractorConfig
    train_config: TrainConfig


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` measured and wrote.

    Attributes:
        summary: top-1, top-5, macro-F1, n and split.
        per_class: per-class precision, recall, F1 and support.
        confusion: ``[C, C]`` int64 counts, rows actual, columns predicted.
        labels: class names, in index order.
        files: the metric files written.
        missing: manifest rows of the split not found in the store (excluded).
    """

    summary: metrics.EvalSummary
    per_class: list[metrics.ClassScores]
    confusion: np.ndarray
    labels: list[str]
    files: list[Path]
    missing: list[VideoRecord]


# --------------------------------------------------------------------------- data


def join_manifest(
    records: Sequence[VideoRecord], store: FeatureStore, what: str = "manifest"
) -> JoinResult:
    """Find each manifest video's features in the store by content hash.

    Missing videos are logged and returned, not fatal. ``what`` names the records in
    messages (e.g. ``"test split"``).

    Raises:
        ManifestError: the manifest is empty or has no video in common with the store.
    """
    if not records:
        raise ManifestError(f"the {what} lists no videos")
    found, missing = [], []
    for record in records:
        video_id = store.video_id_for(record.path)
        if video_id is None:
            missing.append(record)
        else:
            found.append(JoinedVideo(record, video_id))
    if not found:
        raise ManifestError(
            f"none of the {len(records)} {what} videos are in the feature store "
            f"{store.path}; extract them first (vrnn extract)"
        )
    if missing:
        log.warning("%s", describe_missing(missing))
    return JoinResult(found, missing)


def class_labels(videos: Sequence[JoinedVideo]) -> list[str]:
    """Sorted class names of the joined videos.

    Raises:
        ManifestError: the train split has no videos, or some class has none in it.
    """
    train_labels = {v.record.label for v in videos if v.record.split == "train"}
    if not train_labels:
        raise ManifestError("the train split has no videos in the feature store")
    labels = sorted({v.record.label for v in videos})
    untrained = [label for label in labels if label not in train_labels]
    if untrained:
        raise ManifestError(
            f"class(es) {', '.join(map(repr, untrained))} have no videos in the train split"
        )
    if len(labels) < 2:
        raise ManifestError(f"only one class ({labels[0]!r}) in the manifest; need at least 2")
    return labels


def read_split(
    store: FeatureStore, videos: Sequence[JoinedVideo], split: str, labels: Sequence[str]
) -> SplitData:
    """Read the features of one split once (a video listed twice is read once).

    Raises:
        ModelError: a video's label is not one of ``labels``.
    """
    chosen = [v for v in videos if v.record.split == split]
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({v.record.label for v in chosen} - index.keys())
    if unknown:
        raise ModelError(
            f"the {split} split has class(es) the model was not trained on: "
            f"{', '.join(map(repr, unknown))}"
        )
    cache: dict[str, np.ndarray] = {}
    for v in chosen:
        if v.video_id not in cache:
            cache[v.video_id] = store.read(v.video_id).features
            if not np.isfinite(cache[v.video_id]).all():
                raise StoreError(
                    f"{v.record.path}: its stored features contain NaN or inf (a corrupt "
                    f"store entry, video id {v.video_id}); re-extract it into a new store"
                )
    return SplitData(
        videos=chosen,
        features=[cache[v.video_id] for v in chosen],
        targets=np.array([index[v.record.label] for v in chosen], dtype=np.int64),
    )


# --------------------------------------------------------------------------- model dirs


def _write_history(path: Path, history: Sequence[dict[str, float]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HISTORY_COLUMNS)
        for epoch, logs in enumerate(history, start=1):
            writer.writerow([epoch, *(_csv_float(logs.get(k)) for k in HISTORY_COLUMNS[1:])])


def _csv_float(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _check_replaceable(target: Path) -> None:
    """Refuse to replace a directory that is not a model directory (e.g. ``-o .``)."""
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / HEAD_FILE).exists():
        raise ConfigError(
            f"{target} exists and is not a model directory; refusing to replace it "
            "(choose an empty or new output directory)"
        )


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
    earlier point leaves it loadable (a half-written ``.<name>.tmp-*`` sibling is inert).
    On Linux the swap is one atomic ``renameat2`` exchange; elsewhere two renames.

    Returns:
        ``target``.
    """
    target = Path(target)
    _restore_interrupted_swap(target)
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        heads.save_head(model, tmp / HEAD_FILE)
        (tmp / LABELS_FILE).write_text(json.dumps(list(labels), indent=2) + "\n")
        (tmp / EXTRACTOR_FILE).write_text(json.dumps(extractor.to_dict(), indent=2) + "\n")
        (tmp / TRAIN_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        _write_history(tmp / HISTORY_FILE, history)
        if backbone_weights is not None and backbone_weights.is_file():
            shutil.copyfile(backbone_weights, tmp / BACKBONE_FILE)
        if target.exists() and _exchange(tmp, target):
            pass  # swapped in one step: ``tmp`` now holds the previous model
        else:
            # No atomic swap here: move the old model aside, then the new one in. A kill in
            # the microseconds between leaves the old one as ``.<name>.old-*``, which the
            # next load or write puts back (``_restore_interrupted_swap``).
            if target.exists():
                target.rename(old)
            try:
                tmp.rename(target)
            except OSError:
                if old.exists():
                    old.rename(target)  # put the previous model back
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(..., RENAME_EXCHANGE)``).

    Returns:
        False where the C library or the filesystem cannot, so the caller falls back.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_cwd, rename_exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE from <fcntl.h>
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(second))


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: unreadable model file ({e})") from e


def _restore_interrupted_swap(target: Path) -> None:
    """Put back a previous model moved aside by a fallback swap that was killed halfway."""
    if target.exists():
        return
    aside = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if aside:
        log.warning("%s: restoring the previous model from %s", target, aside[-1])
        aside[-1].rename(target)


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
    except TypeError as e:
        raise ModelError(f"{path}: malformed extractor.json or train_config.json ({e})") from e
    model = heads.load_head(path / HEAD_FILE)
    if model.output_shape[-1] != len(labels):
        raise ModelError(
            f"{path}: head has {model.output_shape[-1]} outputs but labels.json "
            f"lists {len(labels)} classes"
        )
    return TrainedModel(model, [str(x) for x in labels], extractor_config, train_config)


def check_extractor(trained: TrainedModel, store: FeatureStore, model_dir: Path) -> None:
    """Refuse features from another extractor than the one the model was trained on.

    Raises:
        ModelError: naming both extractor configurations.
    """
    if store.config != trained.extractor:
        raise ModelError(
            f"model {model_dir} was trained on features from ({trained.extractor.describe()}) "
            f"but store {store.path} was built by ({store.config.describe()}); re-extract "
            "with the model's extractor or retrain"
        )


def predict_videos(trained: TrainedModel, videos: Sequence[np.ndarray]) -> np.ndarray:
    """Class probabilities for whole videos, sampled as in evaluation (uniform, padded).

    Args:
        trained: a loaded model directory.
        videos: per-video ``[T_i, D]`` features from the model's extractor.

    Returns:
        ``[N, C]`` float32 probabilities, columns in ``trained.labels`` order.
    """
    features, mask = eval_sequences(videos, trained.train_config.seq_len)
    return heads.predict_proba(trained.model, features, mask)


# --------------------------------------------------------------------------- stages


def train(
    records: Sequence[VideoRecord],
    store_path: Path,
    model_dir: Path,
    config: TrainConfig,
    *,
    on_epoch: heads.EpochCallback | None = None,
) -> TrainResult:
    """Train a head on the manifest's train split, stopping early on its val split.

    Args:
        records: the manifest rows (labels and splits).
        store_path: the feature store (``features.h5``).
        model_dir: output directory, replaced atomically at the end.
        config: training options.
        on_epoch: called after every epoch with its index and logs.

    Returns:
        The written directory, labels, split counts, history and missing videos.

    Raises:
        ConfigError, ManifestError, StoreError: bad options or inputs (see messages).
    """
    config.validate()
    _check_replaceable(Path(model_dir))
    fit_records = [r for r in records if r.split in ("train", "val")]
    if not any(r.split == "train" for r in fit_records):
        raise ManifestError("the manifest has no videos in the train split")
    with open_store(store_path) as store:
        joined = join_manifest(fit_records, store)
        labels = class_labels(joined.videos)
        train_data = read_split(store, joined.videos, "train", labels)
        val_data = read_split(store, joined.videos, "val", labels)
        extractor = store.config
    validation = None
    if len(val_data.features):
        validation = (*eval_sequences(val_data.features, config.seq_len), val_data.targets)
    else:
        log.warning(
            "no val videos in the store: training all %d epochs without early stopping",
            config.epochs,
        )
    model, history = fit_config(
        config, train_data, validation, len(labels), extractor.feature_dim, on_epoch
    )
    write_model_dir(
        model_dir, model, labels, extractor, config, history, backbone_sidecar(Path(store_path))
    )
    best = len(history)
    if validation is not None:
        best = int(np.argmin([h["val_loss"] for h in history])) + 1
    counts = {"train": len(train_data.videos), "val": len(val_data.videos)}
    notes = small_split_warnings(labels, train_data.targets, val_data.targets)
    return TrainResult(Path(model_dir), labels, counts, history, best, joined.missing, notes)


def small_split_warnings(
    labels: Sequence[str], train_targets: np.ndarray, val_targets: np.ndarray
) -> list[str]:
    """One line per problem: classes with a single training clip; a val split with fewer
    than :data:`MIN_VAL_PER_CLASS` clips in some class (a noisy early-stopping signal).

    An empty val split is not reported here (training then runs without early stopping).
    """
    notes = []
    train_counts = np.bincount(train_targets, minlength=len(labels))
    single = [labels[i] for i in np.flatnonzero(train_counts == 1)]
    if single:
        notes.append(
            f"class(es) {', '.join(map(repr, single))} have a single training clip; "
            "the head cannot learn what varies within them"
        )
    val_counts = np.bincount(val_targets, minlength=len(labels))
    if len(val_targets) and val_counts.min() < MIN_VAL_PER_CLASS:
        fewest = labels[int(val_counts.argmin())]
        notes.append(
            f"the val split has fewer than {MIN_VAL_PER_CLASS} clips in some class "
            f"({fewest!r}: {val_counts.min()}); early stopping on its loss is noisy"
        )
    return notes


def fit_config(
    config: TrainConfig,
    train_data: SplitData,
    validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    num_classes: int,
    feature_dim: int,
    on_epoch: heads.EpochCallback | None = None,
) -> tuple[keras.Model, list[dict[str, float]]]:
    """The training recipe: seed, build the head (normalization fitted on ``train_data``), fit.

    Returns:
        The trained model (best val epoch restored) and its per-epoch history.
    """
    heads.set_seed(config.seed)
    normalize_on = None
    if config.normalize:
        normalize_on = eval_sequences(train_data.features, config.seq_len)
    model = heads.build_head(
        config.head,
        num_classes=num_classes,
        seq_len=config.seq_len,
        feature_dim=feature_dim,
        units=config.units,
        layers=config.layers,
        dropout=config.dropout,
        dense_units=config.dense_units,
        learning_rate=config.learning_rate,
        projection=config.projection,
        input_dropout=config.input_dropout,
        weight_decay=config.weight_decay,
        normalize_on=normalize_on,
    )
    sampler = TrainingSampler(
        train_data.features,
        train_data.targets,
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        seed=config.seed,
        min_crop_fraction=config.min_crop_fraction,
    )
    history = heads.fit_head(
        model,
        sampler,
        validation,
        epochs=config.epochs,
        patience=config.patience,
        on_epoch=on_epoch,
    )
    return model, history


def evaluate(
    model_dir: Path,
    records: Sequence[VideoRecord],
    store_path: Path,
    metrics_dir: Path,
    *,
    split: str = "test",
) -> EvalResult:
    """Score a trained model on one split and write ``eval.json``, ``per_class.csv`` and
    ``confusion.csv`` into ``metrics_dir``.

    Raises:
        ConfigError: unknown split.
        ModelError: incomplete model directory, a store from another extractor, or classes
            the model does not know.
        ManifestError, StoreError: no videos of the split in the store, unreadable inputs.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    split_records = [r for r in records if r.split == split]
    if not split_records:
        raise ManifestError(f"the manifest has no videos in the {split} split")
    trained = load_model_dir(model_dir)
    with open_store(store_path) as store:
        check_extractor(trained, store, Path(model_dir))
        joined = join_manifest(split_records, store, f"{split} split")
        data = read_split(store, joined.videos, split, trained.labels)
    probs = predict_videos(trained, data.features)
    summary, per_class, confusion = metrics.summarize(probs, data.targets, trained.labels, split)
    metrics_dir = Path(metrics_dir)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    files = [metrics_dir / name for name in (EVAL_FILE, PER_CLASS_FILE, CONFUSION_FILE)]
    metrics.write_summary(files[0], summary)
    metrics.write_per_class(files[1], per_class)
    metrics.write_confusion(files[2], data.targets, probs.argmax(axis=1), trained.labels)
    return EvalResult(summary, per_class, confusion, trained.labels, files, joined.missing)
