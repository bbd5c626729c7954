"""Stage 2 logic: train a head on joined features, evaluate it (see :mod:`pipeline.join`).

Labels and splits come from the manifest, features from the store (joined by content hash),
so relabelling or re-splitting only re-runs this stage. A model directory holds the head and
everything needed to use it again: labels, the extractor that made its features (provenance),
the training options and the per-epoch history (:mod:`pipeline.model_dir`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import fit, heads, metrics, plots
from pipeline.choices import ALWAYS_STANDARDIZED, Split, choose
from pipeline.contracts import ExtractorConfig, VideoRecord
from pipeline.errors import ConfigError, ManifestError, ModelError, StoreError
from pipeline.file_names import EVAL_FILES
from pipeline.join import (
    SplitData,
    class_labels,
    describe_missing,
    feature_reader,
    join_manifest,
    read_ahead,
    read_split,
    split_targets,
)
from pipeline.leakage import check_duplicates
from pipeline.model_dir import (
    TrainedModel,
    check_replaceable,
    kept_epoch,
    load_model_dir,
    write_model_dir,
)
from pipeline.sequences import EvalBatches, TrainingSampler, eval_sequences
from pipeline.store import FeatureStore, backbone_sidecar, open_store
from pipeline.streaming import (
    DEFAULT_MEMORY_BUDGET,
    EVAL_CHUNK,
    InputPlan,
    plan_input,
    prefetched,
    validation_batches,
)
from pipeline.train_config import TrainConfig

if TYPE_CHECKING:
    import keras

MIN_VAL_PER_CLASS = 5
"""Below this many val clips in some class, early stopping on val loss is noisy (warned)."""
NORMALIZE_BATCH = 64
"""Videos per batch when fitting the standardization. Its temporaries stay in the process's
heap afterwards (glibc keeps freed memory): +369 MiB of RssAnon with 256 videos a batch,
+133 MiB with 64, for 0.2 s more at 3.2k videos."""


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
        warnings: one-line notes on the data, found before training: missing videos, the
            input path when it was not the user's choice, splits too small to train or stop
            well on.
    """

    model_dir: Path
    labels: list[str]
    counts: dict[str, int]
    history: list[dict[str, float]]
    best_epoch: int
    missing: list[VideoRecord]
    input_plan: InputPlan
    warnings: list[str]


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
        input_plan: whether the split was read into memory or in chunks.
        warnings: why the scores are weaker than they look
            (:func:`pipeline.metrics.split_warnings`).
    """

    summary: metrics.EvalSummary
    per_class: list[metrics.ClassScores]
    confusion: np.ndarray
    labels: list[str]
    files: list[Path]
    missing: list[VideoRecord]
    input_plan: InputPlan
    warnings: list[str]


def _stop_on_non_finite_loss(
    config: TrainConfig, on_epoch: fit.EpochCallback | None
) -> fit.EpochCallback:
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
    read = lambda chunk: [store.read_features(video_id) for video_id in chunk]  # noqa: E731
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
    on_epoch: fit.EpochCallback | None = None,
    on_warning: Callable[[str], None] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> TrainResult:
    """Train a head on the manifest's train split, stopping early on its val split.

    Args:
        records: the manifest rows (labels and splits).
        store_path: the feature store (``features.h5``).
        model_dir: output directory, replaced atomically at the end.
        config: training options.
        on_epoch: called after every epoch with its index and logs.
        on_warning: called before the first epoch with each of the result's ``warnings``.
        memory_budget: train + val features up to this many bytes are held in memory;
            above it they are streamed from a memory-mapped frame cache (same result).

    Returns:
        The written directory, labels, split counts, history, missing videos and input path.

    Raises:
        ConfigError, ManifestError, StoreError: bad options or inputs (see messages), including
            train/test leakage (see :func:`pipeline.leakage.check_duplicates`).
    """
    config.validate()
    check_replaceable(Path(model_dir))
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
        train_data = read_split(store, joined.videos, "train", labels, cache)
        val_data = read_split(store, joined.videos, "val", labels, cache)
        extractor = store.config
    sidecar = checked_sidecar(Path(store_path), extractor)
    notes = [describe_missing(joined.missing)] if joined.missing else []
    notes += [plan.note] if plan.note else []
    notes += small_split_warnings(labels, train_data.targets, val_data.targets)
    validation = None
    if len(val_data.features):
        validation = validation_batches(
            val_data.features, val_data.targets, config.seq_len, config.batch_size
        )
    else:
        notes.append(
            f"no val videos in the store: training all {config.epochs} epochs without "
            "early stopping"
        )
    for note in notes if on_warning is not None else ():
        on_warning(note)  # before epoch 1: a user can stop a run that cannot go well
    model, history = fit_config(
        config,
        train_data,
        validation,
        len(labels),
        extractor.feature_dim,
        _stop_on_non_finite_loss(config, on_epoch),
        prefetch=read_ahead(cache, train_data),
    )
    write_model_dir(model_dir, model, labels, extractor, config, history, sidecar)
    best = kept_epoch(history)
    counts = {"train": len(train_data.videos), "val": len(val_data.videos)}
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


def configured_head(
    config: TrainConfig, num_classes: int, feature_dim: int, train_videos: Sequence[np.ndarray]
) -> keras.Model:
    """The compiled head ``config`` describes; its standardization (when the head or
    ``config.normalize`` asks for one) fitted on ``train_videos``' evaluation sequences."""
    normalize_on = None
    if config.normalize or config.head in ALWAYS_STANDARDIZED:
        normalize_on = EvalBatches(train_videos, config.seq_len, batch_size=NORMALIZE_BATCH)
    return heads.build_head(
        config, num_classes=num_classes, feature_dim=feature_dim, normalize_on=normalize_on
    )


def fit_config(
    config: TrainConfig,
    train_data: SplitData,
    validation: keras.utils.PyDataset | None,
    num_classes: int,
    feature_dim: int,
    on_epoch: fit.EpochCallback | None = None,
    *,
    prefetch: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[keras.Model, list[dict[str, float]]]:
    """The training recipe: seed, build the head (normalization fitted on ``train_data``), fit.

    ``prefetch`` is the sampler's read-ahead hint when the features are streamed.

    Returns:
        The trained model (best val epoch restored) and its per-epoch history.
    """
    fit.set_seed(config.seed)
    model = configured_head(config, num_classes, feature_dim, train_data.features)
    sampler = TrainingSampler(
        train_data.features,
        train_data.targets,
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        seed=config.seed,
        min_crop_fraction=config.min_crop_fraction,
        prefetch=prefetch,
        passes=config.passes(len(train_data.features)),
    )
    history = fit.fit_head(
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
    from pipeline.backbone import load_checked_backbone  # lazy: builds a Keras model

    load_checked_backbone(extractor, sidecar)
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
    """Score a trained model on one split and write ``eval.json``, ``per_class.csv``,
    ``confusion.csv`` and their pictures (``confusion.png``, ``per_class_f1.png``) into
    ``metrics_dir``, each file atomically and ``eval.json`` last: a run cut short leaves
    every file whole and ``eval.json`` that of the last finished run.

    Raises:
        ConfigError: unknown split.
        ModelError: incomplete model directory, a store from another extractor, or classes
            the model does not know.
        ManifestError, StoreError: no videos of the split in the store, unreadable inputs.
    """
    split = split.lower()  # as manifests accept TEST
    choose(Split, split, "--split")
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
    files = [metrics_dir / name for name in EVAL_FILES]
    metrics.write_per_class(files[1], per_class)
    metrics.write_confusion(files[2], targets, probs.argmax(axis=1), trained.labels)
    plots.save_png(plots.confusion_figure(confusion, trained.labels), files[3])
    plots.save_png(plots.f1_figure(per_class), files[4])
    metrics.write_summary(files[0], summary)  # last: the metric DVC reads marks a finished run
    notes = metrics.split_warnings(per_class, split)
    return EvalResult(
        summary, per_class, confusion, trained.labels, files, joined.missing, plan, notes
    )
