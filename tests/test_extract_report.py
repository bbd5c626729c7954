"""Extraction report and stored decode facts say what their docs say (#11 item 16).

``width``/``height`` are the displayed size (an anamorphic clip is wider than it is coded),
``duration_sec`` is the decoded stream's duration also when ``--fps`` keeps fewer rows, and a
copy of a file of the same run is counted as a duplicate, not as "already stored".
"""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.store import open_store

FRAMES, RATE, WIDTH, HEIGHT = 20, 10, 64, 48


def _anamorphic(path: Path) -> Path:
    """A real H.264 clip coded 64×48 with 2:1 pixels (displayed 128×48)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for i in range(FRAMES):
            image = np.full((HEIGHT, WIDTH, 3), 10 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_report_counts_and_stored_facts_match_their_docs(tmp_path):
    from pipeline.extract import ExtractOptions, run_extraction

    clip = _anamorphic(tmp_path / "wide.mp4")
    copy = tmp_path / "copy.mp4"
    shutil.copyfile(clip, copy)
    store = tmp_path / "features.h5"
    options = ExtractOptions(weights="random", input_size=32, fps=2.0)
    first = run_extraction([clip, copy], store, options)
    assert (first.extracted, first.skipped, first.duplicates, first.failed) == (1, 0, 1, 0)
    with open_store(store) as s:
        [video_id] = s.video_ids
        video = s.read(video_id)
        assert (video.info.width, video.info.height) == (2 * WIDTH, HEIGHT)
        assert video.info.frame_count == len(video.timestamps_sec) == 4  # 2 fps of 2 s
        assert abs(video.info.duration_sec - FRAMES / RATE) < 1e-6
        assert set(s.path_index) == {str(clip), str(copy)}
    again = run_extraction([clip, copy], store, options)
    assert (again.extracted, again.skipped, again.duplicates) == (0, 2, 0)


def test_report_names_files_with_several_videos_and_the_store_keeps_stream_facts(tmp_path):
    from pipeline.extract import ExtractOptions, run_extraction
    from tests.test_real_world_decode import _green_ramp, _mux_tracks

    ramp = _green_ramp(12)
    two = _mux_tracks(tmp_path / "two.mkv", [("libx264", ramp), ("mjpeg", ramp[:6])])
    one = _mux_tracks(tmp_path / "one.mkv", [("mjpeg", ramp[:1]), ("libx264", ramp[::-1])])
    store = tmp_path / "features.h5"
    report = run_extraction([two, one], store, ExtractOptions(weights="random", input_size=32))
    assert (report.extracted, report.multi_stream) == (2, 1)
    [noted] = report.multi_stream_videos
    assert (noted["path"], noted["video_streams"], noted["stream_index"]) == (str(two), 2, 0)
    with av.open(str(one)) as container:
        stream = container.streams.video[1]
        start = float(stream.start_time * stream.time_base)
    with open_store(store) as s:
        by_path = {s.video_info(v).path: s.video_info(v) for v in s.video_ids}
    assert (by_path[str(one)].stream_index, by_path[str(one)].video_streams) == (1, 1)
    assert by_path[str(one)].start_time_sec == start
