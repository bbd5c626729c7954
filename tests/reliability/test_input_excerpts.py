"""Error lines quote at most a short, printable excerpt of a user's input (issue 25, item 7).

Real inputs: a video encoded with PyAV given where a manifest CSV is expected (an obvious
first try), and manifests whose header or split cells hold long text with control bytes.
"""

from __future__ import annotations

import pytest

from pipeline.errors import EXCERPT_CHARS

from .test_user_mistakes import FAST_EXTRACT, one_error, vrnn

MAX_LINE = 300
"""An error line quoting an excerpt stays well under a terminal screen."""


def _printable(line: str) -> None:
    assert len(line) < MAX_LINE, line
    assert not any(ord(c) < 32 or ord(c) == 127 for c in line), repr(line)


@pytest.mark.parametrize("command", ["extract", "train", "evaluate", "index-csv"])
def test_a_video_given_as_a_manifest_is_one_short_line_saying_so(make_video, tmp_path, command):
    clip = make_video("clip.mp4", n_frames=12)
    args = {
        "extract": ["extract", clip, "-o", tmp_path / "f.h5", *FAST_EXTRACT],
        "train": ["train", clip, tmp_path / "f.h5", "-o", tmp_path / "model"],
        "evaluate": ["evaluate", tmp_path / "model", clip, tmp_path / "f.h5", "-o", tmp_path],
        "index-csv": ["index", clip, "-o", tmp_path / "manifest.csv"],
    }[command]
    result = vrnn(*args)
    if command == "index-csv" and result.exit_code == 0:
        pytest.fail(f"index accepted a video as its source: {result.output}")
    line = one_error(result)
    _printable(line)
    if command != "index-csv":  # index names its own kinds of source
        assert "a binary file (a video?), not a manifest CSV" in line, line


def test_a_header_of_garbage_is_quoted_short_and_escaped(tmp_path):
    manifest = tmp_path / "m.csv"
    names = ["\x1b[31m" + "x" * 500] + [f"col{i}" for i in range(20)]
    manifest.write_text(",".join(names) + "\n" + ",".join("v" * 21) + "\n")
    line = one_error(vrnn("extract", manifest, "-o", tmp_path / "f.h5", *FAST_EXTRACT))
    _printable(line)
    assert "missing column(s) path" in line and "and 13 more" in line, line
    assert "\\x1b[31m" in line  # escaped, not sent to the terminal


def test_an_unknown_split_is_quoted_short_and_escaped(tmp_path):
    manifest = tmp_path / "m.csv"
    cell = "\x1b[2J\x07" + "t" * 400
    manifest.write_text(f"path,label,group,split\na.mp4,x,g,{cell}\n")
    line = one_error(vrnn("extract", manifest, "-o", tmp_path / "f.h5", *FAST_EXTRACT))
    _printable(line)
    assert "unknown split" in line and "t" * EXCERPT_CHARS not in line, line
