"""Odd but legal inputs to ``index``, ``extract DIR`` and ``predict DIR``, on real encoded files.

Spaces at the ends of names are kept, two Unicode spellings of a label are one class, symlinked
folders are walked once by the one walker all three commands share, and a FIFO or a device
named like a video is a recorded failure instead of a hang. Malformed manifests and lists are
one ``error:`` line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.encode import write_video
from pipeline.errors import ManifestError
from pipeline.index_sources import find_videos, index_csv, index_folder, source_videos
from pipeline.manifest import read_manifest, write_manifest
from pipeline.predict import collect_videos
from pipeline.store import open_store
from stages.cli import app

NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_spaces_at_the_ends_of_paths_labels_and_groups_are_kept(make_video, tmp_path):
    """#11 item 16: a folder named ' x' was 'file not found' after stripping."""
    video = make_video(" x/clip .mp4")
    (tmp_path / "list.csv").write_text('path,label,group\n" x/clip .mp4", walk , g1 \n')
    [record] = index_csv(tmp_path / "list.csv").records
    assert record.path == video and record.path.is_file()
    assert (record.label, record.group) == (" walk ", " g1 ")
    manifest = write_manifest([record], tmp_path / "manifest.csv")
    assert read_manifest(manifest) == [record]


def test_two_unicode_spellings_of_a_label_are_one_class(make_video, tmp_path):
    """#19: NFC and NFD 'café' folders (two folders on Linux) and CSV labels → one label."""
    assert NFC != NFD
    make_video(f"videos/{NFC}/a.mp4")
    make_video(f"videos/{NFD}/b.avi")
    make_video("videos/tea/c.mp4")
    result = index_folder(tmp_path / "videos")
    assert result.labels == [NFC, "tea"]
    rows = f"path,label\nvideos/{NFC}/a.mp4,{NFD}\nvideos/{NFD}/b.avi,{NFC}\n"
    (tmp_path / "list.csv").write_text(rows)
    assert index_csv(tmp_path / "list.csv").labels == [NFC]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('path,label,group,split\n"a.mp4,x,g,train\nb.mp4,y,g2,test\n', "unterminated quote"),
        ("path,label,label,group,split\na.mp4,x,y,g,train\n", r"column\(s\) label appear"),
    ],
    ids=["unterminated quote", "duplicated column"],
)
def test_malformed_manifests_say_what_is_wrong(tmp_path, text, message):
    """#19: an unterminated quote was 'empty label'; a duplicated column used the last."""
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / "m.csv")


@pytest.fixture
def ucf(make_video, tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "UCF"
    make_video("UCF/Run/v_Run_g01_c01.avi")
    make_video("UCF/Run/v_Run_g02_c01.avi")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Run\n")
    (lists / "trainlist01.txt").write_text("Run/v_Run_g01_c01.avi 1\n")
    (lists / "testlist01.txt").write_text("Run/v_Run_g02_c01.avi\n")
    return root, lists


def test_index_cli_mistakes_are_one_line(ucf, make_video, tmp_path):
    """#19: latin-1 UCF101 lists, --split-id without --ucf101-lists."""
    root, lists = ucf
    out = tmp_path / "m.csv"
    assert invoke("index", root, "--ucf101-lists", lists, "-o", out).exit_code == 0
    (lists / "classInd.txt").write_bytes("1 Run\n2 Caf\xe9\n".encode("latin-1"))
    result = invoke("index", root, "--ucf101-lists", lists, "-o", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert errors(result.output) == [f"error: {lists / 'classInd.txt'}: not UTF-8 text "
                                     "(invalid continuation byte at byte 11)"]  # fmt: skip
    result = invoke("index", root, "--split-id", "2", "-o", out)
    assert result.exit_code == 1
    assert errors(result.output) == [
        "error: --split-id needs --ucf101-lists (it picks an official UCF101 split)"
    ]


def test_a_video_at_the_root_of_a_class_tree_is_not_called_a_non_video_file(make_video, tmp_path):
    """#19: the summary named it a 'non-video file'."""
    make_video("videos/run/a.mp4")
    make_video("videos/stray.mp4")
    (tmp_path / "videos" / "notes.txt").write_text("x")
    result = invoke("index", tmp_path / "videos", "-o", tmp_path / "m.csv")
    assert result.exit_code == 0, result.output
    assert "passed over 1 files that are not videos by extension (notes.txt)" in result.stdout
    assert "1 videos outside any class folder" in result.stdout


@pytest.fixture
def linked_tree(make_video, tmp_path) -> Path:
    """``videos/`` with a real class, a symlinked class folder, a symlinked subfolder, a link
    back to the tree's root (a cycle) and a second link to the same folder."""
    make_video("videos/run/a.mp4")
    make_video("elsewhere/jump/b.avi")
    make_video("elsewhere/jump/deeper/c.mkv")
    make_video("more/d.mp4")
    videos = tmp_path / "videos"
    os.symlink(tmp_path / "elsewhere" / "jump", videos / "jump")
    os.symlink(tmp_path / "more", videos / "run" / "more")
    os.symlink(videos, videos / "run" / "loop")
    os.symlink(tmp_path / "more", videos / "run" / "same_again")
    return videos


def test_one_walker_follows_symlinked_folders_once(linked_tree):
    """#11 item 7: index, extract DIR and predict DIR list the same videos, each once."""
    expected = sorted(
        [
            linked_tree / "jump" / "b.avi",
            linked_tree / "jump" / "deeper" / "c.mkv",
            linked_tree / "run" / "a.mp4",
            linked_tree / "run" / "more" / "d.mp4",
        ]
    )
    indexed = sorted(r.path for r in index_folder(linked_tree).records)
    assert indexed == expected
    assert {r.label for r in index_folder(linked_tree).records} == {"jump", "run"}
    assert find_videos(linked_tree).videos == expected
    assert source_videos(linked_tree).videos == expected  # extract DIR
    assert collect_videos([linked_tree])[:2] == (expected, [])  # predict DIR


@pytest.fixture
def with_fifo(make_video, tmp_path) -> Iterator[Path]:
    """``inbox/`` with a real clip and a FIFO named ``pipe.mp4``.

    A watchdog turns a regression into a failure instead of a hung suite: after 30 s it opens
    and closes the FIFO's write end whenever a reader is blocked on it (EOF unblocks it).
    """
    folder = tmp_path / "inbox"
    make_video("inbox/good.mp4", n_frames=5)
    fifo = folder / "pipe.mp4"
    os.mkfifo(fifo)
    done = threading.Event()

    def unblock() -> None:
        if done.wait(30):
            return
        while not done.wait(0.5):
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    yield folder
    done.set()
    watchdog.join()


def test_extract_records_a_fifo_as_not_a_regular_file(with_fifo, tmp_path):
    """#19: a FIFO named *.mp4 in a folder hung extract while hashing."""
    from pipeline.extract import ExtractOptions, run_extraction

    store = tmp_path / "features.h5"
    report = run_extraction(
        source_videos(with_fifo).videos, store, ExtractOptions(weights="random", input_size=32)
    )
    assert (report.extracted, report.failed) == (1, 1)
    [failure] = report.failures
    assert failure["path"] == str(with_fifo / "pipe.mp4")
    assert "not a regular file: a FIFO" in failure["reason"]


def test_predict_reports_fifos_and_devices_and_classifies_the_rest(with_fifo, trained_dir):
    """#19: a FIFO (in a folder) or a character device given as a video hung predict."""
    result = invoke("predict", trained_dir.model_dir, with_fifo, "/dev/zero", "--json")
    assert result.exit_code == 1
    assert "classified 1 videos, 2 failed" in result.stderr
    assert f'"path": "{with_fifo / "pipe.mp4"}", "error": "not a regular file: a FIFO"' in (
        result.stdout
    )
    assert '"path": "/dev/zero", "error": "not a regular file: a character device"' in (
        result.stdout
    )


# Containers and raw streams FFmpeg demuxes as video that folder walks once skipped without a
# word (#25 item 5), each written here by PyAV's FFmpeg: suffix → (muxer, encoder, pix_fmt).
MORE_FORMATS = {
    ".vob": ("vob", "mpeg2video", "yuv420p"),
    ".mxf": ("mxf", "mpeg2video", "yuv420p"),
    ".m2v": ("mpeg2video", "mpeg2video", "yuv420p"),
    ".m1v": ("mpeg1video", "mpeg1video", "yuv420p"),
    ".m2t": ("mpegts", "mpeg2video", "yuv420p"),
    ".divx": ("avi", "mpeg4", "yuv420p"),
    ".f4v": ("f4v", "libx264", "yuv420p"),
    ".qt": ("mov", "libx264", "yuv420p"),
    ".3g2": ("3g2", "mpeg4", "yuv420p"),
    ".y4m": ("yuv4mpegpipe", "rawvideo", "yuv420p"),
    ".gif": ("gif", "gif", "rgb8"),
    ".asf": ("asf", "msmpeg4", "yuv420p"),
    ".nut": ("nut", "mpeg4", "yuv420p"),
    ".ivf": ("ivf", "libvpx", "yuv420p"),
    ".rm": ("rm", "rv10", "yuv420p"),
    ".h264": ("h264", "libx264", "yuv420p"),
    ".mjpeg": ("mjpeg", "mjpeg", "yuvj420p"),
}


def _write(path: Path, muxer: str, codec: str, pix_fmt: str, frames: int = 6) -> Path:
    video = np.repeat((30 * np.arange(frames, dtype=np.uint8))[:, None, None, None], 64, 1)
    video = np.repeat(np.repeat(video, 64, 2), 3, 3)
    for i in range(frames):
        video[i, : 8 * (i + 1), :, 0] = 255  # a moving edge: every frame differs
    return write_video(path, video, fps=25, codec=codec, pix_fmt=pix_fmt, muxer=muxer)


def test_every_video_format_in_a_folder_is_extracted_and_other_files_are_named(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    made = [_write(folder / f"clip{ext}", *spec) for ext, spec in MORE_FORMATS.items()]
    _write(folder / "renamed.bin", "mp4", "libx264", "yuv420p")  # a video, by content only
    (folder / "notes.txt").write_text("x")
    store = tmp_path / "f.h5"
    args = ["extract", str(folder), "-o", str(store), "--weights", "random"]
    result = invoke(*args, "--input-size", "32", "--resize", "squash")
    assert result.exit_code == 0, result.output
    summary = f"extracted {len(made)}, skipped 0 (already stored), failed 0 of {len(made)} videos"
    assert summary in result.stdout
    passed = "passed over 2 files that are not videos by extension (notes.txt, renamed.bin)"
    assert passed in result.stdout
    report = json.loads((tmp_path / "f.h5.report.json").read_text())
    assert report["not_videos"] == [str(folder / "notes.txt"), str(folder / "renamed.bin")]
    with open_store(store) as feature_store:
        for path in made:  # every frame of every format, read back by path
            assert feature_store.read(feature_store.video_id_for(path)).features.shape[0] == 6
    tree = tmp_path / "tree"
    (tree / "any").mkdir(parents=True)
    for path in [*made, folder / "notes.txt"]:
        shutil.copy(path, tree / "any")
    indexed = invoke("index", tree, "-o", tmp_path / "m.csv")
    assert indexed.exit_code == 0, indexed.output
    assert f"indexed {len(made)} videos" in indexed.stdout
    assert "passed over 1 files that are not videos by extension (notes.txt)" in indexed.stdout
