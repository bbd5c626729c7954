"""Stage-1 throughput: pure backbone forward vs end-to-end ``extract``, side by side.

Run:  python benchmarks/bench_extract.py [--sizes 224,112,64] [--weights random|PATH]
      python benchmarks/bench_extract.py --decode-bound [--decoders 1,auto]

For each input size, in one process and alternating so machine noise hits both alike:
  * backbone fr/s — the same compiled inference function on batches of random uint8 frames;
  * extract fr/s  — ``run_extraction`` on real encoded files (decode, resize, infer, write);
  * ratio = extract / backbone (targets: ≥ 0.90 at 224 and 112, ≥ 0.80 at 64).
Then: rerun time on the unchanged dataset as a fraction of the full run, stored bytes per
frame, and peak RSS of a subprocess extracting one long 320×240 video.

``--decode-bound``: input 32 (inference is cheap, decoding is the cost) on real-sized H.264
clips with texture and motion (640×360 and 1280×720). Per ``--decoders`` value, alternating:
  * raw decode fr/s — plain PyAV decoding of the same files, one Python thread per core
    (``thread_type="AUTO"``, frames not even converted): what the hardware can decode;
  * extract fr/s — ``run_extraction`` with that many decoder threads;
  * ratio = extract / raw decode (target ≥ 0.90);
  * CPU ms/frame of both (process CPU time: on a saturated, shared machine the ratio tends to
    raw CPU / extract CPU), and once, single-threaded, where ``extract``'s extra CPU goes:
    the bare decode, the reader (decode + FFmpeg scaling to the input size + Python), and
    the backbone at input 32 — their sum bounds the ratio reachable at full CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from real_clips import make_real_sized_videos, raw_decode_fps, read_as_extract

from pipeline.backbone import backbone_for
from pipeline.encode import write_video
from pipeline.extract import ExtractOptions, run_extraction
from pipeline.store import backbone_sidecar, open_store


def make_videos(root: Path, count: int, frames: int) -> list[Path]:
    """Real H.264/MPEG-4/VP9/MJPEG files, 320×240, smooth moving content."""
    suffixes = [".mp4", ".avi", ".webm", ".mkv"]
    ys, xs = np.mgrid[0:240, 0:320]
    paths = []
    for i in range(count):
        t = np.arange(frames)[:, None, None]
        red = (128 + 100 * np.sin((xs + 4 * t + 30 * i) / 40)).astype(np.uint8)
        green = (128 + 100 * np.cos((ys - 3 * t) / 25)).astype(np.uint8)
        blue = np.broadcast_to(((xs + ys + 2 * t) % 256).astype(np.uint8), red.shape)
        video = np.stack([red, green, blue], axis=-1)
        paths.append(write_video(root / f"v{i}{suffixes[i % 4]}", video, fps=25))
    return paths


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, all threads."""
    times = os.times()
    return times.user + times.system


def cpu_ms_per_frame(work, frames: int) -> float:
    """Process CPU milliseconds per frame spent by ``work()``."""
    started = cpu_seconds()
    work()
    return 1000 * (cpu_seconds() - started) / frames


def cpu_breakdown(videos: list[Path], options: ExtractOptions, total: int) -> dict:
    """Single-threaded CPU ms/frame of each stage ``extract`` adds to a bare decode."""
    import av

    from pipeline.backbone import build_backbone, make_inference_fn, parse_weights
    from pipeline.decoder_thread import DECODER_THREAD_TYPE

    def bare() -> None:
        for path in videos:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = DECODER_THREAD_TYPE
                for _ in container.decode(stream):
                    pass

    def reader() -> None:
        for path in videos:
            read_as_extract(path, options.input_size)

    size = options.input_size
    infer = make_inference_fn(build_backbone(parse_weights(options.weights), size))
    batch = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), np.uint8)
    infer(batch)

    def backbone() -> None:
        for _ in range(total // 32):
            infer(batch)

    return {
        "decode": cpu_ms_per_frame(bare, total),
        "reader": cpu_ms_per_frame(reader, total),
        "backbone": cpu_ms_per_frame(backbone, total // 32 * 32),
    }


def decode_bound(args: argparse.Namespace, root: Path) -> dict:
    """Extract at input 32 vs raw PyAV decode of the same real-sized clips, side by side."""
    from pipeline.featurize import auto_decoders, parse_decoders

    videos = make_real_sized_videos(root, args.real_clips, args.real_frames)
    total = 2 * args.real_clips * args.real_frames
    cores = len(os.sched_getaffinity(0))
    print(
        f"# decode-bound: {args.real_clips} × 640×360 + {args.real_clips} × 1280×720 H.264 "
        f"clips × {args.real_frames} frames, input 32, {cores} cores "
        f"(raw decode: {cores} threads), load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'decoders':>9} {'raw decode fr/s':>16} {'extract fr/s':>13} {'ratio':>6} "
        f"{'raw CPU ms/fr':>14} {'extract CPU ms/fr':>18}"
    )
    results = {}
    for text in args.decoders.split(","):
        decoders = parse_decoders(text) or auto_decoders()
        options = ExtractOptions(weights=args.weights, input_size=32, decoders=decoders)
        store = root / f"d{text}" / "features.h5"
        store.parent.mkdir()
        raw, e2e, raw_cpu, e2e_cpu = [], [], [], []
        for _ in range(args.repeats):
            started = cpu_seconds()
            raw.append(raw_decode_fps(videos, cores))
            raw_cpu.append(1000 * (cpu_seconds() - started) / total)
            # CPU from the plan (hashing and the backbone build done) to the commit: the
            # span that extract fr/s measures.
            planned: list[float] = []
            report = extract_once(
                videos, store, options, on_plan=lambda _, at=planned: at.append(cpu_seconds())
            )
            e2e_cpu.append(1000 * (cpu_seconds() - planned[0]) / total)
            assert report.frames == total, report
            e2e.append(report.frames_per_sec)
        ratios = [e / r for e, r in zip(e2e, raw, strict=True)]
        label = f"{text}={decoders}" if text == "auto" else text
        print(
            f"{label:>9} {max(raw):>16.0f} {max(e2e):>13.0f} {max(e2e) / max(raw):>6.2f} "
            f"{min(raw_cpu):>14.2f} {min(e2e_cpu):>18.2f}"
            f"   (ratio per repeat: {', '.join(f'{r:.2f}' for r in ratios)})"
        )
        results[label] = {
            "raw_fps": raw,
            "extract_fps": e2e,
            "ratios": ratios,
            "raw_cpu_ms": raw_cpu,
            "extract_cpu_ms": e2e_cpu,
        }
    parts = cpu_breakdown(videos, options, total)
    ceiling = parts["decode"] / (parts["reader"] + parts["backbone"])
    print(
        f"single-threaded CPU ms/frame: bare decode {parts['decode']:.2f}, reader (decode + "
        f"scale + Python) {parts['reader']:.2f}, backbone at {options.input_size} "
        f"{parts['backbone']:.2f}; "
        f"ratio ceiling at full CPU, before writes: {ceiling:.2f}"
    )
    results["cpu_breakdown_ms"] = parts | {"ceiling": ceiling}
    print(f"# load average after: {os.getloadavg()[0]:.1f}")
    return results


def pure_backbone_fps(infer, size: int, batch: int, frames: int) -> float:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    infer(data)  # warm
    started = time.perf_counter()
    for _ in range(max(1, frames // batch)):
        infer(data)
    return (frames // batch) * batch / (time.perf_counter() - started)


def extract_once(videos: list[Path], store: Path, options: ExtractOptions, **kwargs):
    for stale in store.parent.glob(store.stem + "*"):  # the store, its sidecars and dirs
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    return run_extraction(videos, store, options, **kwargs)


def long_video_rss(minutes: float, size: int, weights: str, root: Path) -> tuple[float, int]:
    """Peak RSS (GB) of a child process extracting one ``minutes``-long 320×240 video."""
    frames = int(minutes * 60 * 30)
    path = root / "long.mp4"
    ys, xs = np.mgrid[0:240, 0:320]
    chunk = 300
    import av

    with av.open(str(path), "w") as container:  # streamed: never holds the video in memory
        stream = container.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for start in range(0, frames, chunk):
            t = np.arange(start, min(start + chunk, frames))[:, None, None]
            gray = ((xs + ys + 3 * t) % 256).astype(np.uint8)
            for image in np.stack([gray, gray[:, ::-1], gray], axis=-1):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    # VmHWM, not getrusage: Linux carries ru_maxrss over fork + exec, so a child started
    # by this (large) benchmark process would report the parent's high-water mark.
    code = (
        "from pathlib import Path;"
        "from pipeline.extract import ExtractOptions, run_extraction;"
        f"r = run_extraction([Path({str(path)!r})], Path({str(root / 'long.h5')!r}),"
        f" ExtractOptions(weights={weights!r}, input_size={size}));"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
        "print(r.frames, hwm)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    done, rss_kb = map(int, out.stdout.split()[-2:])
    return rss_kb / 1e6, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,112,64")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--frames", type=int, default=200, help="frames per video")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--long-minutes", type=float, default=20.0)
    parser.add_argument("--long-size", type=int, default=112)
    parser.add_argument("--decode-bound", action="store_true", help="only the decode-bound mode")
    parser.add_argument("--decoders", default="1,auto", help="decode-bound: values to compare")
    parser.add_argument("--real-clips", type=int, default=3, help="decode-bound: clips per size")
    parser.add_argument("--real-frames", type=int, default=120, help="decode-bound: per clip")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        if args.decode_bound:
            print(json.dumps(decode_bound(args, root)))
            return
        videos = make_videos(root, args.videos, args.frames)
        total = args.videos * args.frames
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"python {platform.python_version()}; {args.videos} videos × {args.frames} frames "
            f"(320×240, 4 codecs), batch {args.batch_size}, weights {args.weights}"
        )
        print(
            f"{'size':>5} {'backbone fr/s':>14} {'extract fr/s':>13} {'ratio':>6} "
            f"{'rerun/full':>11} {'bytes/frame':>12}"
        )
        results = {}
        for size in [int(s) for s in args.sizes.split(",")]:
            options = ExtractOptions(
                weights=args.weights, input_size=size, batch_size=args.batch_size
            )
            store = root / f"s{size}" / "features.h5"
            store.parent.mkdir()
            pure, e2e, full_seconds = [], [], []
            for _ in range(args.repeats):
                report = extract_once(videos, store, options)
                assert report.frames == total, report
                e2e.append(report.frames_per_sec)
                full_seconds.append(report.seconds)
                with open_store(store) as s:
                    infer = backbone_for(s.config, backbone_sidecar(store))
                pure.append(pure_backbone_fps(infer, size, args.batch_size, total))
            started = time.perf_counter()
            rerun = run_extraction(videos, store, options)
            rerun_seconds = time.perf_counter() - started
            assert rerun.extracted == 0
            frames_bytes = store.stat().st_size / total
            ratio = max(e2e) / max(pure)
            rerun_frac = rerun_seconds / min(full_seconds)
            print(
                f"{size:>5} {max(pure):>14.0f} {max(e2e):>13.0f} {ratio:>6.2f} "
                f"{rerun_frac:>10.1%} {frames_bytes:>12.0f}"
            )
            results[size] = {
                "backbone_fps": max(pure),
                "extract_fps": max(e2e),
                "ratio": ratio,
                "rerun_fraction": rerun_frac,
                "bytes_per_frame": frames_bytes,
            }
        if args.long_minutes > 0:
            rss_gb, frames = long_video_rss(args.long_minutes, args.long_size, args.weights, root)
            print(
                f"peak RSS extracting one {args.long_minutes:g}-min 320×240 video "
                f"({frames} frames, input {args.long_size}): {rss_gb:.2f} GB"
            )
            results["long_video"] = {
                "minutes": args.long_minutes,
                "rss_gb": rss_gb,
                "frames": frames,
            }
        print(json.dumps(results))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
