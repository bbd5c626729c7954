"""``vrnn store export`` owns exactly the files its ``index.csv`` lists (on real stores)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pipeline.contracts import VideoFeatures
from pipeline.errors import StoreError
from pipeline.store import StoreBuilder, open_store, write_part
from pipeline.store import export as store_export
from tests.test_store_tools import CONFIG, _invoke, _video


def _add(store: Path, videos: list[VideoFeatures]) -> Path:
    """Commit ``videos`` into the store at ``store`` (created when missing)."""
    with StoreBuilder(store, CONFIG) as builder:
        for vf in videos:
            write_part(builder.parts_dir, CONFIG, vf)
        builder.commit()
        builder.discard_staging()
    return store


def _listed(out: Path) -> dict[str, tuple[str, str]]:
    with open(out / "index.csv", newline="") as f:
        return {row["video_id"]: (row["file"], row["timestamps"]) for row in csv.DictReader(f)}


def _holds_only_listed(out: Path) -> bool:
    listed = {name for pair in _listed(out).values() for name in pair}
    return {p.name for p in out.iterdir()} == listed | {"index.csv"}


def _export(store: Path, out: Path, *options: object) -> str:
    result = _invoke("store", "export", store, "-o", out, *options)
    assert result.exit_code == 0, result.output
    return result.output


def test_file_names_do_not_change_as_the_store_grows(tmp_path) -> None:
    src, store, out = tmp_path / "src", tmp_path / "features.h5", tmp_path / "export"
    first = _video(src / "a" / "walk.mp4", 11, 1)
    _export(_add(store, [first]), out)
    assert _listed(out)[first.video_id] == ("walk.npy", "walk.timestamps.npy")
    before = (out / "walk.npy").stat().st_mtime_ns

    second = _video(src / "b" / "walk.avi", 7, 2)  # the same stem arrives later
    output = _export(_add(store, [second]), out)
    listed = _listed(out)
    assert listed[first.video_id] == ("walk.npy", "walk.timestamps.npy")
    assert listed[second.video_id][0] == f"walk-{second.video_id}.npy"
    assert (out / "walk.npy").stat().st_mtime_ns == before  # unchanged, not rewritten
    assert _holds_only_listed(out), sorted(p.name for p in out.iterdir())
    assert "2 files written, 2 unchanged, 0 removed" in output
    with open_store(store) as fs:
        for vf in (first, second):
            x = np.load(out / listed[vf.video_id][0])
            np.testing.assert_array_equal(x, fs.read(vf.video_id).features.astype(np.float32))


def test_a_rerun_removes_its_own_files_that_index_csv_no_longer_lists(tmp_path) -> None:
    src, out = tmp_path / "src", tmp_path / "export"
    videos = [_video(src / "walk.mp4", 9, 1), _video(src / "run.mp4", 5, 2)]
    store = _add(tmp_path / "features.h5", videos)
    _export(store, out)
    assert len(list(out.glob("*.npy"))) == 4
    output = _export(store, out, "--format", "npz")
    assert sorted(p.name for p in out.iterdir()) == ["index.csv", "run.npz", "walk.npz"]
    assert "2 files written, 0 unchanged, 4 removed" in output
    assert _holds_only_listed(out)


@pytest.mark.parametrize("with_previous_export", [False, True])
def test_a_folder_with_arrays_export_did_not_write_is_refused_unless_overwrite(
    tmp_path, with_previous_export: bool
) -> None:
    src, out = tmp_path / "src", tmp_path / "arrays"
    store = _add(tmp_path / "features.h5", [_video(src / "walk.mp4", 9, 1)])
    if with_previous_export:
        _export(store, out)
    out.mkdir(exist_ok=True)
    mine = np.arange(6.0)
    np.save(out / "walk.npy" if not with_previous_export else out / "mine.npy", mine)
    users = out / ("walk.npy" if not with_previous_export else "mine.npy")
    refused = _invoke("store", "export", store, "-o", out)
    assert refused.exit_code == 1
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--overwrite" in lines[0]
    np.testing.assert_array_equal(np.load(users), mine)
    _export(store, out, "--overwrite")
    if with_previous_export:  # a file it did not write is never removed, even with --overwrite
        np.testing.assert_array_equal(np.load(users), mine)


def test_an_interrupted_export_is_recognised_and_finished_by_a_rerun(tmp_path, monkeypatch) -> None:
    src, out = tmp_path / "src", tmp_path / "export"
    videos = [_video(src / f"clip{i}.mp4", 5 + i, i + 1) for i in range(3)]
    store = _add(tmp_path / "features.h5", videos)
    real, calls = store_export.atomic_bytes, [0]

    def fail_on_the_third_file(path: Path, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise StoreError(f"cannot write {path}: injected")
        real(path, data)

    monkeypatch.setattr(store_export, "atomic_bytes", fail_on_the_third_file)
    with pytest.raises(StoreError, match="injected"):
        store_export.export_store(store, out, store_export.ExportOptions())
    monkeypatch.undo()
    assert not (out / "index.csv").exists() and any(out.glob("*.npy"))
    _export(store, out)  # no --overwrite: the arrays are the interrupted run's own
    assert _holds_only_listed(out) and len(_listed(out)) == 3
