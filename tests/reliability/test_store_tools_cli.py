"""``vrnn store info|verify|export`` as real subprocesses on a store extracted from real clips."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np

from pipeline.store.export import pool_windows

from .conftest import CleanStore, Clips, copy_store
from .helpers import assert_one_error_line, flip_feature_chunk, run_vrnn


def test_info_verify_export_on_an_extracted_store(
    tmp_path: Path, clips: Clips, reference: CleanStore
) -> None:
    store = copy_store(reference, tmp_path)
    contents = reference.contents
    info = run_vrnn("store", "info", store, "--json", cwd=tmp_path)
    assert info.returncode == 0, info.stderr[-3000:]
    summary = json.loads(info.stdout)
    assert summary["videos"] == len(clips.files) == len(contents.ids)
    assert summary["frames"] == sum(contents.frame_counts.values())
    assert summary["extractor"]["weights_sha256"] == contents.weights_sha256
    assert summary["failures"]["count"] == 0 and summary["partial_decodes"]["count"] == 0

    verified = run_vrnn("store", "verify", store, cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr[-3000:]
    assert f"all {len(contents.ids)} videos intact" in verified.stdout

    out = tmp_path / "export"
    exported = run_vrnn(
        "store", "export", store, "-o", out, "--window", "4", "--stride", "3", cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["path"] for row in rows) == sorted(str(p) for p in clips.files)
    assert sorted(row["file"] for row in rows) == sorted(f"{p.stem}.npy" for p in clips.files)
    for row in rows:
        ref_x, ref_t = pool_windows(
            contents.features[row["video_id"]], contents.timestamps[row["video_id"]], 4, 3
        )
        np.testing.assert_array_equal(np.load(out / row["file"]), ref_x)
        np.testing.assert_array_equal(np.load(out / row["timestamps"]), ref_t)


def test_verify_names_the_video_with_a_flipped_feature_chunk(
    tmp_path: Path, reference: CleanStore
) -> None:
    store = copy_store(reference, tmp_path)
    victim = reference.contents.ids[6]
    with h5py.File(store, "r") as f:
        source = f["videos"][victim].attrs["source_path"]
    flip_feature_chunk(store, victim)
    verified = run_vrnn("store", "verify", store, cwd=tmp_path)
    assert verified.returncode == 1
    assert_one_error_line(verified.stderr, "1 of 16 videos missing or corrupt")
    corrupt = [line for line in verified.stderr.splitlines() if line.startswith("corrupt:")]
    assert len(corrupt) == 1 and victim in corrupt[0] and source in corrupt[0]
