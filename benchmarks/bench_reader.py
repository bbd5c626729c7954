"""The reader (decode + scale + reorder window) of this tree against a git revision's, and
FFmpeg's threading choices, side by side on real-sized H.264 clips.

Run:  python benchmarks/bench_reader.py [--against main] [--clips 2] [--frames 90] [--repeats 3]

Per case, alternating so machine noise hits all alike: frames/s of ``VideoReader`` (input 224,
every frame, and ``--fps 5``) of the revision and of this tree, and of this tree with
``thread_type`` AUTO, SLICE and NONE. Ratios are against the revision's reader (AUTO). No
TensorFlow: this measures exactly the decode path ``extract``'s decoder threads run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from real_clips import make_real_sized_videos

REPO = Path(__file__).resolve().parents[1]


def _module_at(revision: str, tmp: Path):
    """``pipeline/video.py`` as it is at ``revision``, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:pipeline/video.py"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = tmp / "video_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("video_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fps(reader_class, videos: list[Path], *, fps: float | None, thread_type: str) -> float:
    started, frames = time.perf_counter(), 0
    for path in videos:
        reader = reader_class(path, size=224, fps=fps, thread_type=thread_type)
        frames += sum(len(chunk.frames) for chunk in reader.chunks(16))
    return frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main", help="git revision to compare with")
    parser.add_argument("--clips", type=int, default=2, help="clips per size (640×360, 720p)")
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from pipeline.video import VideoReader

    with tempfile.TemporaryDirectory() as tmp:
        old = _module_at(args.against, Path(tmp)).VideoReader
        videos = make_real_sized_videos(Path(tmp), args.clips, args.frames)
        cases = [(f"{args.against} AUTO", old, "AUTO"), ("this tree AUTO", VideoReader, "AUTO")]
        cases += [(f"this tree {t}", VideoReader, t) for t in ("SLICE", "NONE")]
        results: dict[tuple[str, float | None], list[float]] = {}
        for _ in range(args.repeats):
            for sampling in (None, 5.0):
                for name, reader, thread_type in cases:
                    speed = _fps(reader, videos, fps=sampling, thread_type=thread_type)
                    results.setdefault((name, sampling), []).append(speed)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{len(videos)} clips × {args.frames} frames, best of {args.repeats}")  # fmt: skip
    print("| reader | every frame fr/s | ratio | --fps 5 kept fr/s | ratio |")
    print("|---|---|---|---|---|")
    base = {s: max(results[(cases[0][0], s)]) for s in (None, 5.0)}
    for name, _, _ in cases:
        cells = []
        for sampling in (None, 5.0):
            best = max(results[(name, sampling)])
            cells += [f"{best:.0f}", f"{best / base[sampling]:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
