"""Few-shot head benchmark on real photos and real ImageNet features (issue #18).

Run:  python benchmarks/bench_heads.py [--heads lstm,trend,...] [--shots 5,10,30] [--seeds 5]

* Clips: real photos bundled with scikit-image (no download), rendered at 112×112 into
  short clips (16–28 frames). Six *order-only* classes in three pairs whose cue survives
  global pooling — ``zoom_in``/``zoom_out`` (a window shrinking into / growing out of a
  photo), ``focus_in``/``focus_out`` (Gaussian blur fading out / in), ``fade_in``/``fade_out``
  (brightness rising / falling) — each pair drawn from the same photos with independent
  random windows, speeds and ranges, so only the order of frames tells them apart. Two
  *appearance* classes (``texture``: brick/grass/gravel; ``sky``: Hubble deep field/moon)
  slowly pan over their own photos. (Pan direction and playback direction are not
  recoverable from globally pooled features, so they are not order classes.)
* Features: the real ImageNet MobileNetV2 (``../shared/weights/...no_top.weights.h5``, or
  ``--weights``) at 112 px, extracted once and cached as ``.npz`` (``--cache``); every head
  then trains on the cached features. Without the weights file the benchmark exits 0 with
  a one-line ``skipped:`` message.
* Protocol: per class a pool of 40 train, 10 val and 20 test clips. For each seed and each
  ``N`` in ``--shots``, ``N`` train and ``max(2, N // 3)`` val clips per class are drawn from
  the pools (val is for early stopping, as ``vrnn train`` uses it); the 160 test clips are
  the same for every run. Each head trains with ``vrnn train``'s recipe
  (:func:`pipeline.training.fit_config`) with its defaults, then test top-1 is reported as
  mean ± sd over seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_FILE = Path("shared") / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5"
WEIGHTS_CANDIDATES = (ROOT.parent / WEIGHTS_FILE, ROOT.parent.parent / WEIGHTS_FILE)
"""Where the real ImageNet weights are looked for: beside a checkout, or beside its worktrees."""
RANDOM_WEIGHTS = "random:0"
"""The fallback backbone without the weights file: seeded random, *not* ImageNet features."""
SIZE = 112
SEQ_LEN = 16
POOLS = {"train": 40, "val": 10, "test": 20}
ORDER_PAIRS = (("zoom_in", "zoom_out"), ("focus_in", "focus_out"), ("fade_in", "fade_out"))
TWO_PHASE = ("zoom_then_dim", "dim_then_zoom")
"""Two phases in either order: zoom in, then dim to a third of the light, or the reverse. The
first frames (wide, bright) and the last (close-up, dim) look alike in both, so the late −
early trend cannot tell them apart; what differs is which change came first (and so whether
the middle is a bright close-up or a dim wide view)."""
APPEARANCE = {"texture": ("brick", "grass", "gravel"), "sky": ("hubble_deep_field", "moon")}
SCENES = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "immunohistochemistry", "coins",
    "retina", "cell", "clock", "colorwheel", "page", "text", "stereo_motorcycle",
)  # fmt: skip
CLASSES = tuple(c for pair in ORDER_PAIRS for c in pair) + TWO_PHASE + tuple(APPEARANCE)
GENERATOR_VERSION = "2"
"""Bump when the clips change, so an old feature cache is not reused."""
DEFAULT_RUNS = (
    "old", "meanpool", "trend", "delta", "lstm", "gru", "bigru", "delta_lstm", "delta_gru",
)  # fmt: skip


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as RGB float32 in [0, 1]."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo pairs
        image = image[0]
    image = np.asarray(image, dtype=np.float32)
    if image.max() > 1.0:
        image = image / 255.0
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3]


def crop_resize(image: np.ndarray, cy: float, cx: float, side: float) -> np.ndarray:
    """The square window of ``side`` px centred at ``(cy, cx)``, resized to SIZE×SIZE."""
    from skimage.transform import resize

    half = side / 2
    top = round(float(np.clip(cy - half, 0, image.shape[0] - side)))
    left = round(float(np.clip(cx - half, 0, image.shape[1] - side)))
    window = image[top : top + int(side), left : left + int(side)]
    return resize(window, (SIZE, SIZE), order=1, anti_aliasing=True).astype(np.float32)


def _ramp(rng: np.random.Generator, frames: int) -> np.ndarray:
    """0 → 1 over the clip with a random start/end plateau (the effect does not fill it)."""
    start = rng.uniform(0.0, 0.25)
    end = rng.uniform(0.75, 1.0)
    t = np.linspace(0.0, 1.0, frames)
    return np.clip((t - start) / (end - start), 0.0, 1.0)


def render_clip(kind: str, photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[T, SIZE, SIZE, 3]`` frames of one clip of ``kind`` ("forward" direction).

    ``zoom`` zooms in, ``focus`` comes into focus, ``fade`` fades in, ``pan`` pans slowly;
    the reverse classes are the frames reversed (of another random draw).
    """
    from scipy.ndimage import gaussian_filter

    frames = int(rng.integers(16, 29))
    ramp = _ramp(rng, frames)
    short = min(photo.shape[:2])
    side = rng.uniform(0.55, 1.0) * short
    cy = rng.uniform(side / 2, photo.shape[0] - side / 2)
    cx = rng.uniform(side / 2, photo.shape[1] - side / 2)
    out = []
    if kind == "zoom":
        factor = rng.uniform(2.0, 3.5)
        sides = side * factor ** (-ramp)
        out = [crop_resize(photo, cy, cx, s) for s in sides]
    elif kind == "pan":
        angle = rng.uniform(0, 2 * np.pi)
        side = 0.5 * short
        span = rng.uniform(0.1, 0.3) * short
        for r in ramp:
            out.append(
                crop_resize(
                    photo, cy + span * r * np.sin(angle), cx + span * r * np.cos(angle), side
                )
            )
    elif kind in TWO_PHASE:
        factor = rng.uniform(2.0, 3.5)
        dim = rng.uniform(0.25, 0.45)
        split = rng.uniform(0.4, 0.6)  # where the first phase hands over to the second
        first, second = np.clip(ramp / split, 0, 1), np.clip((ramp - split) / (1 - split), 0, 1)
        zoom, fade = (first, second) if kind == "zoom_then_dim" else (second, first)
        for z, f in zip(zoom, fade, strict=True):
            out.append(crop_resize(photo, cy, cx, side * factor ** (-z)) * (1 - (1 - dim) * f))
    else:
        base = crop_resize(photo, cy, cx, side)
        if kind == "focus":
            sigma = rng.uniform(3.0, 6.0) * (1.0 - ramp)
            out = [gaussian_filter(base, (s, s, 0)) if s > 0 else base for s in sigma]
        elif kind == "fade":
            low = rng.uniform(0.0, 0.2)
            out = [base * (low + (1 - low) * r) for r in ramp]
        else:
            raise ValueError(kind)
    return (np.clip(np.stack(out), 0, 1) * 255).round().astype(np.uint8)


def make_clips(seed: int = 0):
    """Yield ``(class index, split, frames)`` for every pool clip, deterministic in ``seed``."""
    photos = {name: load_photo(name) for name in SCENES}
    for label, name in enumerate(CLASSES):
        rng = np.random.default_rng([seed, label])
        for split, count in POOLS.items():
            for _ in range(count):
                if name in APPEARANCE:
                    source = APPEARANCE[name][int(rng.integers(len(APPEARANCE[name])))]
                    photo = photos.get(source)
                    if photo is None:
                        photo = photos[source] = load_photo(source)
                    yield label, split, render_clip("pan", photo, rng)
                    continue
                photo = photos[SCENES[int(rng.integers(len(SCENES)))]]
                if name in TWO_PHASE:
                    yield label, split, render_clip(name, photo, rng)
                    continue
                kind, direction = name.split("_")
                clip = render_clip(kind, photo, rng)
                yield label, split, clip[::-1] if direction == "out" else clip


def default_weights() -> str:
    """The first real ImageNet weights file found, else :data:`RANDOM_WEIGHTS`."""
    found = [p for p in WEIGHTS_CANDIDATES if p.is_file()]
    return str(found[0]) if found else RANDOM_WEIGHTS


def extract_features(weights: str, cache: Path) -> dict[str, list]:
    """Per-split lists of ``[T, 1280]`` float16 features and labels, cached in ``cache``."""
    if cache.is_file():
        data = np.load(cache)
        print(f"features: cached {cache}", file=sys.stderr)
        return _unpack(data)
    from pipeline.backbone import build_backbone, make_inference_fn, parse_weights

    started = time.perf_counter()
    model = build_backbone(parse_weights(weights), SIZE)
    infer = make_inference_fn(model)
    arrays: dict[str, list] = {f"{s}_{k}": [] for s in POOLS for k in ("features", "labels")}
    for label, split, clip in make_clips():
        features = np.concatenate(
            [np.asarray(infer(clip[i : i + 32])) for i in range(0, len(clip), 32)]
        )
        arrays[f"{split}_features"].append(features.astype(np.float16))
        arrays[f"{split}_labels"].append(label)
    packed = {}
    for split in POOLS:
        lengths = [len(f) for f in arrays[f"{split}_features"]]
        packed[f"{split}_features"] = np.concatenate(arrays[f"{split}_features"])
        packed[f"{split}_lengths"] = np.array(lengths)
        packed[f"{split}_labels"] = np.array(arrays[f"{split}_labels"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **packed)
    print(
        f"features: extracted in {time.perf_counter() - started:.0f} s → {cache}", file=sys.stderr
    )
    return _unpack(packed)


def _unpack(data) -> dict[str, list]:
    out = {}
    for split in POOLS:
        bounds = np.cumsum([0, *data[f"{split}_lengths"]])
        feats = data[f"{split}_features"]
        out[split] = (
            [feats[a:b] for a, b in itertools.pairwise(bounds)],
            np.asarray(data[f"{split}_labels"]),
        )
    return out


def cache_path(cache_dir: Path, weights: str) -> Path:
    """The feature cache for these weights (a file by content) and this clip generator version."""
    if weights == RANDOM_WEIGHTS:
        digest = RANDOM_WEIGHTS.replace(":", "")
    else:
        digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:12]
    return cache_dir / f"bench_heads_v{GENERATOR_VERSION}_{SIZE}px_{digest}.npz"


def parse_run(spec: str) -> tuple[str, dict]:
    """``"label"`` or ``"label=head:key=value,key=value"`` → (label, TrainConfig overrides).

    A bare label is a head name with the current defaults; ``old`` stands for the recipe
    before issue #18 (lstm, no normalization, 30 epochs of one pass, batch 32, patience 5).
    The ``trend`` baseline is always standardized (normalization forced on).
    """
    from pipeline.train_config import TrainConfig

    if spec == "old":
        return spec, {
            "head": "lstm",
            "normalize": False,
            "epochs": 30,
            "min_epoch_sequences": 0,
            "batch_size": 32,
            "patience": 5,
            "projection": 0,
            "input_dropout": 0.0,
            "dropout": 0.0,
            "weight_decay": 0.0,
            "units": 64,
            "dense_units": 32,
            "learning_rate": 1e-3,
        }
    if "=" not in spec or ":" not in spec.split("=", 1)[1]:
        return spec, {"head": spec, **({"normalize": True} if spec == "trend" else {})}
    label, rest = spec.split("=", 1)
    head, _, options = rest.partition(":")
    types = {f: type(getattr(TrainConfig(), f)) for f in TrainConfig().to_dict()}
    overrides: dict = {"head": head}
    for item in filter(None, options.split(",")):
        key, value = item.split("=")
        cast = types[key]
        overrides[key] = value.lower() in ("1", "true", "yes") if cast is bool else cast(value)
    return label, overrides


def draw(pool: tuple[list, np.ndarray], per_class: int, rng: np.random.Generator):
    """``per_class`` random clips of every class from a pool: (features list, labels)."""
    videos, labels = pool
    chosen = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
            for c in range(len(CLASSES))
        ]
    )
    return [videos[i] for i in chosen], labels[chosen]


def run_once(overrides: dict, data: dict, shots: int, seed: int) -> tuple[float, float]:
    """Test top-1 of one head trained on ``shots`` clips per class drawn with ``seed``, and
    its accuracy on the two-phase pair's test clips."""
    from pipeline import heads
    from pipeline.join import SplitData
    from pipeline.sequences import eval_sequences
    from pipeline.train_config import TrainConfig
    from pipeline.training import fit_config

    rng = np.random.default_rng([seed, shots])
    train_videos, train_labels = draw(data["train"], shots, rng)
    val_videos, val_labels = draw(data["val"], max(2, shots // 3), rng)
    config = replace(TrainConfig(seq_len=SEQ_LEN, seed=seed), **overrides)
    config.validate()
    validation = (*eval_sequences(val_videos, SEQ_LEN), val_labels)
    train = SplitData(videos=[], features=train_videos, targets=train_labels)
    model, _ = fit_config(config, train, validation, len(CLASSES), train_videos[0].shape[1])
    test_videos, test_labels = data["test"]
    probs = heads.predict_proba(model, *eval_sequences(test_videos, SEQ_LEN))
    right = probs.argmax(axis=1) == test_labels
    two_phase = np.isin(test_labels, [CLASSES.index(c) for c in TWO_PHASE])
    return float(np.mean(right)), float(np.mean(right[two_phase]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--weights", default=default_weights(),
        help=f"backbone weights file (default: the shared ImageNet file, else {RANDOM_WEIGHTS})",
    )  # fmt: skip
    parser.add_argument("--cache", type=Path, default=Path("/tmp") / "vrnn-bench-heads")
    parser.add_argument(
        "--heads", default=",".join(DEFAULT_RUNS),
        help="comma-separated runs: a head name (current defaults), 'old' (the pre-#18 "
        "default recipe) or label=head:key=value,... (TrainConfig overrides, ';'-separated)",
    )  # fmt: skip
    parser.add_argument("--shots", default="5,10,30", help="train clips per class")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the raw accuracies here")
    args = parser.parse_args(argv)
    try:
        import skimage  # noqa: F401
    except ImportError:
        print("skipped: scikit-image is not installed (pip install -e '.[dev]')")
        return 0
    import keras

    keras.utils.disable_interactive_logging()
    data = extract_features(args.weights, cache_path(args.cache, args.weights))
    runs = [parse_run(spec) for spec in args.heads.split(";" if ";" in args.heads else ",")]
    shots = [int(n) for n in args.shots.split(",")]
    results: dict[str, dict[int, list[tuple[float, float]]]] = {}
    seconds: dict[str, float] = {}
    for label, overrides in runs:
        results[label] = {}
        started = time.perf_counter()
        for n in shots:
            scores = [run_once(overrides, data, n, seed) for seed in range(args.seeds)]
            results[label][n] = scores
            top1 = [s[0] for s in scores]
            print(
                f"{label:>12} {n:>3}/class: {np.mean(top1):.3f} ± {_sd(top1):.3f}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        seconds[label] = time.perf_counter() - started
    print(table(results, shots, args.seeds, seconds, args.weights))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def table(
    results: dict[str, dict[int, list[tuple[float, float]]]],
    shots: list[int],
    seeds: int,
    seconds: dict[str, float],
    weights: str,
) -> str:
    """Markdown table: one row per run, test top-1 mean ± sd per clips-per-class, the
    two-phase pair's accuracy at the middle shot count, and the row's training wall time."""
    chance = 1 / len(CLASSES)
    middle = shots[len(shots) // 2]
    features = (
        "SEEDED RANDOM backbone (no ImageNet weights found: not real features)"
        if weights == RANDOM_WEIGHTS
        else "real ImageNet MobileNetV2"
    )
    lines = [
        f"test top-1, {len(CLASSES)} classes (chance {chance:.3f}), mean ± sd over {seeds} "
        f"seeds, {POOLS['test']} test clips per class; features: {features} at {SIZE} px",
        "",
        "| head | "
        + " | ".join(f"{n} clips/class" for n in shots)
        + f" | two-phase pair @ {middle} | train s |",
        "|---|" + "---:|" * (len(shots) + 2),
    ]
    for label, by_shots in results.items():
        cells = [
            f"{np.mean([s[0] for s in by_shots[n]]):.3f} ± {_sd([s[0] for s in by_shots[n]]):.3f}"
            for n in shots
        ]
        cells.append(f"{np.mean([s[1] for s in by_shots[middle]]):.3f}")
        cells.append(f"{seconds[label]:.0f}")
        name = f"{label} (order-blind floor)" if label == "meanpool" else label
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
