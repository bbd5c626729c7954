"""A whole stage-1 run: resolve the backbone, plan what is new, extract it, commit, report.

Runs the tasks in-process by default or through a task runner (Dask, see
:mod:`pipeline.parallel`). Whatever happens — success, a bad video, Ctrl-C, a crash — every
video finished so far is committed into the store before this module returns or raises.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline import __version__
from pipeline.contracts import (
    FEATURE_DTYPES,
    RESIZE_POLICIES,
    ExtractionFailure,
    ExtractorConfig,
)
from pipeline.errors import ConfigError, StoreError
from pipeline.extract import (
    TaskResult,
    VideoDone,
    WorkItem,
    auto_decoders,
    backbone_for,
    extract_items,
    register_backbone,
)
from pipeline.identity import file_sha256, video_id_from_sha256
from pipeline.store import (
    StoreBuilder,
    backbone_sidecar,
    discard,
    open_store,
    os_reason,
    parts_dir_for,
    require_free_space,
    write_alias,
    write_failure,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractOptions:
    """User-facing stage-1 settings (see ``vrnn extract --help``)."""

    weights: str = "imagenet"
    input_size: int = 224
    resize: str = "crop"
    fps: float | None = None
    dtype: str = "float16"
    batch_size: int = 32
    mixed_precision: bool = False
    decoders: int | None = None
    """Decoder threads per process; None: ``auto_decoders()`` where the task runs."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values no extraction can use."""
        from pipeline.backbone import check_input_size

        check_input_size(self.input_size)
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"--resize must be one of {', '.join(RESIZE_POLICIES)}")
        if self.dtype not in FEATURE_DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(FEATURE_DTYPES)}")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"--fps must be > 0, got {self.fps}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if self.decoders is not None and self.decoders < 1:
            raise ConfigError(f"--decoders must be ≥ 1 or auto, got {self.decoders}")


@dataclass(frozen=True)
class TaskSpec:
    """Everything a worker process needs to run :func:`run_task` (picklable, no h5py)."""

    config: ExtractorConfig
    weights_file: str
    parts_dir: str
    batch_size: int
    mixed_precision: bool = False
    decoders: int | None = None


def run_task(
    spec: TaskSpec,
    items: Sequence[WorkItem],
    *,
    stop: threading.Event | None = None,
    on_video: Callable[[VideoDone], None] | None = None,
) -> TaskResult:
    """Extract ``items`` into part files, in this process or a worker's.

    The backbone is built once per process (see ``backbone_for``); ``stop`` and
    ``on_video`` serve in-process runs (cancellation, per-video progress).
    """
    infer = backbone_for(spec.config, Path(spec.weights_file), mixed_precision=spec.mixed_precision)
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


TaskRunner = Callable[[TaskSpec, list[list[WorkItem]], Callable[[TaskResult], None]], None]
"""Runs task batches somewhere (e.g. Dask) and calls back with each result as it completes."""


@dataclass
class ExtractReport:
    """Summary of one run; written as ``extract_report.json`` (a DVC metric)."""

    store: str
    extractor: dict
    videos: int = 0
    extracted: int = 0
    skipped: int = 0
    failed: int = 0
    frames: int = 0
    seconds: float = 0.0
    frames_per_sec: float = 0.0
    interrupted: bool = False
    random_backbone: bool = False
    failures: list[dict] = field(default_factory=list)
    tool_version: str = __version__

    def write(self, path: Path) -> None:
        """Write the report as JSON, atomically (creating its directory)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)


def _existing_config(store_path: Path) -> ExtractorConfig | None:
    """Extractor of the committed store, else of its uncommitted parts, else None."""
    if store_path.exists():
        with open_store(store_path) as store:
            return store.config
    staged = parts_dir_for(store_path) / "config.json"
    if staged.exists():
        return ExtractorConfig.from_dict(json.loads(staged.read_text()))
    return None


def resolve_extractor(store_path: Path, options: ExtractOptions) -> ExtractorConfig:
    """The extractor config for this run; builds the backbone only when it is new.

    A store (or staged run) that already exists with the same weights identity keeps its
    saved weights, so a seeded random backbone stays bit-identical across reruns and
    machines, and a rerun with nothing to do never builds a model (``backbone_for``
    loads the saved weights and checks their sha256 when there is work).
    """
    from pipeline.backbone import parse_weights

    spec = parse_weights(options.weights)
    sidecar = backbone_sidecar(store_path)
    existing = _existing_config(store_path)
    if existing is not None and existing.weights == spec.identity and sidecar.exists():
        sha256 = existing.weights_sha256
    else:
        sha256 = _build_and_save(spec, options, sidecar)
    return ExtractorConfig(
        weights=spec.identity,
        weights_sha256=sha256,
        input_size=options.input_size,
        resize=options.resize,
        fps=options.fps,
        dtype=options.dtype,
    )


def _build_and_save(spec, options: ExtractOptions, sidecar: Path) -> str:
    """Build the backbone from ``spec``, save its weights to ``sidecar``, return the sha256."""
    from pipeline.backbone import build_backbone, fingerprint, make_inference_fn, save_weights

    model = build_backbone(spec, options.input_size, mixed_precision=options.mixed_precision)
    sha256 = fingerprint(model)
    tmp = sidecar.with_name(f".{uuid.uuid4().hex}.weights.h5")
    # HDF5 may crash instead of raising on a full disk (see require_free_space).
    weight_bytes = 4 * sum(math.prod(w.shape) for w in model.weights)
    require_free_space(sidecar.parent, weight_bytes + 2**20, f"the backbone weights {sidecar}")
    try:
        save_weights(model, tmp)
        os.replace(tmp, sidecar)
    except OSError as e:
        raise StoreError(f"cannot write the backbone weights {sidecar}: {os_reason(e)}") from e
    finally:
        discard(tmp)
    infer = make_inference_fn(model)
    register_backbone(sha256, options.input_size, options.mixed_precision, infer)
    return sha256


@dataclass
class Plan:
    """What a run must do: new videos, already-stored ones, and files that cannot be read."""

    todo: list[WorkItem] = field(default_factory=list)
    skipped: int = 0
    failures: list[ExtractionFailure] = field(default_factory=list)


def plan_extraction(paths: Iterable[Path], builder: StoreBuilder) -> Plan:
    """Decide per file: skip (content already stored), extract, or fail now.

    Files whose size and mtime match the store's path index are skipped without reading
    them; others are hashed. A second path with the same content is recorded as an alias.
    Videos finished by an interrupted run (staged parts) are neither redone nor counted as
    skipped: this run's commit stores them.
    """
    index, stored = {}, set()
    if builder.path.exists():
        with open_store(builder.path) as store:
            index, stored = store.path_index, set(store.video_ids)
    staged = builder.staged_ids()
    plan, queued = Plan(), set()
    for path in paths:
        key = str(path)
        if not path.exists() or path.is_dir():
            why = "is a directory, not a video file" if path.is_dir() else "file not found"
            plan.failures.append(ExtractionFailure(key, why))
            continue
        st = path.stat()
        entry = index.get(key)
        if entry and entry[0] in stored and tuple(entry[1:]) == (st.st_size, st.st_mtime_ns):
            plan.skipped += 1
            continue
        try:
            sha = file_sha256(path)
        except OSError as e:
            plan.failures.append(ExtractionFailure(key, f"cannot read file ({e.strerror})"))
            continue
        video_id = video_id_from_sha256(sha)
        if video_id in stored or video_id in queued or video_id in staged:
            plan.skipped += video_id not in staged
            write_alias(builder.parts_dir, path, video_id)
            continue
        queued.add(video_id)
        plan.todo.append(WorkItem(key, video_id, sha))
    return plan


def split_tasks(items: list[WorkItem], videos_per_task: int) -> list[list[WorkItem]]:
    """Cut the work into tasks of a few videos (small enough that stragglers don't dominate)."""
    return [items[i : i + videos_per_task] for i in range(0, len(items), videos_per_task)]


def run_extraction(
    paths: Sequence[Path],
    store_path: Path,
    options: ExtractOptions,
    *,
    runner: TaskRunner | None = None,
    videos_per_task: int = 4,
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
        videos_per_task: videos per runner task.
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
    config = resolve_extractor(store_path, options)
    report = ExtractReport(
        store=str(store_path),
        extractor=config.to_dict(),
        videos=len(paths),
        random_backbone=config.weights.startswith("random"),
    )
    with StoreBuilder(store_path, config) as builder:
        plan = plan_extraction([Path(os.path.abspath(p)) for p in paths], builder)
        report.skipped = plan.skipped
        for failure in plan.failures:
            write_failure(builder.parts_dir, failure)
        if on_plan:
            on_plan(plan)
        extract_started = time.perf_counter()
        try:
            spec = TaskSpec(
                config,
                str(backbone_sidecar(store_path)),
                str(builder.parts_dir),
                options.batch_size,
                options.mixed_precision,
                options.decoders,
            )
            if plan.todo and runner is None:
                run_task(spec, plan.todo, stop=stop, on_video=on_video)
            elif plan.todo:
                runner(spec, split_tasks(plan.todo, videos_per_task), on_task)
        except KeyboardInterrupt:
            report.interrupted = True
            raise
        finally:
            # Commit whatever finished, on success and on every way out.
            summary = builder.commit()
            builder.discard_staging()
            report.extracted = summary.added
            report.frames = summary.frames_added
            report.failed = len(summary.failures)
            report.failures = [asdict(f) for f in summary.failures]
            now = time.perf_counter()
            report.seconds = round(now - started, 3)
            if summary.frames_added:
                report.frames_per_sec = round(summary.frames_added / (now - extract_started), 1)
    return report
