"""The bundled synthetic dataset: seeded clips rendered with NumPy, encoded to real files with PyAV.

Classes come in two kinds. *Order-only pairs* (brightening/darkening, clockwise/counterclockwise,
growing/shrinking) share their frames exactly: clip k of the second class is clip k of the first
played backwards, so only a model that sees temporal order can separate them. *Appearance*
classes (disc, stripes, checker, ring) differ frame by frame. Files rotate through four
codec/container pairs so the decoder is exercised, and are named like UCF101's
``v_<Label>_g<NN>_c<MM>`` so group-aware splits keep related clips together.

Encoding is :mod:`pipeline.encode`; all decoding stays in :mod:`pipeline.video`.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.encode import FORMATS, VideoFormat, write_video
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

GROUP_SIZE = 3
"""Clips per group (UCF101's ``gNN``): clips of one group share size and colours."""

FPS_CHOICES = (12, 15, 24, 25, 30)
FRAME_SIZES = ((160, 120), (176, 144), (128, 96))
"""(width, height) in pixels; even, as 4:2:0 chroma subsampling requires."""
DURATION_RANGE_SEC = (2.0, 4.0)


@dataclass(frozen=True)
class SampleClass:
    """One class of the catalogue.

    Attributes:
        label: class name (folder name and the ``<Label>`` of file names).
        pattern: renderer that draws its clips.
        reverse_of: for the second class of an order-only pair, the class whose clips it plays
            backwards (same parameters, same frames, reverse order).
    """

    label: str
    pattern: str
    reverse_of: str | None = None


CATALOGUE = (
    SampleClass("brightening", "brightness"),
    SampleClass("darkening", "brightness", reverse_of="brightening"),
    SampleClass("growing", "scale"),
    SampleClass("shrinking", "scale", reverse_of="growing"),
    SampleClass("disc", "disc"),
    SampleClass("stripes", "stripes"),
    SampleClass("clockwise", "rotation"),
    SampleClass("counterclockwise", "rotation", reverse_of="clockwise"),
    SampleClass("checker", "checker"),
    SampleClass("ring", "ring"),
)
"""Ordered so that the first 6 are two order-only pairs plus two appearance classes.

The rotation pair comes later: global-average-pooled CNN features keep little of a shape's
spin direction, so it is the hardest pair (a good stress test, a poor default demo).
"""

_CLASS_BY_LABEL = {c.label: c for c in CATALOGUE}


@dataclass(frozen=True)
class ClipParams:
    """Everything that determines one clip's frames and file.

    Lengths are fractions of the frame's short side, speeds are per second, angles in degrees
    (clockwise on screen, since image y points down).

    Attributes:
        label: class label.
        pattern: renderer name (see :data:`CATALOGUE`).
        reverse: play the rendered frames backwards (second class of an order-only pair).
        group: 0-based group index within the class.
        clip: 0-based clip index within the group.
        video_format: codec/container to encode with.
        width, height: frame size in pixels.
        fps: frames per second.
        n_frames: number of frames.
        background, foreground: RGB colours, 0-255.
        center: object centre at the start, (x, y) as fractions of width and height.
        velocity: object velocity, short sides per second (x, y).
        extent: object size at the start and at the end (radius, half-side, stripe period or
            checker cell), short sides.
        angle_deg: start angle (rotation hand, stripe orientation).
        turns: full turns over the clip (rotation).
        gain: brightness factor at the start and at the end.
        noise: amplitude of uniform luma noise, in 8-bit levels.
        noise_seed: seed of the noise generator.
    """

    label: str
    pattern: str
    reverse: bool
    group: int
    clip: int
    video_format: VideoFormat
    width: int
    height: int
    fps: int
    n_frames: int
    background: tuple[int, int, int]
    foreground: tuple[int, int, int]
    center: tuple[float, float]
    velocity: tuple[float, float]
    extent: tuple[float, float]
    angle_deg: float
    turns: float
    gain: tuple[float, float]
    noise: int
    noise_seed: int

    @property
    def file_name(self) -> str:
        """UCF101-style name, e.g. ``v_disc_g02_c03.avi`` (1-based group and clip)."""
        stem = f"v_{self.label}_g{self.group + 1:02d}_c{self.clip + 1:02d}"
        return stem + self.video_format.extension


def _rng(seed: int, key: str, kind: int, index: int) -> np.random.Generator:
    # crc32 rather than hash(): str hashes are salted per process, and clips must be stable.
    return np.random.default_rng([seed, zlib.crc32(key.encode()), kind, index])


def _pattern_params(pattern: str, rng: np.random.Generator) -> dict:
    """Pattern-specific motion and size; ranges keep objects inside small frames."""
    angle = float(rng.uniform(0.0, 360.0))
    speed = float(rng.uniform(0.15, 0.45))
    heading = np.deg2rad(rng.uniform(0.0, 360.0))
    velocity = (speed * float(np.cos(heading)), speed * float(np.sin(heading)))
    center = (float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.35, 0.65)))
    params = {"center": center, "velocity": velocity, "angle_deg": angle, "turns": 0.0}
    if pattern == "brightness":
        gain = (float(rng.uniform(0.15, 0.35)), float(rng.uniform(0.9, 1.0)))
        size = float(rng.uniform(0.25, 0.4))
        params.update(extent=(size, size), gain=gain, velocity=(0.0, 0.0))
    elif pattern == "rotation":
        length = float(rng.uniform(0.3, 0.42))
        params.update(extent=(length, length), turns=float(rng.uniform(0.5, 1.0)))
        params.update(velocity=(0.0, 0.0), center=(0.5, 0.5))
    elif pattern == "scale":
        params.update(extent=(float(rng.uniform(0.06, 0.12)), float(rng.uniform(0.32, 0.4))))
        near_middle = (float(rng.uniform(0.45, 0.55)), float(rng.uniform(0.45, 0.55)))
        params.update(velocity=(0.0, 0.0), center=near_middle)
    elif pattern in ("disc", "ring"):
        radius = float(rng.uniform(0.14, 0.22))
        params.update(extent=(radius, radius))
    elif pattern == "stripes":
        period = float(rng.uniform(0.18, 0.32))
        params.update(extent=(period, period))
    elif pattern == "checker":
        cell = float(rng.uniform(0.12, 0.22))
        params.update(extent=(cell, cell))
    else:  # pragma: no cover - the catalogue names only known patterns
        raise ValueError(f"unknown pattern {pattern!r}")
    params.setdefault("gain", (1.0, 1.0))
    return params


def clip_params(label: str, index: int, seed: int = 0) -> ClipParams:
    """Seeded parameters of clip ``index`` of class ``label``.

    Clip k of the second class of an order-only pair gets exactly the parameters of clip k of
    the first (only ``label`` and ``reverse`` differ), so its frames are the same, reversed.

    Args:
        label: a label of :data:`CATALOGUE`.
        index: 0-based clip index within the class.
        seed: dataset seed (non-negative).

    Returns:
        The clip's parameters.
    """
    spec = _CLASS_BY_LABEL.get(label)
    if spec is None:
        raise ConfigError(f"unknown sample class {label!r} (known: {', '.join(_CLASS_BY_LABEL)})")
    key = spec.reverse_of or spec.label
    group, clip = divmod(index, GROUP_SIZE)
    # Group-level draws: clips of one group look related (same size and colours).
    group_rng = _rng(seed, key, 0, group)
    width, height = FRAME_SIZES[int(group_rng.integers(len(FRAME_SIZES)))]
    background = tuple(int(v) for v in group_rng.integers(20, 100, size=3))
    foreground = tuple(int(v) for v in group_rng.integers(150, 256, size=3))
    clip_rng = _rng(seed, key, 1, index)
    fps = int(clip_rng.choice(FPS_CHOICES))
    duration_sec = float(clip_rng.uniform(*DURATION_RANGE_SEC))
    return ClipParams(
        label=spec.label,
        pattern=spec.pattern,
        reverse=spec.reverse_of is not None,
        group=group,
        clip=clip,
        video_format=FORMATS[index % len(FORMATS)],
        width=width,
        height=height,
        fps=fps,
        n_frames=max(2, round(duration_sec * fps)),
        background=background,  # type: ignore[arg-type]
        foreground=foreground,  # type: ignore[arg-type]
        noise=int(clip_rng.integers(2, 6)),
        noise_seed=int(clip_rng.integers(2**31)),
        **_pattern_params(spec.pattern, clip_rng),
    )


def _bounce(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions into [lo, hi] as if bouncing off the walls (a triangle wave)."""
    span = max(hi - lo, 1e-6)
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


def _coverage(params: ClipParams, t: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Foreground coverage in [0, 1] of every pixel, ``[T, H, W]`` (``[1, H, W]`` if still)."""
    short = min(params.width, params.height)
    progress = t / max(params.n_frames - 1, 1)  # 0 → 1 over the clip
    seconds = t / params.fps
    cx = params.center[0] * params.width + params.velocity[0] * short * seconds
    cy = params.center[1] * params.height + params.velocity[1] * short * seconds
    size = (params.extent[0] + (params.extent[1] - params.extent[0]) * progress) * short
    if params.pattern == "brightness":  # a still scene: one frame of coverage, broadcast
        cx, cy, size = cx[:1], cy[:1], size[:1]
    if params.pattern in ("disc", "ring"):
        margin = params.extent[0] * short * (1.15 if params.pattern == "ring" else 1.0)
        cx = _bounce(cx, margin, params.width - margin)
        cy = _bounce(cy, margin, params.height - margin)
    cx, cy, size = cx[:, None, None], cy[:, None, None], size[:, None, None]
    dx, dy = xs - cx, ys - cy
    # Coverage ramps over one pixel at edges (cheap anti-aliasing).
    if params.pattern == "brightness":
        return np.exp(-(dx**2 + dy**2) / (2 * size**2))
    if params.pattern == "disc":
        return np.clip(size - np.hypot(dx, dy) + 0.5, 0, 1)
    if params.pattern == "ring":
        thickness = 0.3 * size
        return np.clip(thickness / 2 - np.abs(np.hypot(dx, dy) - size) + 0.5, 0, 1)
    if params.pattern == "scale":
        return np.clip(size - np.maximum(np.abs(dx), np.abs(dy)) + 0.5, 0, 1)
    if params.pattern == "rotation":
        theta = np.deg2rad(params.angle_deg + 360.0 * params.turns * progress)[:, None, None]
        ux, uy = np.cos(theta), np.sin(theta)
        along = np.clip(dx * ux + dy * uy, 0, size)  # nearest point on the hand
        dist = np.hypot(dx - along * ux, dy - along * uy)
        half_width = max(1.5, 0.05 * short)
        hand = np.clip(half_width - dist + 0.5, 0, 1)
        hub = np.clip(2 * half_width - np.hypot(dx, dy) + 0.5, 0, 1)
        return np.maximum(hand, 0.6 * hub)
    if params.pattern == "stripes":
        # Stripes drift with the component of the velocity across them.
        ux, uy = np.cos(np.deg2rad(params.angle_deg)), np.sin(np.deg2rad(params.angle_deg))
        drift = (params.velocity[0] * ux + params.velocity[1] * uy) / params.extent[0]
        phase = (xs * ux + ys * uy) / size + drift * seconds[:, None, None]
        return np.clip(0.5 + 2.0 * np.sin(2 * np.pi * phase), 0, 1)
    if params.pattern == "checker":
        ox = (params.velocity[0] * short * seconds)[:, None, None]
        oy = (params.velocity[1] * short * seconds)[:, None, None]
        cells = np.floor((xs + ox) / size) + np.floor((ys + oy) / size)
        return np.mod(cells, 2)
    raise ValueError(f"unknown pattern {params.pattern!r}")  # pragma: no cover


def render_clip(params: ClipParams) -> np.ndarray:
    """Render a clip's raw frames (pure: same params, same pixels).

    Args:
        params: from :func:`clip_params`.

    Returns:
        ``[n_frames, height, width, 3]`` uint8 RGB. With ``params.reverse`` the frame order is
        reversed, so the two classes of an order-only pair hold the same frames.
    """
    t = np.arange(params.n_frames, dtype=np.float32)
    ys = np.arange(params.height, dtype=np.float32)[None, :, None] + 0.5
    xs = np.arange(params.width, dtype=np.float32)[None, None, :] + 0.5
    alpha = _coverage(params, t, ys, xs).astype(np.float32, copy=False)
    gain = np.linspace(*params.gain, params.n_frames, dtype=np.float32)[:, None, None]
    noise_rng = np.random.default_rng(params.noise_seed)
    shape = (params.n_frames, params.height, params.width)
    noise = noise_rng.integers(-params.noise, params.noise + 1, size=shape, dtype=np.int8)
    # Channel planes first: NumPy broadcasts over a trailing axis of 3 many times slower.
    planes = np.empty((3, *shape), dtype=np.float32)
    for c, plane in enumerate(planes):
        np.multiply(alpha, float(params.foreground[c] - params.background[c]), out=plane)
        plane += params.background[c]
        plane *= gain  # brightness ramp
        plane += noise  # luma noise: the same on R, G and B
    np.clip(planes, 0, 255, out=planes)
    planes += 0.5  # round half up, then truncate
    frames = np.moveaxis(planes.astype(np.uint8), 0, -1)
    return np.ascontiguousarray(frames[::-1] if params.reverse else frames)


def write_clip(params: ClipParams, out_dir: Path) -> Path:
    """Render one clip and encode it to ``out_dir/<label>/<file_name>``.

    Args:
        params: from :func:`clip_params`.
        out_dir: dataset root; the label folder must exist.

    Returns:
        The written file.
    """
    path = Path(out_dir) / params.label / params.file_name
    return write_video(path, render_clip(params), fps=params.fps, codec=params.video_format.codec)


def generate(
    out_dir: Path,
    *,
    classes: int = 6,
    per_class: int = 12,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> list[Path]:
    """Write the synthetic dataset as ``out_dir/<label>/v_<label>_g<NN>_c<MM>.<ext>``.

    The same arguments always give the same files, byte for byte (whatever ``workers``).

    Args:
        out_dir: destination folder (created if missing).
        classes: how many classes, taken in :data:`CATALOGUE` order (the default 6 are
            brightening, darkening, growing, shrinking, disc, stripes).
        per_class: clips per class (groups of :data:`GROUP_SIZE`).
        seed: dataset seed (non-negative).
        on_progress: called as ``on_progress(done, total)`` after each file, in the caller's
            thread.
        workers: threads rendering and encoding clips (NumPy and FFmpeg release the GIL);
            default: the CPU count, at most 4.

    Returns:
        The written files, class by class in catalogue order.
    """
    if not 1 <= classes <= len(CATALOGUE):
        raise ConfigError(f"classes must be between 1 and {len(CATALOGUE)}, got {classes}")
    if per_class < 1:
        raise ConfigError(f"per_class must be at least 1, got {per_class}")
    if seed < 0:
        raise ConfigError(f"seed must be non-negative, got {seed}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a directory")
    labels = [spec.label for spec in CATALOGUE[:classes]]
    for label in labels:
        (out_dir / label).mkdir(parents=True, exist_ok=True)
    clips = [clip_params(label, index, seed) for label in labels for index in range(per_class)]
    workers = workers or min(4, os.cpu_count() or 1)
    written: list[Path] = []
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sample-data")
    try:
        for path in executor.map(write_clip, clips, [out_dir] * len(clips)):
            written.append(path)
            if on_progress is not None:
                on_progress(len(written), len(clips))
    finally:
        executor.shutdown(cancel_futures=True)  # on error, stop clips not yet started
    for label in labels:
        _warn_about_strays(out_dir / label, set(written))
    log.info("wrote %d clips of %d classes to %s", len(written), classes, out_dir)
    return written


def _warn_about_strays(label_dir: Path, written: set[Path]) -> None:
    """A rerun with a smaller ``per_class`` leaves old clips behind; indexing would pick them up."""
    strays = sorted(p for p in label_dir.iterdir() if p.is_file() and p not in written)
    if strays:
        log.warning(
            "%s holds %d files this run did not write (e.g. %s)",
            label_dir,
            len(strays),
            strays[0].name,
        )
