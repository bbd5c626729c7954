"""Stage 2 at scale: ``vrnn train`` on synthetic UCF101-shaped stores, in memory vs streaming.

Run:  python benchmarks/bench_train.py --scale --work DIR [--videos 2000 20000]

Builds (once, through the store API) stores of N videos × 180 frames × 1280-d float16 in 101
classes (stand-in source files; features are a per-class centre plus noise drawn from a pool,
so gzip sees realistic-ish data), then per store and input path runs ``vrnn train`` as a child
process on a train-only manifest (no validation pass: an epoch is training steps only) and
records: peak **RssAnon** (sampled from ``/proc/<pid>/status`` every 20 ms; memory-mapped
pages are file-backed, so they do not count), startup seconds (process start to the end
of the first epoch: imports, join, reading or building the frame cache, tracing, epoch 1),
steady epoch seconds (median of epochs after the second) and steps/s next to a bare
``model.train_on_batch`` loop on in-memory float16 tensors of the same shape (batch 32,
seq_len 16, default head), measured in its own process right before and after each run. The
stores get a real seeded-random backbone and its weights file (``vrnn train`` checks it);
they are built with 2 writer processes. A final run trains the default recipe
(early stopping on val) on up to 9.5k train + 2k val videos of the largest store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

FRAMES = 180
DIM = 1280
CLASSES = 101
SEQ_LEN = 16
BATCH = 32
POOL = 64


WEIGHTS = "random:seed=0"


def _backbone():
    """The stores' stand-in extractor: MobileNetV2 at 224 with seeded random weights (real, so
    ``vrnn train`` finds and checks the backbone weights file every store must have)."""
    from pipeline.backbone import build_backbone, parse_weights

    return build_backbone(parse_weights(WEIGHTS), 224)


def _config(backbone):
    from pipeline.backbone import fingerprint
    from pipeline.contracts import ExtractorConfig

    return ExtractorConfig(weights=WEIGHTS, weights_sha256=fingerprint(backbone), input_size=224)


BARE_LOOP = f"""
import os, time, numpy as np
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from pipeline import fit, training
from pipeline.train_config import TrainConfig
fit.set_seed(0)
rng = np.random.default_rng(0)
batches = [({{"features": rng.uniform(0, 6, ({BATCH}, {SEQ_LEN}, {DIM})).astype(np.float16),
             "mask": np.ones(({BATCH}, {SEQ_LEN}), bool)}}, rng.integers(0, {CLASSES}, {BATCH}))
           for _ in range(8)]
videos = [clip for x, _ in batches for clip in x["features"]]
model = training.configured_head(TrainConfig(), {CLASSES}, {DIM}, videos)  # vrnn train's default
for x, y in batches[:3]:
    model.train_on_batch(x, y)
steps = int(os.environ.get("BARE_STEPS", "150"))
start = time.perf_counter()
for i in range(steps):
    model.train_on_batch(*batches[i % len(batches)])
print((time.perf_counter() - start) / steps)
"""


def _records(root: Path, videos: int) -> list:
    from pipeline.contracts import VideoRecord

    records = []
    for i in range(videos):
        path = root / "videos" / f"v_{i:06d}.avi"
        label = f"class{i % CLASSES:03d}"
        split = "val" if i % 5 == 4 else "train"
        records.append(VideoRecord(path, label, f"{label}_g{i // CLASSES}", split))
    return records


def _write_parts(job: tuple[Path, object, list, int, int]) -> None:
    """Worker: write every ``step``-th video from ``first`` as a part file (store API)."""
    from pipeline.contracts import VideoFeatures, VideoInfo
    from pipeline.identity import file_sha256, video_id_from_sha256
    from pipeline.store import write_part

    parts_dir, config, records, first, step = job
    rng = np.random.default_rng(0)
    centres = rng.gamma(1.0, 0.6, (CLASSES, DIM)).astype(np.float16)
    pool = [rng.gamma(0.8, 0.5, (FRAMES, DIM)).astype(np.float16) for _ in range(POOL)]
    for i in range(first, len(records), step):
        record = records[i]
        record.path.write_bytes(f"synthetic video {i}".encode())
        sha = file_sha256(record.path)
        if (parts_dir / f"{video_id_from_sha256(sha)}.h5").exists():  # a resumed build
            continue
        features = np.roll(pool[i % POOL] + centres[i % CLASSES], i % FRAMES, axis=0)
        info = VideoInfo(str(record.path), 25.0, 320, 240, FRAMES, FRAMES, FRAMES / 25, "h264")
        vf = VideoFeatures(video_id_from_sha256(sha), sha, features, np.arange(FRAMES) / 25.0, info)
        write_part(parts_dir, config, vf)


def build_store(root: Path, videos: int, workers: int = 2) -> tuple[Path, list]:
    """A store of ``videos`` × 180 frames (parts written by ``workers`` processes, then one
    commit, as extraction does; plus its backbone weights file) and the manifest records
    (80 % train, 20 % val)."""
    import multiprocessing

    from pipeline.backbone import save_weights
    from pipeline.store import StoreBuilder, backbone_sidecar

    store = root / "features.h5"
    records = _records(root, videos)
    if store.exists():
        return store, records
    (root / "videos").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    backbone = _backbone()
    config = _config(backbone)
    with StoreBuilder(store, config) as builder:
        save_weights(backbone, backbone_sidecar(store))
        jobs = [(builder.parts_dir, config, records, k, workers) for k in range(workers)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(_write_parts, jobs)
        builder.commit()
        builder.discard_staging()
    print(f"built {store} ({videos} videos) in {time.perf_counter() - start:.0f} s", flush=True)
    return store, records


def rss_anon(pid: int) -> int:
    """Current RssAnon of ``pid`` in bytes (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_train(manifest: Path, store: Path, out: Path, budget: str, epochs: int) -> dict:
    """Run ``vrnn train`` in a child process; peak RssAnon, startup, epoch times, summary."""
    argv = [sys.executable, "-m", "stages", "train", str(manifest), str(store), "-o", str(out),
            "--epochs", str(epochs), "--memory-budget", budget]  # fmt: skip
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "300"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env},
    )  # fmt: skip
    stamps: list[float] = []
    lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line.rstrip())
            if line.startswith("epoch"):
                stamps.append(time.perf_counter())

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    peak = 0
    while proc.poll() is None:
        peak = max(peak, rss_anon(proc.pid))
        time.sleep(0.02)
    reader.join()
    stdout = proc.stdout.read().strip()  # type: ignore[union-attr]
    if proc.returncode:
        raise RuntimeError("\n".join(lines[-20:]))
    epochs_s = np.diff([start, *stamps])
    return {
        "peak": peak,
        "startup": float(epochs_s[0]) if len(stamps) else float("nan"),
        "epoch": float(np.median(epochs_s[2:])) if len(stamps) > 2 else float(epochs_s[-1]),
        "wall": time.perf_counter() - start,
        "epochs": len(stamps),
        "summary": stdout,
    }


def bare_step_seconds(steps: int = 150) -> float:
    """Seconds per ``train_on_batch`` step of the default head on in-memory tensors."""
    out = subprocess.run(
        [sys.executable, "-c", BARE_LOOP], capture_output=True, text=True, check=True,
        env={**os.environ, "BARE_STEPS": str(steps)},
    )  # fmt: skip
    return float(out.stdout.split()[-1])


def read_costs(store: Path, cache_ids: list[str]) -> dict[str, float]:
    """Milliseconds to assemble one training batch: h5py (compressed chunks) vs frame cache."""
    import h5py

    from pipeline.frame_cache import open_frame_cache
    from pipeline.sequences import random_indices, stack_sequences
    from pipeline.store import open_store

    rng = np.random.default_rng(0)
    ids = [cache_ids[i] for i in rng.choice(len(cache_ids), BATCH * 8, replace=False)]
    picks = [random_indices(FRAMES, SEQ_LEN, rng) for _ in ids]
    costs = {}
    with h5py.File(store, "r") as f:
        start = time.perf_counter()
        for vid, idx in zip(ids, picks, strict=True):
            f["videos"][vid]["features"][np.unique(idx)]  # h5py wants increasing rows
        costs["h5py, sampled rows of compressed chunks"] = (time.perf_counter() - start) / 8
    with open_store(store) as opened:
        cache = open_frame_cache(opened, cache_ids)
    views = [cache.frames(v) for v in ids]
    start = time.perf_counter()
    for b in range(8):
        chosen = slice(b * BATCH, (b + 1) * BATCH)
        stack_sequences(views[chosen], picks[chosen], SEQ_LEN)
    costs["frame cache (memory-mapped, warm)"] = (time.perf_counter() - start) / 8
    return {k: v * 1e3 for k, v in costs.items()}


def main(
    work: Path, sizes: list[int], epochs: int, breakdown_only: bool = False, recipe: bool = True
) -> None:
    """Build the stores, run every configuration, print the table row by row."""
    from pipeline.manifest import write_manifest
    from pipeline.store import open_store

    if breakdown_only:
        overhead_breakdown()
        return
    print(
        f"{'videos':>7} {'path':<10} {'peak RssAnon':>13} {'startup s':>10} {'epoch s':>8} "
        f"{'steps/s':>8} {'bare steps/s':>13} {'vs bare':>8}",
        flush=True,
    )
    for n in sizes:
        store, records = build_store(work / f"ucf{n}", n)
        train = [r for r in records if r.split == "train"]
        train_only = write_manifest(train, work / f"ucf{n}" / "train_only.csv")
        fits = n * FRAMES * DIM * 2 < 2**31
        for path in ["in memory", "streaming"] if fits else ["streaming"]:
            before = bare_step_seconds()
            budget = "2GiB" if path == "in memory" else "0"
            r = run_train(train_only, store, work / f"model{n}", budget, epochs)
            bare = (before + bare_step_seconds()) / 2  # the load drifts: bracket the run
            rate = -(-len(train) // BATCH) / r["epoch"]
            print(
                f"{n:>7} {path:<10} {r['peak'] / 2**20:>9.0f} MiB {r['startup']:>10.1f} "
                f"{r['epoch']:>8.1f} {rate:>8.2f} {1 / bare:>13.2f} {rate * bare:>8.2f}  "
                f"({r['summary'].split('; input ')[-1].split(' →')[0]})",
                flush=True,
            )
    if not recipe:
        return
    store, records = build_store(work / f"ucf{sizes[-1]}", sizes[-1])
    with open_store(store) as opened:
        ids = [opened.video_id_for(r.path) for r in records if r.split == "train"]
    print("\nbatch assembly, ms per batch of 32 × 16 frames:")
    for name, ms in read_costs(store, ids).items():
        print(f"  {name:<45} {ms:8.2f}", flush=True)
    train = [r for r in records if r.split == "train"][:9500]
    val = [r for r in records if r.split == "val"][:2000]
    manifest = write_manifest([*train, *val], work / "recipe.csv")
    result = run_train(manifest, store, work / "recipe_model", "2GiB", 30)
    bare = bare_step_seconds()
    steps = -(-len(train) // BATCH)
    print(
        f"\ndefault recipe on {len(train)} train + {len(val)} val videos: "
        f"{result['wall']:.0f} s wall ({result['epochs']} epochs, startup "
        f"{result['startup']:.0f} s); {result['summary']}\n"
        f"  per epoch {result['epoch']:.1f} s = {steps} training steps + validation, i.e. "
        f"{result['epoch'] / steps * 1e3:.0f} ms per training step; bare train_on_batch now "
        f"{bare * 1e3:.0f} ms, so {result['epochs']} epochs × {steps} steps of bare compute "
        f"alone = {result['epochs'] * steps * bare:.0f} s"
    )


def _segments(cache_root: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in cache_root.rglob("seg-*.bin")}


def append_one(work: Path, videos: int, epochs: int = 1) -> None:
    """A streaming ``vrnn train`` before and after one video is committed to the store.

    Prints, per run: startup seconds (process start to the end of epoch 1), the frame-cache
    rows written (bytes, and videos = rows / 180) and the cache's size on disk. The cache
    promise (rows keyed by content id + extractor): after the append only the new video is
    read from the store, however large the store. The store is built afresh in WORK.
    """
    from pipeline.manifest import write_manifest
    from pipeline.store import StoreBuilder, open_store

    root = work / f"append{videos}"
    shutil.rmtree(root, ignore_errors=True)
    store, records = build_store(root, videos)
    added = _records(root, videos + 1)  # the same records plus one
    cache = root / "cache"
    os.environ["VRNN_CACHE_DIR"] = str(cache)
    with open_store(store) as opened:
        config = opened.config
    print(f"{'run':<34} {'startup s':>10} {'written':>10} {'videos':>7} {'cache size':>11}")
    before: dict[Path, int] = {}
    for name, rows in (
        (f"first run ({videos} videos)", records),
        ("rerun, nothing changed", records),
        ("after committing 1 more video", added),
    ):
        if rows is added:
            with StoreBuilder(store, config) as builder:
                _write_parts((builder.parts_dir, config, added, videos, 1))
                builder.commit()
                builder.discard_staging()
        manifest = write_manifest(rows, root / "manifest.csv")
        r = run_train(manifest, store, root / "model", "0", epochs)
        after = _segments(cache)
        written = sum(size for p, size in after.items() if p not in before)
        before = after
        print(
            f"{name:<34} {r['startup']:>10.1f} {written / 2**20:>6.1f} MiB "
            f"{written // (FRAMES * DIM * 2):>7} {sum(after.values()) / 2**20:>7.0f} MiB",
            flush=True,
        )


BREAKDOWN = f"""
import os, time, numpy as np, keras
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from pipeline import fit, training
from pipeline.sequences import TrainingSampler
from pipeline.train_config import TrainConfig
rng = np.random.default_rng(0)
n = {BATCH} * 40
videos = [rng.uniform(0, 6, ({FRAMES}, {DIM})).astype(np.float16) for _ in range(n)]
labels = rng.integers(0, {CLASSES}, n)
sampler = TrainingSampler(videos, labels, seq_len={SEQ_LEN}, batch_size={BATCH}, seed=0)
fixed = [sampler.batch(i) for i in range(sampler.num_batches)]
fit.set_seed(0)
model = training.configured_head(TrainConfig(), {CLASSES}, {DIM}, videos)  # vrnn train's default
print(f"  (head: {{model.name}})")

class Fixed(keras.utils.PyDataset):
    num_batches = len(fixed)
    def __getitem__(self, i):
        f, m, y = fixed[i]
        return {{"features": f, "mask": m}}, y

class Sampled(keras.utils.PyDataset):  # how vrnn train fed Keras fit before fit_head's loop
    num_batches = sampler.num_batches
    def __getitem__(self, i):
        f, m, y = sampler.batch(i)
        return {{"features": f, "mask": m}}, y
    def on_epoch_end(self):
        sampler.next_epoch()

def clock():
    return np.array([time.perf_counter(), time.process_time()])

def bare(dtype):
    start = clock()
    for f, m, y in fixed:
        model.train_on_batch({{"features": f.astype(dtype), "mask": m}}, y)
    return (clock() - start) / len(fixed)

def keras_fit(source):
    stamps = []
    cb = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, l: stamps.append(clock()),
                                        on_epoch_end=lambda e, l: stamps.append(clock()))
    model.fit(source, epochs=3, verbose=0, shuffle=False, callbacks=[cb])
    return np.median([b - a for a, b in zip(stamps[2::2], stamps[3::2])], axis=0) / len(fixed)

def fit_head():
    stamps = [clock()]
    fit.fit_head(model, sampler, None, epochs=3, patience=0,
                   on_epoch=lambda e, logs: stamps.append(clock()))
    return np.median(np.diff(stamps[1:], axis=0), axis=0) / sampler.num_batches

def assemble():
    start = clock()
    for i in range(sampler.num_batches):
        sampler.batch(i)
    return (clock() - start) / sampler.num_batches

bare(np.float16)
rows = {{}}
# The rows the target compares are interleaved, three times each, before any Keras fit (in
# case fit leaves tf.data machinery behind); the last two rows repeat them after it.
ours = [("bare train_on_batch, float16 inputs", lambda: bare(np.float16)),
        ("fit.fit_head on it (what vrnn train runs)", fit_head),
        ("bare train_on_batch, float32 inputs", lambda: bare(np.float32)),
        ("batch assembly alone (TrainingSampler.batch)", assemble)]
keras_fits = [("fit on a PyDataset of ready batches", lambda: keras_fit(Fixed())),
             ("Keras fit on the TrainingSampler (until #13)", lambda: keras_fit(Sampled()))]
after = [("bare train_on_batch, after Keras fit", lambda: bare(np.float16)),
         ("fit.fit_head, after Keras fit", fit_head)]
for name, run in ours * 3 + keras_fits * 2 + after:
    rows.setdefault(name, []).append(run())
for name, values in rows.items():
    wall, cpu = np.min(values, axis=0) * 1e3
    print(f"  {{name:<46}} {{wall:8.1f}} ms wall {{cpu:8.1f}} ms CPU")
base = np.min(rows["bare train_on_batch, float16 inputs"], axis=0)
for name in ["Keras fit on the TrainingSampler (until #13)",
             "fit.fit_head on it (what vrnn train runs)"]:
    wall, cpu = np.min(rows[name], axis=0) / base
    print(f"  {{name}} / bare float16: {{wall:.2f}}× wall, {{cpu:.2f}}× CPU (target ≤ 1.25)")
"""


def overhead_breakdown() -> None:
    """Per-step time of each layer between a bare step and ``vrnn train``'s step (one process,
    interleaved, best of three; CPU time counts all threads)."""
    print("\nper-step cost, batch 32 × seq_len 16 × 1280, default head:")
    out = subprocess.run(
        [sys.executable, "-c", BREAKDOWN], capture_output=True, text=True, check=True
    )
    print(out.stdout.rstrip())
