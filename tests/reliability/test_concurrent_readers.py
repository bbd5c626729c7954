"""Readers never see a half-written store while ``vrnn extract`` appends to it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .conftest import CleanStore, Clips, copy_store
from .helpers import ENV, READER, assert_same_store, extract_args, run_vrnn, snapshot


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_reader_looping_during_an_append_sees_only_whole_stores(
    tmp_path: Path, clips: Clips, half_store: CleanStore, reference: CleanStore
) -> None:
    store = copy_store(half_store, tmp_path / "out")
    stop, report = tmp_path / "stop", tmp_path / "reader.json"
    reader = subprocess.Popen(
        [sys.executable, str(READER), str(store), str(stop), str(report)], env=ENV
    )
    try:
        _wait_for(report)  # one whole pass over the previous store
        done = run_vrnn(*extract_args(clips.all_csv, store, "--batch-size", "8"), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        time.sleep(1.0)  # a few more passes over the new store
    finally:
        stop.touch()
        reader.wait(timeout=60)
    seen = json.loads(report.read_text())
    assert seen["errors"] == []
    assert seen["sizes"] == [8, 16]  # the previous store, then the whole new one; nothing else
    assert seen["passes"] > 10, seen
    assert_same_store(snapshot(store), reference.contents)
