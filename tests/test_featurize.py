"""Several decoder threads feeding one backbone: same store, isolated failures, bounded memory,
and cancellation that never leaves the consumer waiting on the queue.

Real encoded files (H.264, MPEG-4, VP9, MJPEG), the seeded random backbone, real part files.
A *hung* decoder is the one simulated thing: a reader that blocks until the test releases it
(a real file cannot be made to hang on a local filesystem); everything around it is real.
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline import backbone, decoder_thread, featurize
from pipeline.backbone import make_inference_fn
from pipeline.contracts import ExtractionFailure, VideoFeatures
from pipeline.encode import write_video
from pipeline.errors import ConfigError
from pipeline.extract import ExtractOptions, resolve_extractor, run_extraction
from pipeline.featurize import (
    WorkItem,
    auto_decoders,
    decode_order,
    iter_features,
    parse_decoders,
    queue_depth,
)
from pipeline.identity import file_sha256, video_id_from_sha256
from pipeline.store import backbone_sidecar
from tests.conftest import moving_square
from tests.reliability.helpers import assert_same_store, snapshot

SIZE = 32
OPTIONS = ExtractOptions(weights="random", input_size=SIZE, resize="squash", batch_size=8)
RESULT_WAIT_SEC = 120.0
"""Generous bound for a background consumer to finish (not a timing assertion: a hang)."""


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Seven clips of different lengths in four codecs/containers."""
    root = tmp_path_factory.mktemp("videos")
    suffixes = [".mp4", ".avi", ".webm", ".mkv"]
    return [
        write_video(
            root / f"clip{i}{suffixes[i % 4]}", moving_square(5 + 7 * i, 64, 48), fps=10 + i
        )
        for i in range(7)
    ]


@pytest.fixture(scope="module")
def one_decoder_store(videos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("one") / "features.h5"
    report = run_extraction(videos, path, replace(OPTIONS, decoders=1))
    assert (report.extracted, report.failed) == (len(videos), 0)
    return path


def _items(paths: list[Path]) -> list[WorkItem]:
    items = []
    for path in paths:
        sha = file_sha256(path)
        items.append(WorkItem(str(path), video_id_from_sha256(sha), sha))
    return items


def _engine(store: Path):
    """Extractor config and inference function of ``store`` (random backbone)."""
    extractor = resolve_extractor(store, OPTIONS)  # builds the backbone for a new store only
    if extractor.model is None:
        return extractor.config, backbone.backbone_for(extractor.config, backbone_sidecar(store))
    return extractor.config, make_inference_fn(extractor.model)


@pytest.mark.parametrize("decoders", [2, 3, 8])
def test_n_decoders_give_the_one_decoder_store(
    videos: list[Path], one_decoder_store: Path, tmp_path: Path, decoders: int
) -> None:
    options = replace(OPTIONS, decoders=decoders)
    report = run_extraction(videos, tmp_path / "features.h5", options)
    assert (report.extracted, report.failed) == (len(videos), 0)
    assert_same_store(snapshot(tmp_path / "features.h5"), snapshot(one_decoder_store))


class _HangingReader(decoder_thread.VideoReader):
    """A reader that, for one path, blocks before its first frame until ``release`` is set."""

    hang_path: Path | None = None
    entered = threading.Event()
    release = threading.Event()

    def chunks(self, chunk_frames: int = 16) -> Iterator:
        if self.path == self.hang_path:
            self.entered.set()
            self.release.wait()
        return super().chunks(chunk_frames)


@pytest.fixture
def hanging(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_HangingReader]]:
    events = {"entered": threading.Event(), "release": threading.Event()}
    reader = type("Reader", (_HangingReader,), events)
    monkeypatch.setattr(decoder_thread, "VideoReader", reader)
    try:
        yield reader
    finally:
        reader.release.set()  # let the blocked thread finish; its messages are ignored


def test_failures_stay_with_their_video_with_n_decoders(
    videos: list[Path],
    one_decoder_store: Path,
    tmp_path: Path,
    hanging: type[_HangingReader],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(videos[6].read_bytes()[:300])
    crashing, hung = videos[1], videos[4]
    original = _HangingReader.chunks

    def chunks(self, chunk_frames: int = 16):
        if self.path == crashing:
            raise RuntimeError("simulated library bug")
        return original(self, chunk_frames)

    monkeypatch.setattr(hanging, "chunks", chunks)
    hanging.hang_path = hung
    paths = [corrupt, *videos, truncated]
    config, infer = _engine(one_decoder_store)
    outcomes = dict(
        iter_features(
            _items(paths), config=config, infer=infer, batch_size=8, decoders=3,
            stall_timeout_sec=8.0,
        )
    )  # fmt: skip
    assert sorted(outcomes) == list(range(len(paths)))
    failed = {paths[i]: o.reason for i, o in outcomes.items() if isinstance(o, ExtractionFailure)}
    assert set(failed) == {corrupt, truncated, crashing, hung}
    assert "RuntimeError: simulated library bug" in failed[crashing]
    assert failed[hung] == "decoder hung (no frame for 8 s)"
    reference = snapshot(one_decoder_store)
    for outcome in outcomes.values():
        if isinstance(outcome, VideoFeatures):
            vid = outcome.video_id
            np.testing.assert_array_equal(outcome.timestamps_sec, reference.timestamps[vid])
            np.testing.assert_allclose(
                outcome.features.astype(np.float32),
                reference.features[vid].astype(np.float32),
                rtol=2**-10,
                atol=1e-3,
            )
    assert len(outcomes) - len(failed) == len(videos) - 2


def _long_video(path: Path, frames: int) -> Path:
    return write_video(path, moving_square(frames, 128, 96), fps=25)


def test_memory_stays_bounded_with_n_decoders_on_long_videos(tmp_path: Path) -> None:
    """Three 800-frame videos at input 96: ~66 MB of frames if the decoders ran ahead."""
    size, decoders, frames = 96, 3, 800
    long = [_long_video(tmp_path / f"long{i}.mp4", frames + i) for i in range(decoders)]
    options = ExtractOptions(weights="random", input_size=size, resize="squash")
    extractor = resolve_extractor(tmp_path / "f.h5", options)
    config, infer = extractor.config, make_inference_fn(extractor.model)
    frame_bytes = size * size * 3
    all_frames = sum(frames + i for i in range(decoders)) * frame_bytes
    tracemalloc.start()
    try:
        done = 0
        for _, outcome in iter_features(
            _items(long), config=config, infer=infer, batch_size=32, decoders=decoders
        ):
            assert isinstance(outcome, VideoFeatures)
            done += len(outcome.features)
            del outcome
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done == sum(frames + i for i in range(decoders))
    # The queue, one chunk being built per decoder, one batch, and the assembled features of
    # the videos in progress (float16 + float32 rows): far below all frames at once.
    queued = (queue_depth(decoders) + 2 * decoders) * decoder_thread.CHUNK_FRAMES * frame_bytes
    features = decoders * (frames + decoders) * 1280 * 4  # float16 rows + their concatenation
    bound = queued + 32 * frame_bytes + features + 4 * 2**20
    assert bound < all_frames / 2  # the test can tell bounded from unbounded
    assert peak < bound, (peak, bound, all_frames)


def _consume_in_thread(outcomes: Iterator) -> tuple[threading.Thread, list]:
    got: list = []

    def consume() -> None:
        got.extend(outcomes)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread, got


def test_stop_from_another_thread_ends_a_consumer_waiting_on_the_queue(
    videos: list[Path], one_decoder_store: Path, hanging: type[_HangingReader]
) -> None:
    hanging.hang_path = videos[0]  # the only decoder blocks: the consumer waits on the queue
    config, infer = _engine(one_decoder_store)
    stop = threading.Event()
    thread, got = _consume_in_thread(
        iter_features(_items(videos), config=config, infer=infer, decoders=1, stop=stop)
    )
    assert hanging.entered.wait(timeout=RESULT_WAIT_SEC)
    thread.join(timeout=0.5)
    assert thread.is_alive()  # waiting for a frame that never comes
    stop.set()
    thread.join(timeout=RESULT_WAIT_SEC)
    assert not thread.is_alive()
    assert got == []


def test_stop_from_another_thread_ends_run_extraction(
    videos: list[Path], tmp_path: Path, hanging: type[_HangingReader]
) -> None:
    hanging.hang_path = videos[3]
    stop = threading.Event()
    reports: list = []
    options = replace(OPTIONS, decoders=2)

    def run() -> None:
        reports.append(
            run_extraction(
                videos, tmp_path / "f.h5", options, stop=stop, on_video=lambda done: done_one()
            )
        )

    finished = threading.Semaphore(0)

    def done_one() -> None:
        finished.release()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for _ in range(len(videos) - 1):  # every video but the hung one
        assert finished.acquire(timeout=RESULT_WAIT_SEC)
    stop.set()
    thread.join(timeout=RESULT_WAIT_SEC)
    assert not thread.is_alive()
    report = reports[0]
    assert (report.extracted, report.failed) == (len(videos) - 1, 0)  # the hung one: a rerun


def test_several_decoders_take_the_biggest_files_first(videos: list[Path]) -> None:
    """Whole videos per thread: a big one taken last would leave the other decoders idle."""
    items = [
        WorkItem(str(p), f"v{i}", "0" * 64, p.stat().st_size, p.stat().st_mtime_ns)
        for i, p in enumerate(videos)
    ]
    assert len({item.size for item in items}) > 1  # the fixture's clips differ in size
    order = decode_order(items, 3)
    assert sorted(order) == list(range(len(items)))
    sizes = [items[i].size for i in order]
    assert sizes == sorted(sizes, reverse=True)
    assert order != list(range(len(items)))  # the fixture is not already biggest-first
    assert decode_order(items, 1) == list(range(len(items)))  # one decoder: item order


def test_decoders_option_values() -> None:
    assert parse_decoders("auto") is None
    assert parse_decoders("3") == 3
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(ConfigError, match="--decoders must be a whole number"):
            parse_decoders(bad)
    assert auto_decoders(1) == 1
    assert auto_decoders(4) == 4
    assert auto_decoders(64) == featurize.MAX_AUTO_DECODERS
    assert queue_depth(1) == featurize.QUEUE_CHUNKS
    assert queue_depth(8) == 8 * featurize.CHUNKS_PER_DECODER


def test_bad_decoders_value_is_one_error_line(videos: list[Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stages.cli import app

    store = tmp_path / "out" / "features.h5"
    args = ["extract", str(videos[0].parent), "-o", str(store), "--decoders", "two"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: --decoders must be a whole number ≥ 1 or auto, got 'two'"
    ]
    assert not store.parent.exists()
