"""Feature store v3: does appending cost O(new data) whatever the store's size?

Run:  python benchmarks/bench_store.py [--sizes 2000 10000 20000] [--frames 180] [--append 20]
      python benchmarks/bench_store.py --commit-cost [--sizes 1000 10000 100000] [--repeats 7]

Synthetic stores (no decoding), grown in place from the smallest size to the largest: filler
videos in shards of 1,000 plus a rebuilt base index (``publish`` without a delta, as after a
compaction), copied aside at each size; then, side by side (``--repeats`` rounds, each
appending once to every copy), at each size:
  * append        — write ``--append`` new videos' parts and commit them (best of the
                    rounds, each one growing the store; the most any of them wrote is
                    shown too: a commit that folds deltas writes more): wall seconds and
                    bytes this process wrote (``wchar`` of /proc/self/io), next to the new
                    shards' size plus the new index files' and root's size;
  * open + lookup — a fresh process: ``open_store`` + ``video_id_for`` of one stored path
                    (size/mtime fast path), seconds;
  * RSS           — that process's peak RSS (VmHWM) after opening the store and reading 100
                    random videos, next to the same process's RSS before opening it.
Filler videos have cheap, very compressible features (so building 20k stays quick); the
appended ones have ReLU-like random features (about half zeros, like real pooled features).

``--commit-cost``: the CPU time (``time.process_time``) of one 1-video commit at each store
size, side by side (each round commits once to every store; median and most of the rounds),
next to the CPU time of opening the store for writing (``StoreBuilder``: the lock and the
one read of the index). Filler videos have one frame each (``--frames`` is ignored), so a
100k-video store builds in a few minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from pipeline.contracts import ExtractorConfig, VideoFeatures, VideoInfo
from pipeline.store import StoreBuilder, shards_dir_for, write_part
from pipeline.store.generations import publish, read_generation
from pipeline.store.index import PathEntry, StoreIndex, VideoEntry
from pipeline.store.layout import write_config_attrs
from pipeline.store.write import _write_video

CONFIG = ExtractorConfig(weights="random:seed=0", weights_sha256="ab" * 32, input_size=224)

PROBE = r"""
import json, random, sys, time
from pathlib import Path
def hwm():
    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
from pipeline.store import open_store
store_path, lookup = Path(sys.argv[1]), Path(sys.argv[2])
before = hwm()
t = time.perf_counter()
store = open_store(store_path)
found = store.video_id_for(lookup)
opened = time.perf_counter() - t
assert found is not None
for vid in random.Random(0).sample(store.video_ids, 100):
    store.read(vid)
store.close()
print(json.dumps({"open_lookup_s": opened, "rss_before_mb": before / 1e3, "rss_mb": hwm() / 1e3}))
"""


def _video(root: Path, n: int, frames: int, realistic: bool, rng: np.random.Generator):
    source = root / "sources" / f"video{n:06d}.mp4"
    source.write_bytes(n.to_bytes(8, "little"))
    if realistic:
        features = np.maximum(0, rng.standard_normal((frames, 1280), dtype=np.float32))
    else:
        features = np.full((frames, 1280), n % 7, np.float32)
    info = VideoInfo(str(source), 30.0, 320, 240, frames, frames, frames / 30, "h264")
    sha = hashlib.sha256(str(n).encode()).hexdigest()
    return VideoFeatures("v" + sha[:20], sha, features, np.arange(frames) / 30, info)


def _wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def _add_filler(store: Path, index: StoreIndex, start: int, count: int, frames: int) -> None:
    """Add ``count`` filler videos to ``index`` as one new shard of ``store``.

    Writing 20k part files one by one takes most of an hour on a loaded 2-core machine, so
    the filler goes straight into shards (the shard layout, written by the store's own
    ``_write_video``); the measured append goes through ``write_part`` + ``commit``.
    """
    shards = shards_dir_for(store)
    shards.mkdir(exist_ok=True)
    name = f"shard-filler{start:08d}.h5"
    rng = np.random.default_rng(start)
    with h5py.File(shards / name, "w") as f:
        write_config_attrs(f, CONFIG, shard=True)
        group = f.create_group("videos")
        for n in range(start, start + count):
            vf = _video(store.parent.parent, n, frames, False, rng)
            _write_video(group, vf, CONFIG.dtype)
            index.videos[vf.video_id] = VideoEntry(name, frames)
            st = Path(vf.info.path).stat()
            index.paths[vf.info.path] = PathEntry(vf.video_id, st.st_size, st.st_mtime_ns)


def _grow(store: Path, target: int, frames: int) -> None:
    """Grow ``store`` to ``target`` videos, then publish one new base (as after a compaction)."""
    root, index = read_generation(store)
    for start in range(len(index.videos), target, 1000):
        _add_filler(store, index, start, min(1000, target - start), frames)
    publish(store, CONFIG, root, index)


def _copy(store: Path, directory: Path) -> Path:
    """A full copy of ``store`` (root and directory) in ``directory``: the path of the copy.

    A real copy, not hard links: a commit updates the spare links file in place.
    """
    directory.mkdir()
    shutil.copy2(store, directory / store.name)
    shutil.copytree(shards_dir_for(store), shards_dir_for(directory / store.name))
    return directory / store.name


def _measure_append(store: Path, start: int, count: int, frames: int) -> dict:
    before_shards = set(shards_dir_for(store).iterdir())
    rng = np.random.default_rng(start)
    videos = [_video(store.parent.parent, start + i, frames, True, rng) for i in range(count)]
    written, t = _wchar(), time.perf_counter()
    with StoreBuilder(store, CONFIG) as builder:
        for vf in videos:
            write_part(builder.parts_dir, CONFIG, vf)
        builder.commit()
        builder.discard_staging()
    seconds, written = time.perf_counter() - t, _wchar() - written
    new_files = set(shards_dir_for(store).iterdir()) - before_shards
    new_shards = sum(p.stat().st_size for p in new_files if p.name.startswith("shard-"))
    new_index = sum(p.stat().st_size for p in new_files if p.name.startswith("index-"))
    return {
        "append_s": seconds,
        "written_mb": written / 1e6,
        "new_shards_mb": new_shards / 1e6,
        "index_mb": (store.stat().st_size + new_index) / 1e6,
        "lookup": str(videos[0].info.path),
    }


def _build_stores(tmp: Path, sizes: list[int], frames: int) -> tuple[dict, dict]:
    """A copy of one store grown to each size: ``{size: store}``, ``{size: row}``."""
    growing = tmp / "growing" / "features.h5"
    growing.parent.mkdir()
    (tmp / "sources").mkdir()
    stores, rows = {}, {}
    for target in sorted(sizes):
        t = time.perf_counter()
        _grow(growing, target, frames)
        stores[target] = _copy(growing, tmp / f"store{target}")
        rows[target] = {"videos": target, "build_s": time.perf_counter() - t}
    return stores, rows


def _measure_commit(store: Path, n: int) -> tuple[float, float]:
    """CPU seconds of opening ``store`` for writing, and of committing one staged video."""
    vf = _video(store.parent.parent, n, 30, True, np.random.default_rng(n))
    t = time.process_time()
    with StoreBuilder(store, CONFIG) as builder:
        opened = time.process_time() - t
        write_part(builder.parts_dir, CONFIG, vf)
        t = time.process_time()
        builder.commit()
        committed = time.process_time() - t
        builder.discard_staging()
    return opened, committed


def commit_cost(args: argparse.Namespace) -> None:
    """Print the table of 1-video commit CPU time against the store's size."""
    sizes = args.sizes if args.sizes != DEFAULT_SIZES else [1000, 10000, 100000]
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        stores, rows = _build_stores(Path(tmp), sizes, 1)
        cpu: dict[int, list[tuple[float, float]]] = {size: [] for size in stores}
        next_id = 10**9
        for _ in range(args.repeats):
            for size, store in stores.items():
                cpu[size].append(_measure_commit(store, next_id))
                next_id += 1
    print(f"\n1-video commit, CPU ms (time.process_time), median (most) of {args.repeats}")
    print("| stored videos | build s | open for writing ms | commit ms | commit ÷ smallest |")
    print("|---:|---:|---:|---:|---:|")
    smallest = float(np.median([c for _, c in cpu[min(cpu)]]))
    for size in sorted(cpu):
        opened, committed = (np.array(x) * 1e3 for x in zip(*cpu[size], strict=True))
        median = float(np.median(committed))
        print(
            f"| {size:,} | {rows[size]['build_s']:.0f} | {np.median(opened):.1f} "
            f"({opened.max():.1f}) | {median:.1f} ({committed.max():.1f}) | "
            f"{median / (smallest * 1e3):.2f}× |"
        )
    largest = float(np.median([c for _, c in cpu[max(cpu)]]))
    print(f"\n{max(cpu):,} vs {min(cpu):,} videos: commit CPU {largest / smallest:.2f}×")


DEFAULT_SIZES = [2000, 10000, 20000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--frames", type=int, default=180)
    parser.add_argument("--append", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="appends per size (best of)")
    parser.add_argument("--root", type=Path, default=None, help="where to build (default: tmp)")
    parser.add_argument(
        "--commit-cost", action="store_true", help="1-video commit CPU time per store size"
    )
    args = parser.parse_args()
    if args.commit_cost:
        commit_cost(args)
        return
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        stores, rows = _build_stores(Path(tmp), args.sizes, args.frames)
        # Side by side: each round appends once to every store, so load changes hit all sizes.
        appends: dict[int, list[dict]] = {size: [] for size in stores}
        next_id = 10**9
        for _ in range(args.repeats):
            for size, store in stores.items():
                appends[size].append(_measure_append(store, next_id, args.append, args.frames))
                next_id += args.append
        for size, store in stores.items():
            row = rows[size]
            row |= min(appends[size], key=lambda a: a["append_s"])
            row["max_written_mb"] = max(a["written_mb"] for a in appends[size])
            probe = subprocess.run(
                [sys.executable, "-c", PROBE, str(store), row.pop("lookup")],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if probe.returncode:
                raise SystemExit(probe.stderr)
            row |= json.loads(probe.stdout)
            print(json.dumps(row), file=sys.stderr)
        rows = [rows[size] for size in sorted(rows)]
    print(f"\nappend {args.append} videos × {args.frames} frames (float16) to a store of N videos")
    print(
        "| videos | append s | written MB (most of all appends) | new shards MB | new index MB "
        "| written ÷ (shards+index) | open + lookup ms | peak RSS MB (before open) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["written_mb"] / (r["new_shards_mb"] + r["index_mb"])
        print(
            f"| {r['videos']:,} | {r['append_s']:.2f} | {r['written_mb']:.2f} "
            f"({r['max_written_mb']:.2f}) | "
            f"{r['new_shards_mb']:.2f} | {r['index_mb']:.3f} | {ratio:.2f} | "
            f"{r['open_lookup_s'] * 1e3:.0f} | {r['rss_mb']:.0f} ({r['rss_before_mb']:.0f}) |"
        )
    first, last = rows[0], rows[-1]
    print(
        f"\n{last['videos']:,} vs {first['videos']:,} videos: append time "
        f"{last['append_s'] / first['append_s']:.2f}×, bytes written "
        f"{last['written_mb'] / first['written_mb']:.2f}×"
    )


if __name__ == "__main__":
    main()
