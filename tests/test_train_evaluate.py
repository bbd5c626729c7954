"""Stage 2 end to end on small synthetic stores: train → model dir → evaluate, and the CLI.

Stores are built through :mod:`pipeline.store` from stand-in video files (unique bytes, so
each has its own content hash) and synthetic "appearance" features: each class has its own
mean vector. The extraction engine is not involved.
"""

from __future__ import annotations

import atexit
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline import fsio, join, training
from pipeline import model_dir as model_files
from pipeline.contracts import ExtractorConfig, VideoFeatures, VideoInfo, VideoRecord
from pipeline.errors import ConfigError, ModelError
from pipeline.file_names import CONFUSION_IMAGE, CURVES_IMAGE, F1_IMAGE
from pipeline.identity import file_sha256, video_id_from_sha256
from pipeline.manifest import write_manifest
from pipeline.outputs import PNG_SIGNATURE
from pipeline.store import StoreBuilder, backbone_sidecar, open_store, write_part
from pipeline.train_config import TrainConfig
from stages.cli import app

DIM = 32
CLASSES = ("clap", "jump", "wave")
PER_SPLIT = {"train": 12, "val": 4, "test": 6}


def _seeded_backbone_weights() -> tuple[Path, str]:
    """A real weights file of the seeded random backbone at 32 px, and its sha256.

    ``train`` checks a store's backbone weights against its ``weights_sha256`` before copying
    them into the model, so the stores built here carry real ones (built once per session).
    """
    from pipeline.backbone import build_backbone, fingerprint, parse_weights, save_weights

    model = build_backbone(parse_weights("random:0"), 32)
    path = Path(tempfile.mkdtemp(prefix="vrnn-test-backbone-")) / "backbone.weights.h5"
    atexit.register(shutil.rmtree, path.parent, True)
    save_weights(model, path)
    return path, fingerprint(model)


BACKBONE_WEIGHTS, BACKBONE_SHA256 = _seeded_backbone_weights()
EXTRACTOR = ExtractorConfig(
    weights="random:seed=0", weights_sha256=BACKBONE_SHA256, input_size=32, feature_dim=DIM
)
# lstm: 8 epochs of one pass (5 steps) fit it on these 32-d features; the linear delta head
# needs more steps at this width (40 steps of Adam at lr 1e-3 leave it near chance here).
CONFIG = TrainConfig(
    head="lstm", seq_len=8, epochs=8, min_epoch_sequences=0, batch_size=8, patience=3, seed=0
)


def make_videos(folder: Path, counts: dict[str, int], seed: int = 0) -> list[tuple]:
    """Stand-in files plus ``(record, features [T, DIM] float16)`` for each class and split."""
    folder.mkdir(parents=True, exist_ok=True)
    centres = np.random.default_rng(99).normal(0.0, 1.0, (len(CLASSES), DIM))
    rng = np.random.default_rng(seed)
    videos = []
    for c, label in enumerate(CLASSES):
        for split, count in counts.items():
            for i in range(count):
                path = folder / f"{label}_{split}_{i}.mp4"
                path.write_bytes(f"{label}/{split}/{i}/{seed}".encode())
                frames = int(rng.integers(4, 30))
                features = centres[c] + rng.normal(0.0, 0.8, (frames, DIM))
                record = VideoRecord(path, label, f"{label}_{split}_{i}", split)
                videos.append((record, features.astype(np.float16)))
    return videos


def build_store(path: Path, videos: list[tuple], config: ExtractorConfig = EXTRACTOR) -> Path:
    """Commit ``videos`` into a feature store at ``path`` the way extraction would."""
    with StoreBuilder(path, config) as builder:
        for record, features in videos:
            sha = file_sha256(record.path)
            frames = len(features)
            info = VideoInfo(str(record.path), 25.0, 32, 32, frames, frames, frames / 25, "h264")
            vf = VideoFeatures(
                video_id_from_sha256(sha), sha, features, np.arange(frames) / 25.0, info
            )
            write_part(builder.parts_dir, config, vf)
        builder.commit()
        builder.discard_staging()
    shutil.copyfile(BACKBONE_WEIGHTS, backbone_sidecar(path))  # train checks and copies it
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A store of 66 videos, a manifest listing them plus one never-extracted train video."""
    root = tmp_path_factory.mktemp("stage2")
    videos = make_videos(root / "videos", PER_SPLIT)
    store = build_store(root / "features.h5", videos)
    unextracted = root / "videos" / "clap_train_new.mp4"
    unextracted.write_bytes(b"not extracted yet")
    records = [r for r, _ in videos] + [VideoRecord(unextracted, "clap", "clap_new", "train")]
    manifest = write_manifest(records, root / "manifest.csv")
    return {"root": root, "store": store, "manifest": manifest, "records": records}


@pytest.fixture(scope="module")
def trained(data) -> training.TrainResult:
    return training.train(data["records"], data["store"], data["root"] / "models", CONFIG)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_a_complete_model_dir(data, trained):
    model_dir = trained.model_dir
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        [*model_files.MODEL_FILES, model_files.HISTORY_FILE, model_files.BACKBONE_FILE,
         CURVES_IMAGE]
    )  # fmt: skip
    assert (model_dir / CURVES_IMAGE).read_bytes().startswith(PNG_SIGNATURE)
    assert json.loads((model_dir / "labels.json").read_text()) == list(CLASSES)
    assert json.loads((model_dir / "extractor.json").read_text()) == EXTRACTOR.to_dict()
    assert json.loads((model_dir / "train_config.json").read_text()) == CONFIG.to_dict()
    history = _rows(model_dir / "history.csv")
    assert list(history[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert [int(r["epoch"]) for r in history] == list(range(1, len(trained.history) + 1))
    assert trained.counts == {"train": 36, "val": 12}
    assert [r.path.name for r in trained.missing] == ["clap_train_new.mp4"]
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".models")]


def test_model_keeps_the_weights_of_the_best_val_epoch(data, trained):
    loaded = model_files.load_model_dir(trained.model_dir)
    with open_store(data["store"]) as store:
        joined = join.join_manifest(data["records"], store)
        val = join.read_split(store, joined.videos, "val", loaded.labels)
    probs = training.predict_videos(loaded, val.features)
    val_loss = -np.mean(np.log(probs[np.arange(len(probs)), val.targets]))
    best = min(h["val_loss"] for h in trained.history)
    assert val_loss == pytest.approx(best, rel=1e-3)
    assert trained.history[trained.best_epoch - 1]["val_loss"] == best


def test_evaluate_writes_dvc_metrics(data, trained, tmp_path):
    result = training.evaluate(
        trained.model_dir, data["records"], data["store"], tmp_path / "metrics", split="test"
    )
    summary = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert summary["split"] == "test" and summary["n"] == 18 and "top5" not in summary
    assert summary["top1"] >= 0.9 and summary["macro_f1"] >= 0.9
    assert [r["label"] for r in _rows(tmp_path / "metrics" / "per_class.csv")] == list(CLASSES)
    confusion = _rows(tmp_path / "metrics" / "confusion.csv")
    assert len(confusion) == 18 and set(confusion[0]) == {"actual", "predicted"}
    assert result.confusion.sum() == 18 and not result.missing
    for name in (CONFUSION_IMAGE, F1_IMAGE):
        assert (tmp_path / "metrics" / name).read_bytes().startswith(PNG_SIGNATURE)
        assert tmp_path / "metrics" / name in result.files


def test_an_evaluate_cut_short_leaves_the_last_finished_runs_eval_json(
    data, trained, tmp_path, monkeypatch
):
    metrics_dir = tmp_path / "metrics"
    training.evaluate(trained.model_dir, data["records"], data["store"], metrics_dir)
    finished = (metrics_dir / "eval.json").read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after the CSVs and one picture of the val run are written

    monkeypatch.setattr(training.plots, "f1_figure", killed)
    with pytest.raises(KeyboardInterrupt):
        training.evaluate(
            trained.model_dir, data["records"], data["store"], metrics_dir, split="val"
        )
    assert (metrics_dir / "eval.json").read_bytes() == finished  # still the test split's
    assert len(_rows(metrics_dir / "confusion.csv")) == 12  # the val run's, whole
    assert sorted(p.name for p in metrics_dir.iterdir()) == sorted(
        ["eval.json", "per_class.csv", "confusion.csv", CONFUSION_IMAGE, F1_IMAGE]
    )  # no temporary file left behind


def test_same_seed_gives_the_same_history_and_metrics(data, trained, tmp_path):
    again = training.train(data["records"], data["store"], tmp_path / "again", CONFIG)
    assert again.history == trained.history
    assert (tmp_path / "again" / "history.csv").read_bytes() == (
        trained.model_dir / "history.csv"
    ).read_bytes()
    for name, model_dir in [("a", trained.model_dir), ("b", tmp_path / "again")]:
        training.evaluate(model_dir, data["records"], data["store"], tmp_path / name)
    assert (tmp_path / "a" / "eval.json").read_text() == (tmp_path / "b" / "eval.json").read_text()


RELOAD = """
import sys
import numpy as np
from pipeline.store import open_store
from pipeline.model_dir import load_model_dir
from pipeline.training import predict_videos
model_dir, store_path, out = sys.argv[1:]
trained = load_model_dir(model_dir)
with open_store(store_path) as store:
    videos = [store.read(v).features for v in store.video_ids]
np.save(out, predict_videos(trained, videos))
"""


def test_model_dir_reloads_in_a_fresh_process_with_identical_predictions(data, trained, tmp_path):
    out = tmp_path / "probs.npy"
    subprocess.run(
        [sys.executable, "-c", RELOAD, str(trained.model_dir), str(data["store"]), str(out)],
        check=True,
        capture_output=True,
    )
    loaded = model_files.load_model_dir(trained.model_dir)
    with open_store(data["store"]) as store:
        videos = [store.read(v).features for v in store.video_ids]
    np.testing.assert_array_equal(np.load(out), training.predict_videos(loaded, videos))


def test_a_small_train_split_is_passed_over_until_an_epoch_is_min_epoch_sequences():
    config = TrainConfig(min_epoch_sequences=1024)
    assert [config.passes(n) for n in (1, 100, 1023, 1024, 5000)] == [1024, 11, 2, 1, 1]
    assert TrainConfig(min_epoch_sequences=0).passes(3) == 1
    with pytest.raises(ConfigError, match="--min-epoch-sequences must be >= 0"):
        TrainConfig(min_epoch_sequences=-1).validate()


def test_without_a_val_split_training_runs_every_epoch(data, tmp_path):
    records = [r for r in data["records"] if r.split != "val"]
    config = TrainConfig(seq_len=8, epochs=2, batch_size=16)
    result = training.train(records, data["store"], tmp_path / "m", config)
    assert any("without early stopping" in note for note in result.warnings)
    assert len(result.history) == 2 and result.counts["val"] == 0
    assert [r["val_loss"] for r in _rows(tmp_path / "m" / "history.csv")] == ["", ""]


def test_a_failed_write_leaves_the_previous_model_dir_loadable(trained, tmp_path, monkeypatch):
    target = shutil.copytree(trained.model_dir, tmp_path / "models")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    loaded = model_files.load_model_dir(target)
    args = (loaded.model, loaded.labels, loaded.extractor, loaded.train_config, [])

    def killed(*_args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(model_files, "_write_history", killed)
        with pytest.raises(KeyboardInterrupt):
            model_files.write_model_dir(target, *args)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["models"]  # no temporary siblings left
    model_files.write_model_dir(target, *args)  # a successful rewrite replaces it
    assert (target / "history.csv").read_text() == "epoch,loss,accuracy,val_loss,val_accuracy\n"
    assert [p.name for p in tmp_path.iterdir()] == ["models"]
    model_files.load_model_dir(target)


@pytest.mark.parametrize("atomic_swap", [True, False], ids=["renameat2", "two renames"])
def test_rewriting_a_model_dir_swaps_it_whole(trained, tmp_path, monkeypatch, atomic_swap):
    target = shutil.copytree(trained.model_dir, tmp_path / "models")
    loaded = model_files.load_model_dir(target)
    if not atomic_swap:
        monkeypatch.setattr(fsio, "_exchange", lambda first, second: False)
    history = [{"loss": 1.0, "accuracy": 0.5}]
    model_files.write_model_dir(target, loaded.model, ["x", "y", "z"], EXTRACTOR, CONFIG, history)
    assert json.loads((target / "labels.json").read_text()) == ["x", "y", "z"]
    assert [p.name for p in tmp_path.iterdir()] == ["models"]


def test_train_refuses_to_replace_a_directory_that_is_not_a_model(data, tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not a model directory"):
        training.train(data["records"], data["store"], tmp_path, CONFIG)
    assert (tmp_path / "notes.txt").exists()


def test_model_refuses_a_store_from_another_extractor(data, trained, tmp_path):
    other = ExtractorConfig(weights="random:seed=1", weights_sha256="cd" * 32, input_size=32)
    store = build_store(tmp_path / "other.h5", make_videos(tmp_path / "v", {"test": 1}), other)
    with pytest.raises(ModelError) as error:
        training.evaluate(trained.model_dir, data["records"], store, tmp_path / "m")
    assert EXTRACTOR.describe() in str(error.value) and other.describe() in str(error.value)


# --------------------------------------------------------------------------- CLI


def test_vrnn_train_and_evaluate(data, tmp_path):
    runner = CliRunner()
    models, metrics = tmp_path / "models", tmp_path / "metrics"
    args = ["--seq-len", "8", "--epochs", "3", "--batch-size", "16", "--head", "meanpool"]
    result = runner.invoke(app, ["train", str(data["manifest"]), str(data["store"]), "-o",
                                 str(models), *args])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "epoch   1/3  loss" in result.output
    assert "1 manifest video(s) skipped: 1 not in the feature store" in result.output
    noisy = "warning: the val split has fewer than 5 clips in some class ('clap': 4); early"
    assert noisy in result.output  # 4 val clips per class
    first_epoch = result.output.index("epoch   1/3")
    assert result.output.index(noisy) < first_epoch  # data warnings before training starts
    assert result.output.index("1 manifest video(s) skipped") < first_epoch
    assert f"→ {models}" in result.output
    train_videos = sum(r.split == "train" for r in data["records"]) - 1  # one is not stored
    passes = -(-TrainConfig().min_epoch_sequences // train_videos)
    assert f"; {passes} passes an epoch); kept epoch" in result.output
    result = runner.invoke(app, ["evaluate", str(models), str(data["manifest"]),
                                 str(data["store"]), "-o", str(metrics)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "test: top-1" in result.output and (metrics / "confusion.csv").exists()
    (summary,) = [line for line in result.output.splitlines() if line.startswith("test: top-1")]
    with open(metrics / "per_class.csv", newline="") as f:
        worst = min(csv.DictReader(f), key=lambda row: float(row["f1"]))
    assert f"worst F1 {float(worst['f1']):.3f} ({worst['label']}) on " in summary


def test_train_without_val_warns_once_before_epoch_1(data, tmp_path):
    manifest = write_manifest(
        [r for r in data["records"] if r.split != "val"], tmp_path / "manifest.csv"
    )
    result = CliRunner().invoke(app, ["train", str(manifest), str(data["store"]), "-o",
                                      str(tmp_path / "m"), "--epochs", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if "early stopping" in line]
    assert len(said) == 1 and said[0].startswith("warning: "), result.output
    assert result.output.index(said[0]) < result.output.index("epoch   1/2")


def test_an_option_the_head_does_not_read_is_warned_in_one_line(data, tmp_path):
    args = ["train", str(data["manifest"]), str(data["store"]), "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "a"), "--head", "delta",
                                      "--units", "128"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: --units has no effect with --head delta\n" in result.output
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "c"), "--projection", "8"])
    assert result.exit_code == 0, result.output  # the default head reads no projection
    assert "warning: --projection has no effect with --head delta_lstm\n" in result.output
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b"), "--head", "gru",
                                      "--units", "16", "--normalize"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no effect" not in result.output


def test_evaluate_names_classes_the_split_cannot_score(data, trained, tmp_path):
    test = [r for r in data["records"] if r.split == "test"]
    kept = [r for r in test if r.label == "clap"] + [r for r in test if r.label == "jump"][:2]
    manifest = write_manifest(kept, tmp_path / "manifest.csv")
    result = CliRunner().invoke(app, ["evaluate", str(trained.model_dir), str(manifest),
                                      str(data["store"]), "-o", str(tmp_path / "m")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: class(es) 'wave' have no test clip: left out of worst F1" in result.output
    assert "warning: the test split has fewer than 5 clips in some class ('jump': 2)" in (
        result.output
    )
    (summary,) = [line for line in result.output.splitlines() if line.startswith("test: top-1")]
    assert "(wave)" not in summary and "worst F1" in summary


def test_a_class_with_one_training_clip_trains_with_a_warning_naming_it(data, tmp_path):
    records = [r for r in data["records"] if r.split != "train" or r.label != "jump"]
    records.append(next(r for r in data["records"] if r.split == "train" and r.label == "jump"))
    config = replace(CONFIG, epochs=1)
    result = training.train(records, data["store"], tmp_path / "models", config)
    assert result.counts["train"] == 2 * PER_SPLIT["train"] + 1
    assert any("class(es) 'jump' have a single training clip" in w for w in result.warnings)


@pytest.mark.parametrize("budget", ["2GiB", "0"], ids=["in-memory", "streaming"])
def test_features_with_nan_are_refused_naming_the_video(data, tmp_path, monkeypatch, budget):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # streaming's frame cache
    videos = make_videos(tmp_path / "videos", {"train": 3, "val": 1}, seed=7)
    broken, features = videos[4]
    features[2, 5] = np.nan
    store = build_store(tmp_path / "features.h5", videos)
    manifest = write_manifest([r for r, _ in videos], tmp_path / "manifest.csv")
    args = ["train", str(manifest), str(store), "-o", str(tmp_path / "models"), "--epochs", "1"]
    args += ["--memory-budget", budget]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{broken.path}: its stored features contain NaN" in errors[0]
    assert not (tmp_path / "models").exists()


def _manifest(tmp_path: Path, records: list[VideoRecord]) -> str:
    return str(write_manifest(records, tmp_path / "manifest.csv"))


BAD_INPUTS = {
    "class without train videos": (
        lambda d, t: ["train", _manifest(t, [r for r in d["records"] if
                      not (r.label == "wave" and r.split == "train")]), str(d["store"])],
        "class(es) 'wave' have no videos in the train split",
    ),
    "no train split": (
        lambda d, t: ["train", _manifest(t, [r for r in d["records"] if r.split == "test"]),
                      str(d["store"])],
        "the manifest has no videos in the train split",
    ),
    "no videos in the evaluated split": (
        lambda d, t: ["evaluate", str(d["root"] / "models"),
                      _manifest(t, [r for r in d["records"] if r.split != "val"]),
                      str(d["store"]), "--split", "val"],
        "the manifest has no videos in the val split",
    ),
    "nothing in common": (
        lambda d, t: ["train", _manifest(t, d["records"][-1:]), str(d["store"])],
        "none of the 1 manifest videos are in the feature store",
    ),
    "unknown head": (
        lambda d, t: ["train", str(d["manifest"]), str(d["store"]), "--head", "transformer"],
        "Invalid value for '--head': Value error, 'transformer' is not one of 'lstm', 'gru',",
    ),
    "seq-len below 1": (
        lambda d, t: ["train", str(d["manifest"]), str(d["store"]), "--seq-len", "0"],
        "Invalid value for '--seq-len': must be a finite number in [1, 1024], got 0",
    ),
    "negative epoch size": (
        lambda d, t: ["train", str(d["manifest"]), str(d["store"]), "--min-epoch-sequences", "-1"],
        "'--min-epoch-sequences': must be a finite number in [0, 1000000], got -1",
    ),
    "model dir missing files": (
        lambda d, t: ["evaluate", str(t), str(d["manifest"]), str(d["store"])],
        "is not a complete model directory: missing head.keras, labels.json, extractor.json",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_are_one_line_errors(case, data, trained, tmp_path):
    make_args, message = BAD_INPUTS[case]
    args = make_args(data, tmp_path)
    if args[0] == "train":
        args += ["-o", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output


def test_cli_refuses_a_store_from_another_extractor(data, trained, tmp_path):
    other = ExtractorConfig(weights="random:seed=1", weights_sha256="cd" * 32, input_size=32)
    store = build_store(tmp_path / "other.h5", make_videos(tmp_path / "v", {"test": 1}), other)
    result = CliRunner().invoke(
        app, ["evaluate", str(trained.model_dir), str(data["manifest"]), str(store)]
    )
    assert result.exit_code == 1
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "weights=random:seed=0" in line and "weights=random:seed=1" in line


def test_stage_modules_do_not_import_tensorflow():
    code = (
        "import sys, stages.train, stages.evaluate; "
        "assert not {'tensorflow', 'keras'} & set(sys.modules), 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- end to end


def _pair_accuracy(trained: model_files.TrainedModel, split: join.SplitData, pair: tuple) -> float:
    """Accuracy on the videos of two classes, deciding between those two classes only."""
    probs = training.predict_videos(trained, split.features)
    first, second = (trained.labels.index(label) for label in pair)
    chosen = np.isin(split.targets, [first, second])
    guess = np.where(probs[chosen, first] > probs[chosen, second], first, second)
    return float(np.mean(guess == split.targets[chosen]))


@pytest.mark.slow
def test_sample_dataset_end_to_end_lstm_sees_order_meanpool_does_not(sample_manifest, tmp_path):
    """Extract the sample dataset (random backbone, 32 px, every frame), train both heads.

    Random 32 px features carry the global brightness trend but little of the rotation
    direction, so the check uses the brightening/darkening pair: its clips are each other's
    reverse, which the order-blind meanpool cannot tell apart.
    """
    from pipeline.extract import ExtractOptions, run_extraction
    from pipeline.manifest import read_manifest

    records = read_manifest(sample_manifest)
    store = tmp_path / "features.h5"
    run_extraction(
        [r.path for r in records], store, ExtractOptions(weights="random", input_size=32)
    )
    pair = ("brightening", "darkening")
    accuracy = {}
    for head in ("lstm", "meanpool"):
        config = TrainConfig(head=head, epochs=25, batch_size=8, patience=5)
        training.train(records, store, tmp_path / head, config)
        copied = (tmp_path / head / model_files.BACKBONE_FILE).read_bytes()
        assert copied == backbone_sidecar(store).read_bytes()  # predict rebuilds this extractor
        result = training.evaluate(tmp_path / head, records, store, tmp_path / f"{head}-metrics")
        assert result.summary.n == sum(r.split == "test" for r in records)
        trained = model_files.load_model_dir(tmp_path / head)
        with open_store(store) as features:
            joined = join.join_manifest([r for r in records if r.split == "test"], features)
            test = join.read_split(features, joined.videos, "test", trained.labels)
        accuracy[head] = _pair_accuracy(trained, test, pair)
    assert accuracy["lstm"] >= 0.8 and accuracy["lstm"] >= accuracy["meanpool"] + 0.3, accuracy
