"""Extraction on Dask: a local cluster and a real scheduler build the in-process store.

Also: a worker killed mid-run, a video that kills every worker it touches, a killed client
and an unreachable scheduler. Every cluster here listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import dask
import numpy as np
import psutil
import pytest
from distributed import Client, WorkerPlugin
from typer.testing import CliRunner

from pipeline import decoder_thread, extract, featurize
from pipeline.contracts import ExtractorConfig
from pipeline.encode import write_video
from pipeline.errors import ClusterError
from pipeline.extract import ExtractOptions, TaskSpec, run_extraction
from pipeline.parallel import (
    KILLED_REASON,
    ClusterOptions,
    DaskRunner,
)
from pipeline.parallel_tasks import extract_task
from pipeline.store import open_store, parts_dir_for, shards_dir_for
from stages.cli import app
from stages.extract import report_path

pytestmark = pytest.mark.slow

# Worker processes cannot import this test module: ship its functions and classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SIZE = 32
OPTIONS = ExtractOptions(weights="random", input_size=SIZE, resize="squash", batch_size=8)
CLI_OPTIONS = ["--weights", "random", "--input-size", str(SIZE), "--resize", "squash"]
CLI_OPTIONS += ["--batch-size", "8"]
DASK = Path(sys.executable).with_name("dask")


def _clip(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, 6, 8, 3), dtype=np.uint8)
    video = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2).repeat(frames, axis=0)
    video[:, :24, :, 1] = (np.arange(frames) * 9 % 256)[:, None, None]
    return video


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight short 64×48 clips rotating through four codecs/containers."""
    root = tmp_path_factory.mktemp("videos")
    suffixes = [".mp4", ".avi", ".webm", ".mkv"]
    return [
        write_video(root / f"clip{i}{suffixes[i % 4]}", _clip(10 + 3 * i, i), fps=25)
        for i in range(8)
    ]


@pytest.fixture(scope="module")
def manifest(videos: list[Path]) -> Path:
    path = videos[0].parent / "manifest.csv"
    rows = [f"{video},c{i % 2},g{i},train" for i, video in enumerate(videos)]
    path.write_text("\n".join(["path,label,group,split", *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(videos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store an in-process run builds (what every cluster run must reproduce)."""
    store = tmp_path_factory.mktemp("reference") / "features.h5"
    report = run_extraction(videos, store, OPTIONS)
    assert (report.extracted, report.failed) == (len(videos), 0)
    return store


def assert_same_store(actual: Path, expected: Path, video_ids: list[str] | None = None) -> None:
    """Same extractor, videos, timestamps and decode facts; features within float16 rounding.

    Same weights file and per-frame computation, but a worker runs TensorFlow on fewer threads
    than the driver, so float32 sums may be reduced in another order: a few features near 0
    then differ by ~1e-5 absolute (seen on a loaded machine). ``atol`` allows that, as the
    reliability suite's comparison does.
    """
    with open_store(actual) as got, open_store(expected) as want:
        assert got.config == want.config
        ids = want.video_ids if video_ids is None else sorted(video_ids)
        assert got.video_ids == ids
        if video_ids is None:
            assert got.path_index == want.path_index
        for video_id in ids:
            a, b = got.read(video_id), want.read(video_id)
            assert (a.content_sha256, a.info) == (b.content_sha256, b.info)
            np.testing.assert_array_equal(a.timestamps_sec, b.timestamps_sec)
            assert a.features.dtype == b.features.dtype
            np.testing.assert_allclose(
                a.features.astype(np.float32),
                b.features.astype(np.float32),
                rtol=2**-10,
                atol=1e-3,
            )


def _tf_intra_threads() -> int:
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads()


# --------------------------------------------------------------------------- local cluster


def test_local_cluster_builds_the_in_process_store(
    videos: list[Path], reference: Path, tmp_path: Path
) -> None:
    store = tmp_path / "features.h5"
    done = []
    cluster = ClusterOptions(workers=2, threads_per_worker=1, videos_per_task=2)
    with DaskRunner(cluster) as runner:
        assert runner.info.local and runner.info.workers == 2
        assert runner.info.address.startswith("tcp://127.0.0.1:")
        report = run_extraction(videos, store, OPTIONS, runner=runner, on_task=done.append)
        assert set(runner.client.run(_tf_intra_threads).values()) == {1}
    assert (report.extracted, report.failed) == (len(videos), 0)
    with open_store(reference) as want:
        assert sorted(v for result in done for v in result.ok) == want.video_ids
    assert len(done) == 4  # one progress call per task
    assert sum(result.frames for result in done) == report.frames
    assert not parts_dir_for(store).exists()
    assert_same_store(store, reference)


def test_killed_worker_is_retried_and_the_store_is_complete(
    videos: list[Path], reference: Path, tmp_path: Path
) -> None:
    store = tmp_path / "features.h5"
    parts = parts_dir_for(store)
    killed: list[int] = []

    def kill_a_busy_worker(runner: DaskRunner, stop: threading.Event) -> None:
        pids = runner.client.run(os.getpid)
        while not stop.is_set() and not any(parts.glob("v*.h5")):
            time.sleep(0.01)
        busy = [addr for addr, keys in runner.client.processing().items() if keys]
        if busy and not stop.is_set():
            psutil.Process(pids[busy[0]]).kill()
            killed.append(pids[busy[0]])

    with DaskRunner(ClusterOptions(workers=2, threads_per_worker=1, videos_per_task=1)) as runner:
        stop = threading.Event()
        killer = threading.Thread(target=kill_a_busy_worker, args=(runner, stop))
        killer.start()
        try:
            report = run_extraction(videos, store, OPTIONS, runner=runner)
        finally:
            stop.set()
            killer.join()
    assert killed, "no worker was busy when the first part file appeared"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == "zombie"
    assert (report.extracted, report.failed) == (len(videos), 0)
    assert_same_store(store, reference)


class _CrashOnPoison(WorkerPlugin):
    """Makes opening any file named ``poison*`` kill its worker, like a decoder segfault."""

    def setup(self, worker: object) -> None:

        reader = decoder_thread.VideoReader

        class CrashingReader(reader):
            def __init__(self, path: Path, *args: object, **kwargs: object):
                if Path(path).name.startswith("poison"):
                    os.kill(os.getpid(), signal.SIGKILL)
                super().__init__(path, *args, **kwargs)

        decoder_thread.VideoReader = CrashingReader


def test_video_that_kills_workers_is_recorded_and_the_rest_extracted(
    videos: list[Path], reference: Path, tmp_path: Path
) -> None:
    poison = write_video(tmp_path / "poison.mp4", _clip(12, 99), fps=25)
    store = tmp_path / "features.h5"
    paths = [*videos[:3], poison, *videos[3:]]  # poison shares a task with a good video
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        DaskRunner(ClusterOptions(workers=2, threads_per_worker=1, videos_per_task=2)) as runner,
    ):
        runner.client.register_plugin(_CrashOnPoison(), name="crash-on-poison")
        report = run_extraction(paths, store, OPTIONS, runner=runner)
    assert (report.extracted, report.failed) == (len(videos), 1)
    [failure] = report.failures
    assert (failure["path"], failure["reason"]) == (str(poison), KILLED_REASON)
    assert (failure["size"], failure["mtime_ns"]) == (-1, -1)  # a failure of the run: retried
    with open_store(reference) as want:
        good = want.video_ids
    assert_same_store(store, reference, good)
    with open_store(store) as got:
        assert [f.path for f in got.failures] == [str(poison)]


# --------------------------------------------------------------------------- real cluster


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the nanny's child too
            process.wait()


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (random ports)."""
    root = tmp_path_factory.mktemp("cluster")
    info = root / "scheduler.json"
    common = {"cwd": root, "start_new_session": True, "stderr": subprocess.DEVNULL}
    scheduler = [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    processes = [subprocess.Popen([*scheduler, "--scheduler-file", str(info)], **common)]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        for i in range(2):
            worker = [DASK, "worker", address, "--nworkers", "1", "--nthreads", "1"]
            worker += ["--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"]
            processes.append(subprocess.Popen(worker, **common))
        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            _stop(process)


def test_scheduler_option_builds_the_in_process_store(
    manifest: Path, reference: Path, scheduler_address: str, tmp_path: Path
) -> None:
    store = tmp_path / "features.h5"
    args = ["extract", str(manifest), "-o", str(store), *CLI_OPTIONS]
    args += ["--scheduler", scheduler_address, "--threads-per-worker", "1"]
    result = CliRunner().invoke(app, [*args, "--videos-per-task", "3"])
    assert result.exit_code == 0, result.output
    assert f"Dask cluster {scheduler_address}: 2 workers, 1 TF threads each" in result.output
    assert "extracted 8, skipped 0 (already stored), failed 0 of 8 videos" in result.output
    assert_same_store(store, reference)


def test_workers_hash_new_files_and_write_the_shards_the_driver_only_indexes(
    videos: list[Path],
    reference: Path,
    scheduler_address: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    twin = tmp_path / "twin.mp4"  # same content as videos[0] under another path
    shutil.copyfile(videos[0], twin)
    manifest = tmp_path / "manifest.csv"
    rows = [f"{video},c{i % 2},g{i},train" for i, video in enumerate([*videos, twin])]
    manifest.write_text("\n".join(["path,label,group,split", *rows]) + "\n")

    def not_in_the_driver(*args: object, **kwargs: object) -> None:
        raise AssertionError("the driver hashed a video or wrote features")

    monkeypatch.setattr(extract, "file_sha256", not_in_the_driver)
    monkeypatch.setattr(featurize, "write_part", not_in_the_driver)
    store = tmp_path / "features.h5"
    args = ["extract", str(manifest), "-o", str(store), *CLI_OPTIONS]
    args += ["--scheduler", scheduler_address, "--videos-per-task", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = "extracted 8, skipped 0 (already stored), 1 duplicates (same content), failed 0"
    assert summary in result.output  # the twin is stored once, under both paths
    with Client(scheduler_address, timeout=30, set_as_default=False) as client:
        prefixes = client.run_on_scheduler(
            lambda dask_scheduler: list(dask_scheduler.task_prefixes)
        )
    assert {"vrnn-hash", "vrnn-extract"} <= set(prefixes)
    with open_store(store) as fs:
        shards = {entry.shard for entry in fs.catalog.values()}
        assert fs.path_index[str(twin)].video_id == fs.path_index[str(videos[0])].video_id
    assert shards == {p.name for p in shards_dir_for(store).glob("shard-*")} and len(shards) == 8
    with open_store(store) as got, open_store(reference) as want:  # the twin: a path, no video
        assert got.video_ids == want.video_ids
        for video_id in want.video_ids:  # (features: see the stores compared above)
            a, b = got.read(video_id), want.read(video_id)
            assert (a.content_sha256, a.info, a.features.shape) == (
                b.content_sha256, b.info, b.features.shape,
            )  # fmt: skip
            np.testing.assert_array_equal(a.timestamps_sec, b.timestamps_sec)


def _task_prefixes(dask_scheduler) -> list[str]:
    """Names of every kind of task the scheduler has run (``vrnn-hash``, …)."""
    return list(dask_scheduler.task_prefixes)


def test_killed_client_loses_nothing_finished_and_the_rerun_resumes(
    manifest: Path, reference: Path, scheduler_address: str, tmp_path: Path
) -> None:
    store = tmp_path / "features.h5"
    args = ["extract", str(manifest), "-o", str(store), *CLI_OPTIONS]
    args += ["--scheduler", scheduler_address, "--videos-per-task", "1"]
    client = subprocess.Popen(
        [sys.executable, "-m", "stages", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        parts = parts_dir_for(store)
        deadline = time.monotonic() + 120
        while not any(parts.glob("v*.h5")) and time.monotonic() < deadline:
            time.sleep(0.01)
        client.kill()
    finally:
        client.kill()
        client.wait()
    assert not store.exists(), "the killed run committed"
    staged = {p.stem for p in parts.glob("v*.h5")}
    assert staged
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert_same_store(store, reference)
    report = json.loads(report_path(store).read_text())
    assert report["extracted"] == 8  # committed now, whether staged by the killed run or not


# --------------------------------------------------------------------------- bad addresses


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def test_unreachable_scheduler_fails_within_the_timeout() -> None:
    address = f"tcp://127.0.0.1:{_closed_port()}"
    started = time.perf_counter()
    with pytest.raises(
        ClusterError, match=f"cannot reach the Dask scheduler at {address} within 1 s"
    ):
        DaskRunner(ClusterOptions(scheduler=address, connect_timeout_sec=1)).__enter__()
    # Well under Dask's own 30 s default: the option is honoured (margin for a loaded CI box).
    assert time.perf_counter() - started < 1 + 8


def test_unreachable_scheduler_is_one_error_line_and_writes_nothing(
    manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    address = f"tcp://127.0.0.1:{_closed_port()}"
    command = [sys.executable, "-m", "stages", "extract", str(manifest), "-o", str(out / "f.h5")]
    command += ["--scheduler", address, "--connect-timeout", "2"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: cannot reach the Dask scheduler at {address} within 2 s")
    assert elapsed < 2 + 15  # the timeout plus interpreter start-up and imports
    assert list(out.iterdir()) == []


def test_workers_and_scheduler_together_are_refused(manifest: Path, tmp_path: Path) -> None:
    args = ["extract", str(manifest), "-o", str(tmp_path / "f.h5")]
    result = CliRunner().invoke(app, [*args, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    assert result.exit_code == 1  # a usage error: one error line, like every error
    assert "either --workers or --scheduler" in result.output
    assert list(tmp_path.iterdir()) == []


def test_worker_without_the_shared_filesystem_is_a_clear_error(tmp_path: Path) -> None:
    config = ExtractorConfig(weights="random:seed=0", weights_sha256="0" * 64, input_size=SIZE)
    spec = TaskSpec(
        config=config,
        weights_file=str(tmp_path / "f.h5.backbone.weights.h5"),
        parts_dir=str(tmp_path / "f.h5.parts"),
        batch_size=8,
    )
    with pytest.raises(ClusterError, match=r"cannot see .*f\.h5\.parts.*shared filesystem"):
        extract_task(spec, [], None)


def test_in_process_extraction_never_imports_dask() -> None:
    code = "import sys, stages.cli, pipeline.extract; print('distributed' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_relative_output_works_with_workers_started_elsewhere(
    manifest: Path,
    reference: Path,
    scheduler_address: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workers run in another directory: a relative ``-o`` reaches them absolute."""
    monkeypatch.chdir(tmp_path)
    args = ["extract", str(manifest), "-o", "out/features.h5", *CLI_OPTIONS]
    result = CliRunner().invoke(app, [*args, "--scheduler", scheduler_address])
    assert result.exit_code == 0, result.output
    assert "extracted 8, skipped 0 (already stored), failed 0 of 8 videos" in result.output
    with open_store(tmp_path / "out" / "features.h5") as got, open_store(reference) as want:
        assert (got.video_ids, got.path_index) == (want.video_ids, want.path_index)
