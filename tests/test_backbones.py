"""``--backbone``: each family built with random weights, saved and rebuilt, and run through
extract → train → predict → export (model and store) at 32 px on a few real clips."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline import backbone
from pipeline.backbone import (
    BACKBONES,
    build_backbone,
    calibration_images,
    imagenet_weights_file,
    parse_weights,
)
from pipeline.errors import WeightsError
from pipeline.sample_data import write_video
from pipeline.store import StoreBuilder, open_store, write_part
from stages.cli import app
from tests.reliability.helpers import write_csv_manifest

SIZE = 32
FAMILIES = tuple(BACKBONES)


def _invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name", FAMILIES)
def test_random_backbone_gives_non_degenerate_features_and_rebuilds_from_its_file(
    tmp_path: Path, name: str
) -> None:
    model = build_backbone(parse_weights("random:1"), SIZE, backbone=name)
    images = calibration_images(seed=77, size=SIZE, count=8)  # not the calibration batch
    features = model.predict(images, verbose=0)
    assert features.shape == (8, 1280) and features.dtype == np.float32
    assert np.isfinite(features).all()
    # Calibrated BatchNorm keeps signal to the last layer: features vary across images in
    # (nearly) every column, and are not all one value.
    varying = features.std(axis=0) > 1e-4 * (np.abs(features).mean() + 1e-12)
    assert varying.mean() > 0.9, varying.mean()
    assert np.abs(features).mean() > 1e-3
    path = tmp_path / f"{name}.weights.h5"
    backbone.save_weights(model, path)
    again = build_backbone(parse_weights(str(path)), SIZE, weights_file=path, backbone=name)
    assert backbone.fingerprint(again) == backbone.fingerprint(model)
    np.testing.assert_array_equal(again.predict(images, verbose=0), features)


def test_preprocessing_is_each_familys_own() -> None:
    """MobileNetV2 maps uint8 to [-1, 1]; the EfficientNets take raw 0–255 (scaled inside)."""
    images = np.array([[[[0, 128, 255]]]], np.uint8)
    for name, expected in [
        ("mobilenet_v2", [-1.0, 128 / 127.5 - 1, 1.0]),
        ("efficientnet_b0", [0.0, 128.0, 255.0]),
        ("efficientnet_v2_b0", [0.0, 128.0, 255.0]),
    ]:
        family = BACKBONES[name]
        np.testing.assert_allclose(images[0, 0, 0] * family.scale + family.offset, expected)


@pytest.mark.parametrize(
    ("name", "file_name"),
    [
        ("efficientnet_b0", "efficientnetb0_notop.h5"),
        ("efficientnet_v2_b0", "efficientnetv2-b0_notop.h5"),
    ],
)
def test_imagenet_asks_keras_for_the_familys_file(
    monkeypatch: pytest.MonkeyPatch, name: str, file_name: str
) -> None:
    import keras

    asked = []

    def offline(fname, origin, **kwargs):
        asked.append((fname, origin, kwargs))
        raise Exception(f"URL fetch failure on {origin}: Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsError) as caught:
        imagenet_weights_file(224, name)
    ((fname, origin, kwargs),) = asked
    assert fname == file_name and origin.endswith("/" + file_name)
    assert (
        kwargs["cache_subdir"] == "models" and kwargs["file_hash"] == BACKBONES[name].imagenet_md5
    )
    assert "\n" not in str(caught.value) and "--weights PATH" in str(caught.value)


def test_families_have_different_weights() -> None:
    prints = {
        backbone.fingerprint(build_backbone(parse_weights("random"), SIZE, backbone=name))
        for name in FAMILIES
    }
    assert len(prints) == len(FAMILIES)


def test_unknown_backbone_is_one_line_listing_the_choices(tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4", np.zeros((4, 32, 32, 3), np.uint8), fps=10)
    store = tmp_path / "f.h5"
    result = _invoke("extract", folder, "-o", store, "--weights", "random", "--backbone", "vgg")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'vgg'" in errors[0]
    assert all(name in errors[0] for name in FAMILIES)
    assert not store.exists()


def _clips(directory: Path) -> list[Path]:
    """Eight short real clips: label ``a`` brightens, ``b`` darkens (labels alternate)."""
    rng = np.random.default_rng(5)
    clips = []
    for i in range(8):
        ramp = np.linspace(40, 215, 10)[:: 1 if i % 2 == 0 else -1]
        frames = ramp[:, None, None, None] + rng.normal(0, 8, (10, 48, 64, 3))
        path = directory / f"clip{i}{('.mp4', '.avi', '.mkv')[i % 3]}"
        clips.append(write_video(path, frames.clip(0, 255).astype(np.uint8), fps=10))
    return clips


@pytest.mark.parametrize("name", FAMILIES)
def test_each_backbone_through_extract_train_predict_export(tmp_path: Path, name: str) -> None:
    clips = _clips(tmp_path)
    manifest = write_csv_manifest(tmp_path / "m.csv", clips)
    store, model = tmp_path / "features.h5", tmp_path / "model"
    common = ("--weights", "random", "--input-size", SIZE, "--resize", "squash")
    done = _invoke("extract", manifest, "-o", store, "--backbone", name, *common)
    assert done.exit_code == 0, done.output
    info = json.loads(_invoke("store", "info", store, "--json").output)
    assert info["extractor"]["backbone"] == name and info["videos"] == len(clips)

    trained = _invoke(
        "train", manifest, store, "-o", model,
        "--epochs", "1", "--units", "4", "--seq-len", "4", "--batch-size", "4",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert json.loads((model / "extractor.json").read_text())["backbone"] == name

    fresh = _invoke("predict", model, clips[0], "--json")
    cached = _invoke("predict", model, clips[0], "--json", "--features", store)
    assert fresh.exit_code == 0 and cached.exit_code == 0, fresh.output + cached.output
    p_fresh = json.loads(fresh.stdout.splitlines()[0])["probabilities"]
    p_cached = json.loads(cached.stdout.splitlines()[0])["probabilities"]
    assert p_fresh.keys() == {"a", "b"}
    for label, prob in p_cached.items():  # same extractor rebuilt by predict
        assert prob == pytest.approx(p_fresh[label], abs=2e-3)

    exported = _invoke("export", model, "-o", tmp_path / "out" / "classifier.keras")
    assert exported.exit_code == 0, exported.output
    arrays = _invoke("store", "export", store, "-o", tmp_path / "arrays")
    assert arrays.exit_code == 0, arrays.output
    assert np.load(tmp_path / "arrays" / "clip0.npy").shape == (10, 1280)

    other = next(f for f in FAMILIES if f != name)
    refused = _invoke("extract", manifest, "-o", store, "--backbone", other, *common)
    assert refused.exit_code == 1
    errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and name in errors[0] and other in errors[0]

    # The same features under another backbone's name: the model refuses that store.
    foreign = tmp_path / "foreign.h5"
    with open_store(store) as fs:
        config = replace(fs.config, backbone=other)
        with StoreBuilder(foreign, config) as builder:
            write_part(builder.parts_dir, config, fs.read(fs.video_ids[0]))
            builder.commit()
    mixed = _invoke("predict", model, clips[0], "--features", foreign)
    assert mixed.exit_code == 1
    errors = [line for line in mixed.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and name in errors[0] and other in errors[0]
