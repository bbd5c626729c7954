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
import math
import os
import shutil
import typing
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pipeline import heads, metrics
from pipeline.contracts import SPLITS, ExtractorConfig, VideoRecord
from pipeline.errors import ConfigError, ManifestError, ModelError, StoreError
from pipeline.frame_cache import FrameCache, open_frame_cache
from pipeline.leakage import check_duplicates
from pipeline.outputs import MODEL_DIR, check_output
from pipeline.sequences import MIN_CROP_FRACTION, TrainingSampler, check_seq_len, eval_sequences
from pipeline.store import FeatureStore, backbone_sidecar, open_store
from pipeline.streaming import (
    DEFAULT_MEMORY_BUDGET,
    EVAL_CHUNK,
    InputPlan,
    plan_input,
    prefetched,
    validation_batches,
)

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
        normalize: standardize features with train-split statistics inside the model
            (always on for :data:`pipeline.heads.ALWAYS_STANDARDIZED` heads).
        projection: per-frame linear projection width before the temporal layers (0: none).
        input_dropout: dropout on the per-frame inputs of the temporal layers.
        weight_decay: AdamW's decoupled weight decay (0: plain Adam).
    """

    head: str = heads.DEFAULT_HEAD
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
    """One line: how many manifest videos were skipped and why, with the first few paths.

    A file that does not exist is told apart from one that exists but is not in the store
    (never extracted, or its extraction failed).
    """
    gone = [r for r in missing if not os.path.lexists(r.path)]
    absent = [r for r in missing if os.path.lexists(r.path)]
    parts = []
    for rows, why in ((gone, "file not found"), (absent, "not in the feature store")):
        if rows:
            shown = ", ".join(str(r.path) for r in rows[:SHOW_MISSING])
            more = f" and {len(rows) - SHOW_MISSING} more" if len(rows) > SHOW_MISSING else ""
            parts.append(f"{len(rows)} {why} ({shown}{more})")
    return f"{len(missing)} manifest video(s) skipped: {'; '.join(parts)}"


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
        input_plan: whether the features were held in memory or streamed, and why.
        warnings: one-line notes on splits too small to train or stop well on.
    """

    model_dir: Path
    labels: list[str]
    counts: dict[str, int]
    history: list[dict[str, float]]
    best_epoch: int
    missing: list[VideoRecord]
    input_plan: InputPlan
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
    input_plan: InputPlan


# --------------------------------------------------------------------------- data


def join_manifest(
    records: Sequence[VideoRecord], store: FeatureStore, what: str = "manifest"
) -> JoinResult:
    """Find each manifest video's features in the store by content hash.

    Missing videos are returned, not fatal (the caller reports them, once: see
    :func:`describe_missing`). ``what`` names the records in messages (e.g. ``"test split"``).

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


def split_targets(
    videos: Sequence[JoinedVideo], split: str, labels: Sequence[str]
) -> tuple[list[JoinedVideo], np.ndarray]:
    """The rows of one split and their ``[N]`` int64 class indices into ``labels``.

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
    return chosen, np.array([index[v.record.label] for v in chosen], dtype=np.int64)


def read_split(
    store: FeatureStore,
    videos: Sequence[JoinedVideo],
    split: str,
    labels: Sequence[str],
    read: Callable[[str], np.ndarray] | None = None,
) -> SplitData:
    """Read the features of one split once (a video listed twice is read once).

    Args:
        read: ``video_id → [T, D]`` features; default :meth:`FeatureStore.read` into memory
            (a :class:`~pipeline.frame_cache.FrameCache` gives memory-mapped views instead).

    Raises:
        ModelError: a video's label is not one of ``labels``.
    """
    chosen, targets = split_targets(videos, split, labels)
    if read is None:
        read = lambda video_id: store.read(video_id).features  # noqa: E731
    cache: dict[str, np.ndarray] = {}
    for v in chosen:
        if v.video_id not in cache:
            cache[v.video_id] = read(v.video_id)
            if not np.isfinite(cache[v.video_id]).all():
                raise StoreError(
                    f"{v.record.path}: its stored features contain NaN or inf (a corrupt "
                    f"store entry, video id {v.video_id}); re-extract it into a new store"
                )
    return SplitData(chosen, [cache[v.video_id] for v in chosen], targets)


def feature_reader(
    store: FeatureStore, videos: Sequence[JoinedVideo], memory_budget: int
) -> tuple[InputPlan, FrameCache | None]:
    """Decide the input path for ``videos``: in memory (None) when their features fit
    ``memory_budget`` bytes, else the store's frame cache (memory-mapped views)."""
    ids = [v.video_id for v in videos]
    plan = plan_input(store, ids, memory_budget)
    return plan, open_frame_cache(store, ids) if plan.streaming else None


def _read_ahead(
    cache: FrameCache | None, data: SplitData
) -> Callable[[int, np.ndarray], None] | None:
    """The sampler's read-ahead hint when streaming: upcoming rows fetched by the kernel."""
    if cache is None:
        return None
    return lambda i, rows: cache.will_need(data.videos[i].video_id, rows)


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
    earlier point leaves it loadable (a half-written ``.<name>.tmp-*`` sibling is inert).
    On Linux the swap is one atomic ``renameat2`` exchange; elsewhere two renames.

    Returns:
        ``target``.
    """
    target = Path(target)
    if target.is_symlink():  # replace the model the link points to, keep the link
        target = target.resolve()
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
    except OSError as e:
        raise ModelError(f"cannot write model directory {target}: {e.strerror or e}") from e
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


def _stop_on_non_finite_loss(
    config: TrainConfig, on_epoch: heads.EpochCallback | None
) -> heads.EpochCallback:
    """``on_epoch``, after refusing to go on once a loss is NaN or infinite."""

    def check(epoch: int, logs: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(epoch, logs)
        bad = [k for k in ("loss", "val_loss") if k in logs and not math.isfinite(logs[k])]
        if bad:
            raise ConfigError(
                f"training diverged: {bad[0]} is {logs[bad[0]]} after epoch {epoch + 1} "
                f"(--lr {config.learning_rate:g}); no model was written; retrain with a lower "
                "--lr"
            )

    return check


def check_extractor(trained: TrainedModel, store: FeatureStore, model_dir: Path) -> None:
    """Refuse features from another extractor than the one the model was trained on.

    Compared by weight values (sha256), not by the weights' name: a store made from a copy of
    the model's weights file is accepted.

    Raises:
        ModelError: naming both extractor configurations.
    """
    if not store.config.same_features(trained.extractor):
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


def predict_split(
    trained: TrainedModel, store: FeatureStore, video_ids: Sequence[str], streaming: bool
) -> np.ndarray:
    """:func:`predict_videos` for stored videos: all read at once, or streamed in chunks.

    Streaming reads :data:`~pipeline.streaming.EVAL_CHUNK` videos at a time, the next chunk
    in the background while the current one is classified; the probabilities are the same.
    """
    step = EVAL_CHUNK if streaming else max(len(video_ids), 1)
    chunks = [video_ids[i : i + step] for i in range(0, len(video_ids), step)]
    read = lambda chunk: [store.read(video_id).features for video_id in chunk]  # noqa: E731
    probs = [predict_videos(trained, videos) for videos in prefetched(chunks, read)]
    if not probs:
        return np.zeros((0, len(trained.labels)), dtype=np.float32)
    return np.concatenate(probs)


# --------------------------------------------------------------------------- stages


def train(
    records: Sequence[VideoRecord],
    store_path: Path,
    model_dir: Path,
    config: TrainConfig,
    *,
    on_epoch: heads.EpochCallback | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> TrainResult:
    """Train a head on the manifest's train split, stopping early on its val split.

    Args:
        records: the manifest rows (labels and splits).
        store_path: the feature store (``features.h5``).
        model_dir: output directory, replaced atomically at the end.
        config: training options.
        on_epoch: called after every epoch with its index and logs.
        memory_budget: train + val features up to this many bytes are held in memory;
            above it they are streamed from a memory-mapped frame cache (same result).

    Returns:
        The written directory, labels, split counts, history, missing videos and input path.

    Raises:
        ConfigError, ManifestError, StoreError: bad options or inputs (see messages), including
            train/test leakage (see :func:`pipeline.leakage.check_duplicates`).
    """
    config.validate()
    _check_replaceable(Path(model_dir))
    fit_records = [r for r in records if r.split in ("train", "val")]
    if not any(r.split == "train" for r in fit_records):
        raise ManifestError("the manifest has no videos in the train split")
    sidecar = backbone_sidecar(Path(store_path))
    with open_store(store_path) as store:
        if not sidecar.is_file():  # a model without it could not classify new videos
            raise StoreError(
                f"{store_path}: its backbone weights file {sidecar} is missing; rerun "
                "`vrnn extract` into this store to restore it"
            )
        joined = join_manifest(fit_records, store)
        check_duplicates(joined.videos, [r for r in records if r.split == "test"], store)
        labels = class_labels(joined.videos)
        plan, cache = feature_reader(store, joined.videos, memory_budget)
        read = cache.frames if cache is not None else None
        train_data = read_split(store, joined.videos, "train", labels, read)
        val_data = read_split(store, joined.videos, "val", labels, read)
        extractor = store.config
    sidecar = checked_sidecar(Path(store_path), extractor)
    validation = None
    if len(val_data.features):
        validation = validation_batches(
            val_data.features, val_data.targets, config.seq_len, config.batch_size
        )
    else:
        log.warning(
            "no val videos in the store: training all %d epochs without early stopping",
            config.epochs,
        )
    model, history = fit_config(
        config,
        train_data,
        validation,
        len(labels),
        extractor.feature_dim,
        _stop_on_non_finite_loss(config, on_epoch),
        prefetch=_read_ahead(cache, train_data),
    )
    write_model_dir(model_dir, model, labels, extractor, config, history, sidecar)
    best = len(history)
    if validation is not None:
        best = int(np.argmin([h["val_loss"] for h in history])) + 1
    counts = {"train": len(train_data.videos), "val": len(val_data.videos)}
    notes = small_split_warnings(labels, train_data.targets, val_data.targets)
    return TrainResult(Path(model_dir), labels, counts, history, best, joined.missing, plan, notes)


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
    validation: keras.utils.PyDataset | None,
    num_classes: int,
    feature_dim: int,
    on_epoch: heads.EpochCallback | None = None,
    *,
    prefetch: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[keras.Model, list[dict[str, float]]]:
    """The training recipe: seed, build the head (normalization fitted on ``train_data``), fit.

    ``prefetch`` is the sampler's read-ahead hint when the features are streamed.

    Returns:
        The trained model (best val epoch restored) and its per-epoch history.
    """
    heads.set_seed(config.seed)
    normalize_on = None
    if config.normalize or config.head in heads.ALWAYS_STANDARDIZED:
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
        prefetch=prefetch,
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


def checked_sidecar(store_path: Path, extractor: ExtractorConfig) -> Path | None:
    """The store's backbone weights file after checking its sha256, or None when absent.

    Raises:
        WeightsError: the file holds other weights than the store's features were made with
            (it is never copied into a model).
    """
    sidecar = backbone_sidecar(store_path)
    if not sidecar.is_file():
        return None
    from pipeline.export import load_backbone  # lazy: export imports this module

    load_backbone(extractor, sidecar)
    return sidecar


def evaluate(
    model_dir: Path,
    records: Sequence[VideoRecord],
    store_path: Path,
    metrics_dir: Path,
    *,
    split: str = "test",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> EvalResult:
    """Score a trained model on one split and write ``eval.json``, ``per_class.csv`` and
    ``confusion.csv`` into ``metrics_dir``.

    Raises:
        ConfigError: unknown split.
        ModelError: incomplete model directory, a store from another extractor, or classes
            the model does not know.
        ManifestError, StoreError: no videos of the split in the store, unreadable inputs.
    """
    split = split.lower()  # as manifests accept TEST
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    split_records = [r for r in records if r.split == split]
    if not split_records:
        raise ManifestError(f"the manifest has no videos in the {split} split")
    trained = load_model_dir(model_dir)
    with open_store(store_path) as store:
        check_extractor(trained, store, Path(model_dir))
        joined = join_manifest(split_records, store, f"{split} split")
        chosen, targets = split_targets(joined.videos, split, trained.labels)
        plan = plan_input(store, [v.video_id for v in chosen], memory_budget)
        probs = predict_split(trained, store, [v.video_id for v in chosen], plan.streaming)
    summary, per_class, confusion = metrics.summarize(probs, targets, trained.labels, split)
    summary = replace(summary, missing=len(joined.missing))
    metrics_dir = Path(metrics_dir)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    files = [metrics_dir / name for name in (EVAL_FILE, PER_CLASS_FILE, CONFUSION_FILE)]
    metrics.write_summary(files[0], summary)
    metrics.write_per_class(files[1], per_class)
    metrics.write_confusion(files[2], targets, probs.argmax(axis=1), trained.labels)
    return EvalResult(summary, per_class, confusion, trained.labels, files, joined.missing, plan)
