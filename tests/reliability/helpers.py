"""Running ``vrnn`` as a real subprocess, killing it at chosen moments, and comparing stores.

Every run uses ``--weights random`` (seed 0): the seeded backbone is rebuilt bit-identically by
every process (same seed, same calibration images; its weights sha256 is in the store), so a
killed-then-resumed store can be compared with a clean one made in another directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.contracts import VideoRecord
from pipeline.manifest import write_manifest
from pipeline.store import open_store

HERE = Path(__file__).parent
INJECT = HERE / "inject.py"
READER = HERE / "reader.py"

INPUT_SIZE = 32
EXTRACT_OPTIONS = ("--weights", "random", "--input-size", str(INPUT_SIZE), "--resize", "squash")
RUN_TIMEOUT_SEC = 600
"""Only a hang takes this long (a fresh ``vrnn extract`` took ~55 s at load average 28, 2 cores)."""

ENV = {
    **os.environ,
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "CUDA_VISIBLE_DEVICES": "",  # the suite is about files and processes, not accelerators
    "COLUMNS": "400",  # Rich would wrap error lines at 80 columns in a pipe
    "PYTHONUNBUFFERED": "1",
}

# Start-up chatter of TensorFlow/absl that reaches stderr whatever TF_CPP_MIN_LOG_LEVEL says.
_NOISE_PREFIXES = ("I0000", "W0000", "E0000", "WARNING: All log messages", "warning: --weights")


def vrnn_command(*args: str | Path, inject: str | None = None) -> list[str]:
    """argv for ``python -m stages ARGS`` or, with ``inject``, the fault-injecting launcher."""
    head = [sys.executable, str(INJECT), inject] if inject else [sys.executable, "-m", "stages"]
    return [*head, *map(str, args)]


def run_vrnn(
    *args: str | Path, cwd: Path, inject: str | None = None, timeout: float = RUN_TIMEOUT_SEC
) -> subprocess.CompletedProcess[str]:
    """Run ``vrnn ARGS`` to completion (text output captured)."""
    return subprocess.run(
        vrnn_command(*args, inject=inject),
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_vrnn(*args: str | Path, cwd: Path, inject: str | None = None) -> subprocess.Popen[str]:
    """Start ``vrnn ARGS`` in the background (stdout/stderr piped, text)."""
    return subprocess.Popen(
        vrnn_command(*args, inject=inject),
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def extract_args(source: Path, store: Path, *extra: str) -> list[str | Path]:
    """``extract SOURCE -o STORE`` with the suite's tiny, offline extractor options."""
    return ["extract", source, "-o", store, *EXTRACT_OPTIONS, *extra]


def signal_when(
    proc: subprocess.Popen,
    condition: Callable[[], bool],
    sig: int = signal.SIGKILL,
    *,
    timeout: float = RUN_TIMEOUT_SEC,
    poll_sec: float = 0.001,
) -> bool:
    """Send ``sig`` to ``proc`` as soon as ``condition()`` holds; False if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            proc.send_signal(sig)
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll_sec)
    proc.kill()
    raise AssertionError(f"condition not reached within {timeout} s")


def finish(proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_SEC) -> tuple[int, str, str]:
    """Wait for ``proc``; (exit status, stdout, stderr). A hang is a failure, not a wait."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"process hung for {timeout} s\n{err[-3000:]}") from None
    return proc.returncode, out, err


def messages(stderr: str) -> list[str]:
    """stderr lines a user reads: without TensorFlow's start-up chatter and blank lines."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith(_NOISE_PREFIXES) and "for smoke runs" not in line
    ]


def assert_one_error_line(stderr: str, *fragments: str) -> str:
    """The run printed no traceback and exactly one ``error:`` line containing ``fragments``."""
    assert "Traceback" not in stderr, stderr[-4000:]
    lines = messages(stderr)
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@dataclass(frozen=True)
class Snapshot:
    """Everything a store holds, loaded into memory for comparisons."""

    weights_sha256: str
    ids: tuple[str, ...]
    path_index: dict[str, str]
    failures: dict[str, str]
    features: dict[str, np.ndarray]
    timestamps: dict[str, np.ndarray]
    frame_counts: dict[str, int]


def snapshot(store: Path) -> Snapshot:
    """Read a whole store (every video through the checked reader)."""
    with open_store(store) as fs:
        videos = {vid: fs.read(vid) for vid in fs.video_ids}
        return Snapshot(
            weights_sha256=fs.config.weights_sha256,
            ids=tuple(fs.video_ids),
            path_index={path: entry[0] for path, entry in fs.path_index.items()},
            failures={f.path: f.reason for f in fs.failures},
            features={vid: v.features for vid, v in videos.items()},
            timestamps={vid: v.timestamps_sec for vid, v in videos.items()},
            frame_counts={vid: v.info.frame_count for vid, v in videos.items()},
        )


def assert_same_store(got: Snapshot, expected: Snapshot) -> None:
    """Same backbone, same videos (each once), same path index, same features and timestamps.

    Features agree to one float16 step: on one machine the seeded backbone gives bit-identical
    rows whatever the batch composition, but another CPU may pick other kernels per batch size.
    """
    assert got.weights_sha256 == expected.weights_sha256
    assert got.ids == expected.ids
    assert len(set(got.ids)) == len(got.ids)
    assert got.path_index == expected.path_index
    assert got.failures == expected.failures
    for vid in expected.ids:
        assert got.frame_counts[vid] == expected.frame_counts[vid], vid
        assert got.features[vid].shape == (expected.frame_counts[vid], 1280), vid
        np.testing.assert_array_equal(got.timestamps[vid], expected.timestamps[vid])
        np.testing.assert_allclose(
            got.features[vid].astype(np.float32),
            expected.features[vid].astype(np.float32),
            rtol=2**-10,
            atol=1e-3,
            err_msg=vid,
        )


def leftovers(directory: Path) -> list[str]:
    """Temporary files a run left behind in ``directory`` (and its staging folder)."""
    return sorted(
        p.name for p in directory.rglob(".*") if p.is_file() and p.name.endswith((".tmp", ".h5"))
    )


def write_csv_manifest(
    path: Path, videos: Sequence[Path], labels: Sequence[str] = ("a", "b")
) -> Path:
    """A manifest listing ``videos`` (absolute paths), labels cycling through ``labels``.

    The last quarter goes to ``val``, so ``vrnn train`` can use the same file.
    """
    records = [
        VideoRecord(
            path=Path(os.path.abspath(video)),
            label=labels[i % len(labels)],
            group=f"g{i}",
            split="val" if i >= len(videos) * 3 // 4 else "train",
        )
        for i, video in enumerate(videos)
    ]
    return write_manifest(records, path)


def flip_feature_chunk(store: Path, video_id: str) -> Path:
    """Invert 8 bytes in the middle of ``video_id``'s first compressed feature chunk.

    Found through the index's link to the shard file, as any reader finds it; the chunk's
    fletcher32 checksum no longer matches, so reading it must fail. Returns the shard's path.
    """
    with h5py.File(store, "r") as f:
        features = f["videos"][video_id]["features"]
        chunk, shard = features.id.get_chunk_info(0), Path(features.file.filename)
    with open(shard, "r+b") as f:
        f.seek(chunk.byte_offset + chunk.size // 2)
        data = f.read(8)
        f.seek(chunk.byte_offset + chunk.size // 2)
        f.write(bytes(255 - b for b in data))
    return shard
