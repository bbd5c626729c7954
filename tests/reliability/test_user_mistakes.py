"""User mistakes: every row of docs/reliability.md's "user mistakes" table, asserted.

Each mistake must end in one ``error: …`` line and exit status 1 (130 for Ctrl-C), never a
traceback, and must destroy nothing that existed before the command ran. Commands run
in-process (``CliRunner``) on real files: HDF5 stores, Keras model directories, encoded videos.
Read-only and full disks are real tmpfs mounts (root only; skipped elsewhere).
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_train_evaluate import build_store, make_videos
from typer.testing import CliRunner

from pipeline import training
from pipeline.contracts import VideoRecord
from pipeline.errors import ConfigError
from pipeline.manifest import write_manifest
from pipeline.store import backbone_sidecar, shards_dir_for
from stages import extract as extract_stage
from stages.cli import app

from .test_disk import read_only_dir, tmpfs

STAGES = Path(__file__).parents[2] / "stages"
FAST_EXTRACT = ("--weights", "random", "--input-size", "32", "--resize", "squash")


def vrnn(*args: object):
    """``vrnn ARGS`` in-process; ``result.stdout``/``result.stderr`` are split."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(result, *fragments: str, code: int = 1) -> str:
    """Exit ``code``, no traceback or panel, exactly one ``error:`` line holding ``fragments``."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "╭" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def digest(path: Path) -> str:
    """sha256 over a file, or over every file of a directory (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def stage2(tmp_path_factory) -> dict:
    """A real store (+ backbone sidecar), its manifest, and a model trained on them."""
    root = tmp_path_factory.mktemp("mistakes")
    videos = make_videos(root / "videos", {"train": 6, "val": 2, "test": 3})
    store = build_store(root / "features.h5", videos)
    manifest = write_manifest([r for r, _ in videos], root / "manifest.csv")
    config = training.TrainConfig(seq_len=4, units=8, dense_units=0, epochs=2, batch_size=8)
    model = training.train([r for r, _ in videos], store, root / "model", config).model_dir
    return {"root": root, "store": store, "manifest": manifest, "model": model}


@pytest.fixture
def model_copy(stage2, tmp_path) -> Path:
    return Path(shutil.copytree(stage2["model"], tmp_path / "model"))


# --------------------------------------------------------------------------- outputs guard


@pytest.mark.parametrize("victim", ["feature store", "video", "text file"])
def test_index_refuses_to_replace_a_file_that_is_not_a_manifest(
    stage2, make_video, tmp_path, victim
):
    tree = tmp_path / "tree"
    make_video("tree/clap/a.mp4")
    make_video("tree/wave/b.mp4")
    target = {
        "feature store": Path(shutil.copy(stage2["store"], tmp_path / "features.h5")),
        "video": make_video("keep.mp4"),
        "text file": tmp_path / "notes.csv",
    }[victim]
    if victim == "text file":
        target.write_text("my,own,notes\n")
    before = digest(target)
    one_error(vrnn("index", tree, "-o", target), "is not a manifest CSV made by vrnn")
    assert digest(target) == before
    manifest = tmp_path / "manifest.csv"
    assert vrnn("index", tree, "-o", manifest).exit_code == 0
    assert vrnn("index", tree, "-o", manifest).exit_code == 0  # its own output: replaced
    assert vrnn("index", tree, "-o", target, "--overwrite").exit_code == 0
    assert target.read_text().startswith("path,label,group,split")


@pytest.mark.parametrize("victim", ["store", "manifest", "model head"])
def test_extract_report_refuses_to_replace_inputs_and_models(stage2, tmp_path, victim):
    target = {
        "store": stage2["store"],
        "manifest": stage2["manifest"],
        "model head": stage2["model"] / "head.keras",
    }[victim]
    before = digest(target)
    store = tmp_path / "new.h5"
    args = ("extract", stage2["root"] / "videos", "-o", store, *FAST_EXTRACT, "--report", target)
    one_error(vrnn(*args), "--report", "is not a JSON extract report made by vrnn")
    assert digest(target) == before
    assert not store.exists()  # refused before any work


def test_export_refuses_to_replace_the_trained_head(model_copy):
    before = digest(model_copy)
    result = vrnn("export", model_copy, "-o", model_copy / "head.keras")
    one_error(result, "is not a .keras export made by vrnn")
    assert digest(model_copy) == before


def test_train_refuses_a_directory_holding_other_files_before_training(stage2, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    shutil.copy(stage2["model"] / "head.keras", busy)  # looks like a model directory…
    shutil.copy(stage2["manifest"], busy)  # …but holds the user's inputs too
    shutil.copy(stage2["store"], busy)
    before = digest(busy)
    result = vrnn("train", busy / "manifest.csv", busy / "features.h5", "-o", busy)
    one_error(result, "is not a model directory (holding only model files)")
    assert "epoch" not in result.output  # refused before training
    assert digest(busy) == before


def test_train_through_a_symlink_replaces_the_target_and_keeps_the_link(
    stage2, model_copy, tmp_path
):
    link = tmp_path / "current"
    link.symlink_to(model_copy)
    args = ("train", stage2["manifest"], stage2["store"], "-o", link, "--seq-len", "3")
    args += ("--units", "4", "--dense-units", "0", "--epochs", "1")
    result = vrnn(*args)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == model_copy.resolve()
    assert json.loads((model_copy / "train_config.json").read_text())["seq_len"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "model"]


def test_reports_are_named_after_their_store_and_markup_in_paths_prints_literally(
    make_video, tmp_path
):
    make_video("videos/clap/a.mp4", n_frames=4)
    odd = [tmp_path / "videos" / "clap" / "bad[red]x.mp4", tmp_path / "videos" / "x[" / "b].mp4"]
    for path in odd:  # not videos: recorded failures, printed with their paths
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"not a video: {path.name}".encode())
    stores = [tmp_path / "out" / "a.h5", tmp_path / "out" / "b.h5"]
    for store in stores:
        result = vrnn("extract", tmp_path / "videos", "-o", store, *FAST_EXTRACT)
        assert result.exit_code == 0, result.output
        assert "failed 2 of 3" in result.output
        for path in odd:  # "[/b]" in ".../x[/b].mp4" used to crash Rich
            assert f"failed {path}: not a readable video container" in result.output
    second = vrnn("extract", tmp_path / "videos", "-o", stores[0], *FAST_EXTRACT)
    assert second.exit_code == 0, second.output
    reports = {s.name: json.loads(extract_stage.report_path(s).read_text()) for s in stores}
    assert reports["a.h5"]["store"].endswith("a.h5") and reports["a.h5"]["extracted"] == 0
    assert reports["b.h5"]["store"].endswith("b.h5") and reports["b.h5"]["extracted"] == 1


@pytest.mark.parametrize("when", ["after one video", "before any video"])
def test_ctrl_c_writes_an_interrupted_report_and_says_what_was_committed(
    make_video, tmp_path, monkeypatch, when
):
    from pipeline import extract

    for i in range(3):
        make_video(f"videos/clap/{i}.mp4", n_frames=4)
    real_run_task = extract.run_task

    def interrupted_run_task(spec, items, *, stop=None, on_video=None):
        if when == "before any video":
            raise KeyboardInterrupt

        def then_ctrl_c(done):
            on_video(done)
            raise KeyboardInterrupt

        return real_run_task(spec, items, stop=stop, on_video=then_ctrl_c)

    monkeypatch.setattr(extract, "run_task", interrupted_run_task)
    store = tmp_path / "features.h5"
    result = vrnn("extract", tmp_path / "videos", "-o", store, *FAST_EXTRACT)
    assert result.exit_code == 130, result.output
    report = json.loads(extract_stage.report_path(store).read_text())
    assert report["interrupted"] is True
    if when == "after one video":
        assert report["extracted"] == 1
        assert "interrupted: finished videos were committed to" in result.output
    else:
        assert report["extracted"] == 0
        assert f"interrupted: nothing new was committed to {store}" in result.output


def test_ctrl_c_while_planning_does_not_claim_a_commit(make_video, tmp_path, monkeypatch):
    from pipeline import extract

    make_video("videos/clap/a.mp4", n_frames=4)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(extract, "plan_extraction", ctrl_c)
    store = tmp_path / "features.h5"
    result = vrnn("extract", tmp_path / "videos", "-o", store, *FAST_EXTRACT)
    assert result.exit_code == 130, result.output
    assert "finished videos were committed" not in result.output
    assert f"interrupted: nothing new was committed to {store}" in result.output
    assert not store.exists()


def _read_only_cases(stage2: dict, ro: Path) -> dict[str, tuple]:
    m, s, model = stage2["manifest"], stage2["store"], stage2["model"]
    return {
        "index -o": ("index", stage2["root"] / "videos", "-o", ro / "m.csv"),
        "extract -o": ("extract", stage2["root"] / "videos", "-o", ro / "f.h5", *FAST_EXTRACT),
        "extract --report": ("extract", m, "-o", ro.parent / "f.h5", "--report", ro / "r.json"),
        "train -o": ("train", m, s, "-o", ro / "model"),
        "evaluate -o": ("evaluate", model, m, s, "-o", ro / "metrics"),
        "export -o": ("export", model, "-o", ro / "e.keras"),
        "sample-data": ("sample-data", ro / "videos", "--classes", "1", "--per-class", "1"),
    }


def test_read_only_outputs_are_one_line_before_any_work(stage2, tmp_path):
    with read_only_dir(tmp_path / "ro") as reason:
        for case, args in _read_only_cases(stage2, tmp_path / "ro").items():
            result = vrnn(*args)
            one_error(result, "cannot write", reason)
            assert "epoch" not in result.output, case
        assert list((tmp_path / "ro").iterdir()) == []
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.parametrize(
    "case",
    ["evaluate -o FILE", "extract --report DIR", "extract -o DIR", "index -o DIR", "export -o DIR"],
)
def test_outputs_of_the_wrong_kind_are_one_line(stage2, tmp_path, case):
    a_file, a_dir = stage2["manifest"], tmp_path / "a_dir"
    a_dir.mkdir()
    m, s = stage2["manifest"], stage2["store"]
    args = {
        "evaluate -o FILE": ("evaluate", stage2["model"], m, s, "-o", a_file),
        "extract --report DIR": ("extract", m, "-o", tmp_path / "f.h5", "--report", a_dir),
        "extract -o DIR": ("extract", m, "-o", a_dir, *FAST_EXTRACT),
        "index -o DIR": ("index", stage2["root"] / "videos", "-o", a_dir),
        "export -o DIR": ("export", stage2["model"], "-o", a_dir),
    }[case]
    if case == "export -o DIR":
        a_dir = Path(shutil.move(a_dir, tmp_path / "a_dir.keras"))
        args = ("export", stage2["model"], "-o", a_dir)
    one_error(vrnn(*args), "is a ")


def test_sample_data_refuses_a_file_where_a_class_folder_goes_and_a_foreign_folder(tmp_path):
    out = tmp_path / "videos"
    out.mkdir()
    (out / "brightening").write_text("mine")
    one_error(vrnn("sample-data", out, "--classes", "1", "--per-class", "1"), "is a file")
    assert (out / "brightening").read_text() == "mine"
    (out / "brightening").unlink()
    (out / "holiday.mp4").write_text("mine")
    one_error(
        vrnn("sample-data", out, "--classes", "1", "--per-class", "1"), "is not a sample-data"
    )
    done = vrnn("sample-data", out, "--classes", "1", "--per-class", "1", "--overwrite")
    assert done.exit_code == 0, done.output
    assert (out / "holiday.mp4").read_text() == "mine"


def test_sample_data_on_a_full_disk_is_one_line(tmp_path):
    with tmpfs(tmp_path / "disk", "48k") as disk:
        result = vrnn("sample-data", disk / "videos", "--classes", "6", "--per-class", "12")
        one_error(result, "cannot write", "No space left on device")


# --------------------------------------------------------------------------- numeric bounds

BAD_NUMBERS = [
    ("extract", "--fps", "inf"),
    ("extract", "--fps", "1e20"),
    ("extract", "--fps", "nan"),
    ("extract", "--batch-size", "0"),
    ("extract", "--batch-size", "1000000000"),
    ("extract", "--connect-timeout", "inf"),
    ("extract", "--input-size", "100000"),
    ("train", "--lr", "inf"),
    ("train", "--lr", "nan"),
    ("train", "--seed", "-1"),
    ("train", "--batch-size", "1000000000"),
    ("train", "--seq-len", "1000000000"),
    ("train", "--units", "1000000000"),
    ("train", "--dropout", "1"),
    ("predict", "--batch-size", "0"),
    ("predict", "--top-k", "0"),
    ("sample-data", "--per-class", "0"),
    ("sample-data", "--seed", "-1"),
]


@pytest.mark.parametrize(("command", "option", "value"), BAD_NUMBERS)
def test_numbers_out_of_bounds_are_one_line_before_any_work(
    stage2, tmp_path, command, option, value
):
    m, s = stage2["manifest"], stage2["store"]
    head = {
        "extract": ("extract", m, "-o", tmp_path / "f.h5"),
        "train": ("train", m, s, "-o", tmp_path / "model"),
        "predict": ("predict", stage2["model"], stage2["root"] / "videos"),
        "sample-data": ("sample-data", tmp_path / "videos"),
    }[command]
    result = vrnn(*head, option, value)
    one_error(result, f"Invalid value for '{option}'", "must be a finite number in")
    assert list(tmp_path.iterdir()) == []


def test_extract_and_predict_agree_on_a_zero_batch_size(stage2, tmp_path):
    extract = vrnn("extract", stage2["manifest"], "-o", tmp_path / "f.h5", "--batch-size", "0")
    predict = vrnn("predict", stage2["model"], stage2["manifest"], "--batch-size", "0")
    assert extract.exit_code == predict.exit_code == 1
    assert one_error(extract).split(" (see")[0] == one_error(predict).split(" (see")[0]


def test_training_stops_on_a_non_finite_loss(tmp_path):
    # Infinite features (what used to make the loss NaN) are refused before training ...
    videos = make_videos(tmp_path / "videos", {"train": 4})
    videos = [(r, np.full_like(f, np.inf)) if i == 0 else (r, f) for i, (r, f) in enumerate(videos)]
    store = build_store(tmp_path / "features.h5", videos)
    manifest = write_manifest([r for r, _ in videos], tmp_path / "manifest.csv")
    result = vrnn("train", manifest, store, "-o", tmp_path / "model", "--epochs", "2")
    one_error(result, "stored features contain NaN or inf", videos[0][0].path.name)
    assert not (tmp_path / "model").exists()
    # ... and a loss that diverges anyway (e.g. too high a --lr) stops training in one line.
    check = training._stop_on_non_finite_loss(training.TrainConfig(learning_rate=5.0), None)
    check(0, {"loss": 1.5, "val_loss": 1.7})
    with pytest.raises(
        ConfigError, match=r"training diverged: loss is nan after epoch 2 \(--lr 5\)"
    ):
        check(1, {"loss": float("nan")})


def test_a_model_with_non_finite_weights_is_refused_and_no_nan_reaches_json(stage2, model_copy):
    from pipeline.heads import load_head, save_head

    head = load_head(model_copy / "head.keras")
    head.set_weights([np.full_like(w, np.nan) for w in head.get_weights()])
    save_head(head, model_copy / "head.keras")
    m, s = stage2["manifest"], stage2["store"]
    one_error(vrnn("evaluate", model_copy, m, s, "-o", model_copy.parent / "metrics"), "NaN")
    result = vrnn("predict", model_copy, stage2["root"] / "videos", "--json")
    one_error(result, "non-finite weights")
    assert "NaN" not in result.stdout


def test_out_of_memory_is_one_line(stage2, tmp_path, monkeypatch):
    def allocate_too_much(*args, **kwargs):
        return np.ones(2**62, dtype=np.uint8)  # a real MemoryError from the allocator

    monkeypatch.setattr(training, "train", allocate_too_much)
    result = vrnn("train", stage2["manifest"], stage2["store"], "-o", tmp_path / "model")
    one_error(result, "out of memory (MemoryError)", "lower --batch-size")


# --------------------------------------------------------------------------- markup


def test_labels_with_markup_print_literally(tmp_path):
    videos = make_videos(tmp_path / "videos", {"train": 4, "test": 2})
    names = {"clap": "bad[red]x", "jump": "[/b]", "wave": "[bold]w"}
    videos = [(VideoRecord(r.path, names[r.label], r.group, r.split), f) for r, f in videos]
    store = build_store(tmp_path / "features.h5", videos)
    manifest = write_manifest([r for r, _ in videos], tmp_path / "manifest.csv")
    model = tmp_path / "model"
    trained = vrnn("train", manifest, store, "-o", model, "--epochs", "1", "--seq-len", "4")
    assert trained.exit_code == 0, trained.output
    result = vrnn("evaluate", model, manifest, store, "-o", tmp_path / "metrics")
    assert result.exit_code == 0, result.output
    for label in names.values():
        assert label in result.output


def _interpolates_text(node: ast.AST) -> bool:
    """An f-string that inserts a value without a format spec (text, not a formatted number)."""
    return isinstance(node, ast.JoinedStr) and any(
        isinstance(v, ast.FormattedValue) and v.format_spec is None for v in node.values
    )


def test_stages_print_only_through_the_console_module():
    """The grep-able proof: no stage module makes its own Rich console or calls ``print``."""
    offenders = []
    for module in sorted(STAGES.glob("*.py")):
        if module.name == "console.py":
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name in {"print", "Console", "rule", "log"} or (
                    name == "add_row" and any(_interpolates_text(a) for a in node.args)
                ):
                    offenders.append(f"{module.name}:{node.lineno} {name}(")
    assert offenders == []


# ------------------------------------------------------------------ one line, not a traceback


def test_a_scheduler_that_is_not_an_address_is_one_line(stage2, tmp_path):
    args = ("extract", stage2["manifest"], "-o", tmp_path / "f.h5", "--scheduler", "not a url")
    one_error(vrnn(*args), "is not a scheduler address")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated head.keras", "extractor.json wrong type"])
def test_a_damaged_model_directory_is_one_line(stage2, model_copy, damage):
    if damage == "truncated head.keras":
        head = model_copy / "head.keras"
        head.write_bytes(head.read_bytes()[:3000])
        expected = ("not a readable .keras archive",)
    else:
        config = json.loads((model_copy / "extractor.json").read_text())
        (model_copy / "extractor.json").write_text(json.dumps({**config, "input_size": "big"}))
        expected = ("extractor.json: input_size is 'big', not of type int",)
    m, s = stage2["manifest"], stage2["store"]
    one_error(vrnn("evaluate", model_copy, m, s, "-o", model_copy.parent / "m"), *expected)
    one_error(vrnn("predict", model_copy, stage2["root"] / "videos"), *expected)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_store_path_that_is_a_directory_is_one_line(stage2, tmp_path, command):
    m = stage2["manifest"]
    args = {
        "train": ("train", m, tmp_path, "-o", tmp_path / "model"),
        "evaluate": ("evaluate", stage2["model"], m, tmp_path, "-o", tmp_path / "metrics"),
    }[command]
    line = one_error(vrnn(*args), "is a directory, not a feature store")
    assert "errno" not in line


@pytest.mark.parametrize(
    "command", ["sample-data", "index", "extract", "train", "evaluate", "predict", "export"]
)
def test_every_command_reports_usage_errors_in_one_line_with_exit_1(command):
    one_error(vrnn(command, "--no-such-option"), "--no-such-option")


def test_train_without_the_stores_backbone_weights_fails_before_training(stage2, tmp_path):
    store = Path(shutil.copy(stage2["store"], tmp_path / "features.h5"))  # with its index
    shutil.copytree(shards_dir_for(stage2["store"]), shards_dir_for(store))  # files, not sidecar
    assert not backbone_sidecar(store).exists()
    result = vrnn("train", stage2["manifest"], store, "-o", tmp_path / "model")
    one_error(result, "backbone weights file", "is missing")
    assert "epoch" not in result.output
    assert not (tmp_path / "model").exists()


def test_a_weights_value_with_markup_is_printed_literally(stage2, tmp_path):
    args = ("extract", stage2["manifest"], "-o", tmp_path / "f.h5", "--weights", "random[/b]")
    result = vrnn(*args)
    one_error(result, "--weights 'random[/b]': not 'imagenet'")
    assert "warning: --weights random[/b]: a seeded RANDOM backbone" in result.output
    assert not (tmp_path / "f.h5").exists()
