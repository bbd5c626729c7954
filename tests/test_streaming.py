"""Stage 2 on stores larger than memory: the budget switch, streaming ≡ in memory, bounded
anonymous memory, and a corrupt chunk met while streaming.

Stores are built through :mod:`pipeline.store` (see ``test_train_evaluate``); videos of 4–29
frames with ``seq_len`` 8 include some shorter than a sample (padding + mask).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_train_evaluate import BACKBONE_SHA256, CONFIG, PER_SPLIT, build_store, make_videos
from typer.testing import CliRunner

from pipeline import frame_cache, join, streaming, training, validity
from pipeline.contracts import ExtractorConfig, VideoRecord
from pipeline.errors import ConfigError, StoreError
from pipeline.manifest import write_manifest
from pipeline.model_dir import load_model_dir
from pipeline.store import backbone_sidecar, open_store, shards_dir_for
from stages.cli import app
from tests.reliability.helpers import flip_feature_chunk


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    """Frame caches go under this test's directory, not the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("streaming")
    videos = make_videos(root / "videos", PER_SPLIT, seed=3)
    store = build_store(root / "features.h5", videos)
    records = [r for r, _ in videos]
    fit_bytes = sum(f.nbytes for r, f in videos if r.split in ("train", "val"))
    return {
        "root": root,
        "store": store,
        "records": records,
        "manifest": write_manifest(records, root / "manifest.csv"),
        "fit_bytes": fit_bytes,
        "short": sum(len(f) < CONFIG.seq_len for r, f in videos if r.split == "train"),
    }


def _weights(model_dir: Path) -> list[np.ndarray]:
    return load_model_dir(model_dir).model.get_weights()


def test_parse_memory_budget_units_and_mistakes():
    assert streaming.parse_memory_budget("2GiB") == 2 * 2**30
    assert streaming.parse_memory_budget("512M") == 512 * 2**20
    assert streaming.parse_memory_budget("1.5g") == 3 * 2**29
    assert streaming.parse_memory_budget("0") == 0
    for bad in ("lots", "-1G", "2 parsecs", ""):
        with pytest.raises(ConfigError, match="--memory-budget"):
            streaming.parse_memory_budget(bad)


def test_budget_switch_is_the_selected_splits_feature_bytes(data):
    with open_store(data["store"]) as store:
        joined = join.join_manifest(data["records"], store)
        fit = [v for v in joined.videos if v.record.split in ("train", "val")]
        exact, _ = join.feature_reader(store, fit, data["fit_bytes"])
        over, cache = join.feature_reader(store, fit, data["fit_bytes"] - 1)
    assert exact.nbytes == data["fit_bytes"] and not exact.streaming
    assert over.streaming and "streaming" in over.describe()
    assert isinstance(cache.frames(fit[0].video_id), np.memmap)


def test_streaming_gives_the_same_history_and_weights_as_in_memory(data, tmp_path):
    assert data["short"] > 0  # some videos are padded
    in_memory = training.train(data["records"], data["store"], tmp_path / "ram", CONFIG)
    streamed = training.train(
        data["records"], data["store"], tmp_path / "stream", CONFIG, memory_budget=0
    )
    assert not in_memory.input_plan.streaming and streamed.input_plan.streaming
    assert streamed.history == in_memory.history
    assert streamed.best_epoch == in_memory.best_epoch
    for a, b in zip(_weights(tmp_path / "ram"), _weights(tmp_path / "stream"), strict=True):
        np.testing.assert_array_equal(a, b)
    # evaluate follows the same rule and scores identically
    scores = [
        training.evaluate(tmp_path / "ram", data["records"], data["store"], tmp_path / m,
                          memory_budget=budget)
        for m, budget in (("m1", 2**30), ("m2", 0))
    ]  # fmt: skip
    assert [s.input_plan.streaming for s in scores] == [False, True]
    assert scores[0].summary == scores[1].summary
    np.testing.assert_array_equal(scores[0].confusion, scores[1].confusion)


def test_cli_summary_says_which_path_ran(data, tmp_path):
    runner = CliRunner()
    base = ["train", str(data["manifest"]), str(data["store"]), "--epochs", "1"]
    for budget, expected in (("1GiB", "input in memory"), ("0", "input streaming")):
        result = runner.invoke(
            app, [*base, "-o", str(tmp_path / budget), "--memory-budget", budget]
        )
        assert result.exit_code == 0, result.output
        assert expected in result.output.splitlines()[-1]
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "x"), "--memory-budget", "lots"])
    assert result.exit_code == 1
    assert [x for x in result.output.splitlines() if x.startswith("error:")] == [
        "error: --memory-budget must be a size such as 2GiB, 512MiB or 0 (always stream), "
        "got 'lots'"
    ]


def test_frame_cache_warms_the_page_cache_only_when_it_fits(data, monkeypatch):
    with open_store(data["store"]) as store:
        cache = frame_cache.open_frame_cache(store, store.video_ids)
    size = sum(p.stat().st_size for p in cache.segments)
    requests: list[tuple[str, int, int]] = []
    real_fadvise = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        requests.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    missing = cache.segments[0].with_name("gone.bin")  # e.g. removed by a rebuild: skipped
    frame_cache._read_ahead([missing, *cache.segments], step=4096)
    covered = sorted((o, o + n) for path, o, n in requests if path == str(cache.segments[0]))
    assert covered[0][0] == 0 and covered[-1][1] >= size  # the whole file, in order, no gaps
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    assert all(b - a == 4096 for a, b in covered)  # in requests the kernel honours whole

    monkeypatch.setattr(frame_cache, "_available_memory", lambda: 2 * size)
    split = join.SplitData([], [], np.zeros(0))
    assert not cache.warming and join.read_ahead(cache, split) is not None
    assert cache.warm()  # fits in half of the available memory
    assert cache.warming and join.read_ahead(cache, split) is None  # no per-row hints needed
    monkeypatch.setattr(frame_cache, "_available_memory", lambda: 2 * size - 2)
    assert not cache.warm()  # does not: left to the page faults of the sampled rows
    monkeypatch.setattr(frame_cache, "_available_memory", lambda: None)
    assert not cache.warm()  # no /proc/meminfo: nothing to go by
    assert frame_cache._available_memory() is None or frame_cache._available_memory() > 0


RSS_PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from pipeline import frame_cache
    from pipeline.sequences import TrainingSampler
    from pipeline.store import open_store

    def rss_anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    streaming = sys.argv[2] == "stream"
    with open_store(sys.argv[1]) as store:
        ids = store.video_ids
        frame_cache.open_frame_cache(store, ids)  # build outside the measurement
        before = rss_anon()
        if streaming:
            cache = frame_cache.open_frame_cache(store, ids)
            videos = [cache.frames(i) for i in ids]
        else:
            videos = [store.read(i).features for i in ids]
    sampler = TrainingSampler(videos, np.zeros(len(ids)), seq_len=16, batch_size=32, seed=0)
    peak = before
    for epoch in range(2):
        for b in range(sampler.num_batches):
            sampler.batch(b)
            peak = max(peak, rss_anon())
        sampler.next_epoch()
    print(json.dumps({"growth": peak - before}))
    """
)


@pytest.mark.slow
def test_streaming_keeps_anonymous_memory_flat_on_a_store_larger_than_the_budget(tmp_path):
    """RssAnon growth while sampling every video of a ~60 MB store twice: streaming stays far
    below the features' size; reading them into memory (the control) grows by about it."""
    dim, frames, count = 1280, 120, 200
    config = ExtractorConfig(
        weights="random:seed=0", weights_sha256=BACKBONE_SHA256, input_size=32, feature_dim=dim
    )
    rng = np.random.default_rng(0)
    videos = []
    for i in range(count):
        path = tmp_path / "v" / f"clip{i}.mp4"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"clip {i}".encode())
        features = rng.uniform(0, 6, (frames, dim)).astype(np.float16)
        videos.append((VideoRecord(path, "a", f"g{i}", "train"), features))
    store = build_store(tmp_path / "big.h5", videos, config)
    nbytes = count * frames * dim * 2
    with open_store(store) as opened:
        plan = streaming.plan_input(opened, opened.video_ids, 8 * 2**20)
    assert plan.streaming and plan.nbytes == nbytes

    def growth(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, str(store), mode],
            capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1],
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        )  # fmt: skip
        return json.loads(out.stdout.splitlines()[-1])["growth"]

    streamed, in_memory = growth("stream"), growth("memory")
    assert in_memory > 0.8 * nbytes  # the measurement sees data held in memory
    assert streamed < 0.1 * nbytes


def test_a_corrupt_chunk_met_while_streaming_fails_like_in_memory(data, tmp_path):
    store = tmp_path / "features.h5"
    shutil.copy2(data["store"], store)  # a store is its index file and its shard directory
    shutil.copytree(shards_dir_for(data["store"]), shards_dir_for(store))
    shutil.copy2(backbone_sidecar(data["store"]), backbone_sidecar(store))
    victim = next(r for r in data["records"] if r.split == "train")
    with open_store(store) as opened:
        video_id = opened.video_id_for(victim.path)
    flip_feature_chunk(store, video_id)
    errors = []
    for budget in ("2GiB", "0"):
        result = CliRunner().invoke(
            app, ["train", str(data["manifest"]), str(store), "-o", str(tmp_path / budget),
                  "--epochs", "1", "--memory-budget", budget],
        )  # fmt: skip
        assert result.exit_code == 1, result.output
        errors.append([x for x in result.output.splitlines() if x.startswith("error:")])
        assert not (tmp_path / budget).exists()
    assert errors[0] == errors[1] and len(errors[0]) == 1
    assert video_id in errors[0][0] and str(victim.path) in errors[0][0]
    assert "corrupt on disk" in errors[0][0]


def test_read_features_returns_what_read_returns_as_features(data):
    with open_store(data["store"]) as store:
        ids = sorted(store.video_ids)
        assert ids
        for video_id in ids:
            features = store.read_features(video_id)
            expected = store.read(video_id).features
            assert features.dtype == expected.dtype == np.float16
            np.testing.assert_array_equal(features, expected)
        with pytest.raises(StoreError, match="no video v_not_there"):
            store.read_features("v_not_there")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_all_finite_finds_every_nan_and_inf_and_nothing_else(dtype):
    rng = np.random.default_rng(0)
    features = rng.normal(0.0, 1.0, (30, 64)).astype(dtype)
    info = np.finfo(dtype)
    features[0, :4] = [info.max, -info.max, info.tiny, info.smallest_subnormal]
    features[1, :2] = [0.0, -0.0]
    assert validity.all_finite(features)
    assert validity.all_finite(features[::2, 1:])  # a strided view, as memory maps give
    for bad in [np.nan, np.inf, -np.inf]:
        for row, col in [(0, 0), (29, 63), (17, 5)]:
            broken = features.copy()
            broken[row, col] = bad
            assert not validity.all_finite(broken), (bad, row, col)
    nan_bits = features.copy()
    payload = {np.float16: np.uint16(0xFE01), np.float32: np.uint32(0xFFC00001)}[dtype]
    nan_bits.reshape(-1)[100] = payload.view(dtype)
    assert not validity.all_finite(nan_bits)  # a NaN with a non-default payload
