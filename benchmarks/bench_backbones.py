"""Pure-forward throughput of each ``--backbone`` at one input size, side by side.

Run:  python benchmarks/bench_backbones.py [--size 224] [--batch 32] [--rounds 5]

Each backbone is built with seeded random weights (the forward cost does not depend on the
values) and compiled once (``make_inference_fn``, as ``extract`` uses it). The timed rounds
alternate between backbones, so machine noise hits all of them alike; the table prints the
median frames/s per backbone, its ratio to MobileNetV2, and Keras' ImageNet top-1.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from pipeline.backbone import BACKBONES, build_backbone, make_inference_fn, parse_weights


def main() -> None:
    """Time every backbone and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    frames = np.random.default_rng(0).integers(0, 255, (args.batch, args.size, args.size, 3))
    frames = frames.astype(np.uint8)
    infer = {}
    for name in BACKBONES:
        infer[name] = make_inference_fn(
            build_backbone(parse_weights("random"), args.size, backbone=name)
        )
        infer[name](frames)  # warm-up: first-call allocations
    rates: dict[str, list[float]] = {name: [] for name in BACKBONES}
    for _ in range(args.rounds):
        for name, run in infer.items():
            start = time.perf_counter()
            run(frames)
            rates[name].append(args.batch / (time.perf_counter() - start))
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"input {args.size} px, batch {args.batch}, median of {args.rounds} rounds"
    )
    base = statistics.median(rates["mobilenet_v2"])
    print(f"{'backbone':<20} {'ImageNet top-1':>14} {'fr/s':>8} {'vs mobilenet_v2':>16}")
    for name, samples in rates.items():
        rate = statistics.median(samples)
        top1 = f"{BACKBONES[name].top1:.1f} %"
        print(f"{name:<20} {top1:>14} {rate:>8.1f} {rate / base:>15.2f}x")


if __name__ == "__main__":
    main()
