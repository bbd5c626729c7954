"""Stage-1 on Dask: in-process vs a local cluster, and what starting the cluster costs.

Run:  python benchmarks/bench_dask.py [--sizes 112] [--videos 16] [--frames 150]

For each input size, alternating modes so machine noise hits all alike (best of --repeats):
  * in-process         — ``run_extraction`` without a runner (TF uses every core);
  * dask W×T cold      — a fresh ``--workers W`` cluster with T TF threads per worker; its
                         fr/s include each worker importing TF and building its backbone;
  * dask W×T warm      — a second store on the same cluster (backbones already built);
  * ratio              — fr/s ÷ in-process fr/s.
Start-up: cluster start (``DaskRunner`` enter), and first-result latency after planning
(in-process: the first video; Dask: the first task, including the worker's TF import and
backbone build).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from bench_extract import make_videos

from pipeline.extract import ExtractOptions, run_extraction
from pipeline.parallel import ClusterOptions, DaskRunner, available_cores


def _fresh(store: Path) -> Path:
    shutil.rmtree(store.parent, ignore_errors=True)
    store.parent.mkdir(parents=True)
    return store


def timed_run(videos: list[Path], store: Path, options: ExtractOptions, runner=None) -> dict:
    """One extraction into a fresh store: fr/s and seconds from plan to first result."""
    marks: dict[str, float] = {}

    def first(name: str):
        return lambda *_: marks.setdefault(name, time.perf_counter())

    report = run_extraction(
        videos,
        _fresh(store),
        options,
        runner=runner,
        on_plan=first("plan"),
        on_video=first("result"),
        on_task=first("result"),
    )
    assert report.frames and not report.failed, report
    return {"fps": report.frames_per_sec, "first_s": marks["result"] - marks["plan"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="112")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=150, help="frames per video")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layouts", default="2x1,1x2", help="WORKERSxTHREADS,…")
    args = parser.parse_args()
    layouts = [tuple(int(n) for n in lay.split("x")) for lay in args.layouts.split(",")]

    root = Path(tempfile.mkdtemp(prefix="bench_dask_"))
    try:
        (root / "videos").mkdir()
        videos = make_videos(root / "videos", args.videos, args.frames)
        print(
            f"# {platform.processor() or platform.machine()}, {available_cores()} cores "
            f"(load avg {os.getloadavg()[0]:.1f}), python {platform.python_version()}; "
            f"{args.videos} videos × {args.frames} frames (320×240, 4 codecs), batch "
            f"{args.batch_size}, 2 videos/task, weights {args.weights}"
        )
        print(
            f"{'size':>5} {'mode':<22} {'fr/s':>7} {'ratio':>6} {'start s':>8} {'1st result s':>13}"
        )
        results: dict = {}
        for size in [int(s) for s in args.sizes.split(",")]:
            options = ExtractOptions(
                weights=args.weights, input_size=size, batch_size=args.batch_size
            )
            rows: dict[str, list[dict]] = {}
            for _ in range(args.repeats):
                run = timed_run(videos, root / "inproc" / "f.h5", options)
                rows.setdefault("in-process", []).append({**run, "start_s": 0.0})
                for workers, threads in layouts:
                    started = time.perf_counter()
                    cluster = ClusterOptions(
                        workers=workers, threads_per_worker=threads, videos_per_task=2
                    )
                    with DaskRunner(cluster) as runner:
                        start_s = time.perf_counter() - started
                        for phase in ("cold", "warm"):
                            store = root / f"dask{workers}x{threads}{phase}" / "f.h5"
                            run = timed_run(videos, store, options, runner)
                            name = f"dask {workers}×{threads} {phase}"
                            rows.setdefault(name, []).append({**run, "start_s": start_s})
            base = max(r["fps"] for r in rows["in-process"])
            results[size] = {}
            for name, runs in rows.items():
                best = max(runs, key=lambda r: r["fps"])
                start_s = min(r["start_s"] for r in runs)
                first_s = min(r["first_s"] for r in runs)
                print(
                    f"{size:>5} {name:<22} {best['fps']:>7.0f} {best['fps'] / base:>6.2f} "
                    f"{start_s:>8.1f} {first_s:>13.1f}"
                )
                results[size][name] = {
                    "fps": best["fps"],
                    "ratio": best["fps"] / base,
                    "cluster_start_s": start_s,
                    "first_result_s": first_s,
                }
        print(json.dumps(results))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
