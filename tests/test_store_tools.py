"""``vrnn store info|verify|export`` on real HDF5 stores written by the store writer."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.contracts import ExtractionFailure, ExtractorConfig, VideoFeatures, VideoInfo
from pipeline.store import StoreBuilder, open_store, shards_dir_for, write_failure, write_part
from pipeline.store.export import file_names, pool_windows
from stages.cli import app
from tests.reliability.helpers import flip_feature_chunk

CONFIG = ExtractorConfig(weights="random:seed=0", weights_sha256="cd" * 32, input_size=32)


def _video(source: Path, frames: int, seed: int, **decode: int) -> VideoFeatures:
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(f"{source}{seed}".encode())
    rng = np.random.default_rng(seed)
    container = decode.pop("container_frames", frames)
    info = VideoInfo(str(source), 10.0, 64, 48, frames, container, frames / 10, "h264", **decode)
    sha = f"{seed:02x}" * 32
    return VideoFeatures(
        "v" + sha[:20],
        sha,
        rng.normal(size=(frames, 1280)).astype(np.float32),
        np.cumsum(rng.uniform(0.05, 0.15, frames)),  # variable frame rate
        info,
    )


def _store(tmp_path: Path, videos: list[VideoFeatures], failures: int = 0) -> Path:
    store_path = tmp_path / "features.h5"
    with StoreBuilder(store_path, CONFIG) as builder:
        for vf in videos:
            write_part(builder.parts_dir, CONFIG, vf)
        for i in range(failures):
            failure = ExtractionFailure(str(tmp_path / f"broken{i}.mp4"), f"reason {i}")
            write_failure(builder.parts_dir, failure)
        builder.commit()
        builder.discard_staging()
    return store_path


@pytest.fixture
def videos(tmp_path: Path) -> list[VideoFeatures]:
    """Four videos, two of them with the same file name in different folders."""
    src = tmp_path / "src"
    return [
        _video(src / "a" / "walk.mp4", 23, 1),
        _video(src / "b" / "walk.avi", 9, 2, corrupt_packets=3, decoded_frames=9),
        _video(src / "run.mkv", 3, 3, container_frames=0, timestamps_repaired=2),
        _video(src / "jump.mp4", 17, 4, decoded_frames=17),
    ]


def _invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("window,stride", [(4, 4), (4, 2), (5, 3), (1, 1), (30, 7), (23, 1)])
def test_window_pooling_matches_a_numpy_reference(window: int, stride: int) -> None:
    rng = np.random.default_rng(window * 100 + stride)
    x = rng.normal(size=(23, 16)).astype(np.float16)
    t = np.cumsum(rng.uniform(0.01, 0.2, 23))
    pooled, centres = pool_windows(x, t, window, stride)
    span = min(window, len(x))
    starts = list(range(0, len(x) - span + 1, stride))
    expected = np.stack([x[s : s + span].astype(np.float64).mean(axis=0) for s in starts])
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(centres, [(t[s] + t[s + span - 1]) / 2 for s in starts])
    assert pooled.dtype == np.float32 and len(pooled) == len(starts) >= 1


def test_window_pooling_of_no_rows_is_no_rows() -> None:
    pooled, centres = pool_windows(np.zeros((0, 8), np.float16), np.zeros(0), 4, 2)
    assert pooled.shape == (0, 8) and centres.shape == (0,)


def test_file_names_are_stems_and_collisions_get_the_video_id() -> None:
    names = file_names({"v1": "walk", "v2": "walk", "v3": "run", "v4": "run.timestamps"}, "npy")
    assert names == {
        "v1": "walk-v1.npy",
        "v2": "walk-v2.npy",
        "v3": "run.npy",
        "v4": "run.timestamps-v4.npy",
    }
    assert len(set(names.values())) == 4


def test_info_reports_counts_bytes_failures_and_partial_decodes(tmp_path, videos) -> None:
    store = _store(tmp_path, videos, failures=7)
    result = _invoke("store", "info", store, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    on_disk = [store, *shards_dir_for(store).iterdir()]
    assert info["videos"] == 4 and info["frames"] == sum(len(v.features) for v in videos)
    assert info["bytes"]["total"] == sum(p.stat().st_size for p in on_disk)
    shards = list(shards_dir_for(store).glob("shard-*.h5"))
    assert info["shards"]["count"] == len(shards) and info["shards"]["missing"] == []
    assert info["extractor"] == CONFIG.to_dict()
    assert info["failures"]["count"] == 7 and len(info["failures"]["first"]) == 5
    assert [p["video_id"] for p in info["partial_decodes"]["first"]] == [videos[1].video_id]
    assert info["timestamps_repaired"] == {"videos": 1, "rows": 2}
    table = _invoke("store", "info", store)
    assert table.exit_code == 0, table.output
    for fragment in ("52", "random:seed=0", "partial decodes", videos[1].video_id, "reason 0"):
        assert fragment in table.output


def test_verify_passes_a_clean_store_and_names_a_flipped_chunk(tmp_path, videos) -> None:
    store = _store(tmp_path, videos)
    clean = _invoke("store", "verify", store)
    assert clean.exit_code == 0, clean.output
    assert "all 4 videos intact" in clean.output
    victim = videos[3]
    flip_feature_chunk(store, victim.video_id)
    with open_store(store) as fs:  # the other videos still read
        fs.read(videos[0].video_id)
    result = _invoke("store", "verify", store)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    flagged = [line for line in result.output.splitlines() if line.startswith("corrupt:")]
    assert len(flagged) == 1 and victim.video_id in flagged[0] and victim.info.path in flagged[0]
    assert "1 of 4 videos missing or corrupt" in result.output


def test_verify_lists_every_video_of_a_missing_shard(tmp_path, videos) -> None:
    store = _store(tmp_path, videos)
    with open_store(store) as fs:
        shard = fs.catalog[videos[2].video_id].shard
    (shards_dir_for(store) / shard).unlink()
    result = _invoke("store", "verify", store)
    assert result.exit_code == 1, result.output
    missing = [line for line in result.output.splitlines() if line.startswith("missing:")]
    assert len(missing) == 1 and videos[2].video_id in missing[0] and shard in missing[0]


def test_verify_fails_a_shard_made_by_another_extractor(tmp_path, videos) -> None:
    store = _store(tmp_path, videos)
    with open_store(store) as fs:
        shard = fs.catalog[videos[1].video_id].shard
    other = ExtractorConfig(**{**CONFIG.to_dict(), "input_size": 96})  # same width and dtype
    with h5py.File(shards_dir_for(store) / shard, "r+") as f:  # as if another run wrote it
        f.attrs["extractor"] = json.dumps(other.to_dict(), sort_keys=True)
    result = _invoke("store", "verify", store)
    assert result.exit_code == 1, result.output
    (damaged,) = [line for line in result.output.splitlines() if line.startswith("damaged:")]
    assert shard in damaged and "size=96" in damaged and "size=32" in damaged
    assert "1 store file(s) damaged" in result.output


def test_verify_fails_a_store_whose_links_plain_h5py_cannot_open(tmp_path, videos) -> None:
    store = _store(tmp_path, videos)
    with h5py.File(store, "r") as f:
        links = shards_dir_for(store) / str(f.attrs["links_file"])
    links.write_bytes(b"\0" * 64)  # vrnn's own reader does not need it: only verify can tell
    result = _invoke("store", "verify", store)
    assert result.exit_code == 1, result.output
    (damaged,) = [line for line in result.output.splitlines() if line.startswith("damaged:")]
    assert str(links) in damaged and "vrnn store compact" in damaged
    assert _invoke("store", "compact", store).exit_code == 0
    assert _invoke("store", "verify", store).exit_code == 0


@pytest.mark.parametrize("content", [b"not hdf5 at all\n", None])
def test_verify_and_info_refuse_a_file_that_is_not_a_store(tmp_path, content) -> None:
    path = tmp_path / "notes.h5"
    if content is None:  # an HDF5 file, but not a store
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
    else:
        path.write_bytes(content)
    for command in ("verify", "info"):
        result = _invoke("store", command, path)
        assert result.exit_code == 1
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0]


def _index(out: Path) -> list[dict[str, str]]:
    with open(out / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_export_writes_float32_arrays_timestamps_and_index_and_a_rerun_skips(
    tmp_path, videos
) -> None:
    store, out = _store(tmp_path, videos), tmp_path / "export"
    result = _invoke("store", "export", store, "-o", out)
    assert result.exit_code == 0, result.output
    rows = {row["video_id"]: row for row in _index(out)}
    assert set(rows) == {v.video_id for v in videos}
    with open_store(store) as fs:
        for vf in videos:
            row, stored = rows[vf.video_id], fs.read(vf.video_id)
            assert row["path"] == vf.info.path
            x, t = np.load(out / row["file"]), np.load(out / row["timestamps"])
            assert x.dtype == np.float32 and x.shape == (len(vf.features), 1280)
            np.testing.assert_array_equal(x, stored.features.astype(np.float32))
            np.testing.assert_array_equal(t, vf.timestamps_sec)
            assert int(row["frames"]) == int(row["rows"]) == len(vf.features)
            assert float(row["duration_sec"]) == pytest.approx(vf.info.duration_sec)
    assert sorted(r["file"] for r in rows.values()) == sorted(
        ["jump.npy", "run.npy", f"walk-{videos[0].video_id}.npy", f"walk-{videos[1].video_id}.npy"]
    )
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _invoke("store", "export", store, "-o", out)
    assert again.exit_code == 0, again.output
    assert "0 files written, 8 unchanged" in again.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    damaged = out / rows[videos[0].video_id]["file"]
    damaged.write_bytes(b"stale")
    third = _invoke("store", "export", store, "-o", out)
    assert "1 files written, 7 unchanged" in third.output
    np.testing.assert_array_equal(np.load(damaged), videos[0].features.astype(np.float16))


def test_export_windows_npz_and_keep_dtype(tmp_path, videos) -> None:
    store, out = _store(tmp_path, videos), tmp_path / "clips"
    result = _invoke(
        "store", "export", store, "-o", out, "--format", "npz", "--keep-dtype",
        "--window", "4", "--stride", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with open_store(store) as fs:
        for row in _index(out):
            stored = fs.read(row["video_id"])
            with np.load(out / row["file"]) as npz:
                x, t = npz["features"], npz["timestamps"]
            ref_x, ref_t = pool_windows(stored.features, stored.timestamps_sec, 4, 2)
            assert x.dtype == np.float16 and int(row["rows"]) == len(x) == len(ref_x)
            np.testing.assert_array_equal(x, ref_x.astype(np.float16))
            np.testing.assert_array_equal(t, ref_t)
    assert sorted(p.suffix for p in out.iterdir()) == [".csv"] + [".npz"] * 4


def test_export_refuses_a_directory_with_other_files_unless_overwrite(tmp_path, videos) -> None:
    store, out = _store(tmp_path, videos), tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    refused = _invoke("store", "export", store, "-o", out)
    assert refused.exit_code == 1
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--overwrite" in lines[0]
    assert os.listdir(out) == ["thesis.tex"]
    forced = _invoke("store", "export", store, "-o", out, "--overwrite")
    assert forced.exit_code == 0, forced.output
    assert (out / "thesis.tex").read_text() == "precious" and (out / "index.csv").is_file()


def test_export_stride_without_window_is_one_line(tmp_path, videos) -> None:
    store = _store(tmp_path, videos)
    result = _invoke("store", "export", store, "-o", tmp_path / "x", "--stride", "2")
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "--stride needs --window" in result.output
