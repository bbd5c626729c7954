"""Backbone resolution: weight specs, the offline error, random calibration, real weights."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline import backbone
from pipeline.backbone import (
    build_backbone,
    calibration_images,
    fingerprint,
    imagenet_weights_file,
    parse_weights,
    save_weights,
)
from pipeline.errors import ConfigError, WeightsError

REAL_WEIGHTS = Path(
    os.environ.get(
        "VRNN_IMAGENET_WEIGHTS",
        Path(__file__).resolve().parents[2]
        / "shared/weights/mobilenet_v2_1.0_224_no_top.weights.h5",
    )
)
# sha256 over the weight values of the TF-slim mobilenet_v2_1.0_224 ImageNet checkpoint.
IMAGENET_SHA256 = "8b7f934811db52508708ed2f59dab258abe8a5de6c9fae5fd3ab9e4398022312"


def test_weight_specs_parse() -> None:
    assert parse_weights("imagenet").identity == "imagenet"
    assert parse_weights("random").identity == "random:seed=0"
    assert parse_weights("random:7").seed == 7
    assert parse_weights("random:seed=3").identity == "random:seed=3"
    with pytest.raises(WeightsError, match="not 'imagenet', 'random"):
        parse_weights("no/such/file.h5")


@pytest.mark.parametrize("size", [16, 4096])
def test_input_size_limits(size: int) -> None:
    with pytest.raises(ConfigError, match="--input-size"):
        backbone.check_input_size(size)


def test_offline_imagenet_fails_with_one_line_naming_both_alternatives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/…: Name or service not known"
        )

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsError) as caught:
        imagenet_weights_file(224)
    message = str(caught.value)
    assert "\n" not in message
    assert "_1.0_224_no_top.h5" in message and "--weights PATH" in message
    assert "--weights random" in message


def test_random_backbone_is_seeded_calibrated_and_round_trips(tmp_path: Path) -> None:
    model = build_backbone(parse_weights("random:1"), 32)
    again = build_backbone(parse_weights("random:1"), 32)
    other = build_backbone(parse_weights("random:2"), 32)
    assert fingerprint(model) == fingerprint(again) != fingerprint(other)
    images = calibration_images(5, 32, count=4)
    features = model.predict(images, verbose=0)
    assert features.shape == (4, 1280)
    # Uncalibrated random MobileNetV2 features collapse to ~0; calibrated ones must not.
    uncalibrated = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), include_top=False, pooling="avg", weights=None
    )
    assert np.abs(uncalibrated.predict(images / 127.5 - 1, verbose=0)).max() < 1e-3
    assert features.std() > 0.05 and (features > 1e-3).mean() > 0.2
    saved = tmp_path / "b.weights.h5"
    save_weights(model, saved)
    loaded = build_backbone(parse_weights(str(saved)), 32, weights_file=saved)
    assert fingerprint(loaded) == fingerprint(model)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), features)


def test_wrong_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.weights.h5"
    bogus.write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="not MobileNetV2"):
        build_backbone(parse_weights(str(bogus)), 32)


@pytest.mark.skipif(not REAL_WEIGHTS.is_file(), reason="real ImageNet weights not available")
def test_real_imagenet_weights_golden() -> None:
    model = build_backbone(parse_weights(str(REAL_WEIGHTS)), 96)
    assert fingerprint(model) == IMAGENET_SHA256
    features = model.predict(calibration_images(0, 96, count=2), verbose=0)
    # Reference values computed once with these weights (Keras 3.15, TF 2.21, CPU).
    expected = [[1.00611, 0.0, 0.56994, 0.0, 0.94192, 0.32963],
                [1.32139, 0.0, 0.54244, 0.21763, 0.82705, 0.66548]]  # fmt: skip
    np.testing.assert_allclose(features[:, :6], expected, atol=2e-3)
    assert features.min() >= 0.0  # ReLU6 before the pooling
