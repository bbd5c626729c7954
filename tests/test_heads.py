"""Heads on synthetic cached features: shapes, masking, learning, order sensitivity, determinism.

Determinism and early stopping are tested end to end in ``test_train_evaluate.py``. Two
synthetic tasks at a small feature width:

* appearance classes: each class has its own mean feature vector (any head should learn it);
* order-only classes: every video is half "A" frames then half "B" frames, or the mirror
  image; the pair shares a random offset. The masked mean of a video and of its mirror are
  equal, so the order-blind ``meanpool`` head is exactly at chance, while an RNN is not.
"""

from __future__ import annotations

import json
from dataclasses import replace

import keras
import numpy as np
import pytest

from pipeline import heads
from pipeline.errors import ConfigError
from pipeline.fit import fit_head, set_seed
from pipeline.sequences import EvalBatches, TrainingSampler, eval_sequences, pad_sequence
from pipeline.train_config import TrainConfig

DIM = 32
SEQ_LEN = 8


def appearance_videos(per_class: int, classes: int, seed: int) -> tuple[list, np.ndarray]:
    """Videos of 3–30 frames scattered around their class's mean vector."""
    centres = np.random.default_rng(99).normal(0.0, 1.0, (classes, DIM))
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    videos = [
        (centres[c] + rng.normal(0.0, 0.8, (int(rng.integers(3, 31)), DIM))).astype(np.float16)
        for c in labels
    ]
    return videos, labels


def order_videos(pairs: int, seed: int) -> tuple[list, np.ndarray]:
    """Mirror pairs: A…AB…B (label 0) and B…BA…A (label 1), even lengths 6–40 frames."""
    a, b = np.random.default_rng(123).normal(0.0, 1.0, (2, DIM))
    rng = np.random.default_rng(seed)
    videos, labels = [], []
    for _ in range(pairs):
        half = int(rng.integers(3, 21))
        offset = rng.normal(0.0, 0.5, DIM)
        forward = (np.concatenate([np.tile(a, (half, 1)), np.tile(b, (half, 1))]) + offset).astype(
            np.float16
        )
        videos += [forward, forward[::-1].copy()]
        labels += [0, 1]
    return videos, np.array(labels)


def fit(
    name: str,
    train: tuple,
    val: tuple,
    *,
    epochs: int,
    seed: int = 0,
    patience: int = 3,
    normalize: bool = False,
):
    """A seeded head trained on ``(videos, labels)`` pairs; returns ``(model, history)``."""
    set_seed(seed)
    model = heads.build_head(
        TrainConfig(head=name, seq_len=SEQ_LEN),
        num_classes=int(train[1].max()) + 1,
        feature_dim=DIM,
        normalize_on=[eval_sequences(train[0], SEQ_LEN)] if normalize else None,
    )
    sampler = TrainingSampler(*train, seq_len=SEQ_LEN, batch_size=8, seed=seed)
    validation = (*eval_sequences(val[0], SEQ_LEN), val[1])
    history = fit_head(model, sampler, validation, epochs=epochs, patience=patience)
    return model, history


def accuracy(model, videos: list, labels: np.ndarray) -> float:
    probs = heads.predict_proba(model, *eval_sequences(videos, SEQ_LEN))
    return float(np.mean(probs.argmax(axis=1) == labels))


@pytest.mark.parametrize("name", heads.HEAD_NAMES)
def test_heads_output_probabilities_even_for_all_padding(name):
    model = heads.build_head(
        TrainConfig(head=name, seq_len=SEQ_LEN, layers=2), num_classes=3, feature_dim=DIM
    )
    assert model.name == f"{name}_head"
    features = np.random.default_rng(0).normal(size=(3, SEQ_LEN, DIM)).astype(np.float16)
    mask = np.ones((3, SEQ_LEN), dtype=bool)
    mask[1, 3:] = False
    mask[2] = False  # an empty video
    probs = heads.predict_proba(model, features, mask)
    assert probs.shape == (3, 3) and probs.dtype == np.float32
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", heads.HEAD_NAMES)
def test_extra_padding_does_not_change_a_prediction(name):
    short = heads.build_head(
        TrainConfig(head=name, seq_len=SEQ_LEN), num_classes=4, feature_dim=DIM
    )
    long = heads.build_head(
        TrainConfig(head=name, seq_len=SEQ_LEN + 5), num_classes=4, feature_dim=DIM
    )
    long.set_weights(short.get_weights())  # recurrent weights do not depend on length
    frames = np.random.default_rng(1).normal(size=(5, DIM)).astype(np.float16)
    probs = []
    for model, length in [(short, SEQ_LEN), (long, SEQ_LEN + 5)]:
        features, mask = pad_sequence(frames, length)
        features[~mask] = 7.0  # garbage behind the mask must be ignored
        probs.append(heads.predict_proba(model, features[None], mask[None]))
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)


def test_bad_head_options_are_config_errors():
    with pytest.raises(ConfigError, match="--head 'transformer': choose one of lstm"):
        heads.build_head(TrainConfig(head="transformer", seq_len=4), num_classes=2)
    with pytest.raises(ConfigError, match="--seq-len"):
        heads.build_head(TrainConfig(head="lstm", seq_len=0), num_classes=2)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        heads.build_head(TrainConfig(head="gru", seq_len=4), num_classes=1)
    with pytest.raises(ConfigError, match="--dropout"):
        heads.build_head(TrainConfig(head="gru", seq_len=4, dropout=1.0), num_classes=2)


@pytest.mark.parametrize("name", ["gru", "bigru", "meanpool"])  # lstm: test_train_evaluate.py
def test_each_head_learns_appearance_classes(name):
    train = appearance_videos(16, 3, seed=1)
    val = appearance_videos(6, 3, seed=2)
    test = appearance_videos(10, 3, seed=3)
    model, _ = fit(name, train, val, epochs=8)
    assert accuracy(model, *test) >= 0.9


def test_rnn_beats_order_blind_meanpool_on_order_only_classes():
    train, val, test = order_videos(32, seed=1), order_videos(8, seed=2), order_videos(20, seed=3)
    lstm, _ = fit("lstm", train, val, epochs=8)
    meanpool, _ = fit("meanpool", train, val, epochs=8)
    lstm_acc, meanpool_acc = accuracy(lstm, *test), accuracy(meanpool, *test)
    assert meanpool_acc == pytest.approx(0.5, abs=0.05)  # identical inputs within each pair
    assert lstm_acc >= 0.9, (lstm_acc, meanpool_acc)


def test_trend_layer_is_mean_and_late_minus_early_of_the_real_frames():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(3, SEQ_LEN, DIM)).astype(np.float32)
    lengths = [SEQ_LEN, 5, 1]
    mask = np.arange(SEQ_LEN)[None, :] < np.array(lengths)[:, None]
    features[~mask] = 9.0  # padding must not count
    got = np.asarray(heads.MaskedTrend()(features, mask=mask))
    for i, n in enumerate(lengths):
        real = features[i, :n].astype(np.float64)
        third = max(1, n // 3)
        expected = np.concatenate([real.mean(0), real[n - third :].mean(0) - real[:third].mean(0)])
        np.testing.assert_allclose(got[i], expected, atol=1e-5)


def test_normalization_is_fitted_on_real_train_frames_and_saved_in_the_model(tmp_path):
    videos, _ = appearance_videos(6, 3, seed=4)
    scaled = [(v.astype(np.float32) * 40 + 300).astype(np.float16) for v in videos]
    features, mask = eval_sequences(scaled, SEQ_LEN)
    features[~mask] = 1000.0  # padding must not enter the statistics
    model = heads.build_head(
        TrainConfig(head="lstm", seq_len=SEQ_LEN),
        num_classes=3,
        feature_dim=DIM,
        normalize_on=[(features, mask)],
    )
    norm = model.get_layer("frame_norm")
    real = features[mask].astype(np.float64)
    np.testing.assert_allclose(np.ravel(norm.mean), real.mean(0), rtol=1e-3)
    np.testing.assert_allclose(np.ravel(norm.variance), real.var(0), rtol=1e-2)
    heads.save_head(model, tmp_path / "head.keras")
    loaded = heads.load_head(tmp_path / "head.keras")
    np.testing.assert_array_equal(
        heads.predict_proba(loaded, features, mask), heads.predict_proba(model, features, mask)
    )


def test_normalization_fitted_batch_by_batch_matches_one_pass_over_the_split():
    videos, _ = appearance_videos(7, 3, seed=5)  # 3–30 frames: some padded, masked
    videos = [(v.astype(np.float32) * 30 + 50).astype(np.float16) for v in videos]
    whole = heads.build_head(
        TrainConfig(head="delta", seq_len=SEQ_LEN),
        num_classes=3,
        feature_dim=DIM,
        normalize_on=[eval_sequences(videos, SEQ_LEN)],
    )
    batched = heads.build_head(
        TrainConfig(head="delta", seq_len=SEQ_LEN),
        num_classes=3,
        feature_dim=DIM,
        normalize_on=EvalBatches(videos, SEQ_LEN, batch_size=4),
    )  # the last batch is short
    for name in ("frame_norm", "trend_norm"):
        for stat in ("mean", "variance"):
            np.testing.assert_allclose(
                np.ravel(getattr(batched.get_layer(name), stat)),
                np.ravel(getattr(whole.get_layer(name), stat)),
                rtol=1e-4, atol=1e-6,
            )  # fmt: skip


def test_projection_dropout_and_weight_decay_build_and_check_their_options():
    model = heads.build_head(
        TrainConfig(
            head="gru", seq_len=SEQ_LEN, projection=4, input_dropout=0.3, weight_decay=1e-3
        ),
        num_classes=2,
        feature_dim=DIM,
    )
    assert model.get_layer("projection").units == 4
    assert model.get_layer("input_dropout").rate == 0.3
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    with pytest.raises(ConfigError, match="--input-dropout"):
        heads.build_head(TrainConfig(head="gru", seq_len=4, input_dropout=-0.1), num_classes=2)
    with pytest.raises(ConfigError, match="--projection and --weight-decay"):
        heads.build_head(TrainConfig(head="gru", seq_len=4, projection=-1), num_classes=2)


def test_linear_trend_baseline_learns_appearance_and_order():
    classes = appearance_videos(16, 3, seed=1), appearance_videos(6, 3, seed=2)
    pairs = order_videos(32, seed=1), order_videos(8, seed=2)
    for (train, val), test in zip(
        [classes, pairs], [appearance_videos(10, 3, seed=3), order_videos(20, seed=3)], strict=True
    ):
        trend, _ = fit("trend", train, val, epochs=40, patience=10, normalize=True)
        assert [layer.name for layer in trend.layers if "dense" in layer.name] == []  # linear
        assert accuracy(trend, *test) >= 0.9


def test_delta_layer_is_mean_absolute_change_between_consecutive_real_frames():
    rng = np.random.default_rng(6)
    features = rng.normal(size=(3, SEQ_LEN, DIM)).astype(np.float32)
    lengths = [SEQ_LEN, 4, 1]
    mask = np.arange(SEQ_LEN)[None, :] < np.array(lengths)[:, None]
    features[~mask] = 9.0  # padding must not count
    got = np.asarray(heads.MaskedDelta()(features, mask=mask))
    for i, n in enumerate(lengths):
        real = features[i, :n].astype(np.float64)
        expected = np.abs(np.diff(real, axis=0)).mean(0) if n > 1 else np.zeros(DIM)
        np.testing.assert_allclose(got[i], expected, atol=1e-5)


def kind_of_change_videos(per_class: int, seed: int) -> tuple[list, np.ndarray]:
    """Class = *which* features ramp over the clip (two disjoint sets); the direction of the
    ramp is random, so each class's mean and its average late − early trend are the same."""
    rng = np.random.default_rng(seed)
    halves = np.arange(DIM) < DIM // 2
    videos, labels = [], []
    for label in np.repeat([0, 1], per_class):
        frames = int(rng.integers(8, 25))
        ramp = np.linspace(-1.0, 1.0, frames)[:, None] * rng.choice([-1.0, 1.0])
        changing = halves if label == 0 else ~halves
        video = rng.normal(0.0, 0.3, (frames, DIM)) + rng.normal(0.0, 0.5, DIM)
        video[:, changing] += 1.5 * ramp
        videos.append(video.astype(np.float16))
        labels.append(label)
    return videos, np.array(labels)


def test_delta_head_learns_order_and_the_kind_of_change_the_trend_baseline_cannot():
    pairs = order_videos(32, seed=1), order_videos(8, seed=2)
    delta, _ = fit("delta", *pairs, epochs=40, patience=10, normalize=True)
    assert [layer.name for layer in delta.layers if "dense" in layer.name] == []  # linear
    assert accuracy(delta, *order_videos(20, seed=3)) >= 0.9

    train, val = kind_of_change_videos(32, seed=1), kind_of_change_videos(8, seed=2)
    test = kind_of_change_videos(30, seed=3)
    delta, _ = fit("delta", train, val, epochs=40, patience=10, normalize=True)
    trend, _ = fit("trend", train, val, epochs=40, patience=10, normalize=True)
    delta_acc, trend_acc = accuracy(delta, *test), accuracy(trend, *test)
    assert delta_acc >= 0.8 and delta_acc >= trend_acc + 0.2, (delta_acc, trend_acc)


@pytest.mark.parametrize("name", ["delta", *sorted(heads.DELTA_RNN_HEADS)])
def test_delta_heads_need_two_frames(name):
    with pytest.raises(ConfigError, match="--seq-len must be >= 2"):
        heads.build_head(TrainConfig(head=name, seq_len=1), num_classes=2)


def _self_similarity_reference(frames: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(frames, axis=-1)
    unit = frames / norm[:, None]
    previous = np.concatenate([unit[:1], unit[:-1]])
    log_norm = np.log(norm)
    return np.stack(
        [
            log_norm - log_norm.mean(),
            1 - (unit * previous).sum(-1),
            1 - unit @ unit[0],
            1 - unit @ unit[-1],
        ],
        axis=-1,
    )


def test_self_similarity_layer_reads_each_real_frame_against_its_clip():
    rng = np.random.default_rng(7)
    features = rng.normal(size=(2, SEQ_LEN, DIM)).astype(np.float32)
    mask = np.arange(SEQ_LEN)[None, :] < np.array([[SEQ_LEN], [3]])
    got = np.asarray(heads.SelfSimilarity()(features, mask=mask))
    assert got.shape == (2, SEQ_LEN, heads.SELF_SIMILARITY_SIGNALS)
    np.testing.assert_allclose(got[0], _self_similarity_reference(features[0]), atol=1e-5)
    np.testing.assert_allclose(got[1, :3], _self_similarity_reference(features[1, :3]), atol=1e-5)
    assert not got[1, 3:].any()  # padding
    # What the clip shows does not matter: a scaled copy gives the same signals.
    scaled = np.asarray(heads.SelfSimilarity()(features * 3.0, mask=mask))
    np.testing.assert_allclose(scaled, got, atol=1e-5)


@pytest.mark.parametrize("name", sorted(heads.DELTA_RNN_HEADS))
def test_delta_rnn_heads_keep_deltas_statistics_and_learn_what_delta_learns(name):
    train, val = kind_of_change_videos(32, seed=1), kind_of_change_videos(8, seed=2)
    model, _ = fit(name, train, val, epochs=40, patience=10, normalize=True)
    names = {layer.name for layer in model.layers}
    assert {"frame_l2", "frame_norm", "clip_statistics", "trend_norm"} <= names
    assert {"self_similarity", "similarity_norm", "statistics_softmax", "rnn_softmax"} <= names
    assert accuracy(model, *kind_of_change_videos(30, seed=3)) >= 0.8
    pairs = order_videos(32, seed=1), order_videos(8, seed=2)
    model, _ = fit(name, *pairs, epochs=40, patience=10, normalize=True)
    assert accuracy(model, *order_videos(20, seed=3)) >= 0.9


CHANGED = {"units": 9, "layers": 2, "projection": 6, "input_dropout": 0.3, "dense_units": 7,
           "normalize": True}  # fmt: skip
"""A value other than the default for each option only some heads read."""


def _model_json(config: TrainConfig) -> str:
    from pipeline.training import configured_head

    videos = [np.random.default_rng(i).normal(size=(10, 8)).astype("float16") for i in range(4)]
    model = configured_head(config, num_classes=3, feature_dim=8, train_videos=videos)
    return json.dumps(model.get_config(), sort_keys=True)  # the architecture, not the compile


@pytest.mark.parametrize("name", heads.HEAD_NAMES)
def test_an_option_is_ignored_exactly_when_the_config_says_so(name):
    """Each option either changes the model built for the head, or is named as ignored."""
    base = TrainConfig(head=name, seq_len=8)
    built = _model_json(base)
    for option, value in CHANGED.items():
        config = replace(base, **{option: value})
        ignored = f"--{option.replace('_', '-')}" in config.ignored_options()
        assert (_model_json(config) == built) == ignored, (name, option)
    assert base.ignored_options() == []
