"""How stable is the demo's test top-1? Re-run its train + evaluate stages under variations.

Runs ``vrnn train`` and ``vrnn evaluate`` with ``params.yaml``'s settings on an existing demo
workspace (after ``make demo``: ``data/manifest.csv``, ``data/features/features.h5``), once
per variant: TensorFlow's default thread pools (twice: run-to-run repeatability), fixed
thread counts (numerics that depend on how work is split), and other training seeds (the
spread that tiny numeric differences between CPUs amplify into, over 60 epochs of training
on 36 clips). Prints one row per variant and the range the README states.

    python tools/demo_spread.py [WORKSPACE] [--seeds 1 2 3] [--threads 1 2] [--head meanpool]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def train_args(params: dict, seed: int) -> list[str]:
    """``vrnn train`` options from ``params.yaml``'s train section, with ``seed`` replaced."""
    train = {**params["train"], "seed": seed}
    return [a for key, value in train.items() for a in (f"--{key.replace('_', '-')}", str(value))]


def top1(workspace: Path, params: dict, seed: int, threads: int | None) -> float:
    """Train and evaluate into a temporary folder; the split's top-1."""
    env = dict(os.environ)
    if threads is not None:
        env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads))
    data = workspace / "data"
    with tempfile.TemporaryDirectory() as tmp:
        models, metrics = Path(tmp) / "models", Path(tmp) / "metrics"
        for args in (
            ["train", data / "manifest.csv", data / "features/features.h5", "-o", models,
             *train_args(params, seed)],
            ["evaluate", models, data / "manifest.csv", data / "features/features.h5",
             "--split", params["evaluate"]["split"], "-o", metrics],
        ):  # fmt: skip
            subprocess.run(
                [sys.executable, "-m", "stages", *map(str, args)],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
        return json.loads((metrics / "eval.json").read_text())["top1"]


def main() -> None:
    """Print one row per variant, then the min–max range."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", nargs="?", type=Path, default=Path("."))
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--head", help="train this head instead of params.yaml's")
    args = parser.parse_args()
    params = yaml.safe_load((args.workspace / "params.yaml").read_text())
    if args.head:
        params["train"]["head"] = args.head
    seed = params["train"]["seed"]
    variants = [(seed, None), (seed, None), *((seed, t) for t in args.threads)]
    variants += [(s, None) for s in args.seeds]
    results = []
    print(f"{'seed':>4}  {'threads':>7}  top-1", flush=True)
    for s, threads in variants:
        results.append(top1(args.workspace, params, s, threads))
        print(f"{s:>4}  {threads or 'default':>7}  {results[-1]:.3f}", flush=True)
    median = sorted(results)[len(results) // 2]
    print(f"range {min(results):.2f}–{max(results):.2f}, median {median:.2f}")


if __name__ == "__main__":
    main()
