"""Stage-2 speed: an epoch of the end-to-end design vs an epoch of the head on cached features.

Run:  python benchmarks/bench_train.py [--clips 512] [--manifest M.csv --store F.h5]

* end to end — the seed design: ``TimeDistributed`` frozen MobileNetV2 (64×64, random
  weights, ``trainable=False``) under LSTM(64) → Dense(32) → softmax, trained on raw clips;
* head only — the ``lstm`` head (the seed design's head) on cached 1280-d float16 features
  of the same clips (``TrainingSampler`` batches, as ``vrnn train`` feeds them);
* same clip count, frames per clip and batch size; steady-state epoch times (the first epoch,
  which traces the graph, is reported separately; medians of the rest, wall and CPU
  seconds); ratio = end to end / head only (target ≥ 100×). Random data: this measures
  time, not accuracy.

Both are compute-bound on CPU: per clip, the frozen backbone's forward pass at 64×64 costs
~25 MMAC × 10 frames, the LSTM(64) head's forward + backward over 1280-d inputs ~7–10 MMAC,
so ~25–35× is the ceiling at 64×64; the ratio grows with the square of ``--size``.

With ``--manifest`` and ``--store``, also the wall time of ``vrnn train``'s library call with
default options (the ``delta`` head, early stopping on the manifest's val split) on that store.

With ``--scale --work DIR``: stage 2 at scale instead, in memory vs streaming on synthetic
UCF101-shaped stores (see ``bench_streaming.py``); with ``--scale --append-one --videos N``,
the frame cache's work for a streaming train before and after one more video is committed.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

FRAMES = 10
CLASSES = 10


def hardware() -> str:
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpu = platform.processor() or platform.machine()
    return (
        f"{cpu}, {os.cpu_count()} cores, {len(gpus)} GPU(s); Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )


def now() -> np.ndarray:
    """``[wall, cpu]`` seconds: CPU time (all threads) is less sensitive to other load."""
    return np.array([time.perf_counter(), time.process_time()])


def end_to_end_epochs(clips: int, batch_size: int, epochs: int, size: int) -> list[np.ndarray]:
    """``[wall, cpu]`` s per epoch of the seed's design on random ``[clips, 10, size, size, 3]``."""
    import keras

    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(
        include_top=False, pooling="avg", weights=None, input_shape=(size, size, 3)
    )
    backbone.trainable = False
    inputs = keras.Input((FRAMES, size, size, 3))
    x = keras.layers.TimeDistributed(backbone)(inputs)
    x = keras.layers.LSTM(64)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    videos = rng.uniform(-1, 1, (clips, FRAMES, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, CLASSES, clips)
    stamps: list[np.ndarray] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: stamps.append(now()),
        on_epoch_end=lambda epoch, logs: stamps.append(now()),
    )
    model.fit(videos, labels, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[timer])
    return [end - begin for begin, end in zip(stamps[::2], stamps[1::2], strict=True)]


def head_only_epochs(clips: int, batch_size: int, epochs: int) -> list[np.ndarray]:
    """``[wall, cpu]`` s per epoch of the ``lstm`` head on random float16 features."""
    from pipeline import fit, heads
    from pipeline.sequences import TrainingSampler
    from pipeline.train_config import TrainConfig

    rng = np.random.default_rng(0)
    videos = [rng.uniform(0, 6, (FRAMES, 1280)).astype(np.float16) for _ in range(clips)]
    labels = rng.integers(0, CLASSES, clips)
    fit.set_seed(0)
    model = heads.build_head(TrainConfig(head="lstm", seq_len=FRAMES), num_classes=CLASSES)
    sampler = TrainingSampler(videos, labels, seq_len=FRAMES, batch_size=batch_size, seed=0)
    stamps = [now()]  # the first epoch also includes tracing, as above
    fit.fit_head(
        model,
        sampler,
        None,
        epochs=epochs,
        patience=0,
        on_epoch=lambda e, logs: stamps.append(now()),
    )
    return list(np.diff(stamps, axis=0))


def time_to_train(manifest: Path, store: Path) -> str:
    """Train the default head on a real store to early stop; one summary line."""
    from pipeline.manifest import read_manifest
    from pipeline.train_config import TrainConfig
    from pipeline.training import train

    records = read_manifest(manifest)
    config = TrainConfig()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(records, store, Path(tmp) / "model", config)
        seconds = time.perf_counter() - start
    val_accuracy = result.history[result.best_epoch - 1].get("val_accuracy", float("nan"))
    return (
        f"default head ({config.head}, seq_len {config.seq_len}, batch {config.batch_size}) on "
        f"{result.counts['train']} train / {result.counts['val']} val videos, "
        f"{len(result.labels)} classes: {seconds:.1f} s wall for {len(result.history)} epochs "
        f"(kept epoch {result.best_epoch}, val_accuracy {val_accuracy:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=512, help="clips per epoch (≥ 512)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="end-to-end input side, pixels")
    parser.add_argument("--e2e-epochs", type=int, default=3, help="first one traces")
    parser.add_argument("--head-epochs", type=int, default=6, help="first one traces")
    parser.add_argument("--manifest", type=Path, help="manifest for the time-to-train run")
    parser.add_argument("--store", type=Path, help="feature store for the time-to-train run")
    parser.add_argument("--scale", action="store_true", help="in memory vs streaming at scale")
    parser.add_argument("--work", type=Path, help="--scale: where the stores are built (kept)")
    parser.add_argument("--videos", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--epochs", type=int, default=3, help="--scale: epochs per run")
    parser.add_argument("--breakdown", action="store_true", help="--scale: per-step costs only")
    parser.add_argument("--no-recipe", action="store_true", help="--scale: table rows only")
    parser.add_argument(
        "--append-one",
        action="store_true",
        help="--scale: frame-cache work of a streaming train before/after a 1-video commit",
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.scale:
        from bench_streaming import append_one
        from bench_streaming import main as scale

        if args.append_one:
            append_one(args.work or Path(tempfile.mkdtemp()), args.videos[0], args.epochs)
            return
        scale(
            args.work or Path(tempfile.mkdtemp()),
            args.videos,
            args.epochs,
            args.breakdown,
            recipe=not args.no_recipe,
        )
        return

    print(f"hardware: {hardware()}")
    print(
        f"params: {args.clips} clips × {FRAMES} frames, {args.size}×{args.size} input, batch "
        f"{args.batch_size}, {CLASSES} classes, LSTM(64) → Dense(32) → softmax"
    )
    e2e = end_to_end_epochs(args.clips, args.batch_size, args.e2e_epochs, args.size)
    head = head_only_epochs(args.clips, args.batch_size, args.head_epochs)
    e2e_epoch, head_epoch = np.median(e2e[1:], axis=0), np.median(head[1:], axis=0)
    rows = [
        ("end to end (frozen MobileNetV2 + LSTM)", e2e[0], e2e_epoch),
        ("head only (cached features, lstm)", head[0], head_epoch),
    ]
    header = f"{'design':<40} {'1st epoch s':>12} {'epoch s':>9} {'epoch cpu s':>12} {'clips/s':>8}"
    print(f"\n{header}")
    for name, first, epoch in rows:
        print(
            f"{name:<40} {first[0]:>12.2f} {epoch[0]:>9.3f} {epoch[1]:>12.3f} "
            f"{args.clips / epoch[0]:>8.0f}"
        )
    wall, cpu = e2e_epoch / head_epoch
    print(f"\nspeed-up per epoch: {wall:.0f}× wall, {cpu:.0f}× CPU time (target ≥ 100×)")
    if args.manifest and args.store:
        print(f"time to train: {time_to_train(args.manifest, args.store)}")


if __name__ == "__main__":
    main()
