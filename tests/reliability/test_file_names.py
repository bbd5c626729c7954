"""File names that are not valid UTF-8 (a latin-1 name from an old zip) round-trip everywhere.

``vrnn index`` wrote no manifest (traceback) and ``vrnn extract`` aborted at such a file on
every run. Now the manifest holds the name's bytes, the store's attributes, path index and
failure records and the JSON report hold the same name, a rerun finds it in the path index,
and a broken file with such a name is one recorded failure among successes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from pipeline.encode import write_video
from pipeline.manifest import read_manifest
from pipeline.store import open_store

from .helpers import ENV, RUN_TIMEOUT_SEC, extract_args, messages, vrnn_command


def _run(*args: str | Path, cwd: Path) -> tuple[int, bytes, str]:
    """``vrnn ARGS``; (status, stdout bytes, stderr with undecodable bytes escaped)."""
    done = subprocess.run(
        vrnn_command(*args), cwd=cwd, env=ENV, capture_output=True, timeout=RUN_TIMEOUT_SEC
    )
    return done.returncode, done.stdout, done.stderr.decode("utf-8", "surrogateescape")


def _video(folder: Path, name: bytes, shade: int) -> Path:
    """A real H.264 clip stored under the raw file name ``name`` (bytes) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = np.full((4, 32, 48, 3), shade, np.uint8)
    plain = write_video(folder / f"tmp{shade}{Path(os.fsdecode(name)).suffix}", frames, fps=10)
    target = os.path.join(os.fsencode(folder), name)
    os.rename(os.fsencode(plain), target)
    return Path(os.fsdecode(target))


def test_latin1_file_names_round_trip_through_index_extract_and_the_store(tmp_path):
    videos = tmp_path / "videos"
    cafe = _video(videos / "run", b"caf\xe9.mp4", 60)
    plain = _video(videos / "run", b"plain.mp4", 120)
    other = _video(videos / "jump", b"\xc0 la carte.avi", 180)
    broken = Path(os.fsdecode(os.path.join(os.fsencode(videos / "jump"), b"d\xe9fectueux.mp4")))
    Path(broken).write_bytes(b"not a video at all")
    good = {cafe, plain, other}

    status, out, err = _run("index", videos, "-o", tmp_path / "manifest.csv", cwd=tmp_path)
    assert status == 0, err
    assert b"caf\xe9.mp4" in (tmp_path / "manifest.csv").read_bytes()
    assert {r.path for r in read_manifest(tmp_path / "manifest.csv")} == good | {broken}

    store = tmp_path / "features.h5"
    status, out, err = _run(*extract_args(tmp_path / "manifest.csv", store), cwd=tmp_path)
    assert status == 0, err
    assert "extracted 3, skipped 0 (already stored), failed 1 of 4 videos" in out.decode()
    assert "d\udce9fectueux.mp4" in err  # the failure line prints the name's bytes
    report = json.loads((tmp_path / "features.h5.report.json").read_text())  # named after the store
    assert [f["path"] for f in report["failures"]] == [str(broken)]
    with open_store(store) as s:
        assert {s.read(v).info.path for v in s.video_ids} == {str(p) for p in good}
        assert set(s.path_index) == {str(p) for p in good}
        assert [f.path for f in s.failures] == [str(broken)]
        assert all(s.video_id_for(p) for p in good)

    # A rerun over the folder finds every good file in the path index (no re-extraction),
    # and the broken one among the known failures (its Latin-1 name matched, not retried).
    status, out, err = _run(*extract_args(videos, store), cwd=tmp_path)
    assert status == 0, messages(err)
    summary = "extracted 0, skipped 3 (already stored), failed 0 of 4 videos, 1 known failures"
    assert summary in out.decode()
