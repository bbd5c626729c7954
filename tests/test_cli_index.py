"""``vrnn index`` and ``vrnn sample-data`` through the Typer app: summaries, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.contracts import SPLITS
from pipeline.manifest import read_manifest
from stages.cli import app

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def tree(make_video) -> Path:
    """``videos/<label>/v_<label>_g<NN>_c<MM>.mp4``: 2 labels × 3 groups × 2 clips, one note."""
    for label in ("jump", "wave"):
        for g in range(1, 4):
            for c in range(1, 3):
                make_video(f"videos/{label}/v_{label}_g{g:02d}_c{c:02d}.mp4", n_frames=2)
    root = make_video("videos/jump/v_jump_g01_c01.mp4", n_frames=2).parents[1]
    (root / "jump" / "notes.txt").write_text("x")
    return root


def test_index_folder_writes_manifest_and_one_line_summary(tree):
    out = tree.parent / "manifest.csv"
    result = invoke("index", tree, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"indexed 12 videos in 2 labels (train 4, val 4, test 4); "
        f"passed over 1 files that are not videos by extension (notes.txt) → {out}\n"
    )
    records = read_manifest(out)
    assert {r.split for r in records} == set(SPLITS)
    assert out.read_text().splitlines()[1].startswith("videos/jump/v_jump_g")
    first = out.read_bytes()
    assert invoke("index", tree, "-o", out).exit_code == 0
    assert out.read_bytes() == first


def test_index_fractions_option(tree):
    out = tree.parent / "m.csv"
    result = invoke("index", tree, "-o", out, "--val-frac", "0", "--test-frac", "0.4")
    assert result.exit_code == 0, result.output
    assert "(train 8, val 0, test 4)" in result.stdout


def test_index_ucf101_lists(make_video, tmp_path):
    names = [f"Knitting/v_Knitting_g{g:02d}_c01.avi" for g in range(1, 6)]
    for name in names:
        make_video(f"UCF-101/{name}", n_frames=2)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Knitting\n")
    (lists / "trainlist01.txt").write_text("".join(f"{n} 1\n" for n in names[:4]))
    (lists / "testlist01.txt").write_text(f"{names[4]}\n")
    out = tmp_path / "manifest.csv"
    result = invoke("index", tmp_path / "UCF-101", "--ucf101-lists", lists, "-o", out)
    assert result.exit_code == 0, result.output
    assert "indexed 5 videos in 1 labels (train 3, val 1, test 1)" in result.stdout
    assert [r.split for r in read_manifest(out) if r.path.name == Path(names[4]).name] == ["test"]


def test_index_csv_source(tree):
    source = tree / "list.csv"
    source.write_text("path,label\njump/v_jump_g01_c01.mp4,jump\nwave/v_wave_g02_c02.mp4,wave\n")
    out = tree.parent / "manifest.csv"
    result = invoke("index", source, "-o", out)
    assert result.exit_code == 0, result.output
    assert [r.path for r in read_manifest(out)] == [
        tree / "jump" / "v_jump_g01_c01.mp4",
        tree / "wave" / "v_wave_g02_c02.mp4",
    ]


def csv_source(tree: Path, text: str) -> Path:
    path = tree / "list.csv"
    path.write_text(text)
    return path


BAD_INPUTS = {
    "missing source": (lambda tree: tree / "nope", "{tree}/nope: no such folder"),
    "empty source": (
        lambda tree: (tree / "empty").mkdir() or tree / "empty",
        "{tree}/empty: no class folders (expected {tree}/empty/<label>/<video files>)",
    ),
    "label without videos": (
        lambda tree: (tree / "zzz").mkdir() or tree,
        "{tree}/zzz: class folder 'zzz' has no video files (0 other files)",
    ),
    "csv missing columns": (
        lambda tree: csv_source(tree, "file,label\nx.mp4,a\n"),
        "{tree}/list.csv: missing column(s) path (found: file, label)",
    ),
    "unknown split": (
        lambda tree: csv_source(tree, "path,label,split\njump/v_jump_g01_c01.mp4,jump,dev\n"),
        "{tree}/list.csv, row 2: unknown split 'dev' (expected train, val or test)",
    ),
    "duplicate path": (
        lambda tree: csv_source(
            tree, "path,label\njump/v_jump_g01_c01.mp4,jump\n./jump/v_jump_g01_c01.mp4,wave\n"
        ),
        "{tree}/list.csv, row 3: duplicate path ./jump/v_jump_g01_c01.mp4 (first at row 2)",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_sources_give_one_line_errors_and_write_nothing(tree, case):
    make_source, message = BAD_INPUTS[case]
    out = tree.parent / "manifest.csv"
    before = sorted(tree.parent.rglob("*"))
    result = invoke("index", make_source(tree), "-o", out)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"error: {message.format(tree=tree)}\n"
    assert not out.exists()
    assert sorted(tree.parent.rglob("*")) == sorted(set(before) | set(tree.rglob("*")))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--val-frac", "0.6", "--test-frac", "0.5"], "train fraction must be positive"),
        (["--val-frac", "-0.1"], "val fraction must be between 0 and 1, got -0.1"),
        (["--ucf101-lists", ".", "--split-id", "4"], "UCF101 split id must be 1, 2 or 3, got 4"),
    ],
)
def test_bad_options_give_one_line_errors(tree, extra, message):
    out = tree.parent / "manifest.csv"
    result = invoke("index", tree, "-o", out, *extra)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not out.exists()


def test_a_failed_index_leaves_no_output_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "missing" / "manifest.csv"
    result = invoke("index", empty, "-o", out)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert not out.parent.exists()


def test_sample_data_command(tmp_path):
    result = invoke("sample-data", tmp_path / "sd", "--classes", "2", "--per-class", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote 4 videos (2 classes × 2) to {tmp_path / 'sd'} in ")
    assert sorted(p.name for p in (tmp_path / "sd").iterdir()) == ["brightening", "darkening"]
    result = invoke("index", tmp_path / "sd", "-o", tmp_path / "m.csv")
    assert result.exit_code == 0, result.output


def test_sample_data_rejects_too_many_classes(tmp_path):
    result = invoke("sample-data", tmp_path / "sd", "--classes", "99")
    assert result.exit_code == 1
    assert result.stderr == "error: classes must be between 1 and 10, got 99\n"
    assert not (tmp_path / "sd").exists()


def test_help_index_and_sample_data_do_not_import_tensorflow(tree, tmp_path):
    script = f"""
import sys
from typer.testing import CliRunner
from stages.cli import app
runner = CliRunner()
for args in (["--help"], ["index", "--help"],
             ["index", {str(tree)!r}, "-o", {str(tmp_path / "m.csv")!r}],
             ["sample-data", {str(tmp_path / "sd")!r}, "--classes", "1", "--per-class", "1"]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
heavy = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
assert not heavy, heavy
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_index_creates_the_output_folder(tree):
    out = tree.parent / "new" / "deeper" / "manifest.csv"
    result = invoke("index", tree, "-o", out)
    assert result.exit_code == 0, result.output
    assert len(read_manifest(out)) == 12


def test_help_texts_keep_their_words(monkeypatch):
    _off_terminal_defaults(monkeypatch)
    train_help = invoke("train", "--help").output
    words = " ".join(train_help.replace("│", " ").split())  # however the help column wraps
    assert "delta: linear on" in words and "mean |frame-to-frame change|" in words
    assert "delta averaged with an RNN over each frame's self-similarity" in words
    assert "Train an RNN head" not in train_help
    top = invoke("--help").output
    assert "light RNN heads" not in top and "linear" in top


def _off_terminal_defaults(monkeypatch) -> None:
    """No width chosen by the user (pytest-xdist workers inherit COLUMNS=80)."""
    for name in ("COLUMNS", "TERMINAL_WIDTH"):
        monkeypatch.delenv(name, raising=False)


def test_help_is_not_truncated_when_stdout_is_not_a_terminal(monkeypatch):
    _off_terminal_defaults(monkeypatch)
    for command in ("extract", "train", "evaluate", "predict", "index", "export", "store"):
        shown = invoke(command, "--help").output
        assert "…" not in shown, shown
    assert "--mixed-precision" in invoke("extract", "--help").output


def test_tables_keep_full_width_when_stdout_is_a_pipe(tmp_path):
    label = "bikes_on_a_long_winding_mountain_road"
    path = tmp_path / ("a folder with a long name " * 4) / "clip.mp4"
    script = f"""
from rich.table import Table
from stages import console
table = Table()
for column in ("video", "class", "p"):
    table.add_column(column)
table.add_row(console.plain({str(path)!r}), console.plain({label!r}), "0.98")
console.show(table, to_stdout=True)
console.show(table)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    for shown in (done.stdout, done.stderr):
        row = next(line for line in shown.splitlines() if label in line)
        assert str(path) in row and "0.98" in row, shown


def test_index_warns_when_a_split_gets_no_group_of_some_label(make_video, tmp_path):
    make_video("few/bikes/ride.mp4", n_frames=2)
    for i in range(8):
        make_video(f"few/cars/drive{i}.mp4", n_frames=2)
    root = make_video("few/cars/drive0.mp4", n_frames=2).parents[1]
    result = invoke("index", root, "-o", tmp_path / "m.csv")
    assert result.exit_code == 0, result.output
    for split in ("val", "test"):
        assert f"warning: the {split} split has no group of label(s) 'bikes'" in result.stderr
    assert "'cars'" not in result.stderr
    quiet = invoke("index", root, "-o", tmp_path / "q.csv", "--val-frac", "0", "--test-frac", "0")
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr, quiet.output


@pytest.fixture
def cuts(make_video) -> Path:
    """``cuts/<label>/rec<R>_cut<C>.mp4``: 2 labels × 4 recordings × 3 clips cut from each."""
    for label in ("bikes", "cars"):
        for r in range(4):
            for c in range(3):
                make_video(f"cuts/{label}/rec{label[0]}{r}_cut{c}.mp4", n_frames=2)
    return make_video("cuts/bikes/recb0_cut0.mp4", n_frames=2).parents[1]


def test_group_by_keeps_the_clips_of_one_recording_in_one_split(cuts, tmp_path):
    out = tmp_path / "m.csv"
    result = invoke("index", cuts, "-o", out, "--group-by", r"^(rec\w\d)_cut")
    assert result.exit_code == 0, result.output
    records = read_manifest(out)
    assert {r.group for r in records} == {f"rec{x}{r}" for x in "bc" for r in range(4)}
    for group in {r.group for r in records}:
        assert len({r.split for r in records if r.group == group}) == 1, group
    assert invoke("index", cuts, "-o", tmp_path / "alone.csv").exit_code == 0
    alone = read_manifest(tmp_path / "alone.csv")
    assert len({r.group for r in alone}) == 24  # without it every file is its own group


def test_group_by_refuses_files_it_does_not_match_and_bad_patterns(cuts, tmp_path, make_video):
    make_video("cuts/cars/stray.mp4", n_frames=2)
    result = invoke("index", cuts, "-o", tmp_path / "m.csv", "--group-by", r"^(rec\w\d)_")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --group-by '^(rec\\w\\d)_' matches no part of 1 ")
    assert "stray.mp4" in result.stderr and result.stderr.count("\n") == 1
    bad = invoke("index", cuts, "-o", tmp_path / "m.csv", "--group-by", "(rec")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: --group-by '(rec' is not a ")
