"""A damaged or missing store file, in every command that reads a store (issue 23, item 5).

Each case copies one small real store (stage-2 stores are built through :mod:`pipeline.store`
without a backbone, as in tests/test_train_evaluate.py; ``extract`` gets a store it extracted
itself), damages one file, runs the command through the CLI and checks what the user sees:
one ``error:`` line naming the file and a remedy (never a traceback), or, where the command
does not need that file, a run that succeeds.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from pipeline import training
from pipeline.encode import write_video
from pipeline.manifest import write_manifest
from pipeline.store import compact, open_store, shards_dir_for
from stages.cli import app
from tests.conftest import moving_square
from tests.test_train_evaluate import CONFIG, build_store, make_videos

DAMAGES = ("index damaged", "index missing", "links damaged", "shard damaged", "shard missing")
DAMAGES += ("root damaged",)
COMMANDS = ("train", "evaluate", "predict", "extract", "info", "verify", "export", "compact")
REMEDIES = ("restore", "re-extract", "choose another path", "vrnn store compact")


def _copy_store(store: Path, folder: Path) -> Path:
    folder.mkdir()
    for side in store.parent.glob(f"{store.name}*"):  # root, backbone sidecar, report
        if side.is_file():
            shutil.copyfile(side, folder / side.name)
    shutil.copytree(shards_dir_for(store), shards_dir_for(folder / store.name))
    return folder / store.name


def _target(store: Path, damage: str, video_id: str) -> Path:
    """The file ``damage`` hits: the newest index file, the current links file, the shard
    holding ``video_id``, or the root."""
    with h5py.File(store, "r") as f:
        index_files = [name.decode() for name in f["index_files"][()]]
        links = str(f.attrs["links_file"])
    with open_store(store) as fs:
        shard = fs.catalog[video_id].shard
    kind = damage.split()[0]
    named = {"index": index_files[-1], "links": links, "shard": shard}
    return store if kind == "root" else shards_dir_for(store) / named[kind]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A stage-2 store (a compacted base, then a delta), a model trained on it, and a store
    ``vrnn extract`` made, with a folder of one more video to extract into it."""
    root = tmp_path_factory.mktemp("damage")
    videos = make_videos(root / "videos", {"train": 2, "val": 1, "test": 1})
    (root / "stage2").mkdir()
    store = build_store(root / "stage2" / "features.h5", videos)
    compact(store)  # one shard holds every manifest video: each command reads it
    build_store(store, make_videos(root / "late", {"test": 1}, seed=1))  # a delta index file
    records = [record for record, _ in videos]
    manifest = write_manifest(records, root / "manifest.csv")
    model = training.train(records, store, root / "model", replace(CONFIG, epochs=1)).model_dir
    first, then = root / "clips" / "first", root / "clips" / "then"
    for n, folder in enumerate((first, then)):
        folder.mkdir(parents=True)
        write_video(folder / "clip.mp4", moving_square(4 + n, 64, 48), fps=10)
    extracted = root / "extracted" / "features.h5"
    extracted.parent.mkdir()
    result = CliRunner().invoke(app, _extract_args(first, extracted))
    assert result.exit_code == 0, result.output
    with open_store(store) as fs:
        video_id = fs.video_id_for(records[0].path)
    with open_store(extracted) as fs:
        (extracted_id,) = fs.video_ids
    return {
        "store": store,
        "video_id": video_id,
        "manifest": manifest,
        "model": model,
        "video": records[0].path,
        "extracted": extracted,
        "extracted_id": extracted_id,
        "new_clips": then,
    }


def _extract_args(folder: Path, store: Path) -> list[str]:
    return ["extract", str(folder), "-o", str(store), "--weights", "random", "--input-size", "32"]


def _args(command: str, s: dict, store: Path, tmp: Path) -> list[str]:
    return {
        "train": ["train", str(s["manifest"]), str(store), "-o", str(tmp / "m"), "--epochs", "1"],
        "evaluate": ["evaluate", str(s["model"]), str(s["manifest"]), str(store), "-o", str(tmp)],
        "predict": ["predict", str(s["model"]), str(s["video"]), "--features", str(store)],
        "extract": _extract_args(s["new_clips"], store),
        "info": ["store", "info", str(store)],
        "verify": ["store", "verify", str(store)],
        "export": ["store", "export", str(store), "-o", str(tmp / "exported")],
        "compact": ["store", "compact", str(store)],
    }[command]


def _expected(command: str, damage: str) -> str:
    """ "error" (one error line naming the file), or "runs" where the command does not need
    the damaged file (or, for links, writes a fresh links file)."""
    if damage == "links damaged":  # vrnn's reader never follows the links; writers rewrite them
        return "error" if command == "verify" else "runs"
    if damage.startswith("shard"):
        if command == "extract":  # it reads the index, never an old video's features
            return "runs"
        if command == "info" and damage == "shard missing":  # info lists missing shards
            return "listed"
        if command == "predict":  # the other inputs would still be classified
            return "failed"
    return "error"


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_damaged_store_file_is_one_error_line_naming_it(
    stores: dict, tmp_path: Path, command: str, damage: str
) -> None:
    source, video_id = (
        (stores["extracted"], stores["extracted_id"])
        if command == "extract"
        else (stores["store"], stores["video_id"])
    )
    store = _copy_store(source, tmp_path / "copy")
    target = _target(store, damage, video_id)
    if damage.endswith("missing"):
        target.unlink()
    else:
        target.write_bytes(b"damaged on disk\n" * 64)

    result = CliRunner().invoke(app, _args(command, stores, store, tmp_path))
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    expected = _expected(command, damage)
    if expected == "failed":
        errors = [line for line in result.output.splitlines() if line.startswith("failed ")]
    if expected in ("error", "failed"):
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit)
        assert len(errors) == 1, result.output
        named = result.output if command == "verify" else errors[0]  # verify lists, then sums up
        assert target.name in named, result.output
        assert any(remedy in result.output for remedy in REMEDIES), result.output
    else:
        assert result.exit_code == 0, result.output
        assert not errors
        if expected == "listed":
            assert target.name in result.output
    if damage == "links damaged" and command in ("extract", "compact"):
        with h5py.File(store, "r") as f:  # the new links file opens the plain-h5py way
            assert f["videos"][video_id]["features"].shape[0] > 0


def test_an_index_file_removed_while_hdf5_opens_it_is_missing_not_damaged(tmp_path, monkeypatch):
    """Seen under load: a commit folded an index file away between HDF5's open and its stat
    ("can't retrieve stat info"); the reader must reload from the newer root, not fail."""
    from pipeline.store import index as index_files

    path = tmp_path / "index-0.h5"
    path.write_bytes(b"soon gone")

    def vanishing(name, mode="r"):
        Path(name).unlink()
        raise OSError("Unable to open file (can't retrieve stat info for file)")

    monkeypatch.setattr(index_files.h5py, "File", vanishing)
    with pytest.raises(FileNotFoundError):
        index_files.read_index_file(path)
