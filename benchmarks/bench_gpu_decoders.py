"""Stage 1 with a fast backbone: extract fr/s with 1, 2, 4, 8 decoder threads (a GPU table).

Run:  python benchmarks/bench_gpu_decoders.py [--decoders 1,2,4,8] [--size 224]
          [--clips 8] [--frames 150] [--batch-size 32] [--json OUT.json]

Runs stage 1's engine, ``featurize.extract_items`` (N decoder threads taking whole videos,
biggest first, feeding one batcher that cuts batches across videos; the backbone; one part
file per video), on real-sized H.264 clips (``--clips`` at 640×360 and as many at 1280×720,
texture and motion) with a seeded random MobileNetV2 (the same compute as ImageNet weights).
Per decoder count, in one process: extract fr/s; plain PyAV decoding of the same files with
as many threads (the most that many decoders can deliver); and the backbone alone on a
ready batch (the most the accelerator can take). extract ≈ min(decode, backbone) means the
decoders keep the backbone fed or the backbone is the limit, as the case may be.

``--breakdown`` then splits the CPU side, per count N: the engine with a backbone that costs
nothing (zeros), and the reader alone (decode + scaling to the input size + ``to_ndarray``,
``VideoReader.chunks``) in N threads and in N processes: whether threads or processes feed
more, and what the CPU can deliver at all.

Runs on whichever Keras backend is installed: with TensorFlow, ``vrnn extract``'s own
compiled inference function (:func:`pipeline.backbone.make_inference_fn`); with JAX (where
no TensorFlow GPU build can be installed) a ``jax.jit`` of the same Keras model, batches
padded to ``--batch-size`` so that one compiled shape serves every call. The store commit
and Dask are not part of it: they do not change with the decoder count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from real_clips import make_real_sized_videos, raw_decode_fps, read_as_extract

WEIGHTS = "random:seed=0"


def inference_fn(model, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 ``[B, S, S, 3]`` → float32 ``[B, 1280]`` on the installed Keras backend."""
    import keras

    if keras.backend.backend() == "tensorflow":
        from pipeline.backbone import make_inference_fn

        return make_inference_fn(model)
    import jax

    compiled = jax.jit(lambda frames: model(frames, training=False))

    def run(frames: np.ndarray) -> np.ndarray:
        padded = np.zeros((batch_size, *frames.shape[1:]), np.uint8)
        padded[: len(frames)] = frames
        return np.asarray(compiled(padded))[: len(frames)]

    return run


def backbone_fps(infer: Callable[[np.ndarray], np.ndarray], batch_size: int, size: int) -> float:
    """Frames/s of the backbone alone, on one ready batch (results fetched each call)."""
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), np.uint8)
    infer(batch)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < 3.0:
        infer(batch)
        calls += 1
    return calls * batch_size / (time.perf_counter() - started)


def extract_fps(videos: list[Path], config, infer, batch_size: int, decoders: int) -> float:
    """Frames/s of ``featurize.extract_items`` over ``videos`` with ``decoders`` threads."""
    from pipeline.featurize import WorkItem, extract_items

    items = [WorkItem(str(p), f"v{i:04d}", f"{i:064x}") for i, p in enumerate(videos)]
    with tempfile.TemporaryDirectory() as parts:
        result = extract_items(
            items, config=config, infer=infer, parts_dir=Path(parts), batch_size=batch_size,
            decoders=decoders,
        )  # fmt: skip
    if result.failed:
        raise RuntimeError(f"{len(result.failed)} clips failed: {result.failed[0]}")
    return result.frames / result.seconds


def reader_fps(videos: list[Path], size: int, workers: int, processes: bool) -> float:
    """Frames/s of ``VideoReader`` alone, ``workers`` threads or processes taking whole files."""
    import functools
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    read = functools.partial(read_as_extract, size=size)
    if processes:  # spawned (no fork of a JAX process); started and warmed before the clock
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.map(read, videos[:1] * workers, chunksize=1)
            started = time.perf_counter()
            frames = sum(pool.map(read, videos, chunksize=1))
        return frames / (time.perf_counter() - started)
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        frames = sum(pool.map(read, videos))
    return frames / (time.perf_counter() - started)


def breakdown(videos: list[Path], config, args: argparse.Namespace) -> list[dict]:
    """Per decoder count: the engine with a free backbone, the reader in threads/processes."""
    from pipeline.contracts import FEATURE_DIM

    free = lambda frames: np.zeros((len(frames), FEATURE_DIM), np.float32)  # noqa: E731
    print(
        f"{'N':>9} {'engine, free backbone':>22} {'reader, N threads':>18} "
        f"{'reader, N processes':>20}"
    )
    rows = []
    for count in args.decoders:
        row = {
            "decoders": count,
            "engine_free_backbone_fps": extract_fps(videos, config, free, args.batch_size, count),
            "reader_threads_fps": reader_fps(videos, args.size, count, processes=False),
            "reader_processes_fps": reader_fps(videos, args.size, count, processes=True),
        }
        rows.append(row)
        print(
            f"{count:>9} {row['engine_free_backbone_fps']:>22.0f} "
            f"{row['reader_threads_fps']:>18.0f} {row['reader_processes_fps']:>20.0f}",
            flush=True,
        )
    return rows


def describe_device() -> str:
    """The accelerator (or CPU) and the software, one line."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
        version = f"JAX {jax.__version__}"
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        devices = f"{len(gpus)} GPU(s)" if gpus else platform.processor() or "CPU"
        version = f"TensorFlow {tf.__version__}"
    return (
        f"{devices}; {os.cpu_count()} CPU cores; Keras {keras.__version__} on {version}, "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--decoders", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2, 4, 8],
        help="decoder counts to run, comma-separated",
    )  # fmt: skip
    parser.add_argument("--size", type=int, default=224, help="backbone input side")
    parser.add_argument("--clips", type=int, default=8, help="clips per resolution")
    parser.add_argument("--frames", type=int, default=150, help="frames per clip")
    parser.add_argument("--batch-size", type=int, default=32, help="frames per backbone call")
    parser.add_argument("--breakdown", action="store_true", help="also split the CPU side")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    from pipeline.backbone import build_backbone, fingerprint, parse_weights
    from pipeline.contracts import ExtractorConfig

    model = build_backbone(parse_weights(WEIGHTS), args.size)
    config = ExtractorConfig(
        weights=WEIGHTS, weights_sha256=fingerprint(model), input_size=args.size
    )
    infer = inference_fn(model, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        videos = make_real_sized_videos(Path(tmp), args.clips, args.frames)
        extract_fps(videos[:1], config, infer, args.batch_size, 1)  # compile, warm caches
        top = backbone_fps(infer, args.batch_size, args.size)
        print(f"# {describe_device()}")
        print(
            f"# {args.clips} × 640×360 + {args.clips} × 1280×720 H.264 clips × {args.frames} "
            f"frames, input {args.size}, batch {args.batch_size}; backbone alone {top:.0f} fr/s"
        )
        print(f"{'decoders':>9} {'raw decode fr/s':>16} {'extract fr/s':>13} {'of backbone':>12}")
        rows = []
        for count in args.decoders:
            raw = raw_decode_fps(videos, count)
            fps = extract_fps(videos, config, infer, args.batch_size, count)
            rows.append({"decoders": count, "raw_decode_fps": raw, "extract_fps": fps})
            print(f"{count:>9} {raw:>16.0f} {fps:>13.0f} {fps / top:>12.2f}", flush=True)
        split = breakdown(videos, config, args) if args.breakdown else []
    if args.json:
        report = {"device": describe_device(), "backbone_fps": top, "rows": rows, **vars(args)}
        report["breakdown"] = split
        args.json.write_text(json.dumps(report, default=str, indent=1))


if __name__ == "__main__":
    main()
