"""A whole stage-1 run: resolve the backbone, plan what is new, extract it, commit, report.

Runs the tasks in-process by default or through a task runner (Dask, see
:mod:`pipeline.parallel`). Whatever happens — success, a bad video, Ctrl-C, a crash — every
video finished so far is committed into the store before this module returns or raises.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline import fsio
from pipeline.backbone import (
    backbone_for,
    build_backbone,
    check_input_size,
    family,
    fingerprint,
    make_inference_fn,
    parse_weights,
    register_backbone,
    save_weights,
)
from pipeline.choices import Backbone, FeatureDtype, Resize, choose
from pipeline.contracts import (
    ExtractionFailure,
    ExtractorConfig,
)
from pipeline.errors import ConfigError, StoreError
from pipeline.extract_report import ExtractInterrupted, ExtractReport
from pipeline.featurize import (
    CHANGED_REASON,
    TaskResult,
    VideoDone,
    WorkItem,
    auto_decoders,
    extract_items,
)
from pipeline.fsio import os_reason, require_free_space
from pipeline.identity import file_sha256, video_id_from_sha256
from pipeline.store import (
    WEIGHTS_SUFFIX,
    StoreBuilder,
    backbone_sidecar,
    indexed_video_id,
    known_failure,
    parts_dir_for,
    read_store_config,
    staged_config,
    staged_video_infos,
    write_alias,
    write_failure,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractOptions:
    """User-facing stage-1 settings (see ``vrnn extract --help``)."""

    weights: str = "imagenet"
    backbone: str = Backbone.MOBILENET_V2
    input_size: int = 224
    resize: str = Resize.CROP
    fps: float | None = None
    dtype: str = FeatureDtype.FLOAT16
    batch_size: int = 32
    mixed_precision: bool = False
    rehash: bool = False
    retry_failed: bool = False
    decoders: int | None = None
    """Decoder threads per process; None: ``auto_decoders()`` where the task runs."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values no extraction can use."""
        family(self.backbone)
        check_input_size(self.input_size)
        choose(Resize, self.resize, "--resize")
        choose(FeatureDtype, self.dtype, "--dtype")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"--fps must be > 0, got {self.fps}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if self.decoders is not None and self.decoders < 1:
            raise ConfigError(f"--decoders must be ≥ 1 or auto, got {self.decoders}")


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """Everything a worker process needs to run :func:`run_task` (picklable, no h5py)."""

    config: ExtractorConfig
    weights_file: str
    parts_dir: str
    batch_size: int
    decoders: int | None = None


def run_task(
    spec: TaskSpec,
    items: Sequence[WorkItem],
    *,
    stop: threading.Event | None = None,
    on_video: Callable[[VideoDone], None] | None = None,
) -> TaskResult:
    """Extract ``items`` into part files, in this process or a worker's.

    The backbone is built once per process (see :func:`pipeline.backbone.backbone_for`);
    ``stop`` and ``on_video`` serve in-process runs (cancellation, per-video progress).
    """
    infer = backbone_for(spec.config, Path(spec.weights_file))
    return extract_items(
        items,
        config=spec.config,
        infer=infer,
        parts_dir=Path(spec.parts_dir),
        batch_size=spec.batch_size,
        stop=stop,
        on_video=on_video,
        decoders=spec.decoders or auto_decoders(),
    )


TaskRunner = Callable[[TaskSpec, list[WorkItem], Callable[[TaskResult], None]], None]
"""Runs task batches somewhere (e.g. Dask) and calls back with each result as it completes."""


def _existing_config(store_path: Path) -> ExtractorConfig | None:
    """Extractor of the committed store (its root's attributes only), else the one its
    uncommitted parts record, else None."""
    if store_path.exists():
        return read_store_config(store_path)
    return staged_config(parts_dir_for(store_path))


@dataclass
class Extractor:
    """This run's extractor config, and the backbone when this run had to build it."""

    config: ExtractorConfig
    model: object | None = None


def _config(options: ExtractOptions, weights: str, sha256: str) -> ExtractorConfig:
    return ExtractorConfig(
        weights=weights,
        weights_sha256=sha256,
        input_size=options.input_size,
        resize=options.resize,
        fps=options.fps,
        dtype=options.dtype,
        backbone=options.backbone,
        mixed_precision=options.mixed_precision,
    )


def resolve_extractor(store_path: Path, options: ExtractOptions) -> Extractor:
    """The extractor for this run, checked against the store before anything is built.

    An existing store (or staged run) fixes the weights sha256: options that differ from
    its extractor are refused here, naming both, without building a backbone or writing
    a file. Only a new store builds the backbone (its sidecar is written later, under the
    store lock, see :func:`save_sidecar`), so a seeded random backbone stays bit-identical
    across reruns and machines and a rerun with nothing to do never builds a model.
    """
    spec = parse_weights(options.weights)
    existing = _existing_config(store_path)
    if existing is not None:
        config = _config(options, spec.identity, existing.weights_sha256)
        if config != existing:
            raise StoreError(
                f"{store_path} was built by a different extractor: store has "
                f"({existing.describe()}), this run uses ({config.describe()}); nothing "
                "was changed"
            )
        return Extractor(config)
    model = _build(spec, options)
    return Extractor(_config(options, spec.identity, fingerprint(model)), model)


def _build(spec, options: ExtractOptions):
    return build_backbone(
        spec,
        options.input_size,
        mixed_precision=options.mixed_precision,
        backbone=options.backbone,
    )


def save_sidecar(builder: StoreBuilder, extractor: Extractor, options: ExtractOptions) -> None:
    """Save the backbone weights beside the store ``builder`` holds the lock of.

    Written for a new store (the backbone this run built) or to restore a deleted sidecar
    (checked to have the store's sha256); an existing store's sidecar is never replaced.
    """
    sidecar = backbone_sidecar(builder.path)
    config = extractor.config
    if sidecar.exists() and extractor.model is None:
        return
    model = extractor.model or _build(parse_weights(options.weights), options)
    if fingerprint(model) != config.weights_sha256:
        raise StoreError(
            f"cannot restore {sidecar}: --weights {options.weights} has sha256 "
            f"{fingerprint(model)[:12]}, the store's backbone {config.weights_sha256[:12]}"
        )
    # HDF5 may crash instead of raising on a full disk (see require_free_space).
    weight_bytes = 4 * sum(math.prod(w.shape) for w in model.weights)
    require_free_space(sidecar.parent, weight_bytes + 2**20, f"the backbone weights {sidecar}")
    try:
        with fsio.replacing(sidecar, suffix=WEIGHTS_SUFFIX) as tmp:
            save_weights(model, tmp)
    except OSError as e:
        raise StoreError(f"cannot write the backbone weights {sidecar}: {os_reason(e)}") from e
    infer = make_inference_fn(model)
    register_backbone(config.weights_sha256, config.input_size, config.mixed_precision, infer)


@dataclass
class Plan:
    """What a run must do: new videos, already-stored ones, and files that cannot be read."""

    todo: list[WorkItem] = field(default_factory=list)
    skipped: int = 0
    duplicates: int = 0
    failures: list[ExtractionFailure] = field(default_factory=list)
    known_failures: list[ExtractionFailure] = field(default_factory=list)
    """Files unchanged since their content failed to extract: not tried again."""


@dataclass(frozen=True)
class FileHash:
    """A file's content sha256 and its ``(size, mtime_ns)`` at hash time, or why it could
    not be read (picklable: runs in workers)."""

    path: str
    sha256: str | None = None
    error: str | None = None
    size: int = -1
    mtime_ns: int = -1


def hash_files(paths: Sequence[str]) -> list[FileHash]:
    """Content sha256 of each file, in order, with its size/mtime read around the hash.

    An unreadable file gets an ``error``; a file whose size or mtime changed while it was
    being hashed gets :data:`~pipeline.featurize.CHANGED_REASON`.
    """
    hashes = []
    for path in paths:
        try:
            before = os.stat(path)
            sha = file_sha256(Path(path))
            after = os.stat(path)
        except OSError as e:
            hashes.append(FileHash(path, error=f"cannot read file ({e.strerror})"))
            continue
        stat = (after.st_size, after.st_mtime_ns)
        if (before.st_size, before.st_mtime_ns) != stat:
            hashes.append(FileHash(path, sha, CHANGED_REASON, *stat))
        else:
            hashes.append(FileHash(path, sha, None, *stat))
    return hashes


FileHasher = Callable[[Sequence[str]], list[FileHash]]
"""Hashes files somewhere: :func:`hash_files` here, or a task runner's workers in parallel."""


def plan_extraction(
    paths: Iterable[Path],
    builder: StoreBuilder,
    hasher: FileHasher = hash_files,
    *,
    rehash: bool = False,
    retry_failed: bool = False,
) -> Plan:
    """Decide per file: skip (content already stored or known to fail), extract, or fail now.

    Fast path: a file whose path, size and mtime match the store's path index is skipped
    without reading it, and so is a file whose size and mtime are those of its recorded
    content failure (``known_failures``; ``retry_failed`` tries them again). ``rehash``
    turns both shortcuts off: every file is hashed. The others are
    hashed by ``hasher`` (all at once, so a cluster hashes them in parallel), and the
    size/mtime recorded at that moment are checked again after decoding. A second path with
    the same content is recorded as an alias. Videos finished by an interrupted run (staged
    parts) are neither redone nor counted as skipped: this run's commit stores them.
    """
    committed = builder.committed_index()  # the one read of the store's index in a run
    index, stored, failed = committed.paths, committed.videos, committed.failures
    staged = builder.staged_ids()
    plan, queued, unknown = Plan(), set(), []
    for path in paths:
        key = str(path)
        if not path.exists() or path.is_dir():
            why = "is a directory, not a video file" if path.is_dir() else "file not found"
            plan.failures.append(ExtractionFailure(key, why))
            continue
        if not rehash and indexed_video_id(index, stored, path) is not None:
            plan.skipped += 1
            continue
        if not (rehash or retry_failed) and (known := known_failure(failed, path)):
            plan.known_failures.append(known)
            continue
        unknown.append(path)
    for path, hashed in zip(unknown, hasher([str(p) for p in unknown]), strict=True):
        if hashed.sha256 is None:
            plan.failures.append(ExtractionFailure(hashed.path, hashed.error or "unreadable"))
            continue
        video_id = video_id_from_sha256(hashed.sha256)
        if hashed.error:  # changed while it was being hashed
            plan.failures.append(ExtractionFailure(hashed.path, hashed.error, video_id))
            continue
        if video_id in stored or video_id in queued or video_id in staged:
            if video_id in queued:  # a copy of a file of this run: stored once, not "already"
                plan.duplicates += 1
            else:
                plan.skipped += video_id not in staged
            write_alias(builder.parts_dir, path, video_id, (hashed.size, hashed.mtime_ns))
            continue
        queued.add(video_id)
        plan.todo.append(
            WorkItem(hashed.path, video_id, hashed.sha256, hashed.size, hashed.mtime_ns)
        )
    return plan


def run_extraction(
    paths: Sequence[Path],
    store_path: Path,
    options: ExtractOptions,
    *,
    runner: TaskRunner | None = None,
    on_video: Callable[[VideoDone], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    on_task: Callable[[TaskResult], None] = lambda result: None,
    stop: threading.Event | None = None,
) -> ExtractReport:
    """Extract every video in ``paths`` that the store lacks, then commit the store.

    Args:
        paths: video files (absolute paths are recorded in the store's path index).
        store_path: the ``.h5`` store to create or extend.
        options: extraction settings; must match an existing store's.
        runner: a task runner (Dask); None runs in this process.
        on_video: progress callback per finished video (in-process runs).
        on_plan: called once with the plan, before any decoding.
        on_task: progress callback per finished runner task.
        stop: cooperative cancellation for in-process runs.

    Returns:
        the run's report (also written beside the store by the CLI).
    """
    options.validate()
    started = time.perf_counter()
    store_path = Path(store_path)
    try:
        store_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create output directory {store_path.parent}: {e.strerror}"
        ) from e
    extractor = resolve_extractor(store_path, options)
    config = extractor.config
    report = ExtractReport(
        store=str(store_path),
        extractor=config.to_dict(),
        videos=len(paths),
        random_backbone=config.weights.startswith("random"),
    )
    with StoreBuilder(store_path, config) as builder:
        save_sidecar(builder, extractor, options)
        # A cluster runner hashes new files in its workers; the driver only stats them.
        hasher = getattr(runner, "hash_files", hash_files)
        absolute = [Path(os.path.abspath(p)) for p in paths]
        plan = plan_extraction(
            absolute, builder, hasher, rehash=options.rehash, retry_failed=options.retry_failed
        )
        report.skipped, report.duplicates = plan.skipped, plan.duplicates
        report.note_known_failures(plan.known_failures)
        for failure in plan.failures:
            write_failure(builder.parts_dir, failure)
        if on_plan:
            on_plan(plan)
        extract_started = time.perf_counter()
        try:
            spec = TaskSpec(
                config=config,
                weights_file=str(backbone_sidecar(store_path)),
                parts_dir=str(builder.parts_dir),
                batch_size=options.batch_size,
                decoders=options.decoders,
            )
            if plan.todo and runner is None:
                run_task(spec, plan.todo, stop=stop, on_video=on_video)
            elif plan.todo:
                runner(spec, plan.todo, on_task)
        except KeyboardInterrupt as e:
            report.interrupted = True
            raise ExtractInterrupted(report) from e
        finally:
            # Commit whatever finished, on success and on every way out.
            report.note_decodes(staged_video_infos(builder.parts_dir))
            summary = builder.commit()
            builder.discard_staging()
            report.extracted = summary.added
            report.frames = summary.frames_added
            report.failed = len(summary.failures)
            report.failures = [asdict(f) for f in summary.failures]
            report.foreign_parts = summary.foreign
            report.paths_dropped = summary.paths_dropped
            now = time.perf_counter()
            report.seconds = round(now - started, 3)
            if summary.frames_added:
                report.frames_per_sec = round(summary.frames_added / (now - extract_started), 1)
    return report
